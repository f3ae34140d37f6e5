"""The CPU roofs: measured by the microbenchmark itself (time-bounded, positive), cached under a key
of everything that decides them, and the product prefill runs for bfloat16 without native arithmetic."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from inference.hardware import roofs


def test_the_microbenchmark_measures_every_roof(monkeypatch) -> None:
    monkeypatch.setattr(roofs, "PROBE_SECONDS", 0.02)       # the same probes, grown to a shorter call
    measured = roofs.measure_cpu_roofs("test-key")
    for name in ("fp32_flops", "bf16_flops", "bf16_torch_flops", "bytes_per_s"):
        value = getattr(measured, name)
        assert math.isfinite(value) and value > 0, (name, value)
    assert measured.bf16_native == roofs.bf16_native()
    assert 0.0 <= measured.waited <= 1.0, "how long its threads waited for a core, as a share of its time"
    if not measured.bf16_native:       # widened to float32: far from PyTorch's slow bfloat16 product
        assert measured.bf16_flops > measured.bf16_torch_flops


def test_the_roofs_are_read_from_the_cache_without_measuring(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PHASESCOPE_CACHE", str(tmp_path))
    fake = roofs.CpuRoofs(key=roofs.cpu_key(), name="cpu", threads=2, fp32_flops=1e11, bf16_flops=2e11,
                          bytes_per_s=2e10, bf16_native=True, bf16_torch_flops=2e11, seconds=1.0)
    monkeypatch.setattr(roofs, "measure_cpu_roofs", lambda key: dataclasses.replace(fake, key=key))
    assert roofs.cpu_roofs() == fake
    monkeypatch.setattr(roofs, "measure_cpu_roofs", lambda key: pytest.fail("measured again despite the cache"))
    assert roofs.cpu_roofs() == fake
    stored = json.loads(next(tmp_path.glob("cpu-roofs-*.json")).read_text())
    assert stored["key"] == roofs.cpu_key()


def test_roofs_measured_on_a_crowded_machine_serve_this_start_only(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PHASESCOPE_CACHE", str(tmp_path))
    crowded = roofs.CpuRoofs(key=roofs.cpu_key(), name="cpu", threads=2, fp32_flops=5e10, bf16_flops=1e11,
                             bytes_per_s=1e10, bf16_native=True, bf16_torch_flops=1e11, seconds=1.0, waited=0.45)
    monkeypatch.setattr(roofs, "measure_cpu_roofs", lambda key: crowded)
    assert roofs.cpu_roofs() == crowded and not list(tmp_path.glob("cpu-roofs-*.json")), "not kept"
    quiet = dataclasses.replace(crowded, fp32_flops=1e11, bytes_per_s=2e10, waited=0.01)
    monkeypatch.setattr(roofs, "measure_cpu_roofs", lambda key: quiet)
    assert roofs.cpu_roofs() == quiet, "measured again at the next start"
    assert list(tmp_path.glob("cpu-roofs-*.json")), "and kept, measured on a quiet machine"


def test_the_cache_key_changes_with_what_decides_the_figures(monkeypatch) -> None:
    key = roofs.cpu_key()
    assert roofs.cpu_name() in key and torch.__version__ in key and ",".join(roofs.cpu_flags()) in key
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)        # the suite may itself run emulated
    native = roofs.cpu_key()
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert roofs.cpu_key() != native, "emulating AVX2 must not reuse the native figures"
    emulated, threads = roofs.cpu_key(), torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        assert roofs.cpu_key() != emulated, "another thread count must not reuse the figures"
    finally:
        torch.set_num_threads(threads)


def test_bfloat16_prefill_without_native_arithmetic_gives_the_float32_product_rounded() -> None:
    torch.manual_seed(0)
    x, w, b = torch.randn(37, 64).bfloat16(), torch.randn(96, 64).bfloat16(), torch.randn(96).bfloat16()
    widened = roofs.prefill_linear(x, w, b, native_bf16=False)
    assert widened.dtype == torch.bfloat16
    torch.testing.assert_close(widened, torch.nn.functional.linear(x.float(), w.float(), b.float()).bfloat16())
    torch.testing.assert_close(widened.float(), roofs.prefill_linear(x, w, b).float(), rtol=2e-2, atol=5e-2)


def test_the_page_says_how_bfloat16_is_computed() -> None:
    base = dict(key="k", name="cpu", threads=2, fp32_flops=150e9, bytes_per_s=2e10, seconds=1.0)
    slow = roofs.CpuRoofs(**base, bf16_flops=140e9, bf16_native=False, bf16_torch_flops=0.3e9)
    assert "no bfloat16 arithmetic" in slow.arithmetic(torch.bfloat16) and "0.3 GFLOP/s" in slow.arithmetic(torch.bfloat16)
    native = roofs.CpuRoofs(**base, bf16_flops=300e9, bf16_native=True, bf16_torch_flops=300e9)
    assert native.arithmetic(torch.bfloat16) == "native bfloat16 arithmetic"
    assert native.flops(torch.float32) == 150e9 and native.flops(torch.bfloat16) == 300e9
