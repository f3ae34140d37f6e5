"""The remote engine client (inference/remote/) against streams recorded from real serving engines
(vLLM's CPU build and llama.cpp's server, tests/data/), replayed by a loopback stand-in, and
against the bad servers a page must survive. The same tests run against a live engine with
`make test-remote` (tests/test_remote_live.py)."""
from __future__ import annotations

import pytest

from bench.common import free_port
from inference.serving.background import CancelFlag
from inference.remote import (RemoteClient, RemoteEndpoint, RemoteError, RemoteRun, inside_figures, parse_prometheus,
                              parse_remotes)
from inference.serving.server_config import ServerConfig
from inference.settings import GenerationSettings
from inference.trace import check_trace, read_trace
from tests.remote_standin import StandIn, load_recording
from viz import live, summary

SETTINGS = GenerationSettings(max_new_tokens=24)


@pytest.fixture
def standin(request: pytest.FixtureRequest):
    recording, behaviour = getattr(request, "param", ("remote-vllm.json", "replay"))
    server = StandIn(load_recording(recording), behaviour, silent_s=2.0)
    yield server
    server.close()


def run_on(url: str, chunk_timeout_s: float = 10.0, settings: GenerationSettings = SETTINGS) -> RemoteRun:
    run = RemoteRun(RemoteClient(RemoteEndpoint("standin", url), chunk_timeout_s), "What is the capital of France?",
                    settings, CancelFlag())
    run.wait()
    return run


def test_the_operator_names_remote_engines_and_a_visitor_only_picks_one() -> None:
    endpoints = parse_remotes(" gpu=http://10.0.0.5:8000 , laptop=https://host.example/v1,")
    assert [(e.name, e.api, e.root) for e in endpoints] == [
        ("gpu", "http://10.0.0.5:8000/v1", "http://10.0.0.5:8000"),
        ("laptop", "https://host.example/v1", "https://host.example")]
    for bad in ("gpu", "gpu=ftp://host", "=http://host", "a b=http://host", "x=http://a,x=http://b"):
        with pytest.raises(ValueError):
            parse_remotes(bad)
    config = ServerConfig.from_env({"PHASESCOPE_REMOTE": "gpu=http://10.0.0.5:8000"})
    assert config.remote("gpu").url == "http://10.0.0.5:8000"
    with pytest.raises(ValueError, match="not one of this server's remote engines"):
        config.remote("http://evil.example")
    assert ServerConfig.from_env({}).remotes == ()


def test_prometheus_text_is_read_as_sums_per_metric() -> None:
    recording = load_recording("remote-vllm.json")
    after = parse_prometheus(recording["metrics_after"])
    assert after["vllm:generation_tokens_total"] >= 8
    assert parse_prometheus('# HELP x\nx{a="1"} 2\nx{a="2"} 3.5\ny NaN\nbad line\n') == {"x": 5.5}


def test_a_vllm_stream_becomes_a_trace_measured_outside_and_reported_inside(standin: StandIn) -> None:
    run = run_on(standin.url)
    assert run.error is None
    trace = run.trace()
    check_trace(trace)
    assert read_trace(trace.to_json()) == trace
    assert trace.text == "The capital of France is Paris."
    # vLLM sends each token's logprob, so every chunk's token count is the server's; its EOS token
    # arrives as a chunk without text.
    assert sum(s.tokens_out for s in trace.steps) == 8 == trace.reported["completion tokens (usage)"]
    assert trace.prompt_tokens == 37 and trace.steps[0].tokens_in == 37
    assert [s.phase for s in trace.steps] == ["prefill"] + ["decode"] * (len(trace.steps) - 1)
    assert all(s.ms > 0 and not s.layer_ms for s in trace.steps)
    assert trace.summary.stop_reason == "eos" and trace.remote and "standin" in trace.engine
    # From inside: the change in vLLM's counters over this run, as the recording holds them.
    for name in ("engine TTFT ms", "engine prefill ms", "engine decode ms", "prompt tokens (engine)"):
        assert trace.reported[name] > 0, name
    assert trace.reported["prompt tokens (engine)"] == 37
    assert not trace.notes
    request = standin.requests[0]
    assert request["stream"] and request["max_tokens"] == 24 and request["messages"][0]["content"].startswith("What")


