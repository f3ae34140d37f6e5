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

The rooms: endpoints.py (who may be asked), wire.py (the request and the stream's records),
client.py (HTTP and the two streaming protocols), metrics.py (Prometheus and the engines' own
figures), run.py (a run and its trace).
"""
from inference.remote.client import RemoteClient
from inference.remote.endpoints import (CHUNK_TIMEOUT_S, CONNECT_TIMEOUT_S, RemoteEndpoint, RemoteError,
                                        parse_remotes)
from inference.remote.metrics import inside_figures, parse_prometheus
from inference.remote.run import RemoteRun, remote_device, remote_model, remote_sweep, remote_trace
from inference.remote.wire import Chunk, StreamEnd, request_body

__all__ = ["CHUNK_TIMEOUT_S", "CONNECT_TIMEOUT_S", "Chunk", "RemoteClient", "RemoteEndpoint", "RemoteError", "RemoteRun",
           "StreamEnd", "inside_figures", "parse_prometheus", "parse_remotes", "remote_device", "remote_model",
           "remote_sweep", "remote_trace", "request_body"]
