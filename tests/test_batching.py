"""Continuous batching: runs share decode steps and each still writes exactly what it writes alone."""
from __future__ import annotations

import threading

import pytest
import torch

from inference.engine import Engine
from inference.serving.background import CancelFlag, EngineThread
from inference.serving.batching import BatchServer
from inference.settings import GenerationSettings
from tests.conftest import engine_for, tiny_llama

PROMPTS = [[1, 5, 9, 14, 3], [7, 7, 2 + 20, 40, 41, 42, 43, 44, 45, 46, 47], [99, 98]]


# Every test runs on both shared steps: the fused kernel's, and plain PyTorch's (a machine where
# the kernel did not build: no compiler, not x86).
STEPS = ["fused", "plain"]


def engine_with(model: torch.nn.Module, name: str, step: str) -> Engine:
    engine = engine_for(model, name, fast_kernels=step == "fused")
    if step == "fused" and engine.kernel is None:
        pytest.skip("the fused kernel could not be built here")
    assert BatchServer.shared_step(engine) == step
    return engine


@pytest.fixture(scope="module", params=STEPS)
def engine(request: pytest.FixtureRequest) -> Engine:
    return engine_with(tiny_llama(), "tiny-llama", request.param)


def alone(engine: Engine, prompt: list[int], settings: GenerationSettings) -> list[int]:
    return [s.token_id for s in engine.generate(prompt, settings, stop_at_eos=False).run_to_end().steps]


def finish_all(runs: list) -> None:
    for run in runs:
        run.wait()


def test_runs_of_different_lengths_share_steps_and_write_what_they_write_alone(engine: Engine) -> None:
    server = BatchServer(engine, EngineThread())
    settings = GenerationSettings(max_new_tokens=12)
    runs = [server.submit(p, settings, CancelFlag()) for p in PROMPTS]
    finish_all(runs)
    for prompt, run in zip(PROMPTS, runs):
        assert run.error is None, run.error
        assert [s.token_id for s in run.steps] == alone(engine, prompt, settings), f"prompt of {len(prompt)} tokens"
    assert any(s.batch_rows == 3 for s in runs[0].steps), "the three runs never shared a step"
    trace = runs[1].trace()
    assert trace.summary.stop_reason == "length" and len(trace.steps) == 12


@pytest.mark.parametrize("step", STEPS)
def test_in_bfloat16_too_a_shared_run_writes_exactly_what_it_writes_alone(step: str) -> None:
    """Each sequence's products are summed in the same order whoever shares the step, and each
    prefill runs alone: sharing changes when a run's tokens come, never which."""
    engine = engine_with(tiny_llama().to(torch.bfloat16), "tiny-llama-bf16", step)
    server = BatchServer(engine, EngineThread())
    settings = [GenerationSettings(max_new_tokens=24), GenerationSettings(max_new_tokens=24, batch_size=3),
                GenerationSettings(max_new_tokens=24, temperature=0.9, seed=5)]
    runs = [server.submit(p, s, CancelFlag()) for p, s in zip(PROMPTS, settings)]
    finish_all(runs)
    assert max(s.batch_rows for run in runs for s in run.steps) == 5
    for prompt, setting, run in zip(PROMPTS, settings, runs):
        mine = [s.token_id for s in run.steps]
        assert mine == alone(engine, prompt, setting)[:len(mine)], f"prompt of {len(prompt)} tokens"
        assert len(mine) == 24 or run.stop_reason == "eos"       # alone() writes on past the end of text


def test_a_run_that_joins_later_holds_the_others_up_by_its_prefill_and_then_shares(engine: Engine) -> None:
    server = BatchServer(engine, EngineThread())
    first = server.submit(PROMPTS[0], GenerationSettings(max_new_tokens=200), CancelFlag())
    first.wait_for_steps(3, 5.0)
    second = server.submit(PROMPTS[1], GenerationSettings(max_new_tokens=5), CancelFlag())
    finish_all([first, second])
    held_up = [s for s in first.steps if s.waited_ms > 0]
    assert len(held_up) == 1 and held_up[0].ms >= held_up[0].waited_ms, "the newcomer's prefill did not show"
    assert held_up[0].foreign_prefill_tokens == len(PROMPTS[1])
    assert all(s.batch_rows == 2 for s in second.steps[1:]), [s.batch_rows for s in second.steps]
    assert first.steps[1].batch_rows == 1, "alone, a run's step holds its own sequence only"
    assert [s.token_id for s in second.steps] == alone(engine, PROMPTS[1], GenerationSettings(max_new_tokens=5))


