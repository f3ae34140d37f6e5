"""How many seconds of GPU a ZeroGPU call asks for: what the run needs, not the run limit.

ZeroGPU refuses a call before it starts when the duration it asks for exceeds what the visitor has
left (2 minutes a day without signing in, 5 on a free account, as of the Spaces docs of August
2026). So a run asks for its worker's start and warm-up, plus its prefill and its decode at the
per-token costs measured on the runs this server has seen (the worker reports them in each trace;
until the first one, costs that a 135M model on a GPU stays well under), times a margin, never
more than the run limit. Pure arithmetic: the app keeps one GpuBudget and feeds it finished traces.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from inference.trace import Trace

MARGIN = 1.5                   # measured costs vary from worker to worker; a run cut short is worse
MIN_SECONDS = 5


@dataclass(frozen=True)
class Costs:
    """Per-call and per-token seconds of a GPU call."""
    start_s: float = 8.0                   # a worker's start, its copy of the weights and its warm-up
    prefill_s_per_token: float = 0.002
    decode_s_per_token: float = 0.06       # eager decode of a small model is bound by kernel launches


class GpuBudget:
    """The duration to ask for, learnt from the runs seen (the slowest recent costs, so that one
    fast worker does not make the next call ask for too little)."""

    def __init__(self, costs: Costs = Costs(), keep: int = 20):
        self.default = costs
        self._seen: list[Costs] = []
        self._keep = keep
        self._lock = threading.Lock()

    @property
    def costs(self) -> Costs:
        with self._lock:
            seen = list(self._seen)
        if not seen:
            return self.default
        return Costs(start_s=max(c.start_s for c in seen),
                     prefill_s_per_token=max(c.prefill_s_per_token for c in seen),
                     decode_s_per_token=max(c.decode_s_per_token for c in seen))

    def seconds_for(self, prompt_tokens: int, max_new_tokens: int, max_seconds: float) -> int:
        """Whole seconds for a run of `prompt_tokens` and up to `max_new_tokens` new tokens, at
        most `max_seconds` (the run limit)."""
        c = self.costs
        need = c.start_s + prompt_tokens * c.prefill_s_per_token + max_new_tokens * c.decode_s_per_token
        return int(min(max_seconds, max(MIN_SECONDS, math.ceil(need * MARGIN))))

    def observe(self, trace: Trace, start_s: float) -> None:
        """Learn from a finished run: its prefill and decode per token, and the call's start."""
        if not trace.steps or trace.remote:
            return
        prefill = trace.steps[0].ms / 1e3 / max(1, trace.steps[0].tokens_in)
        decode = trace.summary.decode_ms_median / 1e3 if trace.decode_steps else self.default.decode_s_per_token
        seen = Costs(start_s=max(0.0, start_s), prefill_s_per_token=prefill, decode_s_per_token=decode)
        with self._lock:
            self._seen = [*self._seen, seen][-self._keep:]
