"""Datasheet figures of known GPUs (dense, no sparsity): the only home of these numbers. The CUDA
roofs (inference/hardware/device.py) and the what-if estimates (inference/lessons/whatif.py) both read them."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    name: str
    match: str                  # fragment of torch.cuda.get_device_name() that identifies it
    bf16_flops: float           # dense, tensor cores
    fp32_flops: float           # without tensor cores
    bytes_per_s: float
    memory_bytes: float


# First match wins, so the more specific names come first.
GPUS: tuple[Gpu, ...] = (
    Gpu("H200", "H200", 989e12, 67e12, 4.8e12, 141e9),
    Gpu("H100 PCIe", "H100 PCIe", 756e12, 51e12, 2.0e12, 80e9),
    Gpu("H100 NVL", "H100 NVL", 835e12, 60e12, 3.9e12, 94e9),
    Gpu("H100 SXM", "H100", 989e12, 67e12, 3.35e12, 80e9),
    Gpu("A100 80GB SXM", "A100-SXM4-80GB", 312e12, 19.5e12, 2.039e12, 80e9),
    Gpu("A100 80GB PCIe", "A100 80GB PCIe", 312e12, 19.5e12, 1.935e12, 80e9),
    Gpu("A100 40GB", "A100", 312e12, 19.5e12, 1.555e12, 40e9),
    Gpu("L4", "L4", 121e12, 30e12, 0.3e12, 24e9),
    Gpu("T4", "T4", 65e12, 8.1e12, 0.32e12, 16e9),
)

GPUS_BY_NAME: dict[str, Gpu] = {g.name: g for g in GPUS}
