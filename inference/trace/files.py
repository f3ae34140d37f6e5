"""A trace as a file: its JSON read back and checked, its steps as CSV, a sweep of traces in one file.

`read_trace` refuses, in one line, anything that is not a whole, sound trace: not JSON, another
schema, a missing or unknown field, a number that is not finite or is negative, steps out of order.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from typing import Any

from inference.settings import GenerationSettings
from inference.trace.records import TRACE_SCHEMA, DeviceInfo, ModelInfo, Step, Summary, Trace

SWEEP_SCHEMA = "phasescope.sweep/1"


def read_trace(text: str) -> Trace:
    """A trace from its JSON text, checked (ValueError in one line otherwise)."""
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except RecursionError:
        raise ValueError("not a PhaseScope trace: its JSON is nested too deeply") from None
    return trace_from_dict(data)


def trace_from_dict(data: dict[str, Any]) -> Trace:
    """A trace from its dict, checked (ValueError in one line otherwise)."""
    if not isinstance(data, dict) or data.get("schema") != TRACE_SCHEMA:
        got = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"not a PhaseScope trace: expected schema {TRACE_SCHEMA!r}, got {got!r}")
    try:
        trace = Trace(
            model=_build(ModelInfo, data["model"]),
            device=_build(DeviceInfo, data["device"]),
            settings=_build(GenerationSettings, data["settings"]),
            prompt_tokens=data["prompt_tokens"],
            steps=tuple(_build(Step, s) for s in data["steps"]),
            summary=_build(Summary, data["summary"]),
            prompt=data.get("prompt", ""),
            serving=data.get("serving", "solo"),
            serving_why=data.get("serving_why", ""),
            cpu_wait_measured=data.get("cpu_wait_measured", False),
            reused_tokens=data.get("reused_tokens", 0),
            cold_ttft_ms=data.get("cold_ttft_ms", 0.0),
            engine=data.get("engine", ""),
            reported=data.get("reported", {}),
            notes=tuple(data.get("notes", ())),
        )
    except KeyError as exc:
        raise ValueError(f"trace is missing the field {exc.args[0]!r}") from None
    except TypeError as exc:
        raise ValueError(f"trace has a malformed record: {exc}") from None
    check_trace(trace)
    return trace


def check_trace(trace: Trace) -> None:
    """Raise ValueError unless every number is finite and in range and the steps hang together."""
    _check_numbers("model", trace.model)
    _check_numbers("device", trace.device)
    _check_numbers("summary", trace.summary)
    if not isinstance(trace.engine, str) or not isinstance(trace.reported, dict) or \
            not all(isinstance(k, str) and _finite(v) for k, v in trace.reported.items()) or \
            not all(isinstance(n, str) for n in trace.notes):
        raise ValueError("engine must be text, reported a table of finite numbers, notes text")
    # A remote engine may not say how long the prompt was, nor publish its device's peaks.
    least_prompt = 0 if trace.remote else 1
    if not isinstance(trace.prompt_tokens, int) or trace.prompt_tokens < least_prompt:
        raise ValueError(f"prompt_tokens must be a positive whole number, got {trace.prompt_tokens!r}")
    if not isinstance(trace.prompt, str) or not isinstance(trace.serving_why, str):
        raise ValueError("prompt and serving_why must be text")
    if not isinstance(trace.cpu_wait_measured, bool):
        raise ValueError("cpu_wait_measured must be true or false")
    if isinstance(trace.reused_tokens, bool) or not isinstance(trace.reused_tokens, int) or \
            not 0 <= trace.reused_tokens < max(1, trace.prompt_tokens):
        raise ValueError(f"reused_tokens must be a whole number below prompt_tokens, got {trace.reused_tokens!r}")
    if isinstance(trace.cold_ttft_ms, bool) or not isinstance(trace.cold_ttft_ms, (int, float)) or \
            not 0 <= trace.cold_ttft_ms < math.inf:
        raise ValueError(f"cold_ttft_ms must be a number of milliseconds, at least 0, got {trace.cold_ttft_ms!r}")
    if trace.serving not in ("solo", "batched"):
        raise ValueError(f"serving must be solo or batched, got {trace.serving!r}")
    if not trace.steps or trace.steps[0].phase != "prefill":
        raise ValueError("a trace starts with its prefill step")
    if not trace.remote and (trace.device.peak_flops <= 0 or trace.device.peak_bytes_per_s <= 0):
        raise ValueError("device peaks must be positive")
    for i, step in enumerate(trace.steps):
        _check_numbers(f"step {i}", step)
        if step.phase != ("prefill" if i == 0 else "decode") or step.index != i:
            raise ValueError(f"step {i}: expected {'prefill' if i == 0 else 'decode'} step {i}, "
                             f"got {step.phase!r} {step.index!r}")
        if not len(step.layer_ms) in (0, trace.model.layers) or len(step.attn_ms) != len(step.layer_ms) \
                or len(step.mlp_ms) != len(step.layer_ms):
            raise ValueError(f"step {i}: expected {trace.model.layers} layer times")
        if step.accepted > step.drafted or len(step.draft_ids) not in (0, step.drafted):
            raise ValueError(f"step {i}: {step.accepted} drafts kept of {step.drafted} drafted "
                             f"({len(step.draft_ids)} listed)")


_TEXT_FIELDS = ("str", "Phase", "StopReason")


def _check_numbers(where: str, record: Any) -> None:
    """Text fields hold text; every other field holds finite numbers of at least 0."""
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if f.type in _TEXT_FIELDS:
            if not isinstance(value, str):
                raise ValueError(f"{where}: {f.name} must be text, got {value!r}")
            continue
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{where}: {f.name} must be a finite number of at least 0, got {v!r}")


def steps_csv(trace: Trace) -> str:
    """One row per step; per-layer times as layer_<i>_ms, attn_<i>_ms, mlp_<i>_ms columns."""
    out = io.StringIO()
    writer = csv.writer(out)
    n = trace.model.layers
    scalar = ["phase", "index", "tokens_in", "context_len", "ms", "other_ms", "kv_bytes", "flops", "bytes",
              "token_id", "text", "batch_rows", "tokens_out", "waited_ms", "cpu_wait_ms", "drafted", "accepted"]
    writer.writerow(scalar + [f"{part}_{i}_ms" for part in ("layer", "attn", "mlp") for i in range(n)])
    for step in trace.steps:
        writer.writerow([getattr(step, name) for name in scalar] + list(step.layer_ms + step.attn_ms + step.mlp_ms))
    return out.getvalue()


def sweep_to_json(traces: list[Trace], indent: int | None = None) -> str:
    return json.dumps({"schema": SWEEP_SCHEMA, "runs": [t.to_dict() for t in traces]},
                      indent=indent, allow_nan=False)


def sweep_from_json(text: str) -> list[Trace]:
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("schema") != SWEEP_SCHEMA:
        raise ValueError(f"not a PhaseScope sweep: expected schema {SWEEP_SCHEMA!r}")
    return [trace_from_dict(run) for run in data["runs"]]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _reject_constant(name: str) -> None:
    raise ValueError(f"traces hold finite numbers only, found {name}")


def _build(cls: type, data: dict[str, Any]) -> Any:
    """Build a dataclass from its dict, turning JSON lists back into the tuples the class holds."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
    values = {}
    for name, value in data.items():
        is_list_field = str(fields[name].type).startswith("tuple")
        if is_list_field != isinstance(value, list):
            raise ValueError(f"{cls.__name__}.{name}: expected {'a list' if is_list_field else 'a single value'}, "
                             f"got {value!r:.40}")
        values[name] = tuple(value) if is_list_field else value
    return cls(**values)
