"""Messages for the live dashboard: a whole redraw, or small deltas the page appends to its charts.

Each message is JSON for the page's one dashboard component. Deltas carry `start` (the first
step they hold): assets/dashboard.js applies one only where its charts end, so a lost message
freezes the charts instead of drawing a gap. Every run ends with a whole redraw, so what is left
on screen is always exactly the trace.

A whole redraw is each chart's empty figure, made once per model and device and kept as JSON, with
the columns and overlay applied to it as the page applies a delta (building every figure through
plotly's validating objects took 80-100 ms of the server's Python per redraw, two per run: with a
class finishing runs, a fifth of the server's time).
"""
from __future__ import annotations

import json
from typing import Any

from inference.trace import DeviceInfo, ModelInfo, Trace
from viz.charts import CHARTS, PREFILL, Chart, unavailable_figure


# Each chart's empty figure as JSON, by (chart, model, device, whether the run measures its wait for
# a core, reason it stays empty): a base depends on these alone. A few per server: no eviction.
_EMPTY_FIGURES: dict[tuple[str, ModelInfo, DeviceInfo, bool, str], str] = {}


def whole_figure(chart: Chart, trace: Trace) -> dict[str, Any]:
    """What viz/figures.build_figure draws, as the JSON dict the page gets (the overlay's layout
    keys replace the base's, as the page's deltas do)."""
    reason = chart.unavailable(trace)
    key = (chart.id, trace.model, trace.device, trace.cpu_wait_measured, reason)
    if key not in _EMPTY_FIGURES:
        _EMPTY_FIGURES[key] = (unavailable_figure(reason) if reason else chart.base(trace)).to_json()
    figure = json.loads(_EMPTY_FIGURES[key])
    if reason:
        return figure
    for index, attrs in chart.columns(trace, 0).items():
        figure["data"][index].update(attrs)
    overlay = chart.overlay(trace)
    figure["layout"].update(overlay.get("layout", {}))
    for attr, values in overlay.get("restyle", {}).items():
        for data, value in zip(figure["data"], values):
            data[attr] = value
    return figure


def full_message(trace: Trace, seq: int, lazy: bool = False, ttft_parts: dict[str, float] | None = None) -> str:
    """Every chart redrawn whole. `lazy` (a run's first message, drawn while its prefill runs): the
    page draws only the timeline now (the pause grows there), the others, dimmed, with the first step.
    Plotly's template (the same for every chart, 7 KB of each one's 8) travels once, beside them: the
    browser takes the message while the model runs on the same cores, so it is kept small.
    `ttft_parts`: as extend_message's, where this message brings a run's first token."""
    figures = {chart.id: whole_figure(chart, trace) for chart in CHARTS}
    templates = [figure["layout"].pop("template", None) for figure in figures.values()]
    message = {"kind": "full", "seq": seq, "steps": len(trace.steps), "figures": figures, "lazy": lazy,
               "template": next((t for t in templates if t is not None), None)}
    if ttft_parts is not None:
        message["ttft_parts"] = ttft_parts
    return json.dumps(message)


def prefill_message(elapsed_ms: float, layers_done: int, layers: int, seq: int) -> str:
    """While prefill runs (no step yet): the timeline's prefill block grows with the elapsed time, so
    the pause is drawn as it happens. An extend with no columns; the prefill step's own overlay
    replaces the growing block when it arrives."""
    block = dict(type="rect", xref="x", yref="y", x0=0, x1=max(elapsed_ms, 1e-3), y0=-0.35, y1=0.35,
                 fillcolor=PREFILL, opacity=0.55, line=dict(width=0))
    note = dict(x=elapsed_ms, y=0.75, xref="x", yref="y", showarrow=False, xanchor="left",
                text=f"prefill running: layer {layers_done}/{layers}, {elapsed_ms:.0f} ms", font=dict(color=PREFILL, size=13))
    timeline = {"extend": [], "layout": {"shapes": [block], "annotations": [note]}}       # the axis autoranges to it
    return json.dumps({"kind": "extend", "seq": seq, "start": 0, "steps": 0, "charts": {"timeline": timeline}})


def extend_message(trace: Trace, start: int, seq: int, ttft_parts: dict[str, float] | None = None) -> str:
    """The columns steps[start:] add to each chart, grouped so each chart redraws once. The message
    that brings the first token also carries `ttft_parts`: the server's share of the time to first
    token, in ms; the page measures the rest (queue, network, drawing) and shows all of it."""
    charts: dict[str, Any] = {}
    for chart in CHARTS:
        if chart.unavailable(trace):
            continue                   # drawn once, as its reason, by the run's first full redraw
        groups: dict[tuple[str, ...], dict[str, Any]] = {}
        for index, attrs in chart.columns(trace, start).items():
            group = groups.setdefault(tuple(sorted(attrs)), {"indices": [], "update": {k: [] for k in attrs}})
            group["indices"].append(index)
            for attr, values in attrs.items():
                group["update"][attr].append(values)
        charts[chart.id] = {"extend": list(groups.values()), **chart.overlay(trace)}
    message = {"kind": "extend", "seq": seq, "start": start, "steps": len(trace.steps), "charts": charts}
    if ttft_parts is not None:
        message["ttft_parts"] = ttft_parts
    return json.dumps(message)