@pytest.mark.parametrize("standin", [("remote-llamacpp.json", "replay")], indirect=True)
def test_a_server_that_reports_nothing_is_measured_from_outside_only(standin: StandIn) -> None:
    trace = run_on(standin.url).trace()
    check_trace(trace)
    assert "Paris" in trace.text
    assert trace.reported == {} and trace.prompt_tokens == 0
    headline = summary.headline_html(trace)
    assert "sent no figures of its own" in headline and "a prompt the engine did not count" in headline


def test_charts_that_need_the_embedded_engine_say_so(standin: StandIn) -> None:
    trace = run_on(standin.url).trace()
    full = live.full_message(trace, 0)
    assert "does not publish per-layer times" in full and "no roofline for it" in full
    assert "KV cache" in full
    extend = live.extend_message(trace, 1, 1)
    assert '"heatmap"' not in extend and '"roofline"' not in extend and '"timeline"' in extend


BAD = [("http500", "refused the request: HTTP 500"), ("not-json", "not JSON"), ("no-choices", "without choices"),
       ("cut", "before saying it was done"), ("error-chunk", "reported an error: out of KV cache blocks"),
       ("silent", "went silent")]


@pytest.mark.parametrize("standin,message", [(("remote-vllm.json", b), m) for b, m in BAD],
                         indirect=["standin"], ids=[b for b, _ in BAD])
def test_a_bad_server_ends_the_run_with_a_clear_message(standin: StandIn, message: str) -> None:
    run = run_on(standin.url, chunk_timeout_s=0.5)
    assert isinstance(run.error, RemoteError)
    assert message in str(run.error) and "'standin'" in str(run.error)
    trace = run.trace()            # whatever arrived before the fault is still a trace
    assert all(s.phase == ("prefill" if s.index == 0 else "decode") for s in trace.steps)


@pytest.mark.parametrize("standin", [("remote-vllm.json", "strict")], indirect=True)
def test_a_server_that_knows_no_extras_is_asked_again_without_them(standin: StandIn) -> None:
    run = run_on(standin.url)
    assert run.error is None and run.trace().text == "The capital of France is Paris."
    assert ["logprobs" in r for r in standin.requests] == [True, False]
    assert all(s.tokens_out == 1 for s in run.trace().steps), "without logprobs, one token per chunk"


@pytest.mark.parametrize("standin", [("remote-vllm.json", "ollama")], indirect=True)
def test_an_ollama_server_is_read_through_its_own_stream_for_its_durations(standin: StandIn) -> None:
    run = run_on(standin.url)
    assert run.error is None
    trace = run.trace()
    assert trace.text == "The capital of France is Paris." and trace.prompt_tokens == 37
    assert trace.reported["engine prefill ms"] == 98.0 and trace.reported["engine decode ms"] == 480.0
    assert trace.reported["engine model load ms"] == 21.0 and trace.reported["generated tokens (engine)"] == 8
    request = standin.requests[0]
    assert request["options"]["num_predict"] == 24 and request["stream"]


def test_an_unreachable_server_is_said_plainly() -> None:
    port = free_port()                         # nothing listens here
    run = run_on(f"http://127.0.0.1:{port}")
    assert isinstance(run.error, RemoteError) and "cannot be reached" in str(run.error)


@pytest.mark.parametrize("standin", [("remote-vllm.json", "liar")], indirect=True)
def test_a_server_that_lies_about_its_counts_is_caught(standin: StandIn) -> None:
    run = run_on(standin.url)
    assert run.error is None
    trace = run.trace()
    assert trace.prompt_tokens == 0, "a negative prompt length is not believed"
    assert any("says it generated 999 tokens; its stream carried 8" in n for n in trace.notes)
    assert any("cannot be: ignored" in n for n in trace.notes)
    assert "Note:" in summary.headline_html(trace)


