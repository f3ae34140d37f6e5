"""Bad input on the page, hostile traces and faults: clear messages, and the next run still works."""
from __future__ import annotations

import json
import threading

import gradio as gr
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import app
from page import live as live_page
from inference.engine import Engine
from inference.trace import read_trace
from viz import live
from tests.conftest import EXAMPLE_TRACE as EXAMPLE

ANY_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                        max_leaves=12)


@pytest.fixture(scope="module")
def example() -> dict:
    return json.loads(EXAMPLE.read_text())


def _mutate(data: dict, path: list, value: object) -> dict:
    copy = json.loads(json.dumps(data))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return copy


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([["model", "layers"], ["device", "peak_flops"], ["steps", 0, "ms"], ["steps", 3, "layer_ms"],
                        ["steps", 2, "phase"], ["summary"], ["steps"], ["prompt_tokens"], ["settings", "batch_size"],
                        ["steps", 1, "text"], ["schema"], ["steps", 5, "kv_bytes"]]), ANY_JSON)
def test_a_mangled_trace_loads_valid_or_is_refused_with_a_value_error(example: dict, path: list, value: object) -> None:
    try:
        trace = read_trace(json.dumps(_mutate(example, path, value)))
    except ValueError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    # Accepted: then it must be a whole trace that draws and survives its own round trip.
    assert read_trace(trace.to_json()) == trace
    assert json.loads(live.full_message(trace, 0))["kind"] == "full"


@pytest.mark.parametrize("text, message", [
    ('{"schema": "phasescope.trace/1"', "not valid JSON"),
    ('{"schema": "something/else"}', "expected schema"),
    ('[1, 2, 3]', "not a PhaseScope trace"),
    ("", "not valid JSON"),
])
def test_malformed_traces_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_trace(text)


def test_nan_and_negative_times_are_refused(example: dict) -> None:
    with pytest.raises(ValueError, match="finite numbers only"):
        read_trace(EXAMPLE.read_text().replace('"ms": ', '"ms": NaN, "x": ', 1))
    with pytest.raises(ValueError, match="ms must be a finite number of at least 0"):
        read_trace(json.dumps(_mutate(example, ["steps", 4, "ms"], -3.0)))


def test_loading_a_huge_file_is_refused_before_reading_it(tmp_path: Path) -> None:
    huge = tmp_path / "huge.json"
    with huge.open("wb") as f:
        f.truncate(live_page.MAX_TRACE_UPLOAD_BYTES + 1)
    with pytest.raises(gr.Error, match="traces up to"):
        live_page.load_trace(str(huge))


def test_loading_a_good_trace_draws_it(example: dict, tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(example))
    message, status, headline, text, state = live_page.load_trace(str(good))
    assert json.loads(message)["kind"] == "full" and "loaded from good.json" in status
    assert text == read_trace(state).text


def _drain(prompt: str, max_new_tokens: int = 8) -> tuple:
    *_, final = app.live.run_generation(prompt, max_new_tokens, 0, 1, 0, True, 1, app.CancelFlag())
    return final


@pytest.mark.parametrize("prompt", ["", "   \n\t ", "x" * 100_001])
def test_bad_prompts_give_a_message(real_engine: Engine, prompt: str) -> None:
    app.server.engine = real_engine
    with pytest.raises(gr.Error):
        _drain(prompt)


def test_odd_text_runs_and_comes_back_as_text(real_engine: Engine) -> None:
    app.server.engine = real_engine
    for prompt in ("\x00\x07 control", "emoji 🙂🚀 and مرحبا بالعالم", "a" * 3000):
        dashboard, status, headline, text, state = _drain(prompt, 4)
        trace = read_trace(state)
        assert "Done" in status and trace.steps and text == trace.text, prompt
        ids = [s.token_id for s in trace.steps]
        # The stream holds back a character whose bytes have not all arrived; otherwise it is the one-shot decode.
        assert text == real_engine.loaded.tokenizer.decode(ids, skip_special_tokens=True).rstrip("\ufffd"), prompt


