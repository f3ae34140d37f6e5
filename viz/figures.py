"""Whole figures from a trace: base + every step's columns + overlay (see viz/charts.py)."""
from __future__ import annotations

import plotly.graph_objects as go

from inference.trace import Trace
from viz.charts import CHARTS, Chart, unavailable_figure

CHART_BY_ID = {chart.id: chart for chart in CHARTS}


def build_figure(chart: Chart, trace: Trace) -> go.Figure:
    reason = chart.unavailable(trace)
    if reason:
        return unavailable_figure(reason)
    fig = chart.base(trace)
    for index, attrs in chart.columns(trace, 0).items():
        fig.data[index].update(attrs)
    overlay = chart.overlay(trace)
    fig.update_layout(overlay.get("layout", {}))
    for attr, values in overlay.get("restyle", {}).items():
        for plotly_trace, value in zip(fig.data, values):
            plotly_trace[attr] = value
    return fig


def all_figures(trace: Trace) -> dict[str, go.Figure]:
    return {chart.id: build_figure(chart, trace) for chart in CHARTS}


def timeline_figure(trace: Trace) -> go.Figure:
    return build_figure(CHART_BY_ID["timeline"], trace)


def latency_figure(trace: Trace) -> go.Figure:
    return build_figure(CHART_BY_ID["latency"], trace)


def kv_cache_figure(trace: Trace) -> go.Figure:
    return build_figure(CHART_BY_ID["kv"], trace)


def layer_heatmap_figure(trace: Trace) -> go.Figure:
    return build_figure(CHART_BY_ID["heatmap"], trace)


def roofline_figure(trace: Trace) -> go.Figure:
    return build_figure(CHART_BY_ID["roofline"], trace)
