"""The guided lesson's charts (inference/lessons/lesson.py): one large chart a step, pure. Steps that
have an experiment's chart already take it, made taller; the first and the last have their own."""
from __future__ import annotations

import itertools
import math

import plotly.graph_objects as go

from inference.lessons.lesson import CLASS_SIZE, WhatIf
from inference.trace import Trace
from viz.charts import DECODE, PREFILL
from viz.theme import PALETTE

HEIGHT = 440          # beside the step's text at a projector's 1280x720; alone on a phone
_LAYOUT = dict(height=HEIGHT, margin=dict(l=60, r=20, t=40, b=50), paper_bgcolor="rgba(0,0,0,0)",
               plot_bgcolor="rgba(0,0,0,0)", font=dict(size=15), legend=dict(orientation="h", y=1.1, x=0))


def large(fig: go.Figure) -> go.Figure:
    """An experiment's chart at the lesson's size and type."""
    return fig.update_layout(height=HEIGHT, font=dict(size=15))


def stream_figure(trace: Trace) -> go.Figure:
    """Step 1: tokens written against time since the prefill began: a flat pause, then a steady climb."""
    ends = list(itertools.accumulate(s.ms for s in trace.steps))
    written = list(itertools.accumulate(s.tokens_out for s in trace.steps))
    fig = go.Figure()
    if trace.steps:
        ttft = trace.summary.ttft_ms
        fig.add_vrect(x0=0, x1=ttft, fillcolor=PREFILL, opacity=0.18, line_width=0,
                      annotation_text=f"prefill: {ttft:,.0f} ms", annotation_position="top right",
                      annotation_xanchor="left")           # the label starts where the band ends: never clipped
        fig.add_trace(go.Scatter(x=[0, ttft], y=[0, 0], mode="lines", line=dict(color=PREFILL, width=4),
                                 name="the pause (prefill)"))
        fig.add_trace(go.Scatter(x=ends, y=written, mode="markers+lines", marker=dict(color=DECODE, size=6),
                                 line=dict(color=DECODE, width=1), name="a token written (decode)"))
    room = {"margin": dict(l=60, r=20, t=60, b=50), "legend": dict(orientation="h", y=1.16, x=0)}    # legend above
    fig.update_layout(**{**_LAYOUT, **room}, xaxis_title="ms since prefill began", yaxis_title="tokens written")
    fig.update_yaxes(rangemode="tozero")
    fig.update_xaxes(rangemode="tozero")
    return fig


def whatif_figure(w: WhatIf) -> go.Figure:
    """Step 7: tokens per second for one student, measured here and estimated elsewhere (estimates
    hatched and labelled as such), on a log axis."""
    rows = [("this model here, measured", w.measured.summary.decode_tokens_per_s, False),
            ("this model here, at the roofs (estimate)", w.roof_tokens_per_s, True)]
    rows += [(f"{e.model} on {e.gpu} (estimate)", 1e3 / e.decode_ms_per_token, True) for e in w.alone]
    rows.append((f"{w.in_class.model} on {w.in_class.gpu}, each of {CLASS_SIZE} (estimate)",
                 1e3 / w.in_class.decode_ms_per_token, True))
    fig = go.Figure(go.Bar(
        y=[name for name, _, _ in rows], x=[value for _, value, _ in rows], orientation="h",
        text=[f"{value:,.0f}" for _, value, _ in rows], textposition="outside",
        marker=dict(color=[PALETTE["roof"] if estimated else DECODE for _, _, estimated in rows],
                    pattern=dict(shape=["/" if estimated else "" for _, _, estimated in rows]))))
    fig.update_layout(**{**_LAYOUT, "margin": dict(l=20, r=40, t=30, b=50)}, showlegend=False,
                      xaxis_title="tokens/s for one student (log)")
    values = [value for _, value, _ in rows]
    fig.update_xaxes(type="log", range=[math.log10(min(values) / 2), math.log10(max(values) * 3)])  # room for labels
    fig.update_yaxes(autorange="reversed", automargin=True)
    return fig
