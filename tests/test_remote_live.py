"""The remote engine against a real one: vLLM's CPU build serving the bundled model (the same float32
weights the embedded engine runs) on a loopback port. `make test-remote` installs it
(.venv-vllm) and runs these; `make test` leaves them out (pytest.ini: -m "not remote")."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from bench.common import free_port
from inference.engine import Engine
from inference.prompts import chat_prompt_ids
from inference.remote import RemoteClient, RemoteEndpoint, RemoteRun, remote_trace
from inference.serving.background import CancelFlag
from inference.settings import GenerationSettings
from inference.trace import check_trace

pytestmark = pytest.mark.remote

VENV = Path(os.environ.get("PHASESCOPE_VLLM_VENV", Path(__file__).resolve().parent.parent / ".venv-vllm"))
START_LIMIT_S = 600
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def vllm_url() -> Iterator[str]:
    from inference.model.loading import default_model_folder

    python = VENV / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{python} is missing: run `make test-remote`, which installs vLLM's CPU build there")
    port = free_port()
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / "phasescope-vllm.log", "w")
    server = subprocess.Popen(
        [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(default_model_folder()),
         "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
         "--max-model-len", "2048"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"})
    url, started = f"http://127.0.0.1:{port}", time.perf_counter()
    try:
        while time.perf_counter() - started < START_LIMIT_S:
            if server.poll() is not None:
                pytest.fail(f"vLLM exited with {server.returncode}; its log: {log.name}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        else:
            pytest.fail(f"vLLM did not answer within {START_LIMIT_S} s; its log: {log.name}")
        print(f"\nvLLM ready after {time.perf_counter() - started:.0f} s", file=sys.stderr)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def client(url: str) -> RemoteClient:
    return RemoteClient(RemoteEndpoint("vllm", url))


def test_a_real_engine_answers_like_the_embedded_one_and_reports_from_inside(vllm_url: str, real_engine: Engine) -> None:
    settings = GenerationSettings(max_new_tokens=48)
    trace = remote_trace(client(vllm_url), QUESTION, settings)
    check_trace(trace)
    ids = chat_prompt_ids(real_engine.loaded.tokenizer, QUESTION)
    embedded = real_engine.generate(ids, settings).run_to_end()
    assert trace.text == embedded.text == "The capital of France is Paris."
    # Counted three ways: the stream's logprobs, the usage figure, vLLM's counters.
    tokens = sum(s.tokens_out for s in trace.steps)
    assert tokens == trace.reported["completion tokens (usage)"] == trace.reported["generated tokens (engine)"]
    assert trace.prompt_tokens == len(ids) == trace.reported["prompt tokens (engine)"]
    # Seen from outside, the first token cannot come before the engine produced it.
    assert trace.summary.ttft_ms >= trace.reported["engine TTFT ms"] > 0
    assert trace.reported["engine decode ms"] > 0 and not trace.notes


def test_stop_aborts_the_request_in_the_engine_and_the_next_run_works(vllm_url: str) -> None:
    from inference.remote import parse_prometheus

    metrics = lambda: parse_prometheus(httpx.get(f"{vllm_url}/metrics").text)
    before = metrics()["vllm:generation_tokens_total"]
    run = RemoteRun(client(vllm_url), "Count from one to one hundred in words.", GenerationSettings(max_new_tokens=400),
                    CancelFlag())
    run.wait_for_steps(3, 60)
    run.stop()
    run.wait_for_steps(10**6, 30)
    assert run.done and run.error is None and run.trace().summary.stop_reason == "cancelled"
    # The closed stream made vLLM abort the request: nothing runs, and it stopped generating long
    # before the 400 tokens asked for.
    deadline = time.perf_counter() + 30
    while metrics()["vllm:num_requests_running"] and time.perf_counter() < deadline:
        time.sleep(0.5)
    after = metrics()
    assert after["vllm:num_requests_running"] == 0
    assert after["vllm:generation_tokens_total"] - before < 100
    assert "Paris" in remote_trace(client(vllm_url), QUESTION, GenerationSettings(max_new_tokens=16)).text


def test_the_page_runs_on_the_real_engine(vllm_url: str, app_url: str) -> None:
    from gradio_client import Client

    import app

    saved = app.server.config
    app.server.config = saved.replace(remotes=(RemoteEndpoint("vllm", vllm_url),))
    try:
        final = Client(app_url, verbose=False).predict(QUESTION, 24, 0, 1, 0, True, 1, "fast", False, False, "vllm",
                                                      api_name="/run")
        assert final[3] == "The capital of France is Paris." and "engine prefill ms" in final[2]
    finally:
        app.server.config = saved


def test_the_prompt_length_sweep_runs_on_the_real_engine(vllm_url: str, app_url: str) -> None:
    """Through the page's Experiments tab: the engine's own prompt counts on x, its TTFT growing."""
    from gradio_client import Client

    import app

    from inference.remote import parse_prometheus

    prompts = lambda: parse_prometheus(httpx.get(f"{vllm_url}/metrics").text)["vllm:prompt_tokens_total"]
    before = prompts()
    saved = app.server.config
    app.server.config = saved.replace(remotes=(RemoteEndpoint("vllm", vllm_url),))
    try:
        _, verdict, _ = Client(app_url, verbose=False).predict([16, 1024], 4, "vllm", api_name="/sweep")
        print(verdict)
        assert "✔" in verdict, verdict
        # It ran on vLLM (which counted both prompts, each with its chat template), not on the embedded engine.
        assert prompts() - before > 16 + 1024
        assert "From 16 to 1024 prompt tokens" not in verdict
    finally:
        app.server.config = saved


def test_vllms_bench_serve_agrees_with_phasescopes_own_figures_for_the_same_requests() -> None:
    from bench.tool_bench import TOLERANCE_MS, TOLERANCE_SHARE, measure

    result, agreements, counted = measure(prompts=8, input_len=32, output_len=16, concurrency=4)
    assert result["completed"] == 8 and result["failed"] == 0, result.get("errors")
    assert counted["phasescope:requests_total"] == 8
    assert counted["vllm:generation_tokens_total"] == result["total_output_tokens"]
    for agreement in agreements:
        assert agreement.holds, (f"{agreement.name}: vLLM's bench serve says {agreement.tool_ms:.1f} ms, PhaseScope "
                                 f"{agreement.own_ms:.1f} ms (more than {TOLERANCE_SHARE:.0%} or {TOLERANCE_MS:g} ms apart)")
