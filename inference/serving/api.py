"""The embedded engine behind an OpenAI-compatible HTTP API: `GET /v1/models`, `POST
/v1/chat/completions` and `/v1/completions` (streamed as server-sent events, or whole), and
`GET /metrics` (Prometheus, vLLM's names: serving/metrics.py). Mounted beside the page by app.py
and served alone by `python -m inference serve`.

A request goes through the same front door as the page's runs (serving/door.py), so it joins the
class's shared batch and shows on the Class tab as an API run. The operator bounds it (requests at
once, max_tokens; ServerConfig) and may ask for a key. A bad request gets OpenAI's error shape
(openai_wire.py) with a message that names what is wrong; a client that leaves mid-stream cancels
its run, and the batch goes on.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import statistics
import threading
import time
from typing import Any, AsyncIterator, Callable

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from inference.serving import openai_wire as wire
from inference.serving.background import WatchedRun
from inference.serving.door import prepare, start
from inference.serving.metrics import CONTENT_TYPE, RequestTimes, serving_metrics
from inference.serving.openai_wire import ApiError, ApiLimits, CompletionRequest, StopText
from inference.serving.server_config import ServerConfig
from inference.trace import Trace

FOLLOW_S = 0.5                  # how long a stream waits for the next step before it looks again


class ApiService:
    """The API of one server: its engine (None while it loads), its configuration (read on every
    request: the operator's flags and a model switch replace it), the requests under way."""

    def __init__(self, engine: Callable[[], Any], config: Callable[[], ServerConfig]):
        self.engine, self.config = engine, config
        self._runs: list[WatchedRun] = []         # the API's runs not known to have ended
        self._starting = 0                        # requests between their slot and their run
        self._lock = threading.Lock()

    def router(self) -> APIRouter:
        router = APIRouter()
        router.add_api_route("/v1/models", self.models, methods=["GET"])
        router.add_api_route("/v1/chat/completions", self.chat, methods=["POST"])
        router.add_api_route("/v1/completions", self.completions, methods=["POST"])
        router.add_api_route("/metrics", self.metrics, methods=["GET"])
        return router

    async def models(self, request: Request) -> Response:
        try:
            self._check_key(request)
        except ApiError as error:
            return _error(error)
        engine, config = self.engine(), self.config()
        info = engine.loaded.info if engine is not None else None
        model = {"id": info.name if info else config.model, "object": "model", "created": 0, "owned_by": "phasescope",
                 "max_model_len": info.max_context if info else None}
        return JSONResponse({"object": "list", "data": [model]})

    async def metrics(self, request: Request) -> Response:
        try:
            self._check_key(request)
        except ApiError as error:
            return _error(error)
        engine = self.engine()
        body = serving_metrics(engine).exposition() if engine is not None else b""
        return Response(body, media_type=CONTENT_TYPE)

    async def chat(self, request: Request) -> Response:
        return await self._complete(request, "chat")

    async def completions(self, request: Request) -> Response:
        return await self._complete(request, "completion")

    async def _complete(self, http: Request, kind: str) -> Response:
        try:
            return await self._answer(http, kind)
        except Exception as exc:          # a fault of ours: the OpenAI shape still, and the next request runs
            return _error(ApiError(500, f"the server failed: {type(exc).__name__}: {exc}"))

    async def _answer(self, http: Request, kind: str) -> Response:
        try:
            self._check_key(http)
            engine = self._ready_engine()
            config = self.config()
            limits = ApiLimits(config.api_max_concurrent, config.api_max_tokens)
            try:
                body = json.loads(await http.body())
            except ValueError as exc:
                raise ApiError(400, f"the request body is not JSON: {exc}") from None
            request = wire.parse_request(body, kind, engine.loaded.info.name, limits)
            ids = await anyio.to_thread.run_sync(_prompt_ids, engine, request)
            request = _fit(engine, request, ids)
            self._take_slot(limits)
        except ApiError as error:
            return _error(error)
        run = None
        try:
            run = self._start(engine, config, request, ids)
        except ApiError as error:
            return _error(error)
        finally:
            self._started(run)
        if request.stream:
            return StreamingResponse(self._stream(run, request), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await self._whole(run, request)

    def _check_key(self, http: Request) -> None:
        key = self.config().api_key
        if key and http.headers.get("authorization", "") != f"Bearer {key}":
            raise ApiError(401, "this server asks for an API key: send it as `Authorization: Bearer KEY` "
                                "(the openai package's api_key)", code="invalid_api_key")

    def _ready_engine(self) -> Any:
        if self.config().zero_gpu:
            raise ApiError(503, "the API is not offered on a ZeroGPU Space: there each run needs a GPU worker of its "
                                "own, which only the page asks for; duplicate the Space onto a CPU or a dedicated GPU")
        engine = self.engine()
        if engine is None:
            raise ApiError(503, "the model is still loading: try again in a few seconds")
        return engine

    @property
    def in_flight(self) -> int:
        """API requests under way: starting, or their runs not ended (a slot is free when its run
        has ended, however its client left)."""
        with self._lock:
            self._runs = [run for run in self._runs if not run.done]
            return len(self._runs) + self._starting

    def _take_slot(self, limits: ApiLimits) -> None:
        with self._lock:
            self._runs = [run for run in self._runs if not run.done]
            if len(self._runs) + self._starting >= limits.max_concurrent:
                raise ApiError(429, f"this server takes at most {limits.max_concurrent} API requests at once: "
                                    "try again when one has finished", code="too_many_requests")
            self._starting += 1

    def _started(self, run: WatchedRun | None) -> None:
        with self._lock:
            self._starting -= 1
            if run is not None:
                self._runs.append(run)

    def _start(self, engine: Any, config: ServerConfig, request: CompletionRequest, ids: list[int]) -> WatchedRun:
        try:
            plan = prepare(engine, ids, request.settings, request.prompt_text, alone=config.why_alone)
            return start(engine, plan, threading.Event(), config.max_run_seconds, config.prefill_chunk,
                         prefix_cache=config.prefix_cache, source="api")
        except ValueError as exc:
            raise ApiError(400, str(exc), "messages" if request.kind == "chat" else "prompt") from None

    async def _stream(self, run: WatchedRun, request: CompletionRequest) -> AsyncIterator[str]:
        """The run's text as server-sent events, step by step; a client that leaves cancels it."""
        answer = _Answer(run, request)
        try:
            async for text in answer.pieces():
                yield _event(wire.chunk(request, text, first=answer.sent == 1))
            if run.error is not None:
                yield _event(_failed(run).body())
            else:
                yield _event(wire.chunk(request, None if request.kind == "chat" else "", answer.finish_reason,
                                        first=answer.sent == 0))
                if request.include_usage:
                    yield _event(wire.usage_chunk(request, answer.usage(), answer.timing()))
            yield "data: [DONE]\n\n"
        finally:
            if not run.done:
                run.cancel.set()              # the client left, or the stream broke: the batch goes on without it

    async def _whole(self, run: WatchedRun, request: CompletionRequest) -> Response:
        answer = _Answer(run, request)
        text = "".join([piece async for piece in answer.pieces()])
        if run.error is not None:
            return _error(_failed(run))
        return JSONResponse(wire.response(request, text, answer.finish_reason, answer.usage(), answer.timing()))


class _Answer:
    """A run's text as it streams, cut at the request's stop strings, and what it counted."""

    def __init__(self, run: WatchedRun, request: CompletionRequest):
        self.run, self.request = run, request
        self.stop = StopText(request.stop)
        self.tokens = 0
        self.sent = 0                   # pieces of text handed out
        self.stopped = False            # a stop string ended it

    async def pieces(self) -> AsyncIterator[str]:
        have, run = 0, self.run
        while not self.stopped:
            await anyio.to_thread.run_sync(run.wait_for_steps, have, FOLLOW_S)
            steps = run.steps[have:]
            have += len(steps)
            for step in steps:
                self.tokens += step.tokens_out
                text, self.stopped = self.stop.push(step.text)
                if self.stopped:
                    run.cancel.set()
                if text:
                    self.sent += 1
                    yield text
                if self.stopped:
                    return
            if run.done and have == len(run.steps):
                break
        tail = self.stop.flush()
        if tail:
            self.sent += 1
            yield tail

    @functools.cached_property
    def trace(self) -> Trace:
        """The run's trace, once it has ended (what the last chunk reports is read from it)."""
        return self.run.trace()

    @property
    def finish_reason(self) -> str:
        return "stop" if self.stopped else wire.FINISH.get(self.trace.summary.stop_reason, "length")

    def usage(self) -> dict[str, Any]:
        run = self.run
        return wire.usage(len(run.prompt_ids), self.tokens, getattr(run, "hit_tokens", 0))

    def timing(self) -> dict[str, Any]:
        """The engine's own timing of this request (PhaseScope's extension of the usage chunk)."""
        trace = self.trace
        times = RequestTimes.of(self.run, trace)
        decode = trace.decode_steps
        ms = lambda seconds: round(seconds * 1e3, 3)
        return {"queue_ms": ms(times.queue_s), "prefill_ms": ms(times.prefill_s), "ttft_ms": ms(times.ttft_s),
                "decode_ms": ms(times.decode_s), "decode_ms_median": round(trace.summary.decode_ms_median, 3),
                "decode_ms_p90": round(trace.summary.decode_ms_p90, 3),
                "batch_rows_median": statistics.median([s.batch_rows for s in decode]) if decode else 0,
                "cached_prompt_tokens": trace.reused_tokens, "serving": trace.serving,
                "cpu_wait_ms": round(sum(s.cpu_wait_ms for s in trace.steps), 3)}


def _prompt_ids(engine: Any, request: CompletionRequest) -> list[int]:
    from inference.prompts import conversation_ids

    tokenizer = engine.loaded.tokenizer
    try:
        if request.kind == "chat":
            return conversation_ids(tokenizer, list(request.messages))
        if isinstance(request.prompt, tuple):
            vocab = engine.loaded.info.vocab or len(tokenizer)
            if max(request.prompt) >= vocab:
                raise ApiError(400, f"token id {max(request.prompt)} is not in this model's vocabulary "
                                    f"(0 to {vocab - 1})", "prompt")
            return list(request.prompt)
        return list(tokenizer(request.prompt)["input_ids"])
    except (ValueError, TypeError) as exc:          # a chat template that refuses the roles' order, say
        raise ApiError(400, f"the messages cannot be put in this model's chat template: {exc}", "messages") from None


def _fit(engine: Any, request: CompletionRequest, ids: list[int]) -> CompletionRequest:
    """Without max_tokens, the answer may take the limit or the context's room, whichever is less."""
    room = (engine.loaded.info.max_context or 0) - len(ids)
    param = "messages" if request.kind == "chat" else "prompt"
    if engine.loaded.info.max_context and room < 1:
        raise ApiError(400, f"the prompt is {len(ids):,} tokens, but {engine.loaded.info.name} holds at most "
                            f"{engine.loaded.info.max_context:,} tokens of context", param, "context_length_exceeded")
    if request.max_tokens_given or not engine.loaded.info.max_context or room >= request.settings.max_new_tokens:
        return request
    settings = dataclasses.replace(request.settings, max_new_tokens=room)
    return dataclasses.replace(request, settings=settings)


def _failed(run: WatchedRun) -> ApiError:
    return ApiError(500, f"the run failed: {type(run.error).__name__}: {run.error}")


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _error(error: ApiError) -> JSONResponse:
    headers = {"Retry-After": "5"} if error.status in (429, 503) else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def serve_alone(service: ApiService, host: str, port: int) -> Any:
    """The API alone (no page) on `host:port`, served by uvicorn on a thread of its own (the
    engine's runs keep the main thread); returns the uvicorn server (`should_exit = True` stops it)."""
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI(title="PhaseScope", docs_url=None, redoc_url=None)
    app.include_router(service.router())
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="phasescope-api", daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.05)
    if not server.started:
        raise OSError(f"the API could not listen on {host}:{port} (is the port taken?)")
    return server