@pytest.mark.parametrize("standin", [("remote-vllm.json", "slow")], indirect=True)
def test_stop_ends_a_remote_run_and_closes_its_stream(standin: StandIn) -> None:
    cancel = CancelFlag()
    run = RemoteRun(RemoteClient(RemoteEndpoint("standin", standin.url)), "Hi", SETTINGS, cancel)
    run.wait_for_steps(1, 30.0)
    run.stop()
    run.wait_for_steps(10**6, 5.0)
    assert run.done and run.error is None
    trace = run.trace()
    assert trace.summary.stop_reason == "cancelled" and 2 <= len(trace.steps) < 9


def test_inside_figures_take_only_what_the_engine_sent() -> None:
    from inference.remote import StreamEnd

    end = StreamEnd("stop", usage={"prompt_tokens": 12, "completion_tokens": True},
                    timings={"prompt_n": 12, "prompt_ms": 40.5, "predicted_n": 9, "predicted_ms": 180.0,
                             "cache_n": 3, "predicted_per_second": "fast"})
    report = inside_figures({}, {}, end)
    assert report == {"prompt tokens (engine)": 12.0, "engine prefill ms": 40.5, "prefix cache hit tokens": 3.0,
                      "generated tokens (engine)": 9.0, "engine decode ms": 180.0, "prompt tokens (usage)": 12.0}
    gauges = inside_figures({"vllm:num_requests_running": 0}, {"vllm:kv_cache_usage_perc": 0.0},
                            end, during={"vllm:kv_cache_usage_perc": 0.25, "vllm:num_requests_running": 3.0})
    assert gauges["KV cache usage % (during the run)"] == 25.0 and gauges["requests running (during the run)"] == 3.0


def test_the_page_streams_a_remote_run_and_survives_a_bad_server(app_url: str) -> None:
    """Through the page's API: a remote run streams like a local one; a failing server gives a
    message and the next run (remote or embedded) works; a name the operator did not configure is
    refused."""
    from gradio_client import Client

    import app

    good, bad = (StandIn(load_recording("remote-vllm.json"), behaviour) for behaviour in ("replay", "cut"))
    saved = app.server.config
    app.server.config = saved.replace(remotes=(RemoteEndpoint("gpu", good.url), RemoteEndpoint("broken", bad.url)))
    try:
        client = Client(app_url, verbose=False)
        form = ("What is the capital of France?", 24, 0, 1, 0, True, 1, "fast", False, False)
        job = client.submit(*form, "gpu", api_name="/run")
        updates = list(job)
        dashboard, status, headline, text = job.result()[:4]
        assert len(updates) >= 3 and text == "The capital of France is Paris."
        assert "Done" in status and "engine TTFT ms" in headline and "remote gpu" in headline
        assert "does not publish per-layer times" in dashboard
        with pytest.raises(Exception, match="before saying it was done"):
            client.predict(*form, "broken", api_name="/run")
        with pytest.raises(Exception, match="not one of this server's remote engines"):
            client.predict(*form, "http://127.0.0.1:1", api_name="/run")
        assert "Paris" in client.predict(*form, "gpu", api_name="/run")[3]
        assert "Paris" in client.predict(*form, "", api_name="/run")[3]       # the embedded engine
    finally:
        app.server.config = saved
        good.close()
        bad.close()


@pytest.mark.parametrize("standin", [("remote-llamacpp.json", "replay")], indirect=True)
def test_the_sweep_needs_an_engine_that_counts_its_prompts(standin: StandIn, real_engine) -> None:
    from inference.lessons.experiments import run_remote_sweep

    client = RemoteClient(RemoteEndpoint("standin", standin.url))
    with pytest.raises(ValueError, match="does not report how long a prompt was"):
        run_remote_sweep(client, real_engine.loaded.tokenizer, [16, 64], new_tokens=4)
    assert standin.requests[0]["messages"][0]["content"].strip(), "a fixed text was sent"
