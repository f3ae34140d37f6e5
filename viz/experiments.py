"""Figures for the experiments (inference/lessons/experiments.py): each from its typed result, pure."""
from __future__ import annotations

import html
import itertools

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from inference.lessons.verdicts import (BatchResult, CacheRace, ChunkResult, DtypeResult, PrefixResult, SpeculationResult,
                                       SweepResult)
from inference.lessons.whatif import Estimate
from inference.trace import Trace
from viz.charts import DECODE, OTHERS, PREFILL
from viz.theme import PALETTE

_LAYOUT = dict(height=340, margin=dict(l=60, r=60, t=40, b=50), paper_bgcolor="rgba(0,0,0,0)",
               plot_bgcolor="rgba(0,0,0,0)", font=dict(size=13), legend=dict(orientation="h", y=1.12, x=0))


def sweep_figure(result: SweepResult) -> go.Figure:
    slope, intercept = result.ttft_fit
    xs = result.prompt_tokens
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(name="TTFT (prefill)", x=xs, y=result.ttft_ms, mode="markers",
                             marker=dict(color=PREFILL, size=11)), secondary_y=False)
    fig.add_trace(go.Scatter(name=f"fit: {slope:.2f} ms per prompt token", x=[0, max(xs)],
                             y=[intercept, intercept + slope * max(xs)], mode="lines",
                             line=dict(color=PREFILL, dash="dash")), secondary_y=False)
    fig.add_trace(go.Scatter(name="decode ms/token (median)", x=xs, y=result.decode_ms, mode="lines+markers",
                             marker=dict(color=DECODE, size=9), line=dict(color=DECODE)), secondary_y=True)
    fig.update_layout(**_LAYOUT, xaxis_title="prompt tokens")
    fig.update_yaxes(title_text="TTFT (ms)", rangemode="tozero", secondary_y=False)
    fig.update_yaxes(title_text="decode ms per token", rangemode="tozero", secondary_y=True)
    return fig


def race_figure(race: CacheRace) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("ms per step", "cumulative ms"))
    for trace, name, color in ((race.cached, "KV cache on", DECODE), (race.recomputed, "recompute (cache off)", PREFILL)):
        steps = [s.index for s in trace.steps]
        ms = [s.ms for s in trace.steps]
        fig.add_trace(go.Scatter(name=name, x=steps, y=ms, mode="lines+markers", marker=dict(color=color, size=4),
                                 line=dict(color=color), legendgroup=name), row=1, col=1)
        fig.add_trace(go.Scatter(name=name, x=steps, y=list(itertools.accumulate(ms)), mode="lines",
                                 line=dict(color=color, width=3), legendgroup=name, showlegend=False), row=1, col=2)
    fig.update_layout(**{**_LAYOUT, "margin": dict(l=60, r=20, t=70, b=50), "legend": dict(orientation="h", y=1.22, x=0)})
    fig.update_xaxes(title_text="step (0 = prefill)")
    fig.update_yaxes(rangemode="tozero")
    return fig


def batch_figure(result: BatchResult) -> go.Figure:
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(name="decode step (ms, median)", x=result.batch_sizes, y=result.step_ms,
                             mode="lines+markers", marker=dict(color=DECODE, size=9), line=dict(color=DECODE)),
                  secondary_y=False)
    fig.add_trace(go.Bar(name="throughput (tokens/s)", x=result.batch_sizes, y=result.tokens_per_s,
                         marker=dict(color="rgba(24,128,56,0.45)")), secondary_y=True)
    fig.update_layout(**_LAYOUT, xaxis_title="batch size", xaxis_type="category")
    fig.update_yaxes(title_text="ms per decode step", rangemode="tozero", secondary_y=False)
    fig.update_yaxes(title_text="tokens/s", rangemode="tozero", secondary_y=True)
    return fig


def dtype_figure(result: DtypeResult) -> go.Figure:
    """Decode and prefill per format, and where each format's decode steps sit on the roofline:
    fewer bytes per weight move the point right (more FLOPs per byte) and, while memory-bound, up."""
    traces = result.traces
    dtypes = [f"{t.model.precision}<br>{_bytes_per_weight(t):.2f} B/w" for t in traces]
    fig = make_subplots(rows=1, cols=3, subplot_titles=("decode ms per token", "TTFT (ms)", "decode on the roofline"),
                        column_widths=[0.3, 0.3, 0.4])
    fig.add_trace(go.Bar(x=dtypes, y=[t.summary.decode_ms_median for t in traces], marker_color=DECODE,
                         name="decode"), row=1, col=1)
    fig.add_trace(go.Bar(x=dtypes, y=[t.summary.ttft_ms for t in traces], marker_color=PREFILL,
                         name="prefill"), row=1, col=2)
    device = traces[0].device
    xs = [0.1, device.ridge_intensity, 1000.0]
    fig.add_trace(go.Scatter(x=xs, y=[min(device.peak_flops, x * device.peak_bytes_per_s) / 1e9 for x in xs],
                             mode="lines", line=dict(color=PALETTE["roof"]), name=f"float32 roof ({device.source})"), row=1, col=3)
    for t, label in zip(traces, dtypes):
        decode = t.decode_steps
        intensity = sum(s.flops for s in decode) / sum(s.bytes for s in decode)
        achieved = sum(s.flops for s in decode) / (sum(s.ms for s in decode) / 1e3)
        fig.add_trace(go.Scatter(x=[intensity], y=[achieved / 1e9], mode="markers+text", text=[t.model.precision],
                                 textposition="top center", marker=dict(color=DECODE, size=10), name=label), row=1, col=3)
    fig.update_xaxes(type="log", title_text="FLOPs per byte (cost model)", row=1, col=3)
    fig.update_yaxes(type="log", title_text="GFLOP/s", row=1, col=3)
    fig.update_layout(**_LAYOUT, showlegend=False)
    return fig


