"""The OpenAI-compatible API (inference/serving/api.py) driven by a client nobody here wrote, the
`openai` package, on the real model: streamed and whole answers, the usage chunk, stop strings,
errors in OpenAI's shape, the bounds, a client that leaves mid-stream, the key, /metrics."""
from __future__ import annotations

import json
import threading
import time
from typing import Iterator

import httpx
import openai
import pytest
from hypothesis import given, strategies as st
from prometheus_client.parser import text_string_to_metric_families

from inference.engine import Engine
from inference.prompts import conversation_ids
from inference.serving.api import ApiService, serve_alone
from inference.serving.batching import batch_server
from inference.serving.door import here, prepare
from inference.serving.openai_wire import ApiError, ApiLimits, StopText, parse_request
from inference.serving.server_config import ServerConfig
from inference.settings import GenerationSettings

MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]


class Api:
    """The API alone on a free loopback port, its configuration changeable between requests."""

    def __init__(self, engine: Engine):
        self.config = ServerConfig()
        self.service = ApiService(lambda: engine, lambda: self.config)
        self.server = serve_alone(self.service, "127.0.0.1", 0)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def client(self, key: str = "unused") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def api(real_engine: Engine) -> Iterator[Api]:
    served = Api(real_engine)
    yield served
    served.server.should_exit = True


@pytest.fixture(autouse=True)
def fresh_config(request: pytest.FixtureRequest) -> None:
    if "api" in request.fixturenames:
        request.getfixturevalue("api").config = ServerConfig()


def metrics(api: Api) -> dict[str, float]:
    """/metrics parsed by prometheus_client's own parser: {sample name with labels: value}."""
    text = httpx.get(f"{api.url}/metrics").text
    return {sample.name + json.dumps(sample.labels, sort_keys=True): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def total(samples: dict[str, float], name: str) -> float:
    return sum(v for k, v in samples.items() if k.split("{")[0] == name)


def wait_until(condition, timeout: float = 60.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_streamed_chat_answer_is_the_engines_greedy_answer_with_usage_and_timing(api: Api, real_engine: Engine) -> None:
    stream = api.client().chat.completions.create(model="SmolLM2-135M-Instruct", messages=MESSAGES, max_tokens=24,
                                                  temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    ids = conversation_ids(real_engine.loaded.tokenizer, MESSAGES)
    alone = here(real_engine, prepare(real_engine, ids, GenerationSettings(max_new_tokens=24), alone="the reference"))
    list(alone)
    assert text == alone.trace().text, "the API's greedy answer differs from the engine's own run of the same prompt"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage.prompt_tokens == len(ids) and usage.completion_tokens == 24
    timing = chunks[-1].model_extra["phasescope"]
    assert timing["prefill_ms"] > 0 and timing["ttft_ms"] >= timing["prefill_ms"] and timing["decode_ms_median"] > 0


def test_a_whole_completion_stops_before_its_stop_string(api: Api) -> None:
    client = api.client()
    free = client.completions.create(model="SmolLM2-135M-Instruct", prompt="The capital of France is", max_tokens=12,
                                     temperature=0)
    word = free.choices[0].text.split()[1]          # a word the greedy answer writes after its first
    cut = client.completions.create(model="SmolLM2-135M-Instruct", prompt="The capital of France is", max_tokens=12,
                                    temperature=0, stop=[word])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == free.choices[0].text[:free.choices[0].text.index(word)]
    assert cut.usage.completion_tokens < 12


def test_bad_requests_get_openais_error_shape_naming_what_is_wrong(api: Api) -> None:
    client = api.client()
    with pytest.raises(openai.NotFoundError, match="this server serves 'SmolLM2-135M-Instruct'"):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError, match="max_tokens must be a whole number from 1 to 512"):
        client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=MESSAGES, max_tokens=100_000)
    with pytest.raises(openai.BadRequestError, match="n must be 1"):
        client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=MESSAGES, n=2)
    with pytest.raises(openai.BadRequestError, match="role must be one of"):
        client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=[{"role": "robot", "content": "x"}])
    too_long = "sky " * 9000
    with pytest.raises(openai.BadRequestError, match="holds at most 8,192 tokens") as refused:
        client.completions.create(model="SmolLM2-135M-Instruct", prompt=too_long, max_tokens=8)
    assert refused.value.body["type"] == "invalid_request_error"
    response = httpx.post(f"{api.url}/v1/chat/completions", content=b"{not json")
    assert response.status_code == 400 and set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert "not JSON" in response.json()["error"]["message"]
    answer = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=MESSAGES, max_tokens=4)
    assert answer.usage.completion_tokens == 4, "after the bad requests, the next one runs"


