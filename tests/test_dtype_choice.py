"""--dtype auto: the dtype that finished the trial run first wins, and the reason says so with the times."""
from __future__ import annotations

import pytest
import torch

from inference.hardware import dtype_choice


def test_the_faster_dtype_wins_and_the_reason_gives_both_times(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PHASESCOPE_CACHE", str(tmp_path))
    times = {torch.float32: (3.5, 162.0, 50.0, 0.0), torch.bfloat16: (2.0, 606.0, 22.0, 0.0)}
    monkeypatch.setattr(dtype_choice, "_timed_run", lambda dtype, progress: times[dtype])
    dtype, why = dtype_choice.choose_dtype("auto", torch.device("cpu"))
    assert dtype == torch.bfloat16
    assert "1.75x as fast as float32" in why and "float32 3.50 s" in why and "bfloat16 2.00 s" in why
    times[torch.float32] = (1.0, 100.0, 10.0, 0.0)          # cached: the trial is not run again
    assert dtype_choice.choose_dtype("auto", torch.device("cpu")) == (dtype, why)


def test_without_a_model_to_try_the_cpu_flags_decide(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PHASESCOPE_CACHE", str(tmp_path))

    def no_model(dtype, progress):
        raise ValueError("the bundled model is not installed")

    monkeypatch.setattr(dtype_choice, "_timed_run", no_model)
    monkeypatch.setattr("inference.hardware.roofs.bf16_native", lambda: False)
    dtype, why = dtype_choice.choose_dtype("auto", torch.device("cpu"))
    assert dtype == torch.float32 and "lacks bfloat16 arithmetic" in why and "not installed" in why


def test_an_explicit_dtype_is_taken_as_asked() -> None:
    assert dtype_choice.choose_dtype("bfloat16", torch.device("cpu"))[0] == torch.bfloat16
    with pytest.raises(ValueError, match="got 'float16'"):
        dtype_choice.choose_dtype("float16", torch.device("cpu"))


def test_a_changed_decode_kernel_is_tried_again(monkeypatch, tmp_path) -> None:
    from pathlib import Path

    monkeypatch.setenv("PHASESCOPE_CACHE", str(tmp_path))
    times = {torch.float32: (3.5, 162.0, 50.0, 0.0), torch.bfloat16: (2.0, 606.0, 22.0, 0.0)}
    monkeypatch.setattr(dtype_choice, "_timed_run", lambda dtype, progress: times[dtype])
    assert dtype_choice.choose_dtype("auto", torch.device("cpu"))[0] == torch.bfloat16
    times[torch.float32] = (1.0, 100.0, 10.0, 0.0)
    monkeypatch.setattr("inference.kernels.build.library_path", lambda: Path("phasescope_gemv-new.so"))
    assert dtype_choice.choose_dtype("auto", torch.device("cpu"))[0] == torch.float32


def test_a_trial_on_a_crowded_machine_decides_this_start_only(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PHASESCOPE_CACHE", str(tmp_path))
    # Another program had the CPU: bfloat16's run waited 40% of its time for a core, and lost.
    times = {torch.float32: (2.0, 140.0, 30.0, 0.1), torch.bfloat16: (2.4, 460.0, 18.0, 0.4)}
    monkeypatch.setattr(dtype_choice, "_timed_run", lambda dtype, progress: times[dtype])
    dtype, why = dtype_choice.choose_dtype("auto", torch.device("cpu"))
    assert dtype == torch.float32 and "waited 40% of its time for a core" in why and "this start only" in why
    times.update({torch.float32: (2.3, 150.0, 32.0, 0.0), torch.bfloat16: (1.3, 110.0, 17.0, 0.0)})    # quiet now
    dtype, why = dtype_choice.choose_dtype("auto", torch.device("cpu"))
    assert dtype == torch.bfloat16 and "measured at the first start" in why, "measured again, not read from disk"
    times[torch.float32] = (1.0, 100.0, 10.0, 0.0)
    assert dtype_choice.choose_dtype("auto", torch.device("cpu"))[0] == torch.bfloat16, "a quiet trial is kept"
