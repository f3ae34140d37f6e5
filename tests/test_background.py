"""Runs off the caller's thread: polled at the caller's pace, stopped, and cut at the time limit."""
from __future__ import annotations

from inference.serving.background import BackgroundRun, EngineThread
from inference.settings import GenerationSettings
from tests.conftest import engine_for, tiny_llama

PROMPT = [1, 5, 9, 14, 3]


def test_polling_sees_every_step_and_the_end() -> None:
    engine = engine_for(tiny_llama(), "tiny")
    background = BackgroundRun(engine.generate(PROMPT, GenerationSettings(max_new_tokens=6), stop_at_eos=False),
                               EngineThread())
    seen = 0
    while not background.done:
        background.wait_for_steps(seen, 1.0)
        seen = len(background.steps)
    assert len(background.trace().steps) == 6 and background.error is None and not background.timed_out


def test_a_run_past_its_time_limit_is_cancelled_and_says_so() -> None:
    engine = engine_for(tiny_llama(), "tiny")
    background = BackgroundRun(engine.generate(PROMPT, GenerationSettings(max_new_tokens=250), stop_at_eos=False),
                               EngineThread(), max_seconds=0.0)
    while not background.done:
        background.wait_for_steps(len(background.steps), 0.001)
    trace = background.trace()
    assert background.timed_out and trace.summary.stop_reason == "cancelled"
    assert len(trace.steps) < 250, "the limit did not stop the run"
    assert not engine.lock.locked()


def test_stop_waits_until_the_engine_is_free() -> None:
    engine = engine_for(tiny_llama(), "tiny")
    background = BackgroundRun(engine.generate(PROMPT, GenerationSettings(max_new_tokens=250), stop_at_eos=False),
                               EngineThread())
    background.wait_for_steps(1, 5.0)
    background.stop()
    assert background.done and not engine.lock.locked() and not background.timed_out


def test_following_a_run_gives_its_steps_at_most_once_a_frame_and_ends_with_it() -> None:
    engine = engine_for(tiny_llama(), "tiny-llama")
    run = BackgroundRun(engine.generate([1, 5, 9], GenerationSettings(max_new_tokens=6), stop_at_eos=False),
                        EngineThread())
    seen = list(run.follow(0.01))
    assert seen == sorted(seen) and all(0 <= n <= 6 for n in seen)
    assert run.done and run.wait(0) and len(run.steps) == 6