def test_requests_beyond_the_bound_are_refused_and_a_client_that_leaves_frees_its_slot(api: Api) -> None:
    api.config = ServerConfig(api_max_concurrent=1)
    client = api.client()
    with httpx.Client(timeout=120) as raw:
        body = {"model": "SmolLM2-135M-Instruct", "messages": MESSAGES, "max_tokens": 400, "stream": True}
        with raw.stream("POST", f"{api.url}/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data:"))       # it streams
            with pytest.raises(openai.RateLimitError, match="at most 1 API requests at once"):
                client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=MESSAGES, max_tokens=4)
            run = api.service._runs[0]
        # The client left after one chunk: its run is cancelled, the batch goes on without it.
    assert wait_until(lambda: run.done), "the run of a client that left went on"
    assert run.trace().summary.stop_reason == "cancelled" and len(run.steps) < 400
    assert wait_until(lambda: api.service.in_flight == 0)
    answer = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=MESSAGES, max_tokens=4)
    assert answer.usage.completion_tokens == 4


def test_api_runs_join_the_shared_batch_and_show_as_api_runs(api: Api, real_engine: Engine) -> None:
    client = api.client()
    answers: list[str] = []

    def ask() -> None:
        answer = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=MESSAGES, max_tokens=24,
                                                temperature=0)
        answers.append(answer.choices[0].message.content)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 3 and len(set(answers)) == 1, "three greedy requests for one prompt gave different answers"
    spans = batch_server(real_engine).snapshot().runs
    assert sum(1 for span in spans if span.source == "api") >= 3


def test_metrics_count_the_requests_under_vllms_names(api: Api) -> None:
    before = metrics(api)
    client = api.client()
    made = [client.completions.create(model="SmolLM2-135M-Instruct", prompt="Hello", max_tokens=n, temperature=0)
            for n in (3, 5)]
    after = metrics(api)
    change = lambda name: total(after, name) - total(before, name)
    assert change("vllm:time_to_first_token_seconds_count") == 2
    assert change("vllm:e2e_request_latency_seconds_count") == 2
    assert change("vllm:generation_tokens_total") == sum(m.usage.completion_tokens for m in made)
    assert change("vllm:prompt_tokens_total") == sum(m.usage.prompt_tokens for m in made)
    assert change("vllm:inter_token_latency_seconds_count") == sum(m.usage.completion_tokens - 1 for m in made)
    assert change("phasescope:requests_total") == 2 and change("phasescope:decode_seconds_total") > 0
    for gauge in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        assert gauge + '{"model_name": "SmolLM2-135M-Instruct"}' in after


def test_an_operators_key_is_asked_for(api: Api) -> None:
    api.config = ServerConfig(api_key="class-secret")
    with pytest.raises(openai.AuthenticationError, match="asks for an API key"):
        api.client("wrong").models.list()
    assert api.client("class-secret").models.list().data[0].id == "SmolLM2-135M-Instruct"
    assert httpx.get(f"{api.url}/metrics").status_code == 401


def test_the_api_is_off_on_a_public_space_unless_its_operator_turns_it_on() -> None:
    assert ServerConfig.from_env({}).api
    assert not ServerConfig.from_env({"SPACE_ID": "teacher/phasescope"}).api
    assert ServerConfig.from_env({"SPACE_ID": "teacher/phasescope", "PHASESCOPE_API": "1"}).api
    assert "secret" not in repr(ServerConfig.from_env({"PHASESCOPE_API_KEY": "secret"}))
    with pytest.raises(ValueError, match="at least 1"):
        ServerConfig.from_env({"PHASESCOPE_API_MAX_TOKENS": "0"})


