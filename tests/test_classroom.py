"""The class view: one bar per run in its phases, the batch size over time, and the rates it states."""
from __future__ import annotations

from inference.trace import ClassSnapshot, Goodput, PoolSnapshot, RunSpan
from viz import classroom
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


def test_goodput_counts_the_finished_runs_within_both_objectives() -> None:
    runs = (RunSpan(0.0, 0.1, 1.0, 3.0, 21),     # TTFT 1 s, TPOT 100 ms: met
            RunSpan(0.0, 0.1, 3.0, 5.0, 21),     # TTFT 3 s: missed
            RunSpan(0.0, 0.1, 1.0, 9.0, 21),     # TPOT 400 ms: missed
            RunSpan(0.0, 0.1, 1.0, None, 5))     # still running: not counted
    g = Goodput.of(runs, 60.0, ttft_s=2.0, tpot_s=0.2)
    assert (g.finished, g.met) == (3, 1) and g.per_s == 1 / 60
    assert "1 of 3 runs" in classroom.goodput_text(ClassSnapshot(10.0, 60.0, runs, ()), 2.0, 0.2)


def test_the_pool_view_counts_each_kind_of_block_and_escapes_run_labels() -> None:
    pool = PoolSnapshot(block_tokens=16, block_bytes=1000, capacity=10, states=(3, 1, -1, 0, 1),
                        tables=(("<run 1>", (0, 1)), ("run 2", (0, 4))), queried_tokens=200, hit_tokens=50,
                        reserved_bytes=9000)
    text = classroom.pool_html(ClassSnapshot(1.0, 60.0, (), (), pool))
    assert "shared 1" in text and "owned 2" in text and "cached 1" in text and "free 6" in text
    assert "50 of 200 prompt tokens (25%)" in text
    assert "&lt;run 1&gt;" in text and "<run 1>" not in text
    assert "<b>0</b> 1" in text, "a shared block is marked in the tables"
    assert classroom.pool_html(ClassSnapshot(1.0, 60.0, (), ())) == ""


def test_the_first_tokens_breakdown_says_how_many_prompt_tokens_came_from_shared_blocks(example_trace) -> None:
    import dataclasses
    import types

    from page.live import _ttft_parts

    background = types.SimpleNamespace(prefill_start=None)
    plain = _ttft_parts(background, example_trace, (5.0, 0.0))
    assert "prefill and first sample" in plain
    shared = dataclasses.replace(example_trace, serving="batched", reused_tokens=16)
    label = next(k for k in _ttft_parts(background, shared, (5.0, 0.0)) if k.startswith("prefill"))
    assert label == f"prefill and first sample (16 of {example_trace.prompt_tokens} prompt tokens from shared blocks)"


def test_runs_sent_through_the_api_are_marked_on_the_class_view() -> None:
    runs = (RunSpan(1.0, 2.0, 3.0, None, 5, "api"), RunSpan(1.5, 3.0, 4.0, None, 4))
    snapshot = ClassSnapshot(10.0, 60.0, runs, ())
    names = {y for trace in classroom.class_figure(snapshot).data if trace.y is not None for y in trace.y}
    assert {"API run 1", "run 2"} <= names
    assert "(1 of them sent through the API)" in classroom.class_summary(snapshot)
