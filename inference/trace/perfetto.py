"""A trace as Chrome trace-event JSON, which Perfetto (ui.perfetto.dev) and chrome://tracing open.

One track for the steps (prefill, then each decode step, with its token, context and cost-model
figures as arguments), one for the layers, one for their attention and MLP, and two counters: the
KV cache's bytes and, where measured, the time the step's threads waited for a core. Durations are the
measured ones. A step records how long each layer, attention and MLP took, not when each started,
so within a step the layers are laid end to end, attention first in each layer, after any other
runs' prefills that held the step up on a shared server (`waited_ms`), and what the layers do not
cover (embeddings, final norm, LM head, sampling) sits after them; the events say so.
"""
from __future__ import annotations

import json
from typing import Any

from inference.trace import Trace

_PID = 1
_TRACKS = {"steps": 1, "layers": 2, "blocks": 3}
_PLACED = "duration measured; start placed end to end within its step"


def to_chrome_trace(trace: Trace) -> dict[str, Any]:
    """{"traceEvents": [...]} with times in microseconds from the start of the run."""
    events: list[dict[str, Any]] = [
        {"ph": "M", "pid": _PID, "name": "process_name", "args": {"name": f"PhaseScope: {trace.model.name}"}},
        *({"ph": "M", "pid": _PID, "tid": tid, "name": "thread_name", "args": {"name": name}}
          for name, tid in _TRACKS.items()),
    ]
    start = 0.0
    for step in trace.steps:
        us = step.ms * 1e3
        events.append({"ph": "X", "pid": _PID, "tid": _TRACKS["steps"], "ts": start, "dur": us,
                       "name": f"{step.phase} {step.index}", "cat": step.phase,
                       "args": {"token_id": step.token_id, "text": step.text, "tokens_in": step.tokens_in,
                                "context_len": step.context_len, "kv_bytes": step.kv_bytes,
                                "flops (cost model)": step.flops, "bytes (cost model)": step.bytes,
                                "batch_rows": step.batch_rows, "waited_ms": step.waited_ms,
                                "cpu_wait_ms": step.cpu_wait_ms, "tokens_out": step.tokens_out,
                                "drafted": step.drafted, "accepted": step.accepted}})
        at = start + step.waited_ms * 1e3
        for layer, layer_ms in enumerate(step.layer_ms):
            events.append({"ph": "X", "pid": _PID, "tid": _TRACKS["layers"], "ts": at, "dur": layer_ms * 1e3,
                           "name": f"layer {layer}", "cat": step.phase, "args": {"note": _PLACED}})
            attn, mlp = step.attn_ms[layer] * 1e3, step.mlp_ms[layer] * 1e3
            events.append({"ph": "X", "pid": _PID, "tid": _TRACKS["blocks"], "ts": at, "dur": attn,
                           "name": "attention", "cat": step.phase, "args": {"layer": layer, "note": _PLACED}})
            events.append({"ph": "X", "pid": _PID, "tid": _TRACKS["blocks"], "ts": at + attn, "dur": mlp,
                           "name": "MLP", "cat": step.phase, "args": {"layer": layer, "note": _PLACED}})
            at += layer_ms * 1e3
        start += us
        # Counter tracks, one value per step at its end: the cache it left, and (where measured)
        # the time its threads waited for a core.
        events.append({"ph": "C", "pid": _PID, "ts": start, "name": "KV cache bytes", "args": {"bytes": step.kv_bytes}})
        if trace.cpu_wait_measured:
            events.append({"ph": "C", "pid": _PID, "ts": start, "name": "waiting for a core (ms)",
                           "args": {"ms": step.cpu_wait_ms}})
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"model": trace.model.name, "device": trace.device.name, "serving": trace.serving}}


def to_chrome_trace_json(trace: Trace) -> str:
    return json.dumps(to_chrome_trace(trace))
