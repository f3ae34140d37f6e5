"""The class view: every run on the server as a bar on one time axis, and the batch size over time.

A pure function of a ClassSnapshot (inference/serving/batching.py records it): the same snapshot gives the
same figure. Runs are anonymous, numbered in the order they were asked for.
"""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from inference.trace import ClassSnapshot
from viz.charts import DECODE, OTHERS, PREFILL
from viz.theme import layout

RATE_WINDOW_S = 5.0


def aggregate_tokens_per_s(snapshot: ClassSnapshot, window_s: float = RATE_WINDOW_S) -> float:
    """Tokens every run together decoded per second over the last `window_s` seconds."""
    return sum(rows for end, rows in snapshot.steps if end >= snapshot.now - window_s) / window_s


def class_summary(snapshot: ClassSnapshot) -> str:
    decoding = [r for r in snapshot.runs if r.prefill_end is not None and r.end is None]
    waiting = [r for r in snapshot.runs if r.prefill_start is None and r.end is None]
    rates = [(r.tokens - 1) / (snapshot.now - r.prefill_end) for r in decoding if snapshot.now > r.prefill_end]
    own = f", each about {sum(rates) / len(rates):.1f} tokens/s of its own" if rates else ""
    runs = f"{len(decoding)} run decoding" if len(decoding) == 1 else f"{len(decoding)} runs decoding together"
    return (f"{runs}, {len(waiting)} waiting · all together "
            f"{aggregate_tokens_per_s(snapshot):.1f} tokens/s over the last {RATE_WINDOW_S:g} s{own}")


def class_figure(snapshot: ClassSnapshot) -> go.Figure:
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3], vertical_spacing=0.08)
    now = snapshot.now
    phases = {"waiting": ([], [], [], OTHERS), "prefill": ([], [], [], PREFILL), "decode": ([], [], [], DECODE)}
    for number, run in enumerate(snapshot.runs, start=1):
        label = f"run {number}"
        prefill_start = run.prefill_start if run.prefill_start is not None else (run.end or now)
        prefill_end = run.prefill_end if run.prefill_end is not None else (run.end or now)
        for phase, start, end in (("waiting", run.submitted, prefill_start), ("prefill", prefill_start, prefill_end),
                                  ("decode", prefill_end, run.end or now)):
            if end > start:
                bases, lengths, names, _ = phases[phase]
                bases.append(start - now)
                lengths.append(end - start)
                names.append(label if phase != "decode" else f"{label}: {run.tokens} tokens")
    for phase, (bases, lengths, names, colour) in phases.items():
        fig.add_trace(go.Bar(name=phase, orientation="h", base=bases, x=lengths, y=[n.split(":")[0] for n in names],
                             marker_color=colour, text=names, textposition="none",
                             hovertemplate="%{text}: " + phase + " %{x:.2f} s<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(name="sequences per decode step", x=[end - now for end, _ in snapshot.steps],
                             y=[rows for _, rows in snapshot.steps], mode="lines", line=dict(color=DECODE, shape="hv"),
                             hovertemplate="%{y} sequences<extra></extra>"), row=2, col=1)
    fig.update_layout(**layout(barmode="overlay", height=420, uirevision="class",
                               legend=dict(orientation="h", y=1.06, x=1, xanchor="right")))
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    fig.update_yaxes(title_text="batch", rangemode="tozero", row=2, col=1)
    fig.update_xaxes(title_text="seconds (0 = now)", range=[-snapshot.window_s, 0], row=2, col=1)
    return fig
