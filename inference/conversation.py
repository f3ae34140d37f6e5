"""One browser session's conversation: its messages so far and the KV cache its last turn left.

Each turn's prompt is the whole conversation (through the chat template); the engine prefills only
what the last turn's cache does not hold (`CachedPrefix`), and the trace says how many prompt tokens
it reused. Gradio deep-copies state values and a ZeroGPU worker gets a pickled copy: a deep copy is
the same conversation, and a pickled one leaves the cache behind (a worker's cache would be lost with
the worker), so there every turn prefills everything.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inference.engine import CachedPrefix
from inference.prompts import check_prompt_text, conversation_ids
from inference.trace import Trace


@dataclass(frozen=True)
class Turn:
    prompt_tokens: int
    reused_tokens: int
    ttft_ms: float


class Conversation:
    def __init__(self) -> None:
        self.messages: list[dict[str, str]] = []
        self.prefix: CachedPrefix | None = None
        self.turns: list[Turn] = []

    def prompt_ids(self, tokenizer: Any, prompt: str) -> list[int]:
        """The ids of the conversation so far with `prompt` as the next user message."""
        check_prompt_text(prompt)
        return conversation_ids(tokenizer, [*self.messages, {"role": "user", "content": prompt}])

    def add(self, prompt: str, trace: Trace, prefix: CachedPrefix | None, keep_cache: bool) -> None:
        self.messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": trace.text}]
        self.prefix = prefix if keep_cache else None
        self.turns.append(Turn(trace.prompt_tokens, trace.reused_tokens, trace.summary.ttft_ms))

    def reset(self) -> None:
        self.messages, self.prefix, self.turns = [], None, []

    def summary(self) -> str:
        """One line for the page: this turn's reuse and TTFT, beside the first turn's."""
        if not self.turns:
            return ""
        last, first = self.turns[-1], self.turns[0]
        text = (f" · turn {len(self.turns)}: {last.reused_tokens:,} of {last.prompt_tokens:,} prompt tokens reused from "
                f"the cache, {last.prompt_tokens - last.reused_tokens:,} prefilled, TTFT {last.ttft_ms:.0f} ms")
        return text + (f" (turn 1: {first.prompt_tokens:,} prefilled, {first.ttft_ms:.0f} ms)" if len(self.turns) > 1 else "")

    def __deepcopy__(self, memo: dict) -> Conversation:
        return self

    def __getstate__(self) -> dict:
        return {**self.__dict__, "prefix": None}
