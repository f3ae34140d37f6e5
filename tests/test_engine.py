"""The engine on tiny models: same tokens as transformers, records in order, honest KV bytes."""
from __future__ import annotations

import threading

import pytest
import torch

from inference.engine import Engine, reference_generate
from inference.rows import TextStream, eos_ids
from inference.settings import GenerationSettings
from inference.trace import dtype_itemsize, read_trace

PROMPT = [1, 17, 42, 99, 5, 23, 64, 7]


def tokens_of(engine: Engine, settings: GenerationSettings, prompt: list[int] = PROMPT) -> list[int]:
    return [s.token_id for s in engine.generate(prompt, settings).run_to_end().steps]


def test_greedy_tokens_equal_transformers_generate(tiny_engine: Engine) -> None:
    model = tiny_engine.loaded.model
    expected = model.generate(torch.tensor([PROMPT]), do_sample=False, max_new_tokens=20, pad_token_id=0)
    ours = tokens_of(tiny_engine, GenerationSettings(max_new_tokens=20))
    assert ours == expected[0, len(PROMPT):].tolist(), "engine's greedy tokens differ from model.generate"


def test_cached_and_recomputed_decoding_agree(tiny_engine: Engine) -> None:
    model = tiny_engine.loaded.model
    reference = reference_generate(model, PROMPT, 20, eos_ids(model, tiny_engine.loaded.tokenizer))
    cached = tokens_of(tiny_engine, GenerationSettings(max_new_tokens=20))
    recomputed = tokens_of(tiny_engine, GenerationSettings(max_new_tokens=20, kv_cache=False))
    assert cached == reference, "KV-cached decoding drifted from the obvious no-cache loop"
    assert recomputed == reference, "the engine's no-cache mode drifted from the obvious loop"


def test_records_come_in_order_and_context_grows_by_one(tiny_engine: Engine) -> None:
    steps = tiny_engine.generate(PROMPT, GenerationSettings(max_new_tokens=12)).run_to_end().steps
    assert [s.phase for s in steps] == ["prefill"] + ["decode"] * (len(steps) - 1)
    assert [s.index for s in steps] == list(range(len(steps)))
    assert [s.context_len for s in steps] == [len(PROMPT) + i for i in range(len(steps))]
    assert steps[0].tokens_in == len(PROMPT) and all(s.tokens_in == 1 for s in steps[1:])


def test_kv_bytes_read_from_the_cache_equal_the_formula(tiny_engine: Engine) -> None:
    info = tiny_engine.loaded.info
    for batch in (1, 3):
        trace = tiny_engine.generate(PROMPT, GenerationSettings(max_new_tokens=8, batch_size=batch)).run_to_end()
        for step in trace.steps:
            # Written out here, independently of ModelInfo.kv_bytes_per_token: K and V, every layer, row,
            # head and position.
            expected = 2 * info.layers * batch * info.kv_heads * step.context_len * info.head_dim * dtype_itemsize(info.dtype)
            assert step.kv_bytes == expected, f"step {step.index}: cache holds {step.kv_bytes}, formula {expected}"
    assert trace.steps[-1].kv_bytes == 3 * info.kv_bytes_per_token * trace.steps[-1].context_len


def test_no_cache_mode_holds_no_cache_and_feeds_the_whole_sequence(tiny_engine: Engine) -> None:
    steps = tiny_engine.generate(PROMPT, GenerationSettings(max_new_tokens=6, kv_cache=False)).run_to_end().steps
    assert all(s.kv_bytes == 0 for s in steps)
    assert [s.tokens_in for s in steps[1:]] == [s.context_len for s in steps[1:]]


def test_batch_rows_are_identical_under_greedy(tiny_engine: Engine) -> None:
    single = tokens_of(tiny_engine, GenerationSettings(max_new_tokens=10))
    run = tiny_engine.generate(PROMPT, GenerationSettings(max_new_tokens=10, batch_size=4))
    run.run_to_end()
    columns = list(zip(*run.batch_tokens))
    assert len(columns) == 4 and all(list(row) == single for row in columns), "batch rows diverged"


def test_same_seed_same_samples_other_seed_other_samples(tiny_engine: Engine) -> None:
    sampled = lambda seed: tokens_of(tiny_engine, GenerationSettings(max_new_tokens=24, temperature=1.5,
                                                                     top_p=0.95, seed=seed))
    assert sampled(7) == sampled(7), "the same seed gave different tokens"
    assert sampled(7) != sampled(8), "different seeds gave the same 24 sampled tokens"


