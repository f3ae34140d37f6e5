"""Weights as llama.cpp blocks (inference/kernels/quantize.py): the blocks hold what llama.cpp's reference
rounding gives, the bundled model's Q4_1 blocks come back exactly, the decode kernel reads them
right, and a run in int8 or q4_1 computes with the same weights in both phases."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.cost_model import step_cost
from inference.engine import Engine
from inference.kernels.quantize import PROJECTIONS, Q4_1, Q8_0, blocks_of, dequantize, quantize, quantize_model
from inference.model.factory import with_blocks
from inference.model.kv_cache import cache_of, forward
from inference.model.loading import LoadedModel, model_info
from inference.settings import GenerationSettings
from tests.conftest import TEST_DEVICE, DigitTokenizer, tiny_llama
from tests.test_fast_path import fast, kernel  # noqa: F401 (the fixture)


def test_q8_0_blocks_follow_llama_cpps_rounding() -> None:
    row = np.zeros((1, 64), np.float32)
    row[0, :32] = np.linspace(-1.27, 1.27, 32, dtype=np.float32)      # amax 1.27: d = 0.01
    row[0, 5] = 0.005                                                 # exactly half a step: away from zero
    blocks = quantize(row, Q8_0)
    assert blocks.shape == (1, 2 * 34)
    d = blocks[0, :2].view(np.float16)[0]
    q = blocks[0, 2:34].view(np.int8)
    assert np.isclose(d, np.float16(0.01)) and q[0] == -127 and q[-1] == 127 and q[5] == 1
    assert not blocks[0, 34:].any(), "a block of zeros is d = 0 and q = 0"
    assert not dequantize(blocks, Q8_0)[0, 32:].any()


@pytest.mark.parametrize("fmt, worst", [(Q8_0, 0.02), (Q4_1, 0.3)])
def test_blocks_are_stable_and_close(fmt: int, worst: float) -> None:
    weights = np.random.default_rng(0).standard_normal((50, 96)).astype(np.float32)
    values = dequantize(quantize(weights, fmt), fmt)
    assert np.abs(values - weights).max() < worst
    np.testing.assert_array_equal(dequantize(quantize(values, fmt), fmt), values)   # blocks of block values: the same


def test_the_bundled_models_q4_1_blocks_come_back_exactly(real_engine: Engine) -> None:
    """Its float32 weights are the GGUF's Q4_1 blocks (layers) and Q8_0 (the tied LM head) expanded:
    made into blocks again, every value is what it was."""
    model = real_engine.loaded.model
    for layer in model.model.layers[:6]:
        for path in PROJECTIONS:
            weight = layer.get_submodule(path).weight.detach().numpy()
            np.testing.assert_array_equal(dequantize(quantize(weight, Q4_1), Q4_1), weight)
    head = model.lm_head.weight.detach().numpy()
    np.testing.assert_array_equal(dequantize(quantize(head, Q8_0), Q8_0), head)


@pytest.mark.parametrize("fmt", [Q8_0, Q4_1])
@pytest.mark.parametrize("rows", [1, 3, 5, 9])
def test_the_kernel_reads_blocks_as_their_values(kernel, fmt: int, rows: int) -> None:  # noqa: F811
    weights = np.random.default_rng(rows).standard_normal((200, 576)).astype(np.float32)
    blocks = quantize(weights, fmt)
    x = torch.randn(rows, 576)
    expected = x @ torch.from_numpy(dequantize(blocks, fmt)).T
    torch.testing.assert_close(kernel.gemv_blocks(x, torch.from_numpy(blocks), fmt), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["int8", "q4_1"])
def test_fused_decode_on_blocks_matches_eager_on_their_values(kernel, name: str) -> None:  # noqa: F811
    """Eager PyTorch runs the expanded weights; the fused step reads the blocks: the same numbers."""
    model = tiny_llama()
    quantize_model(model, name)
    assert all(blocks_of(model.model.layers[0].get_submodule(p)) is not None for p in PROJECTIONS)
    torch.manual_seed(1)
    prompt = torch.randint(3, 100, (2, 40))
    results = {}
    with torch.inference_mode():
        for fused in (False, True):
            with fast(model, kernel, on=fused):
                out = forward(model, prompt, use_cache=True)
                cache, logits = cache_of(out), []
                for _ in range(4):
                    out = forward(model, out.logits[:, -1:].argmax(-1), cache, use_cache=True)
                    logits.append(out.logits[:, -1])
            results[fused] = torch.stack(logits)
    torch.testing.assert_close(results[True], results[False], rtol=1e-4, atol=1e-4)


def test_a_block_run_says_what_decode_reads(kernel) -> None:  # noqa: F811
    model = tiny_llama()
    loaded = LoadedModel(model=model, tokenizer=DigitTokenizer(), info=model_info(model, "tiny"), device=torch.device("cpu"))
    float_bytes = loaded.info.matmul_params * 4
    loaded, note = with_blocks(loaded, "q4_1", lambda _: None)
    info = loaded.info
    assert info.precision == "q4_1" and info.dtype == "float32" and "Q4_1 blocks" in note
    # Layers at 20 bytes per 32 weights, the LM head at 34.
    head = info.vocab * info.hidden
    assert info.matmul_bytes == (info.matmul_params - head) * 20 // 32 + head * 34 // 32 < float_bytes / 4
    engine = Engine(loaded, TEST_DEVICE)
    trace = engine.generate(list(range(3, 43)), GenerationSettings(max_new_tokens=3)).run_to_end()
    prefill, decode = trace.steps[0], trace.steps[1]
    assert prefill.bytes >= step_cost(info, 1, 40, 0).weight_bytes == float_bytes, "40 rows: the expanded weights"
    assert decode.bytes - step_cost(info, 1, 1, 40, blocks=True).weight_bytes < float_bytes / 8, "decode reads blocks"
    short = engine.generate([5, 6, 7], GenerationSettings(max_new_tokens=1)).run_to_end()
    assert short.steps[0].bytes < float_bytes, "3 rows go through the kernel: blocks"
    assert trace.model.precision == "q4_1"


def test_the_bytes_per_weight_experiment_puts_each_format_on_the_roofline() -> None:
    from inference.lessons.experiments import run_dtype_comparison
    from viz.experiments import dtype_figure

    result = run_dtype_comparison("SmolLM2-135M-Instruct", "cpu", ["float32", "q4_1"], prompt_tokens=8, new_tokens=4)
    assert [t.model.precision for t in result.traces] == ["float32", "q4_1"]
    assert "q4_1: 5.6x fewer weight bytes" in result.verdict()
    points = {d.text[0]: d.x[0] for d in dtype_figure(result).data if getattr(d, "mode", "") == "markers+text"}
    assert points["q4_1"] > 4 * points["float32"], "fewer bytes per weight: more FLOPs per byte"
