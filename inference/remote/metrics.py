"""What an engine says of itself: Prometheus text (vLLM's /metrics) parsed, and its figures, the
stream's usage and llama.cpp's timings mapped to the page's names."""
from __future__ import annotations

import math
import re

from inference.remote.wire import StreamEnd


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text format as {name: value}, samples of the same name summed over their labels
    (one model per server, so the sum is that model's figure)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        if math.isfinite(value):
            values[match.group(1)] = values.get(match.group(1), 0.0) + value
    return values


# What the engine reports from inside, under the page's names: (name, metric, scale, is a difference).
_VLLM = (("engine TTFT ms", "vllm:time_to_first_token_seconds_sum", 1e3, True),
         ("engine prefill ms", "vllm:request_prefill_time_seconds_sum", 1e3, True),
         ("engine decode ms", "vllm:request_decode_time_seconds_sum", 1e3, True),
         ("engine queue ms", "vllm:request_queue_time_seconds_sum", 1e3, True),
         ("prompt tokens (engine)", "vllm:prompt_tokens_total", 1, True),
         ("generated tokens (engine)", "vllm:generation_tokens_total", 1, True),
         ("prefix cache hit tokens", "vllm:prefix_cache_hits_total", 1, True),
         ("KV cache usage %", "vllm:kv_cache_usage_perc", 100, False),
         ("requests running", "vllm:num_requests_running", 1, False),
         ("requests waiting", "vllm:num_requests_waiting", 1, False))


# A PhaseScope server's timing of this very request (the `phasescope` object of its last chunk).
_PHASESCOPE = (("ttft_ms", "engine TTFT ms"), ("prefill_ms", "engine prefill ms"), ("decode_ms", "engine decode ms"),
               ("queue_ms", "engine queue ms"), ("decode_ms_median", "engine decode ms a step (median)"),
               ("decode_ms_p90", "engine decode ms a step (p90)"), ("batch_rows_median", "engine batch rows (median)"),
               ("cached_prompt_tokens", "prefix cache hit tokens"), ("cpu_wait_ms", "engine waited for a core ms"))


def inside_figures(before: dict[str, float], after: dict[str, float], end: StreamEnd,
                   during: dict[str, float] | None = None) -> dict[str, float]:
    """The engine's own account of this run: a PhaseScope server's timing of this request,
    llama.cpp's `timings`, vLLM's metrics (counters: their change over the run, which other
    requests share when they ran beside it; gauges: as read while it decoded, else after it), the
    usage counts. Only what the engine sent; nothing estimated."""
    report: dict[str, float] = {}
    for key, name in _PHASESCOPE:
        value = end.phasescope.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
            report[name] = float(value)
    names = {"prompt_n": "prompt tokens (engine)", "prompt_ms": "engine prefill ms", "cache_n": "prefix cache hit tokens",
             "predicted_n": "generated tokens (engine)", "predicted_ms": "engine decode ms",
             "load_ms": "engine model load ms"}
    for key, name in names.items():
        value = end.timings.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
            report.setdefault(name, float(value))
    moment = " (during the run)" if during else " (after the run)"
    for name, metric, scale, difference in _VLLM:
        source = after if difference else (during or after)
        if metric in source and (metric in before or not difference):
            value = source[metric] - before[metric] if difference else source[metric]
            if value >= 0:
                report.setdefault(name if difference else name + moment, value * scale)
    for key, name in (("prompt_tokens", "prompt tokens (usage)"), ("completion_tokens", "completion tokens (usage)")):
        value = end.usage.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            report[name] = float(value)
    return report
