"""The Perfetto export: every step and layer of the trace as trace events, with the measured durations."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from inference.trace import read_trace
from inference.trace.perfetto import to_chrome_trace, to_chrome_trace_json
from tests.conftest import EXAMPLE_TRACE as EXAMPLE


def events_on(chrome: dict, tid: int) -> list[dict]:
    return [e for e in chrome["traceEvents"] if e["ph"] == "X" and e["tid"] == tid]


def test_steps_follow_each_other_with_their_measured_times() -> None:
    trace = read_trace(EXAMPLE.read_text())
    steps = events_on(to_chrome_trace(trace), 1)
    assert [e["name"] for e in steps[:2]] == ["prefill 0", "decode 1"] and len(steps) == len(trace.steps)
    assert [e["dur"] for e in steps] == pytest.approx([s.ms * 1e3 for s in trace.steps])
    assert all(b["ts"] == pytest.approx(a["ts"] + a["dur"]) for a, b in zip(steps, steps[1:]))


def test_layers_sit_inside_their_step_and_attention_and_mlp_inside_their_layer() -> None:
    trace = read_trace(EXAMPLE.read_text())
    chrome = to_chrome_trace(trace)
    steps, layers, blocks = events_on(chrome, 1), events_on(chrome, 2), events_on(chrome, 3)
    assert len(layers) == len(trace.steps) * trace.model.layers and len(blocks) == 2 * len(layers)
    for i, step in enumerate(steps):
        inside = layers[i * trace.model.layers:(i + 1) * trace.model.layers]
        assert step["ts"] <= inside[0]["ts"] and inside[-1]["ts"] + inside[-1]["dur"] <= step["ts"] + step["dur"] + 1e-6
    for layer, (attention, mlp) in zip(layers, zip(blocks[::2], blocks[1::2])):
        assert attention["ts"] == layer["ts"] and mlp["ts"] + mlp["dur"] <= layer["ts"] + layer["dur"] + 1e-6
    json.loads(to_chrome_trace_json(trace))


def test_on_a_shared_server_the_other_runs_prefill_comes_before_the_layers() -> None:
    trace = read_trace(EXAMPLE.read_text())
    steps = list(trace.steps)
    steps[3] = dataclasses.replace(steps[3], waited_ms=5.0, ms=steps[3].ms + 5.0)
    chrome = to_chrome_trace(dataclasses.replace(trace, steps=tuple(steps)))
    step, first_layer = events_on(chrome, 1)[3], events_on(chrome, 2)[3 * trace.model.layers]
    assert first_layer["ts"] == pytest.approx(step["ts"] + 5000.0)


def test_the_page_exports_the_perfetto_file_beside_the_json_and_csv() -> None:
    from page.live import export

    files = [Path(f) for f in export(EXAMPLE.read_text())]
    assert [f.name for f in files] == ["phasescope-trace.json", "phasescope-steps.csv", "phasescope-perfetto.json"]
    assert json.loads(files[2].read_text())["otherData"]["model"] == read_trace(EXAMPLE.read_text()).model.name


def test_the_kv_cache_and_the_wait_for_a_core_are_counter_tracks() -> None:
    trace = read_trace(EXAMPLE.read_text())
    counters = [e for e in to_chrome_trace(trace)["traceEvents"] if e["ph"] == "C"]
    assert [e["args"]["bytes"] for e in counters if e["name"] == "KV cache bytes"] == [s.kv_bytes for s in trace.steps]
    assert not [e for e in counters if e["name"] == "waiting for a core (ms)"], "the example trace measured no wait"
    waited = dataclasses.replace(trace, cpu_wait_measured=True,
                                 steps=tuple(dataclasses.replace(s, cpu_wait_ms=2.0) for s in trace.steps))
    counters = [e for e in to_chrome_trace(waited)["traceEvents"] if e["name"] == "waiting for a core (ms)"]
    assert [e["args"]["ms"] for e in counters] == [2.0] * len(trace.steps)
