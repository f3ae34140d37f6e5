"""The fast decode path on CPU: Linear layers whose single-row products use every core.

`install_fast_linears(model)` wraps each nn.Linear (the LM head included) in a `FastLinear` that
shares its weight. For a decode step (a few rows) it calls the multi-core kernel in gemv.cpp; for
anything else (prefill, CUDA, other dtypes) it calls the ordinary Linear. The decoder layers and
their attention/MLP modules are untouched, so the per-layer timing hooks see the same structure.
The kernel is compiled on first use (about 35 s, once) and cached beside the model; later starts
import the cached library directly.
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
from typing import Any, Iterator

import torch
from torch import nn

from inference.loading import cache_dir

FAST_ROWS = 8              # at most this many rows (batch x new tokens) take the kernel
_SOURCE = Path(__file__).resolve().parent / "gemv.cpp"
_NAME = "phasescope_gemv"
_FLAGS = ("-O3", "-march=native", "-fopenmp")
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
        rows = x.numel() // x.shape[-1]
        if (not self.enabled or rows > FAST_ROWS or x.device.type != "cpu" or x.dtype != w.dtype
                or w.dtype not in (torch.float32, torch.bfloat16)):
            return self.linear(x)
        y = self.kernel.gemv(x.reshape(rows, x.shape[-1]), w)           # (rows, out_features)
        if self.linear.bias is not None:
            y = y + self.linear.bias
        return y.reshape(*x.shape[:-1], w.shape[0])


def install_fast_linears(model: nn.Module) -> int:
    """Wrap every nn.Linear in `model` (idempotent); returns how many were wrapped, 0 if the kernel
    is unavailable."""
    kernel = kernel_module()
    if kernel is None:
        return 0
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, nn.Linear) and not isinstance(parent, FastLinear)]
    for parent, name, child in targets:
        setattr(parent, name, FastLinear(child, kernel))
    return len(targets)


def set_fast(model: nn.Module, enabled: bool) -> None:
    for module in model.modules():
        if isinstance(module, FastLinear):
            module.enabled = enabled


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
