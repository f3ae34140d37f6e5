"""Which device to run on, and its roofs: peak FLOP/s and memory bytes/s for the roofline.

On CPU the roofs are measured (inference/hardware/roofs.py). On CUDA they come from the datasheet table in
inference/hardware/gpus.py, or are measured for a GPU the table lacks.
"""
from __future__ import annotations

from typing import Callable

import torch

from inference.hardware.gpus import GPUS
from inference.hardware.roofs import best_seconds, cpu_roofs
from inference.trace import DeviceInfo


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# Weights kept as llama.cpp blocks for decode (inference/kernels/quantize.py), computed in float32.
BLOCK_DTYPES = ("int8", "q4_1")


def dtype_named(name: str) -> torch.dtype:
    if name in BLOCK_DTYPES:
        return torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype must be auto, {', '.join([*DTYPES, *BLOCK_DTYPES])}, got {name!r}")
    return DTYPES[name]


def device_info(device: torch.device, dtype: torch.dtype, dtype_choice: str = "", quick: bool = False) -> DeviceInfo:
    """The roofs a run in `dtype` on `device` is drawn against, and how its products are computed
    (`quick`: a CPU's short probes where none are cached, see roofs.cpu_roofs)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        gpu = next((g for g in GPUS if g.match in name), None)
        if gpu is not None:
            flops = gpu.bf16_flops if dtype != torch.float32 else gpu.fp32_flops
            # A MIG slice (a ZeroGPU Space's "H200 MIG 3g.71gb") gets a share of the whole GPU's peaks.
            source = "datasheet table" + (", whole GPU: this MIG slice has a share of it" if "MIG" in name else "")
            return DeviceInfo("cuda", name, flops, gpu.bytes_per_s, source, dtype_choice=dtype_choice)
        flops, bandwidth = measure_gpu_peaks(device, dtype)
        return DeviceInfo("cuda", name, flops, bandwidth, "measured (microbenchmark)", dtype_choice=dtype_choice)
    roofs = cpu_roofs(quick)
    how = "; short probes while the kernel builds, measured in full after" if roofs.quick else ""
    return DeviceInfo("cpu", roofs.name, roofs.flops(dtype), roofs.bytes_per_s,
                      f"measured (microbenchmark, {roofs.threads} threads{how})", arithmetic=roofs.arithmetic(dtype),
                      dtype_choice=dtype_choice)


def measure_gpu_peaks(device: torch.device, dtype: torch.dtype) -> tuple[float, float]:
    """(FLOP/s of a 4096^3 product, bytes/s of a 1 GiB read) on a GPU the table lacks."""
    n = 4096
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    x = torch.ones(256 * 1024 * 1024, device=device)

    def best(fn: Callable[[], object]) -> float:
        return best_seconds(fn, repeats=5, budget_s=float("inf"), sync=torch.cuda.synchronize)

    return 2 * n**3 / best(lambda: a @ b), x.numel() * x.element_size() / best(lambda: x.sum())
