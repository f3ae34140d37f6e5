"""What travels: the request body of an OpenAI-compatible chat stream, and what a stream gives back
(its chunks with text, as they arrived, and what its end reported)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from inference.settings import GenerationSettings


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
    phasescope: dict[str, Any] = field(default_factory=dict)     # a PhaseScope server's own timing of the request


def request_body(model: str, messages: list[dict[str, str]], settings: GenerationSettings) -> dict[str, Any]:
    """A streamed chat completion that also asks for the usage counts at the end and each token's
    logprob (so that a chunk says how many tokens it carries)."""
    return {"model": model, "messages": messages, "stream": True, "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature, "top_p": settings.top_p, "seed": settings.seed,
            "stream_options": {"include_usage": True}, "logprobs": True, "top_logprobs": 0}
