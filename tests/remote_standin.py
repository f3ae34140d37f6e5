"""A recording of a real serving engine's stream, and a stand-in server that replays it.

Recording (done once against a real engine; the files live in tests/data/):
    python tests/remote_standin.py record http://127.0.0.1:8931 tests/data/remote-llamacpp.json
sends the request PhaseScope sends (inference/remote/wire.py's `request_body`) and keeps every line of
the stream with the milliseconds since the request left, and the engine's /metrics before and after.

The stand-in (`StandIn`) serves that recording on a loopback port as an OpenAI-compatible server,
with the recorded gaps between lines, or misbehaves on purpose (`behaviour`): the bad servers the
client must survive. Nothing here reaches the network.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data"

BEHAVIOURS = ("replay", "http500", "not-json", "no-choices", "cut", "silent", "liar", "error-chunk", "slow", "strict",
              "ollama")


def load_recording(name: str) -> dict[str, Any]:
    return json.loads((DATA / name).read_text())


class StandIn:
    """An OpenAI-compatible server on 127.0.0.1 that replays `recording` (see BEHAVIOURS)."""

    def __init__(self, recording: dict[str, Any], behaviour: str = "replay", silent_s: float = 3.0):
        assert behaviour in BEHAVIOURS, behaviour
        self.recording, self.behaviour, self.silent_s = recording, behaviour, silent_s
        self.requests: list[dict[str, Any]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _lines(self) -> list[tuple[float, str]]:
        lines = [(t, line) for t, line in self.recording["lines"]]
        data = [i for i, (_, line) in enumerate(lines) if line.startswith("data: {")]
        if self.behaviour == "not-json":
            lines[data[3]] = (lines[data[3]][0], "data: {this is not json")
        elif self.behaviour == "no-choices":
            lines[data[3]] = (lines[data[3]][0], 'data: {"id": "x", "object": "chat.completion.chunk"}')
        elif self.behaviour == "error-chunk":
            lines[data[3]] = (lines[data[3]][0], 'data: {"error": {"message": "out of KV cache blocks"}}')
        elif self.behaviour == "strict":            # no logprobs were asked for, none are sent
            lines = [(t, line.replace('"logprobs":{', '"ignored":{')) for t, line in lines]
        elif self.behaviour == "cut":
            lines = lines[: data[4]]
        elif self.behaviour == "liar":
            usage = {"prompt_tokens": -5, "completion_tokens": 999, "total_tokens": 994}
            last = lines[data[-1]][0]
            lines.insert(data[-1] + 1, (last, "data: " + json.dumps({"id": "x", "choices": [], "usage": usage})))
        return lines

    def ollama_lines(self) -> str:
        """The recording's text as Ollama's /api/chat would stream it (its documented shape, not a
        recording of Ollama: no Ollama runs here), ending with its durations in nanoseconds."""
        texts = [json.loads(line[6:])["choices"][0]["delta"].get("content") for _, line in self.recording["lines"]
                 if line.startswith("data: {") and json.loads(line[6:])["choices"]]
        lines = [{"model": self.recording["model"], "message": {"role": "assistant", "content": t}, "done": False}
                 for t in texts if t]
        lines.append({"model": self.recording["model"], "message": {"role": "assistant", "content": ""}, "done": True,
                      "done_reason": "stop", "total_duration": 612_000_000, "load_duration": 21_000_000,
                      "prompt_eval_count": 37, "prompt_eval_duration": 98_000_000, "eval_count": 8,
                      "eval_duration": 480_000_000})
        return "".join(json.dumps(line) + "\n" for line in lines)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: str, kind: str = "application/json") -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/api/version" and standin.behaviour == "ollama":
                    self._send(200, '{"version": "0.12.0"}')
                elif self.path == "/v1/models":
                    self._send(200, json.dumps({"object": "list", "data": [{"id": standin.recording["model"]}]}))
                elif self.path == "/metrics" and standin.recording.get("metrics_after"):
                    # Before the first request the counters read as recorded before it, after it as after.
                    after = bool(standin.requests) and standin.behaviour == "replay"
                    self._send(200, standin.recording["metrics_after" if after else "metrics_before"], "text/plain")
                else:
                    self._send(404, '{"detail": "Not Found"}')

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                standin.requests.append(body)
                if standin.behaviour == "ollama":
                    self._send(200, standin.ollama_lines(), "application/x-ndjson")
                    return
                if standin.behaviour == "http500":
                    self._send(500, '{"error": {"message": "the engine is overloaded"}}')
                    return
                if standin.behaviour == "strict" and "logprobs" in body:     # knows no extras
                    self._send(400, '{"error": {"message": "unknown field: logprobs"}}')
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                start = time.perf_counter()
                try:
                    for i, (at_ms, line) in enumerate(standin._lines()):
                        if standin.behaviour == "silent" and i == 3:
                            time.sleep(standin.silent_s)
                        wait = at_ms / 1e3 * (4 if standin.behaviour == "slow" else 1) - (time.perf_counter() - start)
                        if wait > 0:
                            time.sleep(wait)
                        self.wfile.write(f"{line}\n\n".encode())
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass                     # the client went away (Stop): fine
                self.close_connection = True

        return Handler


def record(url: str, out: str, prompt: str = "What is the capital of France?", max_tokens: int = 24) -> None:
    import httpx

    from inference.remote import RemoteClient, RemoteEndpoint, request_body
    from inference.settings import GenerationSettings

    client = RemoteClient(RemoteEndpoint("recorded", url))
    model = client.model_id()
    metrics = lambda: (httpx.get(f"{client.endpoint.root}/metrics").text
                       if httpx.get(f"{client.endpoint.root}/metrics").status_code == 200 else "")
    before = metrics()
    settings = GenerationSettings(max_new_tokens=max_tokens)
    body = request_body(model, [{"role": "user", "content": prompt}], settings)
    lines = []
    start = time.perf_counter()
    with httpx.stream("POST", f"{client.endpoint.api}/chat/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line:
                lines.append([round((time.perf_counter() - start) * 1e3, 3), line])
    recording = {"engine": sys.argv[4] if len(sys.argv) > 4 else url, "model": model, "request": body,
                 "lines": lines, "metrics_before": before, "metrics_after": metrics()}
    Path(out).write_text(json.dumps(recording, indent=1) + "\n")


if __name__ == "__main__" and sys.argv[1:2] == ["record"]:
    record(sys.argv[2], sys.argv[3])
