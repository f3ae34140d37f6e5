"""This CPU's roofs, measured: matrix-product FLOP/s per dtype, and memory bytes/s.

Every probe is sized by time, not by a fixed n: it doubles its size until one call takes about
PROBE_SECONDS, so the whole measurement stays near ten seconds on any CPU, however slow a dtype
is there. The products are the ones prefill runs (`prefill_linear`, in the dtype and through the
path the engine takes), so a measured prefill cannot land above its own roof. The figures are
cached on disk under a key of everything that decides them (see `cpu_key`).
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from inference.disk_cache import cached, cached_per_key
from inference.hardware.cpu_wait import CROWDED, CpuWait

PROBE_SECONDS = 0.15          # one call of a grown probe takes about this long
QUICK_PROBE_SECONDS = PROBE_SECONDS / 6
_ROOFS_VERSION = 2            # bump when what a probe measures changes
# CPU flags that decide which arithmetic PyTorch, oneDNN and our kernel can use.
_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")
# Environment that changes the code paths taken (`make bench-avx2` holds PyTorch and the kernel to AVX2 with these).
_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "PHASESCOPE_KERNEL_ARCH")


@dataclass(frozen=True)
class CpuRoofs:
    """What the microbenchmark found on this CPU with this many threads."""
    key: str
    name: str
    threads: int
    fp32_flops: float
    bf16_flops: float            # through prefill_linear: float32 arithmetic where bf16 is not native
    bytes_per_s: float
    bf16_native: bool            # the CPU has bfloat16 arithmetic that PyTorch uses (see bf16_native())
    bf16_torch_flops: float      # PyTorch's own bfloat16 product (what the engine avoids if not native)
    seconds: float               # how long the measurement took
    waited: float = 0.0          # the share of it its threads waited for a core (other programs)
    quick: bool = False          # a first start's short probes, for that start only (cpu_roofs)

    def flops(self, dtype: torch.dtype) -> float:
        return self.bf16_flops if dtype == torch.bfloat16 else self.fp32_flops

    def arithmetic(self, dtype: torch.dtype) -> str:
        """How products in `dtype` are computed here, in words for the page."""
        if dtype != torch.bfloat16:
            return "float32 arithmetic"
        if self.bf16_native:
            return "native bfloat16 arithmetic"
        return (f"bfloat16 weights computed in float32 for prefill: this CPU has no bfloat16 arithmetic "
                f"(PyTorch's bfloat16 product measured {self.bf16_torch_flops / 1e9:,.1f} GFLOP/s, "
                f"float32 {self.fp32_flops / 1e9:,.0f})")


def cpu_name() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> tuple[str, ...]:
    """The flags of _FLAGS this CPU reports (in /proc/cpuinfo), in _FLAGS order."""
    present = set(_cpuinfo_field("flags").split())
    return tuple(flag for flag in _FLAGS if flag in present)


def cpu_key() -> str:
    """Everything that decides the figures: model name and stepping (two different CPUs share the
    name "AMD EPYC"), arithmetic flags, threads, torch version, and the environment that changes
    which code paths PyTorch takes."""
    env = [f"{name}={os.environ[name]}" for name in _ENV if name in os.environ]
    parts = [cpu_name(), _cpuinfo_field("cpu family"), _cpuinfo_field("model"), _cpuinfo_field("stepping"),
             ",".join(cpu_flags()), str(torch.get_num_threads()), torch.__version__, *env, f"v{_ROOFS_VERSION}"]
    return "|".join(parts)


def bf16_native() -> bool:
    """Whether this CPU has bfloat16 arithmetic that PyTorch may use: AVX-512 BF16 or AMX, and
    PyTorch not held to a lower instruction set (ATEN_CPU_CAPABILITY=avx2 emulates an AVX2 CPU)."""
    capability = torch.backends.cpu.get_cpu_capability()
    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_flags())) and capability not in ("DEFAULT", "NO AVX", "AVX2")


def prefill_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   native_bf16: bool = True) -> torch.Tensor:
    """The product prefill runs. Without bfloat16 arithmetic, PyTorch's bfloat16 products are
    hundreds of times slower than float32 on some CPUs, so the weights are widened to float32 for
    the product (as llama.cpp does) and the result rounded back: float32 speed, and at least
    bfloat16's accuracy."""
    if weight.dtype == torch.bfloat16 and not native_bf16:
        return F.linear(x.float(), weight.float(), None if bias is None else bias.float()).to(torch.bfloat16)
    return F.linear(x, weight, bias)


