"""The fast decode path on CPU: products that use every core, and fused decode blocks.

`install_fast_linears(model)` wraps each nn.Linear (the LM head included) in a `FastLinear` that
shares its weight. For a decode step (a few rows) it calls the multi-core kernel in gemv.cpp; for
anything else (prefill, CUDA, other dtypes) it calls the ordinary Linear. On Llama-style models it
also gives each decoder layer a fused decode step (one C++ call for norms, projections, rotary,
cache write, attention and MLP), because at this model's size a decode step's many small PyTorch
operations cost as much as reading the weights. The layer is still called as a module, so its
timing hooks work as before; the attention and MLP times come back from the kernel as stamps on
the same clock (see timing.record_blocks). Anything the fused step does not cover falls back to
the layer's own forward. The kernel is compiled on first use (about 35 s, once) and cached beside the model; later
starts import the cached library directly.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import platform
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from inference.kv_cache import decode_slot
from inference.loading import cache_dir

FAST_ROWS = 8              # at most this many rows (batch x new tokens) take the kernel
_SOURCE = Path(__file__).resolve().parent / "gemv.cpp"
_NAME = "phasescope_gemv"
_FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno")     # the last lets exp() vectorize
_module: Any = None
_build_error: str | None = None
_build_lock = threading.Lock()


def kernel_module() -> Any:
    """The compiled extension, or None (with `build_error()` saying why) where it cannot build."""
    global _module, _build_error
    with _build_lock:
        if _module is None and _build_error is None:
            try:
                library = _library_path()
                _module = _import(library) if library.is_file() else _build(library)
            except Exception as exc:       # no compiler, no ninja, an unusual CPU: keep the eager path
                lines = str(exc).strip().splitlines() or [""]
                _build_error = f"{type(exc).__name__}: {lines[-1][:200]}"
        return _module


def _library_path() -> Path:
    """One built library per source text, flags, torch version and CPU (it is built with -march=native)."""
    from inference.device import cpu_name

    key = "|".join([_SOURCE.read_text(), " ".join(_FLAGS), torch.__version__, cpu_name(), platform.machine()])
    return cache_dir() / "kernels" / f"{_NAME}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"


def _build(library: Path) -> Any:
    """Compile in a private folder, then move the library into place in one step: a build that is
    interrupted, or two at once, never leaves a half-written library or a stale lock behind."""
    from torch.utils.cpp_extension import load

    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
        source = Path(tmp) / _SOURCE.name
        shutil.copyfile(_SOURCE, source)
        module = load(_NAME, sources=[str(source)], build_directory=tmp, extra_cflags=list(_FLAGS),
                      extra_ldflags=["-fopenmp"], verbose=False)
        os.replace(Path(tmp) / f"{_NAME}.so", library)
    return module


def _import(library: Path) -> Any:
    spec = importlib.util.spec_from_file_location(_NAME, library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_error() -> str | None:
    return _build_error


class FastLinear(nn.Module):
    """An nn.Linear (same weight tensor) whose small-row products go to the multi-core kernel."""

    def __init__(self, linear: nn.Linear, kernel: Any):
        super().__init__()
        self.linear = linear
        self.kernel = kernel
        self.enabled = True

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.linear.weight
        if not (self.enabled and _small(x, w)):
            return self.linear(x)
        rows = x.numel() // x.shape[-1]
        y = self.kernel.gemv(x.reshape(rows, x.shape[-1]), w)           # (rows, out_features)
        if self.linear.bias is not None:
            y = y + self.linear.bias
        return y.reshape(*x.shape[:-1], w.shape[0])


_KERNEL_DTYPES = (torch.float32, torch.bfloat16)


def _small(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """A few rows on CPU in the weight's dtype, which the kernels take (called ~200 times a step)."""
    dtype = x.dtype
    return x.is_cpu and dtype == weight.dtype and dtype in _KERNEL_DTYPES and x.numel() <= FAST_ROWS * x.shape[-1]


# The fused forwards hold their weights (the same Parameter objects) instead of looking them up
# through the module tree on every call: at ~200 calls per step, those lookups add up.