def _bytes_per_weight(trace: Trace) -> float:
    m = trace.model
    return m.matmul_bytes / m.matmul_params if m.matmul_bytes else m.weight_bytes / m.params


def chunk_figure(result: ChunkResult) -> go.Figure:
    """A streaming run's decode steps while the long prompt joined, with its prefill whole and in
    chunks; beside them, what each side cost whom."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("a streaming run's decode steps (ms)", "who waits (ms)"),
                        column_widths=[0.6, 0.4])
    sides = (("prefill whole", result.off, False, OTHERS), (f"chunks of {result.chunk}", result.on, True, DECODE))
    for name, (stream, _), _, colour in sides:
        steps = stream.decode_steps
        fig.add_trace(go.Scatter(x=[s.index for s in steps], y=[s.ms for s in steps], mode="lines+markers", name=name,
                                 marker=dict(size=4, color=colour), line=dict(color=colour)), row=1, col=1)
    for name, (_, late), chunked, colour in sides:
        fig.add_trace(go.Bar(x=["their worst step", "long prompt's TTFT"], name=name, marker_color=colour,
                             y=[result.worst_step_ms(chunked), late.summary.ttft_ms], showlegend=False), row=1, col=2)
    fig.update_xaxes(title_text="step (the long prompt arrives after the first few)", row=1, col=1)
    fig.update_layout(**_LAYOUT, barmode="group")
    return fig


def prefix_figure(result: PrefixResult) -> go.Figure:
    """Each student's wait for a first token, in the order they were served, with prefix caching
    off and on (left); what each side computed and held (right)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("each student's TTFT (s)", "prompt tokens prefilled, KV MB"),
                        column_widths=[0.6, 0.4])
    sides = (("prefix caching off", result.off, OTHERS), ("prefix caching on", result.on, DECODE))
    for name, side, colour in sides:
        waits = sorted(side.ttft_s)
        fig.add_trace(go.Scatter(x=list(range(1, len(waits) + 1)), y=waits, mode="lines+markers", name=name,
                                 marker=dict(size=5, color=colour), line=dict(color=colour)), row=1, col=1)
        fig.add_trace(go.Bar(x=["prompt tokens prefilled", "KV MB at most"], name=name, marker_color=colour,
                             y=[side.prefill_tokens, side.kv_peak_bytes / 1e6], showlegend=False), row=1, col=2)
    fig.update_xaxes(title_text="students, fastest first", row=1, col=1)
    fig.update_layout(**_LAYOUT, barmode="group")
    return fig


def whatif_table_html(estimates: list[Estimate], note: str) -> str:
    head = ("<tr><th>model</th><th>GPU</th><th>weights</th><th>KV per token</th><th>KV at context</th>"
            "<th>TTFT</th><th>ms/token</th><th>batch to compute-bound</th><th>fits</th></tr>")
    rows = "".join(
        f"<tr><td>{html.escape(e.model)}</td><td>{html.escape(e.gpu)}</td><td>{e.weight_bytes / 1e9:.1f} GB</td>"
        f"<td>{e.kv_bytes_per_token / 1e3:,.0f} kB</td><td>{e.kv_bytes_at_context / 1e9:.2f} GB</td>"
        f"<td>{e.ttft_ms:,.1f} ms</td><td>{e.decode_ms_per_token:,.2f} ms</td><td>{e.compute_bound_batch:,.0f}</td>"
        f"<td>{'yes' if e.fits else 'no'}</td></tr>" for e in estimates)
    return (f'<div class="ps-whatif"><p><b>Estimates</b>, not measurements: {html.escape(note)}</p>'
            f"<table>{head}{rows}</table></div>")


def speculation_figure(result: SpeculationResult) -> go.Figure:
    """Against k: what a check cost in plain decode steps (left), and the speedup over plain decode
    with the drafts kept (right), one line per prompt."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("a check / one plain decode step", "speedup over plain decode"))
    colours = itertools.cycle([DECODE, PREFILL, OTHERS])
    rows = result.figures()
    for kind in result.kinds:
        colour = next(colours)
        mine = [(k, f) for kd, k, f, _ in rows if kd == kind]
        ks = [k for k, _ in mine]
        kept = [f"{100 * f['acceptance']:.0f}% of drafts kept, {f['tokens_per_step']:.2f} tokens a step" for _, f in mine]
        fig.add_trace(go.Scatter(name=kind, x=ks, y=[f["check_ratio"] for _, f in mine], mode="lines+markers",
                                 marker=dict(color=colour, size=9), line=dict(color=colour), legendgroup=kind,
                                 text=kept, hovertemplate="k=%{x}: %{y:.2f}x a plain step<br>%{text}<extra></extra>"),
                      row=1, col=1)
        fig.add_trace(go.Scatter(name=kind, x=ks, y=[f["speedup"] for _, f in mine], mode="lines+markers",
                                 marker=dict(color=colour, size=9), line=dict(color=colour, width=3), legendgroup=kind,
                                 showlegend=False, text=kept,
                                 hovertemplate="k=%{x}: %{y:.2f}x plain decode<br>%{text}<extra></extra>"), row=1, col=2)
    for col in (1, 2):
        fig.add_hline(y=1.0, line=dict(color=OTHERS, dash="dot"), row=1, col=col)
    fig.update_layout(**{**_LAYOUT, "margin": dict(l=60, r=20, t=70, b=50), "legend": dict(orientation="h", y=1.22, x=0)})
    fig.update_xaxes(title_text="k (drafted tokens per check)", type="log", tickvals=sorted({k for _, k, _, _ in rows}))
    fig.update_yaxes(rangemode="tozero")
    return fig
