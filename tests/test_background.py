"""Runs off the caller's thread: polled at the caller's pace, stopped, and cut at the time limit."""
from __future__ import annotations

import dataclasses

from inference.serving.background import BackgroundRun, EngineThread, ReplayRun
from inference.settings import GenerationSettings
from inference.trace import Trace
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


def test_a_replay_is_followed_as_a_run_is_and_brings_every_step_in_order(example_trace: Trace) -> None:
    recorded = example_trace
    quick = dataclasses.replace(recorded, steps=tuple(dataclasses.replace(s, ms=0.5) for s in recorded.steps))
    replay = ReplayRun(quick, speed=1.0)
    counts = list(replay.follow(0.01))
    assert counts == sorted(counts) and counts[-1] == len(quick.steps)
    whole = replay.trace()
    assert whole.steps == quick.steps and whole.summary.stop_reason == quick.summary.stop_reason


def test_stopping_a_replay_ends_it_before_its_steps_are_due(example_trace: Trace) -> None:
    recorded = example_trace
    slow = dataclasses.replace(recorded, steps=tuple(dataclasses.replace(s, ms=1e7) for s in recorded.steps))
    replay = ReplayRun(slow, speed=1.0)
    replay.stop()
    assert replay.done and replay.steps == [] and replay.trace().steps == ()