def _fused_layer(layer: nn.Module, kernel: Any) -> Callable[..., Any]:
    """A decode step of a whole Llama decoder layer in one call. The layer is still called as a
    module (its hooks time it and can cancel the run); its attention and MLP are not, so their
    start and end stamps come back from the kernel and go to the running LayerTimer."""
    from inference import timing

    original = layer.forward
    attn, mlp = layer.self_attn, layer.mlp
    norm1, norm2 = layer.input_layernorm, layer.post_attention_layernorm
    attn_weights = tuple(getattr(attn, name).weight for name in ("q_proj", "k_proj", "v_proj", "o_proj"))
    mlp_weights = tuple(getattr(mlp, name).weight for name in ("gate_proj", "up_proj", "down_proj"))
    index, scaling = attn.layer_idx, attn.scaling

    def forward(hidden_states: torch.Tensor, attention_mask: Any = None, position_ids: Any = None,
                cache: Any = None, use_cache: Any = False, position_embeddings: Any = None, **kwargs: Any) -> Any:
        cache = cache if cache is not None else kwargs.get("past_key_values")
        slot = None
        if (layer.phasescope_fused and cache is not None and attention_mask is None and hidden_states.dim() == 3
                and hidden_states.shape[1] == 1 and _small(hidden_states, attn_weights[0])
                and position_embeddings is not None and index < len(cache.layers)):
            slot = decode_slot(cache.layers[index], hidden_states.shape[0])
        if slot is None:
            return original(hidden_states, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                            use_cache=use_cache, position_embeddings=position_embeddings, **kwargs)
        out, attn_start, attn_end, mlp_start, mlp_end = kernel.layer(
            hidden_states, norm1.weight, norm1.variance_epsilon, *attn_weights, *position_embeddings, *slot, scaling,
            norm2.weight, norm2.variance_epsilon, *mlp_weights)
        timing.record_blocks(layer, index, (attn_start, attn_end), (mlp_start, mlp_end))
        return out

    return forward


def _fused_rmsnorm(module: nn.Module, kernel: Any) -> Callable[..., Any]:
    original = module.forward
    weight, eps = module.weight, module.variance_epsilon

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not (module.phasescope_fused and _small(x, weight)):
            return original(x)
        return kernel.rmsnorm(x, weight, eps)

    return forward


def _fusable(module: nn.Module) -> Callable[[nn.Module, Any], Callable[..., Any]] | None:
    """The fused decode step for a Llama decoder layer (no biases, SiLU MLP) or RMSNorm, else None."""
    from transformers.models.llama.modeling_llama import (LlamaAttention, LlamaDecoderLayer, LlamaMLP,
                                                          LlamaRMSNorm)

    if type(module) is LlamaRMSNorm:
        return _fused_rmsnorm
    if type(module) is not LlamaDecoderLayer:
        return None
    parts = (module.self_attn, module.mlp, module.input_layernorm, module.post_attention_layernorm)
    if tuple(map(type, parts)) != (LlamaAttention, LlamaMLP, LlamaRMSNorm, LlamaRMSNorm):
        return None
    linears = [m for part in parts[:2] for m in part.children() if isinstance(m, FastLinear)]
    if len(linears) != 7 or any(m.linear.bias is not None for m in linears) or module.mlp.config.hidden_act != "silu":
        return None
    return _fused_layer


def install_fast_linears(model: nn.Module) -> int:
    """Wrap every nn.Linear in `model` and fuse Llama decoder layers' decode steps (idempotent);
    returns how many Linears were wrapped, 0 if the kernel is unavailable."""
    kernel = kernel_module()
    if kernel is None:
        return 0
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, nn.Linear) and not isinstance(parent, FastLinear)]
    for parent, name, child in targets:
        setattr(parent, name, FastLinear(child, kernel))
    for module in model.modules():
        fuse = _fusable(module)
        if fuse is not None and not hasattr(module, "phasescope_fused"):
            module.phasescope_fused = False
            module.forward = fuse(module, kernel)
    return len(targets)


def set_fast(model: nn.Module, enabled: bool) -> None:
    for module in model.modules():
        if isinstance(module, FastLinear):
            module.enabled = enabled
        if hasattr(module, "phasescope_fused"):
            module.phasescope_fused = enabled


@contextlib.contextmanager
def fast_mode(model: nn.Module, enabled: bool) -> Iterator[None]:
    """The fast kernel on (or off) for one run; always back to plain PyTorch afterwards."""
    set_fast(model, enabled)
    try:
        yield
    finally:
        set_fast(model, False)


def fast_available(model: nn.Module) -> bool:
    return any(isinstance(m, FastLinear) for m in model.modules())
