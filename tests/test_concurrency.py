"""Several students at once through the real API: everyone gets their own answer, the queue drains,
a client that leaves mid-run frees the model, and nothing leaks."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from gradio_client import Client

import app
from inference.serving.batching import batch_server
from inference.settings import GenerationSettings
from inference.trace import read_trace

QUESTIONS = {"What is the capital of France?": "Paris", "What is the capital of Japan?": "Tokyo"}


def ask(url: str, prompt: str) -> str:
    return Client(url, verbose=False).predict(prompt, 12, 0, 1, 0, True, 1, api_name="/run")[3]


def test_concurrent_students_each_get_their_own_answer(app_url: str) -> None:
    server = batch_server(app.server.get_engine())
    earlier = {id(run) for run in server._recent}
    prompts = list(QUESTIONS) * 2
    with ThreadPoolExecutor(len(prompts)) as pool:
        answers = list(pool.map(lambda p: ask(app_url, p), prompts))
    for prompt, answer in zip(prompts, answers):
        expected = QUESTIONS[prompt]
        others = [city for city in QUESTIONS.values() if city != expected]
        assert expected in answer and not any(city in answer for city in others), f"{prompt!r} got {answer!r}"
    engine = app.server.get_engine()
    assert not engine.lock.locked(), "the queue did not drain"
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in engine.loaded.model.modules()) == 0
    mine = [run for run in server._recent if id(run) not in earlier]
    assert len(mine) == len(prompts) and all(run.done and run.cache is None for run in mine), \
        "a finished run still holds its KV cache"


def test_students_who_press_run_together_share_decode_steps(app_url: str, monkeypatch) -> None:
    server = batch_server(app.server.get_engine())
    runs = []
    real_submit = server.submit
    monkeypatch.setattr(server, "submit", lambda *a, **k: runs.append(real_submit(*a, **k)) or runs[-1])
    prompts = list(QUESTIONS) * 2
    clients = [Client(app_url, verbose=False) for _ in prompts]        # connected first: then they press Run together
    jobs = [client.submit(p, 12, 0, 1, 0, True, 1, api_name="/run") for client, p in zip(clients, prompts)]
    answers = [job.result()[3] for job in jobs]
    assert all(QUESTIONS[p] in a for p, a in zip(prompts, answers))
    assert len(runs) == 4 and all(run.stop_reason in ("eos", "length") for run in runs)
    shared = max(step.batch_rows for run in runs for step in run.steps)
    assert shared >= 2, "four runs at once never shared a decode step"


def test_a_client_that_leaves_mid_run_frees_the_model(app_url: str, monkeypatch) -> None:
    server = batch_server(app.server.get_engine())
    runs = []
    real_submit = server.submit
    monkeypatch.setattr(server, "submit", lambda *a, **k: runs.append(real_submit(*a, **k)) or runs[-1])
    leaving = Client(app_url, verbose=False).submit("Write a long story about a lighthouse.", 400, 0, 1, 0, True, 1,
                                                    api_name="/run")
    deadline = time.time() + 60
    while len(leaving.outputs()) < 3 and time.time() < deadline:
        time.sleep(0.1)
    assert len(leaving.outputs()) >= 3, "the long run never started streaming"
    leaving.cancel()
    assert "Paris" in ask(app_url, "What is the capital of France?")
    abandoned = runs[0]
    assert abandoned.stop_reason == "cancelled" and len(abandoned.steps) < 399, \
        f"the abandoned run went on: {len(abandoned.steps)} steps, {abandoned.stop_reason}"


def test_in_solo_mode_runs_take_turns_and_their_traces_say_so(app_url: str, monkeypatch) -> None:
    monkeypatch.setattr(app.server, "config", app.server.config.replace(solo=True))
    jobs = [Client(app_url, verbose=False).submit(prompt, 8, 0, 1, 0, True, 1, api_name="/run") for prompt in QUESTIONS]
    for job, (prompt, city) in zip(jobs, QUESTIONS.items()):
        assert city in job.result()[3], prompt
    engine = app.server.get_engine()
    assert not batch_server(engine).active and not engine.lock.locked()


def test_a_batched_run_traces_its_serving_mode_and_loads_back(app_url: str) -> None:
    from inference.trace import Trace

    engine = app.server.get_engine()
    run = batch_server(engine).submit([1, 2, 3], GenerationSettings(max_new_tokens=3), app.CancelFlag())
    run.wait()
    trace = read_trace(run.trace().to_json())
    assert trace.serving == "batched" and trace.steps[1].batch_rows == 1
