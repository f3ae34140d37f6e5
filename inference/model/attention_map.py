"""Where each step's attention goes: the weights a step's newest token puts on every position of the
sequence so far, averaged over heads and layers (one row of numbers per step, summing to 1).

Every decode step reads all of the cache's keys and values, while most of the attention mass sits
on a few positions; this records the mass so the page can show both. The weights exist only inside
attention, so recording them has a cost: the run uses PyTorch's eager attention (the weights
materialised as a tensor, on the plain PyTorch path; the fused kernel keeps them in registers) and
its step times are that path's. A switch, off by default.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn


class AttentionRecorder:
    """Forward hooks on every layer's attention module that keep its last query row's weights."""

    def __init__(self) -> None:
        self._sum: torch.Tensor | None = None
        self._layers = 0

    def hook(self, module: nn.Module, args: Any, output: Any) -> None:
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if weights is None:
            return
        row = weights[0, :, -1, :].float().mean(0)          # batch row 0, mean over heads, newest token
        self._sum = row if self._sum is None else self._sum + row
        self._layers += 1

    def take(self) -> tuple[float, ...]:
        """This step's weights per position (mean over layers), and a fresh start for the next."""
        if self._sum is None:
            return ()
        row = (self._sum / self._layers).tolist()
        self._sum, self._layers = None, 0
        return tuple(round(max(0.0, w), 6) for w in row)


def attention_modules(model: nn.Module) -> list[nn.Module]:
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or not all(hasattr(layer, "self_attn") for layer in layers):
        raise ValueError("recording attention needs a Llama-style model (decoder layers with self_attn)")
    return [layer.self_attn for layer in layers]


@contextlib.contextmanager
def recording_attention(model: nn.Module) -> Iterator[AttentionRecorder]:
    """Eager attention and the recorder's hooks for one run; the model as it was afterwards."""
    modules = attention_modules(model)
    config = model.config
    saved = config._attn_implementation
    recorder = AttentionRecorder()
    handles = [module.register_forward_hook(recorder.hook) for module in modules]
    config._attn_implementation = "eager"
    try:
        yield recorder
    finally:
        config._attn_implementation = saved
        for handle in handles:
            handle.remove()

