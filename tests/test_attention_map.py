"""The attention-map switch (inference/model/attention_map.py): each step's attention over the sequence,
recorded on the eager path, drawn as steps x positions, and the model left as it was."""
from __future__ import annotations

import json

import pytest

from inference.settings import GenerationSettings
from inference.trace import read_trace
from tests.conftest import engine_for, tiny_gpt2, tiny_llama
from viz import live
from viz.charts import mass_positions


@pytest.fixture(scope="module")
def engine():
    return engine_for(tiny_llama(), "tiny-llama")


def test_each_step_records_where_its_newest_token_looks(engine) -> None:
    prompt = list(range(5, 25))
    trace = engine.generate(prompt, GenerationSettings(max_new_tokens=6, attention_map=True)).run_to_end()
    assert trace.settings.kernel == "eager", "recording attention runs the eager path, and the trace says so"
    for step in trace.steps:
        assert len(step.attention) == step.context_len and abs(sum(step.attention) - 1) < 1e-3
    plain = engine.generate(prompt, GenerationSettings(max_new_tokens=6, kernel="eager")).run_to_end()
    assert [s.token_id for s in plain.steps] == [s.token_id for s in trace.steps]
    assert all(s.attention == () for s in plain.steps), "off: nothing recorded"
    model = engine.loaded.model
    assert model.config._attn_implementation != "eager", "the attention implementation is put back"
    assert not any(layer.self_attn._forward_hooks for layer in model.model.layers), "hooks removed after the run"
    assert read_trace(trace.to_json()) == trace


def test_the_chart_draws_steps_by_positions_and_says_how_few_hold_the_mass(engine) -> None:
    trace = engine.generate(list(range(5, 40)), GenerationSettings(max_new_tokens=4, attention_map=True)).run_to_end()
    figure = json.loads(live.full_message(trace, 0))["figures"]["attention"]
    heatmap = figure["data"][0]
    assert heatmap["x"] == [0, 1, 2, 3] and [len(z) for z in heatmap["z"]] == [35, 36, 37, 38]
    last = trace.steps[-1].attention
    note = figure["layout"]["annotations"][0]["text"]
    assert f"of all {len(last)} positions" in note and f"{mass_positions(last, 0.5)} of them hold half" in note
    extend = json.loads(live.extend_message(trace, 2, 1))["charts"]["attention"]
    assert extend["extend"][0]["indices"] == [0] and extend["extend"][0]["update"]["x"] == [[2, 3]]


def test_without_the_switch_the_chart_says_how_to_turn_it_on(engine) -> None:
    trace = engine.generate([5, 6, 7], GenerationSettings(max_new_tokens=2)).run_to_end()
    assert "Turn on <b>Record attention</b>" in live.full_message(trace, 0)


def test_mass_positions() -> None:
    assert mass_positions((0.7, 0.1, 0.1, 0.1), 0.5) == 1
    assert mass_positions((0.7, 0.1, 0.1, 0.1), 0.9) == 3
    assert mass_positions((0.25,) * 4, 0.5) == 2


def test_a_model_it_cannot_record_is_refused_before_the_run() -> None:
    with pytest.raises(ValueError, match="Llama-style"):
        engine_for(tiny_gpt2(), "tiny-gpt2").generate([5, 6], GenerationSettings(max_new_tokens=2, attention_map=True))
