"""Device and dtype names: what the CLI and the page accept, and the messages for what they do not."""
from __future__ import annotations

import pytest
import torch

from inference.hardware.device import device_info, dtype_named, resolve_device
from inference.trace import DeviceInfo


def test_auto_and_cpu_resolve_and_unknown_names_are_refused() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be auto, cpu or cuda, got 'tpu'"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_cuda_without_a_gpu_says_what_to_do() -> None:
    with pytest.raises(ValueError, match="no CUDA GPU is available; use --device cpu"):
        resolve_device("cuda")


def test_dtype_names_map_to_torch_dtypes_and_the_message_lists_only_those_accepted() -> None:
    assert dtype_named("float32") is torch.float32 and dtype_named("bfloat16") is torch.bfloat16
    # int8 and q4_1 are weights kept as blocks, computed in float32.
    assert dtype_named("int8") is torch.float32 and dtype_named("q4_1") is torch.float32
    with pytest.raises(ValueError, match="dtype must be auto, float32, bfloat16, int8, q4_1, got 'float16'"):
        dtype_named("float16")


def test_cpu_device_info_reads_the_roofs_it_is_given(monkeypatch) -> None:
    from inference.hardware import device
    from inference.hardware.roofs import CpuRoofs

    roofs = CpuRoofs(key="k", name="test cpu (2 threads)", threads=2, fp32_flops=100e9, bf16_flops=50e9,
                     bytes_per_s=20e9, bf16_native=False, bf16_torch_flops=1e9, seconds=0.1)
    monkeypatch.setattr(device, "cpu_roofs", lambda quick=False: roofs)
    info = device_info(torch.device("cpu"), torch.bfloat16, "chosen by a test")
    assert isinstance(info, DeviceInfo) and info.type == "cpu" and info.name == "test cpu (2 threads)"
    assert (info.peak_flops, info.peak_bytes_per_s, info.dtype_choice) == (50e9, 20e9, "chosen by a test")
    assert "float32" in info.arithmetic, "bf16 weights without bf16 arithmetic are computed in float32: say so"
