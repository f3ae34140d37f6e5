"""The OpenAI API's shapes, as vLLM's `entrypoints/openai` serves them: a request body checked and
turned into a run's settings (ApiError with the OpenAI error shape otherwise), the response and
the streamed chunks, and `stop` strings found in the streamed text. Pure: no HTTP, no model."""
from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from inference.settings import GenerationSettings

MAX_STOPS = 4                   # as OpenAI's API
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
FINISH = {"eos": "stop", "length": "length", "stop": "stop", "cancelled": "length"}   # a time limit ends it early


class ApiError(Exception):
    """A request refused, as OpenAI's API says it: an HTTP status and {"error": {...}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                             429: "rate_limit_error"}.get(status, "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ApiLimits:
    """What the operator allows one API client (ServerConfig's api_* fields)."""
    max_concurrent: int = 8
    max_tokens: int = 512


@dataclass(frozen=True)
class CompletionRequest:
    """A checked request: a chat's messages or a completion's prompt, and how to run it."""
    kind: str                                   # "chat" (/v1/chat/completions) or "completion" (/v1/completions)
    model: str
    settings: GenerationSettings
    messages: tuple[dict[str, str], ...] = ()
    prompt: str | tuple[int, ...] = ""
    max_tokens_given: bool = False              # else the smaller of the limit and the room left in the context
    stream: bool = False
    include_usage: bool = False
    stop: tuple[str, ...] = ()
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def prompt_text(self) -> str:
        """The request's text as the page's trace keeps it (the last user message, or the prompt)."""
        if self.kind == "chat":
            return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")
        return self.prompt if isinstance(self.prompt, str) else ""


def parse_request(body: Any, kind: str, served: str, limits: ApiLimits) -> CompletionRequest:
    """`body` (parsed JSON) as a request for the model called `served`; ApiError (400, or 404 for
    another model) naming the bad parameter otherwise."""
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    model = body.get("model", served)
    if model != served:
        raise ApiError(404, f"The model {model!r} does not exist here: this server serves {served!r} "
                            "(GET /v1/models)", "model", "model_not_found")
    _refuse_unoffered(body)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    given = max_tokens is not None
    if given and (not _is_int(max_tokens) or not 1 <= max_tokens <= limits.max_tokens):
        raise ApiError(400, f"max_tokens must be a whole number from 1 to {limits.max_tokens} on this server, "
                            f"got {max_tokens!r}", "max_tokens")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    seed = body.get("seed")
    if seed is not None and (not _is_int(seed) or seed < 0):
        raise ApiError(400, f"seed must be a whole number of at least 0, got {seed!r}", "seed")
    try:
        settings = GenerationSettings(max_new_tokens=max_tokens if given else limits.max_tokens,
                                      temperature=temperature, top_p=top_p,
                                      seed=secrets.randbelow(2**31) if seed is None else seed)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    stream = body.get("stream", False)
    options = body.get("stream_options") or {}
    if not isinstance(stream, bool) or not isinstance(options, dict):
        raise ApiError(400, "stream must be true or false and stream_options an object", "stream")
    fields: dict[str, Any] = {"messages": _messages(body.get("messages"))} if kind == "chat" else \
        {"prompt": _prompt(body.get("prompt"))}
    return CompletionRequest(kind, served, settings, max_tokens_given=given, stream=stream,
                             include_usage=bool(options.get("include_usage")) and stream, stop=_stops(body.get("stop")),
                             **fields)


def _refuse_unoffered(body: dict[str, Any]) -> None:
    """Parameters that would change the answer, which this engine does not offer: refused, not ignored."""
    n = body.get("n", 1)
    if n != 1:
        raise ApiError(400, f"n must be 1 here (one answer a request), got {n!r}", "n")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise ApiError(400, "logprobs are not offered by PhaseScope's engine", "logprobs")
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name):
            raise ApiError(400, f"{name} is not offered by PhaseScope's engine (leave it 0)", name)
    if body.get("tools") or body.get("response_format") not in (None, {"type": "text"}):
        raise ApiError(400, "tools and structured output are not offered by PhaseScope's engine", "tools")
    if body.get("echo") or body.get("best_of", 1) != 1 or body.get("suffix"):
        raise ApiError(400, "echo, best_of and suffix are not offered by PhaseScope's engine", "echo")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ApiError(400, f"{name} must be a number from {low:g} to {high:g}, got {value!r}", name)
    if name == "top_p" and value == 0:
        raise ApiError(400, "top_p must be above 0 (it is the share of probability kept), got 0", name)
    return float(value)


