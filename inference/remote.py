"""A real serving engine elsewhere (vLLM, SGLang, TGI, llama.cpp's server, Ollama), seen through its
OpenAI-compatible streaming API: the page becomes a window onto it instead of a second engine.

Measured from outside, here: when the request left, when each streamed chunk arrived and how many
tokens it carried (from the chunk's `logprobs` where the server sends them, else one per chunk).
The first chunk with text ends the "prefill" step (time to first token as a client sees it:
network, the engine's queue and its prefill); every later chunk is one "decode" step.

Measured from inside, where the engine tells: the final chunk's `usage` (OpenAI), llama.cpp's
`timings` (`prompt_n`, `prompt_ms`, `predicted_n`, `predicted_ms`, `cache_n`), Ollama's durations
(only its native `/api/chat` stream has them, so an Ollama server, recognised by `/api/version`, is
read through that one) and vLLM's Prometheus `/metrics` (read before and after the run; the
difference is this run's share when it ran alone).

Endpoints come from the server's operator (`PHASESCOPE_REMOTE=name=url,...` or `app.py --remote`),
never from a visitor: the page must not become a proxy to arbitrary addresses.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

import httpx

from inference.background import WatchedRun
from inference.settings import GenerationSettings
from inference.trace import DeviceInfo, ModelInfo, Step, Summary, Trace

CONNECT_TIMEOUT_S = 5.0
CHUNK_TIMEOUT_S = 30.0          # a server silent this long between chunks is given up on


class RemoteError(Exception):
    """What went wrong with a remote engine, in words a page can show as they are."""


class _Refused(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(status, detail)
        self.status, self.detail = status, detail


@dataclass(frozen=True)
class RemoteEndpoint:
    name: str
    url: str                    # the server's base address, with or without /v1

    @property
    def api(self) -> str:
        base = self.url.rstrip("/")
        return base if base.endswith("/v1") else f"{base}/v1"

    @property
    def root(self) -> str:
        return self.api[: -len("/v1")]


def parse_remotes(text: str) -> tuple[RemoteEndpoint, ...]:
    """`name=url,name=url` (the operator's setting) as endpoints; ValueError says what is wrong."""
    endpoints: dict[str, RemoteEndpoint] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, url = (s.strip() for s in item.partition("="))
        parsed = urlparse(url)
        if not sep or not name or parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"a remote engine is name=http://host:port, got {item!r}")
        if not re.fullmatch(r"[\w.\-]+", name):
            raise ValueError(f"a remote engine's name is letters, digits, '.', '-' or '_', got {name!r}")
        if name in endpoints:
            raise ValueError(f"two remote engines are called {name!r}")
        endpoints[name] = RemoteEndpoint(name, url)
    return tuple(endpoints.values())


@dataclass(frozen=True)
class Chunk:
    """One streamed chunk with text: when it arrived (perf_counter s), its text, its tokens (from
    its logprobs where the server sent them, else one)."""
    arrived: float
    text: str
    tokens: int


@dataclass
class StreamEnd:
    """What the stream said at its end: why it finished, and any counts and timings it carried."""
    finish_reason: str = ""
    usage: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)


