"""The fast path: same numbers as PyTorch's Linear, same greedy tokens, same per-layer view, and
the model left as plain PyTorch outside a run."""
from __future__ import annotations

import contextlib
from typing import Iterator

import pytest
import torch
from torch import nn

from inference.engine import Engine
from inference.hardware.roofs import bf16_native
from inference.kernels.build import build_error, kernel_module
from inference.kernels.fast_path import fast_forwards
from inference.model.kv_cache import cache_of, forward
from inference.model.loading import LoadedModel, model_info
from inference.prompts import chat_prompt_ids
from inference.settings import GenerationSettings
from inference.timing import LayerTimer
from tests.conftest import TEST_DEVICE, DigitTokenizer, tiny_llama


@pytest.fixture(scope="module")
def kernel():
    module = kernel_module()
    assert module is not None, f"the decode kernel did not build: {build_error()}"
    return module


@contextlib.contextmanager
def fast(model: nn.Module, kernel, on: bool = True) -> Iterator[None]:
    """The fast path on a bare model, as a run switches it on (or plain PyTorch with on=False)."""
    if not on:
        yield
        return
    with LayerTimer(model, model.config.num_hidden_layers, torch.device("cpu")) as timer, \
            fast_forwards(model, kernel, timer, bf16_native()):
        yield


@pytest.mark.parametrize("rows, k, n", [(1, 576, 1536), (3, 100, 70), (1, 1536, 576), (8, 64, 49152),
                                        (16, 576, 1536), (11, 100, 70)])
def test_kernel_matches_linear_in_float32(kernel, rows: int, k: int, n: int) -> None:
    torch.manual_seed(rows * k)
    x, w = torch.randn(rows, k), torch.randn(n, k)
    torch.testing.assert_close(kernel.gemv(x, w), torch.nn.functional.linear(x, w), rtol=1e-4, atol=1e-4)


def test_kernel_matches_linear_in_bfloat16_to_bf16_rounding(kernel) -> None:
    torch.manual_seed(1)
    x, w = torch.randn(2, 576).bfloat16(), torch.randn(1536, 576).bfloat16()
    reference = torch.nn.functional.linear(x.float(), w.float())            # exact products, float32 sums
    torch.testing.assert_close(kernel.gemv(x, w).float(), reference, rtol=1e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_row_gets_the_same_bits_whoever_shares_the_product(kernel, dtype: torch.dtype) -> None:
    """A shared decode step gives each sequence exactly what its step alone gives it."""
    torch.manual_seed(2)
    # K = 1000: whole chunks of 32 and a tail. Rounded to bfloat16, a different order of additions
    # changes an output once in ~10,000 (it did 7 times here before every row summed alike).
    x, w = torch.randn(32, 1000).to(dtype), torch.randn(8192, 1000).to(dtype)
    alone = torch.cat([kernel.gemv(x[m:m + 1], w) for m in range(32)])
    for rows in (2, 5, 8, 9, 32):
        assert torch.equal(kernel.gemv(x[:rows], w), alone[:rows]), f"{rows} rows"


def test_fast_and_eager_write_the_same_greedy_tokens_on_the_real_model(real_engine: Engine) -> None:
    assert real_engine.fast_kernels
    for prompt in ("What is the capital of France?", "Explain in three sentences why the sky is blue."):
        ids = chat_prompt_ids(real_engine.loaded.tokenizer, prompt)
        runs = {k: real_engine.generate(ids, GenerationSettings(max_new_tokens=40, kernel=k)).run_to_end()
                for k in ("eager", "fast")}
        assert [s.token_id for s in runs["fast"].steps] == [s.token_id for s in runs["eager"].steps], prompt
        assert runs["fast"].settings.kernel == "fast" and runs["eager"].settings.kernel == "eager"
        assert all(len(s.layer_ms) == 30 and sum(s.layer_ms) <= s.ms for s in runs["fast"].steps)
        for step in runs["fast"].decode_steps:        # the fused layer's own attention/MLP stamps
            assert all(0 < attn and 0 < mlp and attn + mlp <= layer
                       for attn, mlp, layer in zip(step.attn_ms, step.mlp_ms, step.layer_ms)), step.index


def test_outside_a_run_the_model_is_plain_pytorch(real_engine: Engine) -> None:
    model = real_engine.loaded.model
    keys = list(model.state_dict())
    ids = chat_prompt_ids(real_engine.loaded.tokenizer, "Hi")
    real_engine.generate(ids, GenerationSettings(max_new_tokens=3)).run_to_end()
    assert list(model.state_dict()) == keys and all(type(m) is nn.Linear for m in model.modules()
                                                     if isinstance(m, nn.Linear))
    patched = [name for name, m in model.named_modules() if "forward" in vars(m)]
    assert not patched, f"forwards left replaced after the run: {patched[:3]}"


def test_an_error_inside_a_run_still_puts_the_forwards_back(kernel) -> None:
    model = tiny_llama()
    with pytest.raises(RuntimeError, match="boom"), fast(model, kernel):
        assert "forward" in vars(model.model) and "forward" in vars(model.lm_head)
        raise RuntimeError("boom")
    assert not [m for m in model.modules() if "forward" in vars(m)]


def test_a_run_without_the_kernel_says_so_in_its_trace() -> None:
    model = tiny_llama()
    loaded = LoadedModel(model, DigitTokenizer(), model_info(model, "tiny"), torch.device("cpu"))
    engine = Engine(loaded, TEST_DEVICE, fast_kernels=False)
    trace = engine.generate([1, 5, 9], GenerationSettings(max_new_tokens=3, kernel="fast")).run_to_end()
    assert trace.settings.kernel == "eager"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 3, 12])