def _messages(messages: Any) -> tuple[dict[str, str], ...]:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content}", "messages")
    checked = []
    for n, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise ApiError(400, f"messages[{n}].role must be one of {', '.join(ROLES)}, got {role!r}", "messages")
        checked.append({"role": ROLES[role], "content": _content(message.get("content"), n)})
    return tuple(checked)


def _content(content: Any, n: int) -> str:
    """A message's text: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise ApiError(400, f"messages[{n}].content must be text (a string or a list of text parts): this model reads "
                        "nothing else", "messages")


def _prompt(prompt: Any) -> str | tuple[int, ...]:
    """A completion's prompt: a string or token ids (a list of one of either is the same)."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str) and prompt:
        return prompt
    if isinstance(prompt, list) and prompt and all(_is_int(t) and t >= 0 for t in prompt):
        return tuple(prompt)
    raise ApiError(400, "prompt must be one non-empty string (or one list of token ids): one prompt a request here",
                   "prompt")


def _stops(stop: Any) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, f"stop must be a string or a list of at most {MAX_STOPS} non-empty strings, got {stop!r}",
                       "stop")
    return tuple(stops)


class StopText:
    """Finds the request's stop strings in text streamed piece by piece: `push` returns what may be
    sent now (holding back a tail that could still begin a stop string) and whether one was found
    (the text ends before it); `flush` the tail held back at the end."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops, self.held = stops, ""

    def push(self, text: str) -> tuple[str, bool]:
        text = self.held + text
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if found:
            self.held = ""
            return text[:min(found)], True
        keep = max((n for s in self.stops for n in range(1, min(len(s), len(text) + 1))
                    if text.endswith(s[:n])), default=0)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens, "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def chunk(request: CompletionRequest, text: str | None, finish_reason: str | None = None,
          first: bool = False) -> dict[str, Any]:
    """One streamed chunk with `text` (the first also names the assistant's role), or the last, with
    why the answer finished."""
    if request.kind == "chat":
        delta: dict[str, str] = {"role": "assistant"} if first else {}
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        obj = "chat.completion.chunk"
    else:
        choice, obj = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}, "text_completion"
    return {"id": _id(request), "object": obj, "created": request.created, "model": request.model, "choices": [choice]}


def usage_chunk(request: CompletionRequest, counts: dict[str, Any], timing: dict[str, Any]) -> dict[str, Any]:
    """The stream's last chunk: no choices, the usage counts, and the engine's own timing of the
    request (the `phasescope` extension; a client that does not know it ignores it)."""
    return {"id": _id(request), "object": "chat.completion.chunk" if request.kind == "chat" else "text_completion",
            "created": request.created, "model": request.model, "choices": [], "usage": counts, "phasescope": timing}


def response(request: CompletionRequest, text: str, finish_reason: str, counts: dict[str, Any],
             timing: dict[str, Any]) -> dict[str, Any]:
    """The whole answer at once (`stream` false)."""
    if request.kind == "chat":
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                                  "finish_reason": finish_reason}
        obj = "chat.completion"
    else:
        choice, obj = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}, "text_completion"
    return {"id": _id(request), "object": obj, "created": request.created, "model": request.model, "choices": [choice],
            "usage": counts, "phasescope": timing}


def _id(request: CompletionRequest) -> str:
    return f"{'chatcmpl' if request.kind == 'chat' else 'cmpl'}-{request.id}"