def test_request_parameters_are_checked_by_name() -> None:
    limits = ApiLimits(max_tokens=64)
    chat = parse_request({"messages": MESSAGES, "max_tokens": 8, "seed": 3, "stop": "\n"}, "chat", "m", limits)
    assert (chat.settings.max_new_tokens, chat.settings.seed, chat.stop, chat.settings.temperature) == (8, 3, ("\n",), 1.0)
    assert parse_request({"prompt": [[5, 6]]}, "completion", "m", limits).prompt == (5, 6)
    for body, param in (({"messages": []}, "messages"), ({"messages": MESSAGES, "temperature": 3}, "temperature"),
                        ({"messages": MESSAGES, "top_p": 0}, "top_p"), ({"messages": MESSAGES, "seed": -1}, "seed"),
                        ({"messages": MESSAGES, "stop": ["a"] * 5}, "stop"),
                        ({"messages": MESSAGES, "logprobs": True}, "logprobs"),
                        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages")):
        with pytest.raises(ApiError) as refused:
            parse_request(body, "chat", "m", limits)
        assert refused.value.status == 400 and refused.value.param == param, body
    with pytest.raises(ApiError, match="one prompt a request"):
        parse_request({"prompt": ["a", "b"]}, "completion", "m", limits)


@given(st.lists(st.text(alphabet="ab\n", max_size=6), max_size=12), st.lists(st.text(alphabet="ab\n", min_size=1,
                                                                                     max_size=3), min_size=1, max_size=4))
def test_stop_strings_are_found_across_streamed_pieces(pieces: list[str], stops: list[str]) -> None:
    scanner, sent = StopText(tuple(stops)), ""
    for piece in pieces:
        text, stopped = scanner.push(piece)
        sent += text
        if stopped:
            break
    else:
        sent += scanner.flush()
    # The answer ends with the first piece after which the text so far holds a stop string (nothing
    # comes after it: the model stops there), cut where the earliest of the stops found begins. A
    # longer stop that would only have been complete with later pieces never is.
    whole = "".join(pieces)
    for end in (len("".join(pieces[:n])) for n in range(1, len(pieces) + 1)):
        found = [i for i in (whole[:end].find(s) for s in stops) if i >= 0]
        if found:
            assert sent == whole[:min(found)]
            return
    assert sent == whole


def test_the_page_serves_the_api_beside_it_and_its_remote_mode_sees_the_inside(app_url: str) -> None:
    from inference.remote import RemoteClient, RemoteEndpoint, RemoteRun

    assert httpx.get(f"{app_url}v1/models").json()["data"][0]["id"] == "SmolLM2-135M-Instruct"
    assert httpx.get(app_url).status_code == 200, "the page itself is still served"
    run = RemoteRun(RemoteClient(RemoteEndpoint("phasescope", app_url)), "Why is the sky blue?",
                    GenerationSettings(max_new_tokens=12), threading.Event())
    run.wait(120)
    assert run.error is None, run.error
    trace = run.trace()
    assert trace.prompt_tokens > 0 and sum(s.tokens_out for s in trace.steps) == 12
    reported = trace.reported
    for name in ("engine TTFT ms", "engine prefill ms", "engine decode ms a step (median)", "generated tokens (engine)"):
        assert name in reported, f"{name} missing from what PhaseScope reported of itself: {sorted(reported)}"
    assert reported["generated tokens (engine)"] == 12
    # From outside, the first token cannot come sooner than the engine's own prefill of it.
    assert trace.steps[0].ms >= reported["engine prefill ms"]


def test_a_fault_inside_the_server_is_an_openai_error_and_the_next_request_runs(api: Api, monkeypatch) -> None:
    from inference.serving import api as api_module

    def broken(*args, **kwargs):
        raise RuntimeError("tokenizer exploded")

    monkeypatch.setattr(api_module, "_prompt_ids", broken)
    with pytest.raises(openai.InternalServerError, match="tokenizer exploded"):
        api.client().chat.completions.create(model="SmolLM2-135M-Instruct", messages=MESSAGES, max_tokens=4)
    monkeypatch.undo()
    assert api.service.in_flight == 0
    answer = api.client().chat.completions.create(model="SmolLM2-135M-Instruct", messages=MESSAGES, max_tokens=4)
    assert answer.usage.completion_tokens == 4
    api.config = ServerConfig(zero_gpu=True)
    with pytest.raises(openai.APIStatusError, match="not offered on a ZeroGPU Space"):
        api.client().chat.completions.create(model="SmolLM2-135M-Instruct", messages=MESSAGES, max_tokens=4)