def test_layer_times_cover_the_step(tiny_engine: Engine) -> None:
    trace = tiny_engine.generate(PROMPT, GenerationSettings(max_new_tokens=5)).run_to_end()
    for step in trace.steps:
        assert len(step.layer_ms) == len(step.attn_ms) == len(step.mlp_ms) == trace.model.layers
        assert all(t > 0 for t in step.layer_ms + step.attn_ms + step.mlp_ms)
        assert all(a + m <= l for a, m, l in zip(step.attn_ms, step.mlp_ms, step.layer_ms))
        assert sum(step.layer_ms) <= step.ms
        assert step.other_ms == pytest.approx(step.ms - sum(step.layer_ms))


def test_hooks_are_removed_after_a_run_and_after_a_failure(tiny_engine: Engine) -> None:
    model = tiny_engine.loaded.model
    count = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    tiny_engine.generate(PROMPT, GenerationSettings(max_new_tokens=3)).run_to_end()
    assert count() == 0
    boom = model.lm_head.register_forward_hook(lambda *_: (_ for _ in ()).throw(RuntimeError("injected")))
    try:
        with pytest.raises(RuntimeError, match="injected"):
            tiny_engine.generate(PROMPT, GenerationSettings(max_new_tokens=3)).run_to_end()
    finally:
        boom.remove()
    assert count() == 0, "a failed run left timing hooks on the model"
    assert tokens_of(tiny_engine, GenerationSettings(max_new_tokens=3)) == tokens_of(
        tiny_engine, GenerationSettings(max_new_tokens=3)), "the run after a failure is not correct"


def test_cancel_stops_the_run(tiny_engine: Engine) -> None:
    cancel = threading.Event()
    run = tiny_engine.generate(PROMPT, GenerationSettings(max_new_tokens=50), cancel=cancel)
    for step in run:
        if step.index == 2:
            cancel.set()
    assert len(run.steps) == 3 and run.trace().summary.stop_reason == "cancelled"


def test_streamed_text_equals_decoding_everything(tiny_engine: Engine) -> None:
    trace = tiny_engine.generate(PROMPT, GenerationSettings(max_new_tokens=15)).run_to_end()
    tokenizer = tiny_engine.loaded.tokenizer
    assert trace.text == tokenizer.decode([s.token_id for s in trace.steps], skip_special_tokens=True)


@pytest.mark.parametrize("text", ["Café déjà vu 🙂🚀 naïve", "東京の天気は晴れです。", "👩‍👩‍👧 e\u0301 ñ"])
def test_streaming_real_tokens_gives_the_one_shot_decode(real_engine: Engine, text: str) -> None:
    """With the real tokenizer, characters whose bytes are split across tokens (emoji, accents,
    CJK) must come out whole: the concatenated stream equals decoding all the ids at once."""
    tokenizer = real_engine.loaded.tokenizer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    partial = [tokenizer.decode(ids[:i + 1]) for i in range(len(ids))]
    assert any(p.endswith("\ufffd") for p in partial), "no character is split across tokens: the test proves nothing"
    stream = TextStream(tokenizer)
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in piece for piece in pieces)


def test_text_stream_holds_back_half_a_character() -> None:
    class Bytes:
        def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
            return bytes(ids).decode("utf-8", errors="replace")

    stream = TextStream(Bytes())
    pieces = [stream.push(b) for b in "é!".encode()]
    assert pieces == ["", "é", "!"]


def test_trace_json_round_trip_is_exact(tiny_engine: Engine) -> None:
    trace = tiny_engine.generate(PROMPT, GenerationSettings(max_new_tokens=6, batch_size=2)).run_to_end()
    again = read_trace(trace.to_json())
    assert again == trace
    assert again.to_json() == trace.to_json()


def test_prompt_longer_than_the_context_is_refused(tiny_engine: Engine) -> None:
    limit = tiny_engine.loaded.info.max_context
    with pytest.raises(ValueError, match=f"at most {limit}"):
        tiny_engine.generate([5] * limit, GenerationSettings(max_new_tokens=1))


def test_cancel_during_prefill_stops_inside_the_forward_pass(tiny_engine: Engine) -> None:
    cancel = threading.Event()
    cancel.set()                      # as if Stop came while the prompt was still going through
    run = tiny_engine.generate(PROMPT, GenerationSettings(max_new_tokens=5), cancel=cancel)
    assert run.run_to_end().steps == () and run.stop_reason == "cancelled"
    model = tiny_engine.loaded.model
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == 0
