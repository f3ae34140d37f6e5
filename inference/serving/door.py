"""The front door for a run on the embedded engine: prepared once, then started.

`prepare` fits the prompt to the model (ValueError with both lengths otherwise) and routes the run:
into the server's shared batch, or alone, with the reason in one line, which its trace keeps as
`serving_why`. `start` hands the plan to the batch server or to a background run; either is then
followed the same way (a WatchedRun: steps as they come, Stop, the time limit). `here` gives a plan
that goes alone to the caller to iterate on its own thread (the command line).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from inference.engine import CachedPrefix, Engine, GenerationRun
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
            alone: str = "", turn: bool = False, reuse: CachedPrefix | None = None) -> Plan:
    """The plan for a run (ValueError if it cannot run here). `alone`: the caller's reason for the run
    to go alone (a server in solo mode, the command line), in one line; `turn`: a conversation's
    turn, which runs alone on its own cache (`reuse`, if any)."""
    engine.check_fits(len(prompt_ids), settings.max_new_tokens)
    server = batch_server(engine)
    why_alone = alone or ("a conversation's turn runs alone, on its own KV cache" if turn else
                          server.why_alone(settings))
    if why_alone:
        return Plan(tuple(prompt_ids), settings, "solo", why_alone, prompt, reuse)
    step = "the fused kernel's step" if server.stack == "fused" else "a plain PyTorch step"
    return Plan(tuple(prompt_ids), settings, "batched", f"decode steps shared with the server's other runs ({step})",
                prompt)


def start(engine: Engine, plan: Plan, cancel: Any, max_seconds: float = math.inf, prefill_chunk: int = 0,
          class_context: str = "", prefix_cache: bool = True, source: str = "page") -> WatchedRun:
    """Start the planned run (ValueError if the shared batch could never hold it); the shared
    server's prefill pieces, its class context and whether it shares that context's blocks are
    the operator's (ServerConfig). `source` ("page", "api") names where it came from, for the
    class view and the metrics (serving/metrics.py), which count it once it has ended."""
    from inference.serving.metrics import serving_metrics   # prometheus_client: the page's and the API's, not the CLI's

    ids = list(plan.prompt_ids)
    if plan.route == "batched":
        server = batch_server(engine)
        server.prefill_chunk, server.prefix_caching = prefill_chunk, prefix_cache
        server.use_context(class_context)
        run: WatchedRun = server.submit(ids, plan.settings, cancel, plan.prompt, max_seconds, why=plan.why,
                                        source=source)
    else:
        run = BackgroundRun(here(engine, plan, cancel), max_seconds=max_seconds)
    serving_metrics(engine).track(run, source)
    return run


def here(engine: Engine, plan: Plan, cancel: Any = None) -> GenerationRun:
    """A plan that runs alone, as a run to iterate on the caller's own thread (the command line's
    main thread, where the products run fastest)."""
    if plan.route != "solo":
        raise ValueError("only a run that goes alone runs on the caller's thread")
    return engine.generate(list(plan.prompt_ids), plan.settings, cancel=cancel, prompt=plan.prompt, reuse=plan.reuse,
                           why=plan.why)
