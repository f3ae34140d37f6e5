"""The front door: a run is fitted and routed once, and its trace says where it ran and why."""
from __future__ import annotations

import dataclasses
import html

import pytest

from inference.engine import Engine
from inference.serving.background import CancelFlag
from inference.serving.batching import batch_server
from inference.serving.door import prepare, start
from inference.settings import GenerationSettings
from tests.conftest import engine_for, tiny_gpt2, tiny_llama
from viz.summary import done_status_html


@pytest.fixture(scope="module")
def engine() -> Engine:
    return engine_for(tiny_llama(), "tiny-llama", fast_kernels=False)     # the plain shared step: any machine


@pytest.mark.parametrize("settings, kwargs, words", [
    (GenerationSettings(kv_cache=False), {}, "without the KV cache"),
    (GenerationSettings(kernel="eager"), {}, "eager kernel"),
    (GenerationSettings(attention_map=True), {}, "recording attention"),
    (GenerationSettings(batch_size=40), {}, "40 rows are more than the 32"),
    (GenerationSettings(), {"alone": "this server runs one run at a time (solo mode)"}, "solo mode"),
    (GenerationSettings(), {"turn": True}, "conversation's turn"),
])
def test_a_run_that_cannot_share_the_batch_runs_alone_and_its_trace_says_why(engine: Engine, settings, kwargs,
                                                                              words: str) -> None:
    plan = prepare(engine, [1, 5, 9], dataclasses.replace(settings, max_new_tokens=3), **kwargs)
    assert plan.route == "solo" and words in plan.why
    run = start(engine, plan, CancelFlag())
    run.wait_for_steps(3, 60.0)
    run.stop()                    # returns once the run has released the engine
    trace = run.trace()
    assert trace.serving == "solo" and trace.serving_why == plan.why
    assert html.escape(words) in done_status_html(trace)


def test_a_run_that_can_share_goes_into_the_batch_and_its_trace_says_so(engine: Engine) -> None:
    plan = prepare(engine, [1, 5, 9], GenerationSettings(max_new_tokens=3))
    assert plan.route == "batched" and "plain PyTorch" in plan.why
    run = start(engine, plan, CancelFlag())
    run.wait_for_steps(3, 60.0)
    run.stop()                    # returns once the run has released the engine
    trace = run.trace()
    assert run.error is None and trace.serving == "batched" and trace.serving_why == plan.why
    assert "ran alone" not in done_status_html(trace)


def test_a_prompt_that_does_not_fit_is_refused_before_anything_runs(engine: Engine) -> None:
    queued = len(batch_server(engine)._recent)
    with pytest.raises(ValueError, match="holds at most 256 tokens"):
        prepare(engine, [1] * 250, GenerationSettings(max_new_tokens=10))
    assert len(batch_server(engine)._recent) == queued


def test_a_model_the_shared_step_does_not_take_runs_alone_and_says_so() -> None:
    plan = prepare(engine_for(tiny_gpt2(), "tiny-gpt2"), [1, 5, 9], GenerationSettings(max_new_tokens=3))
    assert plan.route == "solo" and "not a Llama" in plan.why
