"""Building, caching and importing the C++ decode kernel (inference/kernels/cpp/gemv.cpp).

The kernel is compiled on first use (48 to 61 s, once, on the 2-core machines measured) into a
private folder and moved into the cache in one step; later starts import the cached library
directly. It is built for this CPU
(`-march=native`), or for the target named in PHASESCOPE_KERNEL_ARCH (`x86-64-v3` builds the AVX2
kernel an AVX2-only CPU would get). Where it cannot build (no compiler, no OpenMP, another
architecture), `kernel_module()` is None, `build_error()` says why in one line, and the engine
runs plain PyTorch.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import platform
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

from inference.disk_cache import cache_dir

_CPP = Path(__file__).resolve().parent / "cpp"
_SOURCE = _CPP / "gemv.cpp"
# Every file the build compiles (the bindings and the parts they include), all hashed into the key.
_SOURCES = (_SOURCE, *sorted(_CPP.glob("*.h")))
_NAME = "phasescope_gemv"


def _constant(header: str, pattern: str) -> str:
    """A fact the kernel's source states, read from it: Python knows it where the kernel does not build too."""
    return re.search(pattern, (_CPP / header).read_text()).group(1)


# Rows (sequences x new tokens) one kernel call takes: a shared step holds this many on every machine.
MAX_ROWS = int(_constant("common.h", r"constexpr int64_t kMaxRows = (\d+);"))
# llama.cpp's block formats as the kernel reads them: weights per block, each format's code and bytes.
BLOCK = int(_constant("blocks.h", r"constexpr int64_t kBlock = (\d+);"))
FORMAT_CODES = {name: int(code) for name, code in
                re.findall(r"k(Q\w+) = (\d+)", _constant("blocks.h", r"enum Format : int64_t \{([^}]*)\}"))}
_BYTES = [int(n) for n in re.findall(r"\d+", _constant("blocks.h", r"constexpr int64_t kBlockBytes\[\] = \{([^}]*)\}"))]
BLOCK_BYTES = {code: _BYTES[code] for code in FORMAT_CODES.values()}
_module: Any = None
_build_error: str | None = None
_build_lock = threading.Lock()
log = logging.getLogger("phasescope")


def flags() -> tuple[str, ...]:
    """-fno-math-errno lets exp() vectorize in the attention loop."""
    arch = os.environ.get("PHASESCOPE_KERNEL_ARCH", "native")
    return ("-O3", f"-march={arch}", "-fopenmp", "-fno-math-errno")


def kernel_module() -> Any:
    """The compiled extension, or None (with `build_error()` saying why) where it cannot build."""
    global _module, _build_error
    with _build_lock:
        if _module is None and _build_error is None:
            try:
                if os.environ.get("PHASESCOPE_KERNEL") == "off":
                    raise RuntimeError("turned off by PHASESCOPE_KERNEL=off")
                library = library_path()
                _module = _import(library) if library.is_file() else _build(library)
            except Exception as exc:       # no compiler, no ninja, an unusual CPU: keep the eager path
                lines = str(exc).strip().splitlines() or [""]
                _build_error = f"{type(exc).__name__}: {lines[-1][:200]}"
                log.warning("The fast decode kernel is unavailable (%s); runs use plain PyTorch.", _build_error)
        return _module


def build_in_background() -> None:
    """Start the kernel's build on a thread of its own, at the lowest CPU priority the system gives
    it (on Linux a thread's priority is its own, and the compiler it starts inherits it): a first
    start's load, roofs and runs keep the cores, and the compiler takes what they leave idle."""
    def build() -> None:
        if platform.system() == "Linux":
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
            except (OSError, AttributeError):
                pass
        kernel_module()

    threading.Thread(target=build, name="phasescope-kernel-build", daemon=True).start()


def build_error() -> str | None:
    return _build_error


def kernel_for_now() -> tuple[Any, bool]:
    """(the kernel where it is there now, built by an earlier start or by this process; whether a
    build under way, or about to start, may still bring it), without waiting for that build: (None,
    True) while one runs, (None, False) where it cannot build (`build_error`). Whether it may still
    come is read first, so a build that ends meanwhile gives its kernel, never (None, False)."""
    coming = _module is None and _build_error is None and os.environ.get("PHASESCOPE_KERNEL") != "off"
    if not coming or (library_path().is_file() and not _build_lock.locked()):
        return kernel_module(), False
    return None, True


def library_path() -> Path:
    """One library per source text (every file of it), flags, torch version and CPU (it is built
    for this CPU)."""
    from inference.hardware.roofs import cpu_flags, cpu_name

    sources = [f"{path.name}:{path.read_text()}" for path in _SOURCES]
    key = "|".join([*sources, " ".join(flags()), torch.__version__, cpu_name(), ",".join(cpu_flags()),
                    platform.machine()])
    return cache_dir() / "kernels" / f"{_NAME}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"


def _build(library: Path) -> Any:
    """Compile in a private folder, then move the library into place in one step: a build that is
    interrupted, or two at once, never leaves a half-written library or a stale lock behind."""
    from torch.utils.cpp_extension import load

    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
        for path in _SOURCES:
            shutil.copyfile(path, Path(tmp) / path.name)
        source = Path(tmp) / _SOURCE.name
        module = load(_NAME, sources=[str(source)], build_directory=tmp, extra_cflags=list(flags()),
                      extra_ldflags=["-fopenmp"], verbose=False)
        # Its file, as torch named it (a second build of the name in one process gets a suffix, _v1).
        os.replace(module.__file__, library)
    return module


def _import(library: Path) -> Any:
    spec = importlib.util.spec_from_file_location(_NAME, library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
