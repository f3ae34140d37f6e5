"""Per-layer timing with forward hooks: perf_counter on CPU, CUDA events on CUDA.

`LayerTimer` is a context manager: hooks go on each decoder layer and on its attention and MLP
submodules when it is entered and are removed in `finally`. Between `start_step()` and
`finish_step()` every hook stamps a clock; `finish_step()` turns the stamps into milliseconds.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from inference.hardware.cpu_wait import CpuWait

ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
MLP_NAMES = ("mlp", "feed_forward", "ffn")


@dataclass(frozen=True)
class StepTimes:
    ms: float
    layer_ms: tuple[float, ...]
    attn_ms: tuple[float, ...]
    mlp_ms: tuple[float, ...]
    cpu_wait_ms: float | None = None     # the engine's threads waiting for a core (cpu_wait.py); None: unknown


def find_decoder_layers(model: nn.Module, num_layers: int) -> nn.ModuleList:
    """The ModuleList holding the decoder blocks (Llama: model.layers, GPT-2: transformer.h)."""
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return module
    raise ValueError(f"could not find a list of {num_layers} decoder layers in {type(model).__name__}")


def _child(layer: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    return next((getattr(layer, n) for n in names if isinstance(getattr(layer, n, None), nn.Module)), None)


class _Clock:
    """Stamps on the host (CPU) or on the GPU stream (CUDA events, resolved after the step)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def stamp(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def ms(self, start: Any, end: Any) -> float:
        if start is None or end is None:
            return 0.0
        if self.cuda:
            return float(start.elapsed_time(end))
        return (end - start) * 1e3


class RunCancelled(Exception):
    """Raised from a layer's hook when the run was cancelled in the middle of a forward pass."""


class LayerTimer:
    """Times each decoder layer, its attention and its MLP, step by step. With a `cancel` event, a
    layer about to start raises RunCancelled once it is set, so Stop need not wait for a long prefill."""

    def __init__(self, model: nn.Module, num_layers: int, device: torch.device, enabled: bool = True,
                 cancel: threading.Event | None = None):
        self.enabled = enabled
        self.cancel = cancel
        self.layers = find_decoder_layers(model, num_layers)
        self.clock = _Clock(device)
        n = len(self.layers)
        # One (start, end) stamp pair per layer, attention and MLP, overwritten each step.
        self._stamps: dict[str, list[list[Any]]] = {k: [[None, None] for _ in range(n)]
                                                     for k in ("layer", "attn", "mlp")}
        self._handles: list[Any] = []
        self._step_start: Any = None
        self.layers_done = 0        # layers finished in this step so far (a live progress count)
        # Time off the core: on a CPU, the time other programs took from the engine's threads.
        self.cpu_wait = CpuWait() if enabled and device.type == "cpu" else None

    def __enter__(self) -> LayerTimer:
        if not self.enabled:        # whole-step timing only: the uninstrumented baseline
            return self
        try:
            for i, layer in enumerate(self.layers):
                self._hook(layer, "layer", i)
                for kind, names in (("attn", ATTENTION_NAMES), ("mlp", MLP_NAMES)):
                    sub = _child(layer, names)
                    if sub is not None:
                        self._hook(sub, kind, i)
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, module: nn.Module, kind: str, i: int) -> None:
        pair = self._stamps[kind][i]
        stamp = self.clock.stamp

        def pre(*_: object) -> None:
            # self.cancel is read at each call: a server that prefills several runs in turn
            # points it at the run whose prefill is running.
            if kind == "layer" and self.cancel is not None and self.cancel.is_set():
                raise RunCancelled
            pair[0] = stamp()

        def post(*_: object) -> None:
            pair[1] = stamp()
            if kind == "layer":
                self.layers_done = i + 1

        self._handles.append(module.register_forward_pre_hook(pre))
        self._handles.append(module.register_forward_hook(post))

    def check_cancel(self) -> None:
        """For a forward pass that calls no layer module (the fused stack): Stop, as a layer's hook would."""
        if self.cancel is not None and self.cancel.is_set():
            raise RunCancelled

    def record_layers(self, stamps: list[float]) -> None:
        """perf_counter stamps from a fused stack that calls no layer module (so no hook can fire):
        six per layer: layer start, attention start and end, MLP start and end, layer end."""
        if self.enabled and not self.clock.cuda:
            for i in range(len(stamps) // 6):
                start, attn_start, attn_end, mlp_start, mlp_end, end = stamps[6 * i:6 * i + 6]
                self.record_layer(i, (start, end), (attn_start, attn_end), (mlp_start, mlp_end))
        self.layers_done = len(stamps) // 6

    def record_layer(self, i: int, layer: tuple[Any, Any], attn: tuple[Any, Any], mlp: tuple[Any, Any]) -> None:
        """Layer `i`'s (start, end) stamps from this timer's clock, taken by a step that calls the
        layer's parts itself (the plain shared batch), where its hooks would have taken them."""
        if self.enabled:
            self._stamps["layer"][i][:] = layer
            self._stamps["attn"][i][:] = attn
            self._stamps["mlp"][i][:] = mlp
        self.layers_done = i + 1

    def start_step(self) -> None:
        self.layers_done = 0
        for pairs in self._stamps.values():
            for pair in pairs:
                pair[0] = pair[1] = None
        if self.cpu_wait is not None:
            self.cpu_wait.start()
        self.clock.sync()
        self._step_start = self.clock.stamp()

    def finish_step(self) -> StepTimes:
        end = self.clock.stamp()
        self.clock.sync()
        step_ms = self.clock.ms(self._step_start, end)
        if not self.enabled:
            return StepTimes(ms=step_ms, layer_ms=(), attn_ms=(), mlp_ms=())
        ms: Callable[[list[Any]], float] = lambda pair: self.clock.ms(pair[0], pair[1])
        return StepTimes(
            ms=step_ms,
            layer_ms=tuple(ms(p) for p in self._stamps["layer"]),
            attn_ms=tuple(ms(p) for p in self._stamps["attn"]),
            mlp_ms=tuple(ms(p) for p in self._stamps["mlp"]),
            cpu_wait_ms=self.cpu_wait.finish(step_ms) if self.cpu_wait is not None else None,
        )