def test_fused_decode_steps_match_the_eager_model_and_write_the_cache_in_place(kernel, monkeypatch, dtype, batch) -> None:
    import inference.kernels.fast_path as fast_path

    model = tiny_llama().to(dtype)
    slots = []
    real_slot = fast_path.next_slot
    monkeypatch.setattr(fast_path, "next_slot", lambda cache, i: slots.append(real_slot(cache, i)) or slots[-1])
    torch.manual_seed(batch)
    prompt = torch.randint(3, 100, (batch, 150))     # rows differ: each attends to its own (long) cache
    results = {}
    with torch.inference_mode():
        for fused in (False, True):
            with fast(model, kernel, on=fused):
                out = forward(model, prompt, use_cache=True)           # prefill: too many rows for the kernel
                cache, logits, addresses = cache_of(out), [], []
                for _ in range(3):
                    token = out.logits[:, -1:].argmax(-1)
                    out = forward(model, token, cache, use_cache=True)
                    logits.append(out.logits[:, -1].float())
                    addresses.append(cache.layers[0].keys.data_ptr())
            results[fused] = (torch.stack(logits), [layer.keys.float() for layer in cache.layers], addresses)
    layers = model.config.num_hidden_layers
    assert len(slots) == 3 * layers and all(slot is not None for slot in slots), "the fused attention did not run"
    tolerance = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(results[True][0], results[False][0], **tolerance)
    for fused_keys, eager_keys in zip(results[True][1], results[False][1]):
        assert fused_keys.shape == eager_keys.shape == (batch, model.config.num_key_value_heads, 153, 16)
        torch.testing.assert_close(fused_keys, eager_keys, **tolerance)
    first, *later = results[True][2]
    assert all(address == first for address in later), "each step should write into the same buffer"


def test_in_bfloat16_the_fused_step_is_as_close_to_float32_as_eager_is(kernel) -> None:
    """bf16 runs cannot promise eager's exact tokens (another summation order can flip a rounding),
    but the fused step must not be less accurate than eager bf16 against the float32 model."""
    reference = tiny_llama()
    model = tiny_llama().to(torch.bfloat16)
    torch.manual_seed(7)
    sequence = torch.randint(3, 100, (1, 80))
    with torch.inference_mode():
        exact = reference(input_ids=sequence).logits[0, 60:].float()
        errors = {}
        for fused in (False, True):
            with fast(model, kernel, on=fused):
                out = forward(model, sequence[:, :60], use_cache=True)
                cache, logits = cache_of(out), []
                for t in range(60, 80):
                    logits.append(forward(model, sequence[:, t:t + 1], cache, use_cache=True).logits[0, -1].float())
            errors[fused] = (torch.stack(logits) - exact).abs().mean().item()      # positions 60..79
    assert errors[True] <= 1.5 * errors[False], errors