class RemoteClient:
    """The OpenAI-compatible API of one endpoint. `httpx` does the HTTP; this reads the stream."""

    def __init__(self, endpoint: RemoteEndpoint, chunk_timeout_s: float = CHUNK_TIMEOUT_S):
        self.endpoint = endpoint
        self.timeout = httpx.Timeout(chunk_timeout_s, connect=CONNECT_TIMEOUT_S)
        self._ollama: bool | None = None

    def _fail(self, what: str) -> RemoteError:
        return RemoteError(f"The remote engine {self.endpoint.name!r} ({self.endpoint.root}) {what}")

    def model_id(self) -> str:
        """The first model the server serves (`GET /v1/models`)."""
        try:
            response = httpx.get(f"{self.endpoint.api}/models", timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise self._fail(f"cannot be reached: {_reason(exc)}") from None
        if response.status_code != 200:
            raise self._fail(f"answered HTTP {response.status_code} when asked for its models")
        try:
            models = response.json()["data"]
            return str(models[0]["id"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise self._fail("did not list its models the OpenAI way (GET /v1/models)") from None

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus metrics (vLLM, SGLang, TGI, llama.cpp with --metrics), or {}."""
        try:
            response = httpx.get(f"{self.endpoint.root}/metrics", timeout=self.timeout)
        except httpx.HTTPError:
            return {}
        return parse_prometheus(response.text) if response.status_code == 200 else {}

    def is_ollama(self) -> bool:
        """Ollama answers GET /api/version; its own stream (not its OpenAI one) carries its durations."""
        if self._ollama is None:
            try:
                response = httpx.get(f"{self.endpoint.root}/api/version", timeout=self.timeout)
                self._ollama = response.status_code == 200 and "version" in response.json()
            except (httpx.HTTPError, ValueError):
                self._ollama = False
        return self._ollama

    def stream_chat(self, model: str, messages: list[dict[str, str]], settings: GenerationSettings,
                    cancel: Any) -> Iterator[Chunk | StreamEnd]:
        """POST /v1/chat/completions with stream=true (Ollama: its native /api/chat); yields each
        Chunk with text as it arrives, then one StreamEnd. Raises RemoteError for anything but a
        well-formed, finished stream."""
        try:
            if self.is_ollama():
                yield from self._ollama_stream(model, messages, settings, cancel)
                return
            body = request_body(model, messages, settings)
            try:
                yield from self._stream(body, cancel)
            except _Refused as refused:
                if refused.status not in (400, 422):
                    raise
                # A server that does not know the extras (per-token logprobs, usage in the stream):
                # ask again without them; chunks then count as one token each.
                yield from self._stream({k: v for k, v in body.items()
                                         if k not in ("logprobs", "top_logprobs", "stream_options")}, cancel)
        except _Refused as refused:
            raise self._fail(f"refused the request: HTTP {refused.status} {refused.detail}") from None
        except httpx.HTTPError as exc:
            raise self._fail(_reason(exc)) from None

    def _stream(self, body: dict[str, Any], cancel: Any) -> Iterator[Chunk | StreamEnd]:
        with httpx.Client(timeout=self.timeout) as client:
            with client.stream("POST", f"{self.endpoint.api}/chat/completions", json=body) as response:
                if response.status_code != 200:
                    raise _Refused(response.status_code, response.read().decode(errors="replace")[:300])
                end = StreamEnd()
                for line in response.iter_lines():
                    if cancel.is_set():
                        end.finish_reason = "cancelled"
                        yield end
                        return
                    if not line.startswith("data:"):
                        continue          # blank separators, comments, event names
                    data = line[len("data:"):].strip()
                    if data == "[DONE]":
                        yield end
                        return
                    chunk = self._parse(data, end)
                    if chunk is not None:
                        yield chunk
        raise self._fail("ended its stream before saying it was done (no [DONE]): the connection was cut")

    def _ollama_stream(self, model: str, messages: list[dict[str, str]], settings: GenerationSettings,
                       cancel: Any) -> Iterator[Chunk | StreamEnd]:
        """Ollama's /api/chat: one JSON object per line, the last with `done` and the request's
        durations in nanoseconds, kept as llama.cpp-style `timings` (the figures are the same kind)."""
        body = {"model": model, "messages": messages, "stream": True,
                "options": {"temperature": settings.temperature, "top_p": settings.top_p, "seed": settings.seed,
                            "num_predict": settings.max_new_tokens}}
        with httpx.Client(timeout=self.timeout) as client:
            with client.stream("POST", f"{self.endpoint.root}/api/chat", json=body) as response:
                if response.status_code != 200:
                    raise _Refused(response.status_code, response.read().decode(errors="replace")[:300])
                for line in response.iter_lines():
                    if cancel.is_set():
                        yield StreamEnd("cancelled")
                        return
                    if not line.strip():
                        continue
                    arrived = time.perf_counter()
                    try:
                        message = json.loads(line)
                    except ValueError:
                        raise self._fail(f"sent a line that is not JSON: {line[:80]!r}") from None
                    if not isinstance(message, dict) or "error" in message:
                        raise self._fail(f"reported an error: {message.get('error') if isinstance(message, dict) else line[:80]}")
                    if message.get("done"):
                        ms = lambda key: message[key] / 1e6 if isinstance(message.get(key), (int, float)) else None
                        timings = {"prompt_n": message.get("prompt_eval_count"), "prompt_ms": ms("prompt_eval_duration"),
                                   "predicted_n": message.get("eval_count"), "predicted_ms": ms("eval_duration"),
                                   "load_ms": ms("load_duration")}
                        usage = {"prompt_tokens": message.get("prompt_eval_count"),
                                 "completion_tokens": message.get("eval_count")}
                        yield StreamEnd(str(message.get("done_reason") or "stop"), usage=usage,
                                        timings={k: v for k, v in timings.items() if v is not None})
                        return
                    text = (message.get("message") or {}).get("content") or ""
                    if text:
                        yield Chunk(arrived, str(text), 1)
        raise self._fail("ended its stream before saying it was done (no done: true): the connection was cut")

    def _parse(self, data: str, end: StreamEnd) -> Chunk | None:
        arrived = time.perf_counter()
        try:
            message = json.loads(data)
        except ValueError:
            raise self._fail(f"sent a chunk that is not JSON: {data[:80]!r}") from None
        if not isinstance(message, dict):
            raise self._fail(f"sent a chunk that is not a JSON object: {data[:80]!r}")
        if "error" in message:
            error = message["error"]
            raise self._fail(f"reported an error: {error.get('message', error) if isinstance(error, dict) else error}")
        if isinstance(message.get("usage"), dict):
            end.usage = message["usage"]
        if isinstance(message.get("timings"), dict):
            end.timings = message["timings"]
        choices = message.get("choices")
        if not isinstance(choices, list):
            raise self._fail(f"sent a chunk without choices: {data[:80]!r}")
        if not choices:
            return None               # the usage chunk at the end
        choice = choices[0]
        if not isinstance(choice, dict):
            raise self._fail(f"sent a malformed choice: {data[:80]!r}")
        if choice.get("finish_reason"):
            end.finish_reason = str(choice["finish_reason"])
        text = (choice.get("delta") or {}).get("content") or ""
        if not isinstance(text, str):
            raise self._fail(f"sent content that is not text: {data[:80]!r}")
        logprobs = choice.get("logprobs")
        tokens = logprobs.get("content") if isinstance(logprobs, dict) else None
        if isinstance(tokens, list) and tokens:
            return Chunk(arrived, text, len(tokens))
        return Chunk(arrived, text, 1) if text else None


def request_body(model: str, messages: list[dict[str, str]], settings: GenerationSettings) -> dict[str, Any]:
    """A streamed chat completion that also asks for the usage counts at the end and each token's
    logprob (so that a chunk says how many tokens it carries)."""
    return {"model": model, "messages": messages, "stream": True, "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature, "top_p": settings.top_p, "seed": settings.seed,
            "stream_options": {"include_usage": True}, "logprobs": True, "top_logprobs": 0}


def _reason(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return f"refused or unreachable ({exc})"
    if isinstance(exc, httpx.ConnectTimeout):
        return f"did not accept a connection within {CONNECT_TIMEOUT_S:g} s"
    if isinstance(exc, httpx.ReadTimeout):
        return "went silent: no data within the time limit between chunks"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"cut the connection midway ({exc})"
    return f"{type(exc).__name__}: {exc}"


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text format as {name: value}, samples of the same name summed over their labels
    (one model per server, so the sum is that model's figure)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        if math.isfinite(value):
            values[match.group(1)] = values.get(match.group(1), 0.0) + value
    return values


# What the engine reports from inside, under the page's names: (name, metric, scale, is a difference).
_VLLM = (("engine TTFT ms", "vllm:time_to_first_token_seconds_sum", 1e3, True),
         ("engine prefill ms", "vllm:request_prefill_time_seconds_sum", 1e3, True),
         ("engine decode ms", "vllm:request_decode_time_seconds_sum", 1e3, True),
         ("engine queue ms", "vllm:request_queue_time_seconds_sum", 1e3, True),
         ("prompt tokens (engine)", "vllm:prompt_tokens_total", 1, True),
         ("generated tokens (engine)", "vllm:generation_tokens_total", 1, True),
         ("prefix cache hit tokens", "vllm:prefix_cache_hits_total", 1, True),
         ("KV cache usage %", "vllm:kv_cache_usage_perc", 100, False),
         ("requests running", "vllm:num_requests_running", 1, False),
         ("requests waiting", "vllm:num_requests_waiting", 1, False))


def inside_figures(before: dict[str, float], after: dict[str, float], end: StreamEnd,
                   during: dict[str, float] | None = None) -> dict[str, float]:
    """The engine's own account of this run: llama.cpp's `timings`, vLLM's metrics (counters: their
    change over the run; gauges: as read while it decoded, else after it), the usage counts. Only
    what the engine sent; nothing estimated."""
    report: dict[str, float] = {}
    names = {"prompt_n": "prompt tokens (engine)", "prompt_ms": "engine prefill ms", "cache_n": "prefix cache hit tokens",
             "predicted_n": "generated tokens (engine)", "predicted_ms": "engine decode ms",
             "load_ms": "engine model load ms"}
    for key, name in names.items():
        value = end.timings.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
            report[name] = float(value)
    moment = " (during the run)" if during else " (after the run)"
    for name, metric, scale, difference in _VLLM:
        source = after if difference else (during or after)
        if metric in source and (metric in before or not difference):
            value = source[metric] - before[metric] if difference else source[metric]
            if value >= 0:
                report.setdefault(name if difference else name + moment, value * scale)
    for key, name in (("prompt_tokens", "prompt tokens (usage)"), ("completion_tokens", "completion tokens (usage)")):
        value = end.usage.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            report[name] = float(value)
    return report


class RemoteRun(WatchedRun):
    """One prompt sent to a remote engine, read on a thread of its own; its chunks become Steps as
    they arrive (see the module's docstring for what each step means)."""

    def __init__(self, client: RemoteClient, prompt: str, settings: GenerationSettings, cancel: Any,
                 max_seconds: float = math.inf):
        super().__init__(max_seconds)
        self.client, self.prompt, self.settings, self.cancel = client, prompt, settings, cancel
        self.steps: list[Step] = []
        self.model_name = client.endpoint.name
        self.end = StreamEnd()
        self.reported: dict[str, float] = {}
        self.notes: list[str] = []
        self._tokens = 0
        threading.Thread(target=self._work, name="phasescope-remote", daemon=True).start()

    def _work(self) -> None:
        try:
            self.model_name = self.client.model_id()
            before = self.client.metrics()
            sent = time.perf_counter()
            during: list[dict[str, float]] = []
            for item in self.client.stream_chat(self.model_name, [{"role": "user", "content": self.prompt}],
                                                self.settings, self.cancel):
                if isinstance(item, StreamEnd):
                    self.end = item
                    break
                if not self.steps and before:   # the engine's gauges (KV cache, requests) while this run decodes
                    threading.Thread(target=lambda: during.append(self.client.metrics()), daemon=True).start()
                self._add(item, sent)
                sent = item.arrived
            self.reported = inside_figures(before, self.client.metrics(), self.end, during[0] if during else None)
            self.notes = self._checks()
        except BaseException as exc:      # reported to the caller, who shows it as a message
            self.error = exc
        finally:
            self._release()      # nothing of an engine here is held for it

    def stop(self) -> None:
        """Cancel and wait a moment: the reading thread leaves at the next line it reads (it holds
        nothing another run needs, so a silent server keeps only its own thread, until the time
        limit between chunks)."""
        if not self.done:
            self.cancel.set()
        with self._changed:
            self._changed.wait_for(lambda: self.done, timeout=1.0)

    def _add(self, chunk: Chunk, previous: float) -> None:
        first = not self.steps
        self._tokens += chunk.tokens
        self.steps.append(Step(phase="prefill" if first else "decode", index=len(self.steps),
                               tokens_in=0 if first else chunk.tokens, context_len=self._tokens,
                               ms=(chunk.arrived - previous) * 1e3, layer_ms=(), attn_ms=(), mlp_ms=(), other_ms=0.0,
                               kv_bytes=0, flops=0.0, bytes=0.0, token_id=0, text=chunk.text,
                               batch_rows=1, tokens_out=chunk.tokens))
        self._notify()

    def _checks(self) -> list[str]:
        """Where the server's own counts disagree with what its stream carried, say so."""
        claimed = self.end.usage.get("completion_tokens")
        notes = []
        if isinstance(claimed, int) and claimed != self._tokens and not self.cancel.is_set():
            notes.append(f"the server says it generated {claimed} tokens; its stream carried {self._tokens} "
                         "(the charts show the stream's)")
        prompt = self.end.usage.get("prompt_tokens")
        if prompt is not None and not (isinstance(prompt, int) and prompt > 0):
            notes.append(f"the server reported a prompt of {prompt!r} tokens, which cannot be: ignored")
        return notes

    @property
    def prompt_tokens(self) -> int:
        """The prompt's length as the engine counted it (usage, or llama.cpp's timings); 0 if it did not say."""
        for value in (self.end.usage.get("prompt_tokens"), self.end.timings.get("prompt_n")):
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return 0

    def trace(self) -> Trace:
        steps = tuple(self.steps)
        prompt_tokens = self.prompt_tokens
        if prompt_tokens and steps:       # the prefill step fed the prompt; contexts count it too
            steps = tuple(dataclasses.replace(s, tokens_in=prompt_tokens if s.index == 0 else s.tokens_in,
                                              context_len=s.context_len + prompt_tokens) for s in steps)
        if self.cancel.is_set():
            reason = "cancelled"
        else:
            reason = "length" if self.end.finish_reason == "length" else "eos"
        endpoint = self.client.endpoint
        return Trace(model=remote_model(self.model_name), device=remote_device(endpoint), settings=self.settings,
                     prompt_tokens=prompt_tokens, steps=steps, summary=Summary.of(steps, 1, reason), prompt=self.prompt,
                     engine=f"remote {endpoint.name} ({endpoint.root})", reported=dict(self.reported),
                     notes=tuple(self.notes))


def remote_trace(client: RemoteClient, prompt: str, settings: GenerationSettings,
                 on_text: Callable[[str], None] = lambda text: None) -> Trace:
    """One remote run to its end (the command line's, the sweep's): its trace, or RemoteError."""
    run = RemoteRun(client, prompt, settings, threading.Event())
    shown = 0
    for have in run.follow(0.05):
        for step in run.steps[shown:have]:
            on_text(step.text)
        shown = have
    for step in run.steps[shown:]:                # what came with its end
        on_text(step.text)
    if run.error is not None:
        raise run.error
    return run.trace()


def remote_sweep(client: RemoteClient, prompts: list[str], settings: GenerationSettings) -> Iterator[Trace]:
    """The prompt-length sweep against a remote engine: one run per prompt (their lengths are the
    engine's own count, from its usage figures)."""
    for prompt in prompts:
        yield remote_trace(client, prompt, settings)


def remote_model(name: str) -> ModelInfo:
    """What the page knows of a remote model: its name. Its size and shape are the server's business."""
    return ModelInfo(name=name, params=0, weight_bytes=0, dtype="unknown", layers=0, heads=0, kv_heads=0, head_dim=0)


def remote_device(endpoint: RemoteEndpoint) -> DeviceInfo:
    return DeviceInfo(type="remote", name=endpoint.name, peak_flops=0.0, peak_bytes_per_s=0.0,
                      source="not published by a remote engine")
