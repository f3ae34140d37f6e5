"""The figures on a real recorded trace (assets/example-trace.json): the data a user would see."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from inference.trace import Trace, read_trace
from viz.charts import CHARTS
from viz.figures import (all_figures, kv_cache_figure, latency_figure, layer_heatmap_figure, roofline_figure,
                         timeline_figure)
from viz.live import extend_message, full_message
from viz.summary import headline_html, headline_numbers
from tests.conftest import EXAMPLE_TRACE as EXAMPLE

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trace() -> Trace:
    return read_trace(EXAMPLE.read_text())


def test_example_is_a_real_run_of_the_bundled_model(trace: Trace) -> None:
    assert trace.model.name == "SmolLM2-135M-Instruct" and trace.model.layers == 30
    assert len(trace.decode_steps) >= 20 and trace.text.strip()


def test_timeline_has_the_pause_then_one_tick_per_decode_step(trace: Trace) -> None:
    prefill, ticks = timeline_figure(trace).data[:2]
    assert list(prefill.x) == [0, trace.steps[0].ms], "the prefill block must span 0..TTFT"
    assert len(ticks.x) == len(trace.decode_steps)
    ends = [sum(s.ms for s in trace.steps[: i + 1]) for i in range(1, len(trace.steps))]
    assert list(ticks.x) == pytest.approx(ends)


def test_latency_shows_prefill_first_then_each_decode_step(trace: Trace) -> None:
    fig = latency_figure(trace)
    assert list(fig.data[0].x) == [0] and list(fig.data[0].y) == [trace.steps[0].ms]
    assert list(fig.data[1].y) == [s.ms for s in trace.decode_steps]
    labels = [a.text for a in fig.layout.annotations]
    assert any(label.startswith("median") for label in labels) and any(label.startswith("p90") for label in labels)


def test_kv_stack_adds_up_to_the_bytes_in_the_trace(trace: Trace) -> None:
    fig = kv_cache_figure(trace)
    assert len(fig.data) == trace.model.layers
    totals = [sum(layer.y[i] for layer in fig.data) for i in range(len(fig.data[0].y))]
    assert totals[0] == 0 and fig.data[0].x[0] == 0, "the cache starts empty"
    assert totals[1:] == pytest.approx([s.kv_bytes / 1e6 for s in trace.steps])
    assert list(fig.data[0].x[1:]) == [s.context_len for s in trace.steps]


def test_heatmap_is_layers_by_steps_with_three_views(trace: Trace) -> None:
    fig = layer_heatmap_figure(trace)
    assert [t.name for t in fig.data] == ["whole layer", "attention", "MLP"]
    for plotly_trace, field in zip(fig.data, ("layer_ms", "attn_ms", "mlp_ms")):
        assert plotly_trace.transpose is True
        assert len(plotly_trace.z) == len(trace.steps) and all(len(row) == 30 for row in plotly_trace.z)
        assert list(plotly_trace.z[3]) == list(getattr(trace.steps[3], field))


def test_roofline_points_sit_where_the_trace_puts_them(trace: Trace) -> None:
    fig = roofline_figure(trace)
    prefill, decode, roof = fig.data
    assert list(prefill.x) == [trace.steps[0].intensity]
    assert list(decode.y) == pytest.approx([s.achieved_flops / 1e9 for s in trace.decode_steps])
    assert max(roof.y) == pytest.approx(trace.device.peak_flops / 1e9)
    assert all(y <= trace.device.peak_flops / 1e9 for y in decode.y), "a point above the compute roof"


def test_the_roofline_places_a_step_that_waited_for_a_core_by_its_time_on_one_too(trace: Trace) -> None:
    import dataclasses

    assert len(roofline_figure(trace).data) == 3, "a trace without the wait measured: no on-core points"
    # Every other decode step waited half its time for a core; the rest did not wait.
    steps = tuple(dataclasses.replace(s, cpu_wait_ms=s.ms / 2 if s.index % 2 else 0.0) for s in trace.steps)
    waited = dataclasses.replace(trace, steps=steps, cpu_wait_measured=True)
    on_core = roofline_figure(waited).data[3]
    odd = [s for s in waited.decode_steps if s.index % 2]
    assert list(on_core.x) == pytest.approx([s.intensity for s in odd])
    assert list(on_core.y) == pytest.approx([2 * s.achieved_flops / 1e9 for s in odd]), "half the time, twice the rate"
    # The page's whole redraw of each, one after the other (their empty figures differ).
    from viz.live import whole_figure

    roofline = next(chart for chart in CHARTS if chart.id == "roofline")
    assert [len(whole_figure(roofline, t)["data"]) for t in (trace, waited)] == [3, 4]


def test_figures_are_pure(trace: Trace) -> None:
    first = {k: f.to_json() for k, f in all_figures(trace).items()}
    assert first == {k: f.to_json() for k, f in all_figures(trace).items()}


def _apply(figure: dict, chart_message: dict) -> None:
    """What Plotly.extendTraces does with a delta, in Python."""
    for group in chart_message["extend"]:
        for column, index in enumerate(group["indices"]):
            for attr, values in group["update"].items():
                figure["data"][index].setdefault(attr, [])
                figure["data"][index][attr] = list(figure["data"][index][attr]) + values[column]


@pytest.mark.parametrize("chunk", [1, 7])
def test_streamed_deltas_rebuild_exactly_the_whole_figure(trace: Trace, chunk: int) -> None:
    """What the live page draws step by step is exactly what a redraw of the trace shows."""
    live = json.loads(full_message(trace.prefix(0), 0))["figures"]
    for start in range(0, len(trace.steps), chunk):
        message = json.loads(extend_message(trace.prefix(start + chunk), start, 1))
        for chart in CHARTS:
            if chart.id in message["charts"]:      # a chart this trace cannot fill is drawn once, as its reason
                _apply(live[chart.id], message["charts"][chart.id])
    whole = json.loads(full_message(trace, 2))["figures"]
    for chart in CHARTS:
        for got, want in zip(live[chart.id]["data"], whole[chart.id]["data"]):
            for attr in ("x", "y", "z"):
                assert got.get(attr) == want.get(attr), f"{chart.id}.{attr} differs between streamed and whole"


def test_headline_numbers_come_from_the_trace(trace: Trace) -> None:
    numbers = headline_numbers(trace)
    assert numbers["ttft_ms"] == trace.summary.ttft_ms
    assert numbers["kv_bytes"] == trace.summary.kv_bytes_final
    assert 0 < numbers["bandwidth_share"] < 1
    assert f"{trace.summary.ttft_ms:,.0f} ms" in headline_html(trace)


def test_the_figures_never_import_torch() -> None:
    """viz/ draws from traces alone: importing every figure module must not pull in torch (or the
    engine behind it), so the figures stay pure functions of a trace."""
    code = ("import sys, viz.charts, viz.claims, viz.dashboard, viz.experiments, viz.figures, viz.live, viz.summary; "
            "print(sorted(m for m in ('torch', 'inference.engine', 'gradio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"viz/ imported {out.stdout.strip()}"


def test_the_rhythm_chart_reads_tpot_and_itl_as_serving_engines_define_them() -> None:
    from inference.trace import percentile
    from viz.charts import CHARTS, time_per_output_token_ms

    trace = read_trace(EXAMPLE.read_text())
    steps = trace.steps
    assert time_per_output_token_ms(trace) == pytest.approx((sum(s.ms for s in steps) - steps[0].ms) / (len(steps) - 1))
    rhythm = next(chart for chart in CHARTS if chart.id == "rhythm")
    assert rhythm.columns(trace, 0)[0]["x"] == [s.ms for s in trace.decode_steps], "ITL is every decode step's time"
    texts = [a["text"] for a in rhythm.overlay(trace)["layout"]["annotations"]]
    p99 = percentile([s.ms for s in trace.decode_steps], 99)
    assert f" p99 {p99:.1f}" in texts and any(t.startswith("TPOT ") for t in texts)


def test_while_prefill_runs_the_timeline_block_grows_and_the_first_step_replaces_it() -> None:
    from viz.charts import CHARTS

    from viz.live import prefill_message

    message = json.loads(prefill_message(1234.0, 11, 30, seq=3))
    assert (message["kind"], message["start"], message["steps"]) == ("extend", 0, 0), "it must apply before step 0"
    layout = message["charts"]["timeline"]["layout"]
    assert layout["shapes"][0]["x1"] == 1234.0 and "layer 11/30" in layout["annotations"][0]["text"]
    trace = read_trace(EXAMPLE.read_text()).prefix(1)
    timeline = next(chart for chart in CHARTS if chart.id == "timeline")
    shapes = timeline.overlay(trace)["layout"]["shapes"]
    assert all(shape["type"] == "line" for shape in shapes), "the step's overlay must replace the growing block"


def test_the_pages_whole_redraw_is_the_figure_the_trace_gives(trace: Trace) -> None:
    """full_message builds each figure from a cached empty one (fast); it must hold what the figure
    built through plotly holds: the same data and the same overlay."""
    from viz.figures import build_figure
    from viz.live import whole_figure

    for chart in CHARTS:
        fast, slow = whole_figure(chart, trace), json.loads(build_figure(chart, trace).to_json())
        for got, want in zip(fast["data"], slow["data"]):
            for attr in ("x", "y", "z", "zmax", "text"):
                assert got.get(attr) == want.get(attr), f"{chart.id}.{attr}"
        for key in ("annotations", "shapes"):
            assert fast["layout"].get(key) == slow["layout"].get(key), f"{chart.id}: {key}"


def test_every_colour_is_named_once_in_the_theme() -> None:
    import re

    from viz.theme import PALETTE, css_variables, js_constant

    for path in ("assets/dashboard.js", "assets/style.css", "viz/charts.py", "viz/classroom.py", "viz/experiments.py"):
        assert not re.findall(r"#(?:[0-9a-fA-F]{3}){1,2}\b", (ROOT / path).read_text()), f"{path} names a colour of its own"
    assert f"--ps-prefill: {PALETTE['prefill']};" in css_variables() and '"decode"' in js_constant()


def test_a_whole_redraw_sends_plotlys_template_once_and_can_carry_the_first_tokens_time(trace: Trace) -> None:
    """The browser takes each message on the cores the model runs on: the template shared by every
    chart travels once, and a run's first token may come as a whole redraw with its time's parts."""
    message = json.loads(full_message(trace, 0, ttft_parts={"prefill and first sample": 12.5}))
    assert message["template"] and all("template" not in f["layout"] for f in message["figures"].values())
    assert message["ttft_parts"] == {"prefill and first sample": 12.5}
    assert "ttft_parts" not in json.loads(full_message(trace, 1))