def cpu_roofs(quick: bool = False) -> CpuRoofs:
    """Measured once per `cpu_key`, then read from disk; roofs measured on a crowded machine (their
    threads waited for a core CROWDED of the time or more) serve this start only. `quick`, where
    none are cached yet: probes a sixth as long (about two seconds in all), for this start only
    (a first start that serves while its kernel builds, and measures them in full after)."""
    key = cpu_key()
    if quick:
        found = cached("cpu-roofs", key, CpuRoofs)
        return found if found is not None else measure_cpu_roofs(key, target_s=QUICK_PROBE_SECONDS)
    return cached_per_key("cpu-roofs", key, CpuRoofs, lambda: measure_cpu_roofs(key),
                          keep=lambda roofs: roofs.waited < CROWDED)


def measure_cpu_roofs(key: str = "", target_s: float = PROBE_SECONDS) -> CpuRoofs:
    start = time.perf_counter()
    wait = CpuWait(discovering=1)          # the threads that ran the probes, and how long they waited
    wait.start()
    native = bf16_native()
    fp32 = product_flops(torch.float32, native_bf16=True, target_s=target_s)
    # PyTorch's own bfloat16 product, for the page's explanation; short where it is not native.
    bf16_torch = product_flops(torch.bfloat16, native_bf16=True, target_s=target_s if native else target_s / 4)
    bf16 = bf16_torch if native else product_flops(torch.bfloat16, native_bf16=False, target_s=target_s)
    threads = torch.get_num_threads()
    bandwidth = memory_bytes_per_s(target_s)
    seconds = time.perf_counter() - start
    waited_ms = wait.finish(seconds * 1e3)
    return CpuRoofs(key=key or cpu_key(), name=f"{cpu_name()} ({threads} threads)", threads=threads,
                    fp32_flops=fp32, bf16_flops=bf16, bytes_per_s=bandwidth, bf16_native=native,
                    bf16_torch_flops=bf16_torch, seconds=seconds, waited=(waited_ms or 0.0) / (seconds * 1e3),
                    quick=target_s < PROBE_SECONDS)


def product_flops(dtype: torch.dtype, native_bf16: bool, target_s: float = PROBE_SECONDS) -> float:
    """Best FLOP/s of prefill's product over two shapes, each grown until a call takes target_s:
    square (n, n) x (n, n), and a prefill-like (n tokens, n/4) x (n, n/4)."""
    best = 0.0
    for narrow in (1, 4):
        def probe(n: int) -> tuple[Callable[[], object], float]:
            x = torch.randn(n, n // narrow).to(dtype)
            w = torch.randn(n, n // narrow).to(dtype)
            return (lambda: prefill_linear(x, w, native_bf16=native_bf16)), 2.0 * n * n * (n // narrow)
        best = max(best, _grown_rate(probe, start=128, limit=4096, target_s=target_s))
    return best


def memory_bytes_per_s(target_s: float = PROBE_SECONDS) -> float:
    """Bytes/s of a sum over an array several times larger than the last-level cache."""
    size = min(2 << 30, max(256 << 20, 2 * _last_level_cache_bytes()))
    x = torch.ones(size // 4)
    return size / best_seconds(lambda: x.sum(), repeats=5, budget_s=20 * target_s)


def _grown_rate(probe: Callable[[int], tuple[Callable[[], object], float]], start: int, limit: int,
                target_s: float) -> float:
    """Work per second of probe(n), n doubling from `start` until one call takes target_s."""
    n = start
    while True:
        fn, work = probe(n)
        seconds = best_seconds(fn, repeats=1, budget_s=target_s)
        if seconds >= target_s / 2 or n >= limit:
            return work / best_seconds(fn, repeats=5, budget_s=8 * target_s)
        n *= 2


def best_seconds(fn: Callable[[], object], repeats: int, budget_s: float,
                 sync: Callable[[], object] = lambda: None) -> float:
    """Fastest of up to `repeats` timed calls after one warm-up, stopping once `budget_s` is spent;
    `sync` waits for a device's queued work (torch.cuda.synchronize) around each timed call."""
    fn()
    best, spent = float("inf"), 0.0
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
        if spent > budget_s:
            break
    return best


def _last_level_cache_bytes() -> int:
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
    return max(sizes, default=32 << 20)


def _cpuinfo_field(name: str) -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == name:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""
