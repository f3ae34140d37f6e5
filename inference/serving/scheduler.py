"""The shared server's decisions, as pure functions of numbers (no model, no tensors, no threads):
whom to admit into the decode batch and how a prompt is cut into prefill pieces (between two
decode steps the server runs one piece of an unfinished prefill, else admits whom it can). `inference/serving/batching.py` executes what these decide; tests/test_scheduler.py checks
them without a model.

Admission is first come, first served: the head of the queue goes in when its rows fit the batch
and its KV cache, at its full length, fits what the admitted runs leave of the budget; nobody
overtakes it (a large run is never starved by small ones). A run that could never fit is refused
when it asks.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_rows: int               # sequences in one decode step (the fused kernel's rows)
    kv_budget: int              # bytes all admitted runs' KV caches may reach together


@dataclass(frozen=True)
class Ask:
    """What a run needs: its sequences, and its KV cache's bytes at its full length."""
    rows: int
    kv_bytes: int


def refusal(ask: Ask, limits: Limits) -> str | None:
    """Why a run can never be admitted here, or None."""
    if ask.rows > limits.max_rows:
        return f"this run has {ask.rows} sequences; a shared step holds at most {limits.max_rows}"
    if ask.kv_bytes > limits.kv_budget:
        return (f"this run's KV cache could grow to {ask.kv_bytes / 1e9:.2f} GB, more than this server's budget of "
                f"{limits.kv_budget / 1e9:.2f} GB: ask for fewer tokens or copies")
    return None


def admissible(admitted: list[Ask], waiting: list[Ask], limits: Limits) -> int:
    """How many runs at the head of `waiting` go in now, beside `admitted`, in order."""
    rows, kv = sum(a.rows for a in admitted), sum(a.kv_bytes for a in admitted)
    count = 0
    for ask in waiting:
        if rows + ask.rows > limits.max_rows or kv + ask.kv_bytes > limits.kv_budget:
            break
        rows, kv, count = rows + ask.rows, kv + ask.kv_bytes, count + 1
    return count


def piece_end(prefilled: int, prompt_tokens: int, chunk: int) -> int:
    """Where the next prefill piece of a prompt ends: the whole rest, or `chunk` more tokens."""
    return prompt_tokens if chunk <= 0 else min(prompt_tokens, prefilled + chunk)
