"""The class view: one bar per run in its phases, the batch size over time, and the rates it states."""
from __future__ import annotations

from inference.trace import ClassSnapshot, RunSpan
from viz.classroom import aggregate_tokens_per_s, class_figure, class_summary

NOW = 100.0
SNAPSHOT = ClassSnapshot(now=NOW, window_s=60.0, runs=(
    RunSpan(submitted=90.0, prefill_start=90.5, prefill_end=91.0, end=95.0, tokens=40),    # finished
    RunSpan(submitted=96.0, prefill_start=97.0, prefill_end=98.0, end=None, tokens=21),    # decoding
    RunSpan(submitted=99.0, prefill_start=None, prefill_end=None, end=None, tokens=0),     # waiting
), steps=tuple((NOW - 5 + 0.5 * i, 2) for i in range(10)))


def test_each_run_is_drawn_in_the_phases_it_went_through() -> None:
    fig = class_figure(SNAPSHOT)
    bars = {trace.name: trace for trace in fig.data if trace.type == "bar"}
    assert list(bars["waiting"].y) == ["run 1", "run 2", "run 3"]
    assert list(bars["prefill"].y) == ["run 1", "run 2"] and list(bars["decode"].y) == ["run 1", "run 2"]
    assert bars["waiting"].x[2] == 1.0 and bars["waiting"].base[2] == -1.0, "a waiting run waits until now"
    assert bars["decode"].x[1] == 2.0 and bars["decode"].base[1] == -2.0, "a decoding run decodes until now"
    batch = next(trace for trace in fig.data if trace.type == "scatter")
    assert list(batch.y) == [2] * 10 and batch.x[-1] == -0.5


def test_the_rates_are_the_tokens_of_the_steps() -> None:
    assert aggregate_tokens_per_s(SNAPSHOT) == 20 * 1 / 5     # 10 steps of 2 sequences in 5 s
    text = class_summary(SNAPSHOT)
    assert text.startswith("1 run decoding, 1 waiting") and "4.0 tokens/s" in text
    assert "each about 10.0 tokens/s of its own" in text          # 20 tokens after its first, in 2 s
