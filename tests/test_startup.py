"""The page comes up before the model: while the engine loads, the page says what the load is doing,
a run waits for it with a status line, and a failed load is a message, not a hang."""
from __future__ import annotations

import threading
import time

import gradio as gr
import pytest

from inference.engine import Engine
from inference.serving.background import CancelFlag
from inference.serving.server_config import ServerConfig
from page import state
from page.live import LiveTab


def _loading_server(monkeypatch, finish: threading.Event, result) -> state.Server:
    """A server whose engine load reports one step and then waits for `finish` (then returns or raises `result`)."""
    def load(model, device, dtype, progress, **_):
        progress("First start: dequantizing the weights (about half a minute, once)")
        finish.wait(60)
        if isinstance(result, BaseException):
            raise result
        return result

    monkeypatch.setattr(state, "load_engine", load)
    server = state.Server(ServerConfig.from_env())
    threading.Thread(target=lambda: _quietly(server.get_engine), daemon=True).start()     # what app.main does
    while not server.load_under_way:
        time.sleep(0.01)
    return server


def _quietly(load) -> None:
    try:
        load(progress=lambda _: None)
    except ValueError:
        pass


def test_while_the_model_loads_the_page_says_so_and_a_run_waits_for_it(monkeypatch, real_engine: Engine) -> None:
    finish = threading.Event()
    server = _loading_server(monkeypatch, finish, real_engine)
    assert "dequantizing the weights" in server.engine_status(), "the model box shows the load's progress"
    status, line, timer, _ = server.loading_tick()
    assert "dequantizing" in status and timer.active, "and follows it while it goes on"
    assert "The model is loading" in server.run_status(), "the run's status line says so as the page opens"
    run = LiveTab(server).run_generation("Name a colour.", 4, 0, 1, 0, True, 1, CancelFlag())
    first = next(run)
    assert "Waiting for the model to load" in first[1] and "dequantizing" in first[1]
    finish.set()
    *_, final = run
    assert "Done" in final[1] and final[3], "once loaded, the run goes on and answers"
    status, line, timer, _ = server.loading_tick()
    assert "SmolLM2" in status and "ready" in line and not timer.active, "the model, runs may start, the timer stops"
    assert "ps-done" not in line, "the ready line is not a run's end (the page's tests wait for that class)"
    assert not isinstance(server.run_status(), str), "a page opened now gets an empty status line, as before"


def test_a_load_that_fails_is_a_message_for_the_page_and_the_run(monkeypatch) -> None:
    finish = threading.Event()
    server = _loading_server(monkeypatch, finish, ValueError("no such model: 'nope'"))
    run = LiveTab(server).run_generation("Name a colour.", 4, 0, 1, 0, True, 1, CancelFlag())
    assert "Waiting for the model to load" in next(run)[1]
    finish.set()
    with pytest.raises(gr.Error, match="could not be loaded: no such model"):
        list(run)
    assert "could not be loaded: no such model" in server.engine_status()
