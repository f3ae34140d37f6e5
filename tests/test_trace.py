"""The trace record: the replay clock and prefixes read the steps as they happened."""
from __future__ import annotations

import json

from inference.trace import read_trace
from tests.conftest import EXAMPLE_TRACE as EXAMPLE


def test_the_replay_clock_counts_the_steps_finished_by_each_moment() -> None:
    trace = read_trace(EXAMPLE.read_text())
    ends, total = [], 0.0
    for step in trace.steps:
        total += step.ms
        ends.append(total)
    assert trace.steps_done_by(0.0) == 0 and trace.steps_done_by(ends[0] * 0.99) == 0
    assert trace.steps_done_by(ends[0]) == 1, "the prefill has finished at its own end"
    assert trace.steps_done_by((ends[2] + ends[3]) / 2) == 3
    assert trace.steps_done_by(ends[-1] + 1e6) == len(trace.steps)


def test_a_prefix_is_the_run_as_it_stood_after_n_steps() -> None:
    trace = read_trace(EXAMPLE.read_text())
    partial = trace.prefix(3)
    assert partial.steps == trace.steps[:3] and partial.text == "".join(s.text for s in trace.steps[:3])
    assert json.loads(partial.to_json())["prompt_tokens"] == trace.prompt_tokens
