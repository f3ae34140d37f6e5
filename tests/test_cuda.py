"""The engine on CUDA: CUDA-event timing and the same tokens as on CPU (skipped without a GPU)."""
from __future__ import annotations

import pytest
import torch

from inference.engine import Engine
from inference.model.loading import LoadedModel, model_info
from inference.settings import GenerationSettings
from tests.conftest import TEST_DEVICE, DigitTokenizer, tiny_llama

pytestmark = pytest.mark.cuda
PROMPT = [1, 17, 42, 99, 5, 23, 64, 7]


def cuda_engine() -> Engine:
    model = tiny_llama().to("cuda")
    return Engine(LoadedModel(model, DigitTokenizer(), model_info(model, "tiny-llama"), torch.device("cuda")),
                  TEST_DEVICE)


def test_cuda_greedy_tokens_equal_cpu_and_layers_are_timed_with_events() -> None:
    from tests.conftest import engine_for

    cpu = engine_for(tiny_llama(), "tiny-llama").generate(PROMPT, GenerationSettings(max_new_tokens=12)).run_to_end()
    gpu = cuda_engine().generate(PROMPT, GenerationSettings(max_new_tokens=12)).run_to_end()
    assert [s.token_id for s in gpu.steps] == [s.token_id for s in cpu.steps]
    for step in gpu.steps:
        assert all(t > 0 for t in step.layer_ms), "CUDA events gave an empty layer time"
        assert sum(step.layer_ms) <= step.ms


def test_cuda_kv_bytes_follow_the_formula() -> None:
    engine = cuda_engine()
    trace = engine.generate(PROMPT, GenerationSettings(max_new_tokens=6, batch_size=2)).run_to_end()
    per_token = engine.loaded.info.kv_bytes_per_token
    assert [s.kv_bytes for s in trace.steps] == [2 * per_token * s.context_len for s in trace.steps]


def test_device_auto_picks_cuda_and_bfloat16() -> None:
    from inference.hardware.device import resolve_device
    from inference.hardware.dtype_choice import choose_dtype

    device = resolve_device("auto")
    assert device.type == "cuda" and choose_dtype("auto", device)[0] == torch.bfloat16