def test_a_trace_nested_100000_deep_is_refused_with_a_message(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(gr.Error, match="Could not load that trace: .*nested too deeply"):
        live_page.load_trace(str(deep))


def test_a_fault_mid_decode_ends_that_run_with_a_message_and_the_next_run_is_correct(real_engine: Engine) -> None:
    app.server.engine = real_engine
    expected = _drain("What is the capital of France?", 10)[3]
    calls = {"n": 0}

    def fail_on_third_decode(*_: object) -> None:
        calls["n"] += 1
        if calls["n"] == 4:
            raise MemoryError("injected out-of-memory")

    handle = real_engine.loaded.model.lm_head.register_forward_pre_hook(fail_on_third_decode)
    try:
        with pytest.raises(gr.Error, match="injected out-of-memory"):
            _drain("What is the capital of France?", 10)
    finally:
        handle.remove()
    model = real_engine.loaded.model
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0
    assert not real_engine.lock.locked()
    assert _drain("What is the capital of France?", 10)[3] == expected


def test_stop_from_another_thread_ends_the_run_and_frees_the_engine(real_engine: Engine) -> None:
    app.server.engine = real_engine
    cancel = app.CancelFlag()
    updates = app.live.run_generation("Write a long story about a lighthouse.", 300, 0, 1, 0, True, 1, cancel)
    for i, update in enumerate(updates):
        if i == 3:
            threading.Timer(0.05, cancel.set).start()
    assert "stopped" in update[1]
    assert not real_engine.lock.locked()


@pytest.mark.parametrize("solo", [False, True], ids=["shared batch", "solo"])
def test_closing_the_tab_mid_run_frees_the_engine(real_engine: Engine, monkeypatch, solo: bool) -> None:
    """Gradio closes the generator when a client goes away; the engine must be free right after,
    on the shared batch and alone (no waiting: closing returns once the run has let go of it)."""
    monkeypatch.setattr(app.server, "engine", real_engine)
    monkeypatch.setattr(app.server, "config", app.server.config.replace(solo=solo))
    with real_engine.lock:       # runs that earlier tests left going have ended (this waits for them)
        pass
    updates = app.live.run_generation("Write a long story about a lighthouse.", 300, 0, 1, 0, True, 1, app.CancelFlag())
    for i, _ in zip(range(4), updates):
        pass
    updates.close()
    assert real_engine.lock.acquire(blocking=False), "the engine was still busy after the tab closed"
    real_engine.lock.release()
    assert "Paris" in _drain("What is the capital of France?", 10)[3]


def test_a_model_off_the_list_is_refused_and_the_current_one_keeps_working(real_engine: Engine, monkeypatch) -> None:
    monkeypatch.setattr(app.server, "engine", real_engine)
    monkeypatch.setattr(app.server, "config", app.server.config.replace(allow_any_model=False))
    with pytest.raises(gr.Error, match="not one of this server's models"):
        app.server.switch_model("someone/else-model")
    assert "Paris" in _drain("What is the capital of France?", 10)[3]


def test_an_unloadable_model_gives_a_message_and_the_current_one_keeps_working(real_engine: Engine, monkeypatch,
                                                                                tmp_path: Path) -> None:
    monkeypatch.setattr(app.server, "engine", real_engine)
    monkeypatch.setattr(app.server, "config", app.server.config.replace(allow_any_model=True))
    (tmp_path / "config.json").write_text('{"model_type": "nonsense"}')
    for name in (str(tmp_path / "missing"), str(tmp_path)):
        with pytest.raises(gr.Error, match="could not load model.*Still using SmolLM2-135M-Instruct"):
            app.server.switch_model(name)
    assert app.server.get_engine() is real_engine
    assert "Paris" in _drain("What is the capital of France?", 10)[3]


def test_switching_to_another_local_model_runs_it(real_engine: Engine, monkeypatch, tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    monkeypatch.setattr(app.server, "engine", real_engine)
    monkeypatch.setattr(app.server, "config", app.server.config.replace(dtype="float32", allow_any_model=True))   # restored afterwards
    config = LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, vocab_size=real_engine.loaded.info.vocab, max_position_embeddings=512)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    real_engine.loaded.tokenizer.save_pretrained(tmp_path)
    status = app.server.switch_model(str(tmp_path))
    assert "float32" in status and app.server.get_engine().loaded.info.layers == 2
    *_, final = app.live.run_generation("Hi", 4, 0, 1, 0, True, 1, app.CancelFlag())
    assert read_trace(final[4]).model.layers == 2