def test_stopping_one_run_leaves_the_others_running(engine: Engine) -> None:
    server = BatchServer(engine, EngineThread())
    settings = GenerationSettings(max_new_tokens=60)
    stopped = server.submit(PROMPTS[0], GenerationSettings(max_new_tokens=250), CancelFlag())
    kept = server.submit(PROMPTS[1], settings, CancelFlag())
    stopped.wait_for_steps(4, 5.0)
    threading.Thread(target=stopped.stop).start()
    finish_all([stopped, kept])
    assert stopped.stop_reason == "cancelled" and len(stopped.steps) < 250
    assert kept.stop_reason == "length" and [s.token_id for s in kept.steps] == alone(engine, PROMPTS[1], settings)
    assert not engine.lock.locked()


def test_runs_beyond_the_row_limit_wait_for_room(engine: Engine) -> None:
    server = BatchServer(engine, EngineThread())
    server.max_rows = 3
    settings = GenerationSettings(max_new_tokens=6, batch_size=2)
    runs = [server.submit(p, settings, CancelFlag()) for p in PROMPTS[:2]]
    finish_all(runs)
    assert all(s.batch_rows == 2 for run in runs for s in run.steps), "4 rows shared a step with room for 3"
    assert all(len(run.steps) == 6 for run in runs)


def test_runs_that_cannot_share_a_step_are_told_apart(engine: Engine) -> None:
    server = BatchServer(engine, EngineThread())
    assert server.can_batch(GenerationSettings())
    assert not server.can_batch(GenerationSettings(kv_cache=False))
    assert not server.can_batch(GenerationSettings(kernel="eager"))
    assert not server.can_batch(GenerationSettings(batch_size=64))
    assert not server.can_batch(GenerationSettings(attention_map=True))


def test_without_the_kernel_a_shared_run_says_it_ran_plain_pytorch_and_shows_its_layers() -> None:
    engine = engine_with(tiny_llama(), "tiny-llama", "plain")
    server = BatchServer(engine, EngineThread())
    runs = [server.submit(p, GenerationSettings(max_new_tokens=6), CancelFlag()) for p in PROMPTS]
    finish_all(runs)
    trace = runs[0].trace()
    assert trace.serving == "batched" and trace.settings.kernel == "eager"
    shared = [s for s in trace.steps if s.batch_rows == 3]
    assert shared and all(len(s.layer_ms) == 3 and all(ms > 0 for ms in (*s.layer_ms, *s.attn_ms, *s.mlp_ms))
                          for s in shared)
    assert all(s.kv_bytes == (s.context_len) * engine.loaded.info.kv_bytes_per_token for s in trace.steps)


def test_a_model_neither_shared_step_takes_runs_alone() -> None:
    from tests.conftest import tiny_gpt2

    engine = engine_for(tiny_gpt2(), "tiny-gpt2")
    server = BatchServer(engine, EngineThread())
    assert BatchServer.shared_step(engine) is None and not server.can_batch(GenerationSettings())


