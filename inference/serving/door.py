"""The front door for a run on the embedded engine: prepared once, then started.

`prepare` fits the prompt to the model (ValueError with both lengths otherwise) and routes the run:
into the server's shared batch, or alone, with the reason in one line, which its trace keeps as
`serving_why`. `start` hands the plan to the batch server or to a background run; either is then
followed the same way (a WatchedRun: steps as they come, Stop, the time limit).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from inference.engine import CachedPrefix, Engine
from inference.serving.background import BackgroundRun, WatchedRun
from inference.serving.batching import batch_server
from inference.settings import GenerationSettings


@dataclass(frozen=True)
class Plan:
    """A run as it will go: its prompt, its settings, where it runs ("batched" or "solo") and why."""
    prompt_ids: tuple[int, ...]
    settings: GenerationSettings
    route: str
    why: str
    prompt: str = ""
    reuse: CachedPrefix | None = None


def prepare(engine: Engine, prompt_ids: list[int], settings: GenerationSettings, prompt: str = "", *,
            solo: bool = False, turn: bool = False, reuse: CachedPrefix | None = None) -> Plan:
    """The plan for a run (ValueError if it cannot run here). `solo`: the server takes one run at a
    time; `turn`: a conversation's turn, which runs alone on its own cache (`reuse`, if any)."""
    engine.check_fits(len(prompt_ids), settings.max_new_tokens)
    server = batch_server(engine)
    why_alone = ("this server runs one run at a time (solo mode)" if solo else
                 "a conversation's turn runs alone, on its own KV cache" if turn else server.why_alone(settings))
    if why_alone:
        return Plan(tuple(prompt_ids), settings, "solo", why_alone, prompt, reuse)
    step = "the fused kernel's step" if server.stack == "fused" else "a plain PyTorch step"
    return Plan(tuple(prompt_ids), settings, "batched", f"decode steps shared with the server's other runs ({step})",
                prompt)


def start(engine: Engine, plan: Plan, cancel: Any, max_seconds: float = math.inf, prefill_chunk: int = 0) -> WatchedRun:
    """Start the planned run (ValueError if the shared batch could never hold it)."""
    ids = list(plan.prompt_ids)
    if plan.route == "batched":
        server = batch_server(engine)
        server.prefill_chunk = prefill_chunk
        return server.submit(ids, plan.settings, cancel, plan.prompt, max_seconds, why=plan.why)
    run = engine.generate(ids, plan.settings, cancel=cancel, prompt=plan.prompt, reuse=plan.reuse, why=plan.why)
    return BackgroundRun(run, max_seconds=max_seconds)
