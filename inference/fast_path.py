"""The fast path on CPU, switched on for one run by `fast_forwards(...)`:

- every nn.Linear: a decode step's few rows go to the multi-core kernel (gemv.cpp); prefill's many
  rows go to `roofs.prefill_linear` (float32 arithmetic for bfloat16 weights on a CPU without
  bfloat16 arithmetic, PyTorch's product otherwise);
- every Llama decoder layer: a decode step in one C++ call (norms, projections, rotary, cache
  write, attention, MLP), because at this model's size a step's ~2000 small PyTorch operations
  cost as much as reading the weights; its attention and MLP stamps go to the run's LayerTimer;
- Llama's RMSNorm (the final norm) for a few rows.

The model itself is not changed: the modules' forwards are replaced on the instances when the
context is entered and put back when it exits (error or not), so outside a run the model is plain
PyTorch, with the same modules and state_dict. Each decoder layer is still called as a module, so
the timing hooks and Stop keep working. Whatever the fast path does not cover falls back to the
module's own forward.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn

from inference.kv_cache import decode_slot
from inference.roofs import prefill_linear
from inference.timing import LayerTimer

_KERNEL_DTYPES = (torch.float32, torch.bfloat16)
# The projections the fused layer computes itself; it needs every one, without a bias.
_PROJECTIONS = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}


@contextlib.contextmanager
def fast_forwards(model: nn.Module, kernel: Any, timer: LayerTimer, native_bf16: bool) -> Iterator[None]:
    """The fast path for one run of `model` (kernel: the built extension); plain PyTorch afterwards."""
    patched: list[nn.Module] = []
    try:
        for module in model.modules():
            forward = _fast_forward(module, kernel, timer, native_bf16)
            if forward is not None:
                module.forward = forward
                patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward           # the class's own forward again


def _fast_forward(module: nn.Module, kernel: Any, timer: LayerTimer, native_bf16: bool) -> Callable[..., Any] | None:
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm

    if isinstance(module, nn.Linear):
        return _linear(module, kernel, native_bf16)
    if type(module) is LlamaRMSNorm:
        return _rmsnorm(module, kernel)
    if type(module) is LlamaDecoderLayer and _fusable(module):
        return _fused_layer(module, kernel, timer)
    return None


def _few_rows(x: torch.Tensor, weight: torch.Tensor, limit: int) -> bool:
    """A few rows on CPU in the weight's dtype, which the kernels take (called ~200 times a step)."""
    return x.is_cpu and x.dtype == weight.dtype and x.dtype in _KERNEL_DTYPES and x.numel() <= limit * x.shape[-1]


# The fast forwards hold their weights (the same Parameter objects) instead of looking them up
# through the module tree on every call: at ~200 calls per step, those lookups add up.

def _linear(linear: nn.Linear, kernel: Any, native_bf16: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    weight, bias, limit = linear.weight, linear.bias, kernel.MAX_ROWS

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not _few_rows(x, weight, limit):
            return prefill_linear(x, weight, bias, native_bf16)
        rows = x.numel() // x.shape[-1]
        y = kernel.gemv(x.reshape(rows, x.shape[-1]), weight).reshape(*x.shape[:-1], weight.shape[0])
        return y if bias is None else y + bias

    return forward


def _rmsnorm(module: nn.Module, kernel: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    original = module.forward
    weight, eps, limit = module.weight, module.variance_epsilon, kernel.MAX_ROWS

    def forward(x: torch.Tensor) -> torch.Tensor:
        return kernel.rmsnorm(x, weight, eps) if _few_rows(x, weight, limit) else original(x)

    return forward


def _fusable(layer: nn.Module) -> bool:
    """A Llama decoder layer the fused step computes exactly: Llama attention and SiLU MLP with
    every projection a bias-free nn.Linear, and Llama's RMSNorms."""
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP, LlamaRMSNorm

    parts = (layer.self_attn, layer.mlp, layer.input_layernorm, layer.post_attention_layernorm)
    if tuple(map(type, parts)) != (LlamaAttention, LlamaMLP, LlamaRMSNorm, LlamaRMSNorm):
        return False
    projections = [getattr(getattr(layer, part), name) for part, names in _PROJECTIONS.items() for name in names]
    return all(type(p) is nn.Linear and p.bias is None for p in projections) and layer.mlp.config.hidden_act == "silu"


def _fused_layer(layer: nn.Module, kernel: Any, timer: LayerTimer) -> Callable[..., Any]:
    """A decode step of a whole Llama decoder layer in one call. The layer is still called as a
    module (its hooks time it and can cancel the run); its attention and MLP are not, so their
    start and end stamps come back from the kernel and go to `timer`."""
    original = layer.forward
    attn, mlp = layer.self_attn, layer.mlp
    weights = kernel.LayerWeights()
    weights.norm1, weights.eps1 = layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon
    weights.norm2, weights.eps2 = layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon
    weights.wq, weights.wk, weights.wv, weights.wo = (attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight,
                                                      attn.o_proj.weight)
    weights.wg, weights.wu, weights.wd = mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight
    weights.scaling = attn.scaling
    index, limit, wq = attn.layer_idx, kernel.MAX_ROWS, attn.q_proj.weight

    def forward(hidden_states: torch.Tensor, attention_mask: Any = None, position_ids: Any = None,
                cache: Any = None, use_cache: Any = False, position_embeddings: Any = None, **kwargs: Any) -> Any:
        cache = cache if cache is not None else kwargs.get("past_key_values")
        slot = None
        if (cache is not None and attention_mask is None and hidden_states.dim() == 3 and hidden_states.shape[1] == 1
                and _few_rows(hidden_states, wq, limit) and position_embeddings is not None
                and index < len(cache.layers)):
            slot = decode_slot(cache.layers[index], hidden_states.shape[0])
        if slot is None:
            return original(hidden_states, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                            use_cache=use_cache, position_embeddings=position_embeddings, **kwargs)
        out, attn_start, attn_end, mlp_start, mlp_end = kernel.layer(hidden_states, weights, *position_embeddings,
                                                                     *slot)
        timer.record_blocks(index, (attn_start, attn_end), (mlp_start, mlp_end))
        return out

    return forward