def test_a_fault_in_a_shared_step_ends_every_run_with_it_and_the_server_recovers(engine: Engine) -> None:
    server = BatchServer(engine, EngineThread())
    calls = {"n": 0}

    def fail_once(*_: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise MemoryError("injected")

    handle = engine.loaded.model.lm_head.register_forward_pre_hook(fail_once)
    try:
        runs = [server.submit(p, GenerationSettings(max_new_tokens=8), CancelFlag()) for p in PROMPTS[:2]]
        finish_all(runs)
    finally:
        handle.remove()
    assert all(isinstance(run.error, MemoryError) for run in runs)
    again = server.submit(PROMPTS[0], GenerationSettings(max_new_tokens=8), CancelFlag())
    finish_all([again])
    assert again.error is None and [s.token_id for s in again.steps] == alone(engine, PROMPTS[0],
                                                                             GenerationSettings(max_new_tokens=8))


@pytest.mark.parametrize("step", STEPS)
def test_on_the_real_model_a_shared_batch_answers_each_question_as_it_would_alone(real_engine: Engine,
                                                                                   step: str) -> None:
    from inference.prompts import chat_prompt_ids

    if step == "plain":       # the same weights, as where the kernel did not build (one lock: one model)
        shared_lock, real_engine = real_engine.lock, Engine(real_engine.loaded, real_engine.device_info,
                                                            fast_kernels=False)
        real_engine.lock = shared_lock
    elif real_engine.kernel is None:
        pytest.skip("the fused kernel could not be built here")
    tokenizer = real_engine.loaded.tokenizer
    questions = ["What is the capital of France?", "Name three colours of the rainbow, briefly please."]
    prompts = [chat_prompt_ids(tokenizer, q) for q in questions]
    server = BatchServer(real_engine, EngineThread())
    settings = GenerationSettings(max_new_tokens=16)
    runs = [server.submit(p, settings, CancelFlag()) for p in prompts]
    finish_all(runs)
    for prompt, run in zip(prompts, runs):
        steps = real_engine.generate(prompt, settings).run_to_end().steps
        assert [s.token_id for s in run.steps] == [s.token_id for s in steps], tokenizer.decode(prompt)
    assert "Paris" in runs[0].trace().text and any(s.batch_rows == 2 for s in runs[1].steps)


def test_runs_beyond_the_kv_budget_wait_their_turn_and_one_that_could_never_fit_is_refused(engine: Engine) -> None:
    server = BatchServer(engine, EngineThread())
    long, short = GenerationSettings(max_new_tokens=150), GenerationSettings(max_new_tokens=40)
    server.kv_budget = (len(PROMPTS[0]) + 150) * engine.loaded.info.kv_bytes_per_token     # room for one long run
    first = server.submit(PROMPTS[0], long, CancelFlag())      # 150 tokens: it is still running below
    second = server.submit(PROMPTS[0], short, CancelFlag())
    first.wait_for_steps(2, 5.0)
    assert second.queue_position == 1 and not second.steps, "the second run joined beyond the budget"
    finish_all([first, second])
    assert all(s.batch_rows == 1 for run in (first, second) for s in run.steps)
    assert second.queue_position == 0 and len(second.steps) == 40
    with pytest.raises(ValueError, match="KV cache could grow to .* more than this server's budget"):
        server.submit(PROMPTS[1], long, CancelFlag())


def test_a_long_prompt_prefilled_in_chunks_lets_the_batch_decode_between_them(engine: Engine) -> None:
    server = BatchServer(engine, EngineThread(), prefill_chunk=8)
    long_prompt = [3 + (i * 7) % 120 for i in range(100)]
    streaming = server.submit(PROMPTS[0], GenerationSettings(max_new_tokens=150), CancelFlag())
    streaming.wait_for_steps(2, 5.0)
    newcomer = server.submit(long_prompt, GenerationSettings(max_new_tokens=6), CancelFlag())
    finish_all([streaming, newcomer])
    interrupted = [s for s in streaming.steps if s.foreign_prefill_tokens]
    assert len(interrupted) == 13 and max(s.foreign_prefill_tokens for s in interrupted) == 8, \
        [s.foreign_prefill_tokens for s in interrupted]        # 100 tokens in 12 pieces of 8 and one of 4
    assert sum(s.foreign_prefill_tokens for s in interrupted) == 100
    assert [s.token_id for s in newcomer.steps] == alone(engine, long_prompt, GenerationSettings(max_new_tokens=6))
    assert [s.token_id for s in streaming.steps] == alone(engine, PROMPTS[0], GenerationSettings(max_new_tokens=150))
    prefill = newcomer.steps[0]
    assert prefill.ms >= sum(s.ms - s.waited_ms for s in interrupted[1:-1]), "its TTFT hides the steps between pieces"
