"""Turning what the user asked into prompt token ids.

A typed prompt goes through the model's chat template (as one user message) when it has one.
A prompt of exactly T tokens is cut from a fixed public-domain text (assets/prompt_text.txt,
repeated as needed) so that sweeps are reproducible.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

PROMPT_TEXT = Path(__file__).resolve().parent.parent / "assets" / "prompt_text.txt"
MAX_PROMPT_CHARS = 100_000
DEFAULT_PROMPT = "Explain in three sentences why the sky is blue."     # the page's, and the dtype trial's


def check_prompt_text(prompt: object) -> str:
    """The prompt as given, or ValueError saying what is wrong with it."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty: type a question or some text")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"the prompt is {len(prompt):,} characters; the limit is {MAX_PROMPT_CHARS:,}")
    return prompt


def chat_prompt_ids(tokenizer: Any, prompt: str, context: str = "") -> list[int]:
    """A typed prompt as one user message, after the class's shared `context` (a system message)
    where there is one."""
    check_prompt_text(prompt)
    return conversation_ids(tokenizer, [*_system(context), {"role": "user", "content": prompt}])


def context_prefix_ids(tokenizer: Any, context: str = "") -> list[int]:
    """The tokens every chat prompt after `context` starts with, whatever its question: the chat
    template's opening (its system prompt, SmolLM2's by default) up to the question's first token."""
    if not context.strip() and not getattr(tokenizer, "chat_template", None):
        return []                                 # the prompt is the question's text alone
    a, b = (conversation_ids(tokenizer, [*_system(context), {"role": "user", "content": q}]) for q in ("A", "Z"))
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return a[:n]


def _system(context: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": context}] if context.strip() else []


def conversation_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """A conversation so far (user and assistant messages), ready for the assistant's next answer."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer("\n".join(m["content"] for m in messages))["input_ids"])


def fixed_length_prompt_text(tokenizer: Any, n_tokens: int) -> str:
    """The fixed text of exactly `n_tokens` tokens in this tokenizer, as text (for an engine that
    tokenizes for itself: about `n_tokens` in its own tokenizer)."""
    return tokenizer.decode(fixed_length_prompt_ids(tokenizer, n_tokens))


def fixed_length_prompt_ids(tokenizer: Any, n_tokens: int) -> list[int]:
    """Exactly `n_tokens` ids of the fixed text, tiled when the text is shorter."""
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        raise ValueError(f"prompt tokens must be a whole number of at least 1, got {n_tokens!r}")
    ids = list(tokenizer(PROMPT_TEXT.read_text(), add_special_tokens=False)["input_ids"])
    repeats = -(-n_tokens // len(ids))
    return (ids * repeats)[:n_tokens]
