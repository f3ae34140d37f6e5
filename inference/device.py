"""Which device to run on, and its roofs: peak FLOP/s and memory bytes/s for the roofline.

On CPU the roofs are measured by a short microbenchmark (a large reduction for bandwidth, a
2048^3 matrix product for compute) and cached on disk per CPU, thread count and torch version.
On CUDA they come from a table of known GPUs' datasheet figures (dense, no sparsity), or are
measured the same way for a GPU the table lacks.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Callable

import torch

from inference.loading import cache_dir
from inference.trace import DeviceInfo

# name fragment -> (bf16 FLOP/s, fp32 FLOP/s without tensor cores, bytes/s); first match wins.
GPU_TABLE: tuple[tuple[str, float, float, float], ...] = (
    ("H200", 989e12, 67e12, 4.8e12),
    ("H100 PCIe", 756e12, 51e12, 2.0e12),
    ("H100 NVL", 835e12, 60e12, 3.9e12),
    ("H100", 989e12, 67e12, 3.35e12),
    ("A100-SXM4-80GB", 312e12, 19.5e12, 2.039e12),
    ("A100 80GB PCIe", 312e12, 19.5e12, 1.935e12),
    ("A100", 312e12, 19.5e12, 1.555e12),
    ("L4", 121e12, 30e12, 0.3e12),
    ("T4", 65e12, 8.1e12, 0.32e12),
)


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto': bfloat16 on CUDA; on CPU bfloat16 only where it measured faster for decode here."""
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name in table:
        return table[name]
    if name != "auto":
        raise ValueError(f"dtype must be auto, float32 or bfloat16, got {name!r}")
    if device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if _cpu_measurements()["bf16_matvec_speedup"] >= 1.2 else torch.float32


def device_info(device: torch.device, dtype: torch.dtype) -> DeviceInfo:
    bf16 = dtype in (torch.bfloat16, torch.float16)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for fragment, flops16, flops32, bandwidth in GPU_TABLE:
            if fragment in name:
                return DeviceInfo("cuda", name, flops16 if bf16 else flops32, bandwidth, "datasheet table")
        flops, bandwidth = measure_peaks(device, dtype)
        return DeviceInfo("cuda", name, flops, bandwidth, "measured (microbenchmark)")
    facts = _cpu_measurements()
    return DeviceInfo("cpu", facts["name"], facts["bf16_flops" if bf16 else "fp32_flops"],
                      facts["bytes_per_s"], f"measured (microbenchmark, {facts['threads']} threads)")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_measurements() -> dict:
    """Measured once per CPU model, thread count and torch version, then read from disk."""
    threads = torch.get_num_threads()
    key = f"{cpu_name()}|{threads}|{torch.__version__}"
    path = cache_dir() / "device-peaks.json"
    try:
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached
    except (OSError, ValueError):
        pass
    cpu = torch.device("cpu")
    fp32_flops, bytes_per_s = measure_peaks(cpu, torch.float32)
    bf16_flops, _ = measure_peaks(cpu, torch.bfloat16, measure_bandwidth=False)
    facts = {"key": key, "name": f"{cpu_name()} ({threads} threads)", "threads": threads,
             "fp32_flops": fp32_flops, "bf16_flops": bf16_flops, "bytes_per_s": bytes_per_s,
             "bf16_matvec_speedup": _matvec_time(torch.float32) / _matvec_time(torch.bfloat16)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(facts, indent=1))
    except OSError:
        pass      # a read-only home still works; it just measures again next time
    return facts


def _best_seconds(fn: Callable[[], object], device: torch.device, repeats: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def measure_peaks(device: torch.device, dtype: torch.dtype, measure_bandwidth: bool = True) -> tuple[float, float]:
    """(FLOP/s of a large matrix product, bytes/s of a large read) on `device`."""
    n = 4096 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    flops = 2 * n**3 / _best_seconds(lambda: a @ b, device)
    if not measure_bandwidth:
        return flops, 0.0
    # 256 MiB (1 GiB on GPU): far larger than any cache, so the reduction streams from memory.
    x = torch.ones((256 if device.type == "cuda" else 64) * 1024 * 1024, device=device)
    bandwidth = x.numel() * x.element_size() / _best_seconds(lambda: x.sum(), device)
    return flops, bandwidth


def _matvec_time(dtype: torch.dtype) -> float:
    """One token through a small model's worth of matrix-vector products (decode's inner loop)."""
    weights = [torch.randn(1536, 576).to(dtype) for _ in range(24)]
    x = torch.randn(1, 576).to(dtype)
    return _best_seconds(lambda: [torch.nn.functional.linear(x, w) for w in weights], torch.device("cpu"))
