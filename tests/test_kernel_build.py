"""The kernel's build: where it cannot build, one clear line says why and runs use plain PyTorch."""
from __future__ import annotations

import logging

import pytest
import torch

from inference.engine import Engine
from inference.kernels import build as kernel_build
from inference.model.loading import LoadedModel, model_info
from inference.settings import GenerationSettings
from tests.conftest import TEST_DEVICE, DigitTokenizer, tiny_llama


def test_a_failed_build_falls_back_to_pytorch_with_one_clear_line(monkeypatch, tmp_path, caplog) -> None:
    monkeypatch.setattr(kernel_build, "_module", None)
    monkeypatch.setattr(kernel_build, "_build_error", None)
    monkeypatch.setenv("PHASESCOPE_CACHE", str(tmp_path))                  # nothing cached: it must build
    monkeypatch.setenv("PHASESCOPE_KERNEL_ARCH", "no-such-processor")      # ... and the compiler refuses
    with caplog.at_level(logging.WARNING, logger="phasescope"):
        assert kernel_build.kernel_module() is None
    error = kernel_build.build_error()
    assert error and "\n" not in error and len(error) < 300
    warnings = [r.getMessage() for r in caplog.records if r.name == "phasescope"]
    assert len(warnings) == 1 and "plain PyTorch" in warnings[0] and error in warnings[0]
    model = tiny_llama()
    engine = Engine(LoadedModel(model, DigitTokenizer(), model_info(model, "tiny"), torch.device("cpu")), TEST_DEVICE)
    assert not engine.fast_kernels and error in engine.kernel_note
    trace = engine.generate([1, 5, 9], GenerationSettings(max_new_tokens=4, kernel="fast")).run_to_end()
    assert trace.settings.kernel == "eager" and len(trace.steps) == 4


def test_the_facts_read_from_the_source_are_the_built_kernels() -> None:
    module = kernel_build.kernel_module()
    if module is None:
        pytest.skip(f"the kernel did not build here: {kernel_build.build_error()}")
    assert module.MAX_ROWS == kernel_build.MAX_ROWS == 32
    assert module.BLOCK == kernel_build.BLOCK == 32
    assert module.FORMAT_CODES == kernel_build.FORMAT_CODES
    assert module.BLOCK_BYTES == kernel_build.BLOCK_BYTES == {kernel_build.FORMAT_CODES["Q8_0"]: 34,
                                                              kernel_build.FORMAT_CODES["Q4_1"]: 20}


def test_every_source_file_of_the_kernel_is_in_its_build_key(monkeypatch, tmp_path) -> None:
    import shutil

    copies = []
    for path in kernel_build._SOURCES:
        copy = tmp_path / path.name
        shutil.copyfile(path, copy)
        copies.append(copy)
    assert {p.name for p in copies} >= {"gemv.cpp", "common.h", "layer.h"}
    monkeypatch.setattr(kernel_build, "_SOURCES", tuple(copies))
    before = kernel_build.library_path()
    header = next(p for p in copies if p.name == "blocks.h")
    header.write_text(header.read_text() + "\n// a change in one header\n")
    assert kernel_build.library_path() != before
