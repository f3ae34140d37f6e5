"""The HTTP side: an OpenAI-compatible stream or Ollama's native one, read chunk by chunk, and the
engine's metrics before and after."""
from __future__ import annotations

import json
import time
from typing import Any, Iterator

import httpx

from inference.remote.endpoints import CHUNK_TIMEOUT_S, CONNECT_TIMEOUT_S, RemoteEndpoint, RemoteError
from inference.remote.metrics import parse_prometheus
from inference.remote.wire import Chunk, StreamEnd, request_body
from inference.settings import GenerationSettings


class _Refused(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(status, detail)
        self.status, self.detail = status, detail


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
            # A server that does not know an extra (per-token logprobs, then usage in the stream)
            # refuses it: ask again without it (chunks then count as one token each).
            for extras in (("logprobs", "top_logprobs"), ("stream_options",), None):
                try:
                    yield from self._stream(body, cancel)
                    return
                except _Refused as refused:
                    if refused.status not in (400, 422) or extras is None:
                        raise
                    body = {k: v for k, v in body.items() if k not in extras}
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
        if isinstance(message.get("phasescope"), dict):
            end.phasescope = message["phasescope"]
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
