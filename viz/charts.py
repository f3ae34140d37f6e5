"""Every live chart, each defined once as three pure pieces (the list is CHARTS, at the end):

- `base(trace)`: the empty figure (layout, axes, roofs, and one trace per series);
- `columns(trace, start)`: the values that steps[start:] append to each series;
- `overlay(trace)`: updates that depend on every step so far (median lines, TTFT marker, colour
  caps), as {"layout": {top-level layout keys}} and {"restyle": {attribute: one value per trace}}.

A whole figure is base + columns(trace, 0) + overlay, and the live page sends exactly the same
columns as small deltas (assets/dashboard.js appends them to each trace's arrays), so what streams
is what a reload would draw.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Callable

import plotly.graph_objects as go

from inference.trace import Step, Trace, percentile
from viz.theme import PALETTE, layout

PREFILL, DECODE = PALETTE["prefill"], PALETTE["decode"]
MEDIAN, P90, P99 = PALETTE["median"], PALETTE["p90"], PALETTE["p99"]
# A decode step's point by its time on a core is drawn where it waited at least this share of its time.
ON_CORE_SHOWN = 0.05
OTHERS = PALETTE["others"]          # other runs' prefills, on a server that batches a class
Columns = dict[int, dict[str, list[Any]]]


@dataclass(frozen=True)
class Chart:
    id: str
    title: str
    base: Callable[[Trace], go.Figure]
    columns: Callable[[Trace, int], Columns]
    overlay: Callable[[Trace], dict[str, Any]]
    # Why this chart cannot be drawn for a trace ("" when it can): a remote engine publishes no
    # layer times, FLOPs or cache bytes, and the chart says so instead of drawing nothing.
    unavailable: Callable[[Trace], str] = lambda trace: ""


def unavailable_figure(reason: str) -> go.Figure:
    fig = go.Figure()
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.add_annotation(xref="paper", yref="paper", x=0.5, y=0.5, text=reason, showarrow=False, font=dict(size=13))
    return _layout(fig, "", "")


def _layout(fig: go.Figure, x: str, y: str, **extra: Any) -> go.Figure:
    fig.update_layout(**layout(xaxis_title=x, yaxis_title=y, uirevision="keep", **extra))
    return fig


# Timeline --------------------------------------------------------------------------------------

def _timeline_base(trace: Trace) -> go.Figure:
    fig = go.Figure([
        go.Scatter(name="prefill (the pause)", x=[], y=[], mode="lines", line=dict(color=PREFILL, width=28),
                   hovertemplate="prefill %{x:.0f} ms<extra></extra>"),
        go.Scatter(name="decode steps", x=[], y=[], mode="markers", marker=dict(color=DECODE, symbol="line-ns-open",
                   size=26, line=dict(width=2, color=DECODE)), text=[],
                   hovertemplate="token %{text} done at %{x:.0f} ms<extra></extra>"),
        # Filled only on a server where runs share decode steps (see inference/serving/batching.py).
        go.Scatter(name="other runs' prefills (you wait)", x=[], y=[], mode="lines", line=dict(color=OTHERS, width=28),
                   hovertemplate="another run's prefill until %{x:.0f} ms<extra></extra>", showlegend=False),
    ])
    _layout(fig, "time since Run (ms)", "", height=170)
    fig.update_yaxes(visible=False, range=[-1, 1])
    return fig


def _timeline_columns(trace: Trace, start: int) -> Columns:
    elapsed = sum(s.ms for s in trace.steps[:start])
    prefill: dict[str, list[Any]] = {"x": [], "y": []}
    decode: dict[str, list[Any]] = {"x": [], "y": [], "text": []}
    others: dict[str, list[Any]] = {"x": [], "y": []}
    for step in trace.steps[start:]:
        if step.phase == "prefill":
            prefill["x"] += [elapsed, elapsed + step.ms]
            prefill["y"] += [0, 0]
        else:
            if step.waited_ms > 0:                       # a gap in the line between blocks: None
                others["x"] += [elapsed, elapsed + step.waited_ms, None]
                others["y"] += [0, 0, None]
            decode["x"].append(elapsed + step.ms)
            decode["y"].append(0)
            shared = step.batch_rows > trace.settings.batch_size
            decode["text"].append(f"{step.index} (step shared by {step.batch_rows} sequences)" if shared
                                  else str(step.index))
        elapsed += step.ms
    return {0: prefill, 1: decode, 2: others}


def _timeline_overlay(trace: Trace) -> dict[str, Any]:
    if not trace.steps:
        return {}
    ttft = trace.steps[0].ms
    return {"layout": {
        "shapes": [dict(type="line", x0=ttft, x1=ttft, y0=-1, y1=1, line=dict(color=PREFILL, dash="dot"))],
        "annotations": [dict(x=ttft, y=0.75, text=f"TTFT {ttft:.0f} ms", showarrow=False, xanchor="left",
                             font=dict(color=PREFILL, size=14))]}}


# Per-token latency -----------------------------------------------------------------------------

def _latency_base(trace: Trace) -> go.Figure:
    fig = go.Figure([
        go.Scatter(name="prefill (all prompt tokens)", x=[], y=[], mode="markers",
                   marker=dict(color=PREFILL, size=14), hovertemplate="prefill: %{y:.1f} ms<extra></extra>"),
        go.Scatter(name="decode step", x=[], y=[], mode="lines+markers", marker=dict(color=DECODE, size=5),
                   line=dict(color=DECODE, width=1), hovertemplate="step %{x}: %{y:.1f} ms, %{text}<extra></extra>"),
    ])
    return _layout(fig, "step (0 = prefill)", "ms per step")


def _step_tokens(step: Step) -> str:
    """What a decode step wrote, for its hover: a check of speculative decoding writes several."""
    if not step.drafted:
        return "1 token" if step.tokens_out == 1 else f"{step.tokens_out} tokens"
    return f"a check: {step.tokens_out} tokens ({step.accepted} of {step.drafted} drafts kept)"


def _latency_columns(trace: Trace, start: int) -> Columns:
    steps = trace.steps[start:]
    return {0: {"x": [s.index for s in steps if s.phase == "prefill"], "y": [s.ms for s in steps if s.phase == "prefill"]},
            1: {"x": [s.index for s in steps if s.phase == "decode"], "y": [s.ms for s in steps if s.phase == "decode"],
                "text": [_step_tokens(s) for s in steps if s.phase == "decode"]}}


def _latency_overlay(trace: Trace) -> dict[str, Any]:
    decode = [s.ms for s in trace.decode_steps]
    if not decode:
        return {}
    lines = [("median", statistics.median(decode), MEDIAN), ("p90", percentile(decode, 90), P90)]
    return {"layout": {
        "shapes": [dict(type="line", xref="paper", x0=0, x1=1, y0=v, y1=v, line=dict(color=c, dash="dash", width=1.5))
                   for _, v, c in lines],
        "annotations": [dict(xref="paper", x=1, y=v, text=f"{name} {v:.1f} ms", showarrow=False, xanchor="right",
                             yanchor="bottom" if name == "p90" else "top", font=dict(color=c, size=12))
                        for name, v, c in lines],
    }}


# Decode rhythm: the distribution of inter-token latencies -----------------------------------------

def _rhythm_base(trace: Trace) -> go.Figure:
    fig = go.Figure([go.Histogram(name="decode steps", x=[], marker=dict(color=DECODE), opacity=0.85,
                                  hovertemplate="%{x} ms: %{y} steps<extra></extra>")])
    return _layout(fig, "ms between two tokens (ITL)", "decode steps", showlegend=False, bargap=0.05,
                   margin=dict(l=60, r=16, t=40, b=44))


def _rhythm_columns(trace: Trace, start: int) -> Columns:
    return {0: {"x": [s.ms for s in trace.steps[start:] if s.phase == "decode"]}}


def time_per_output_token_ms(trace: Trace) -> float:
    """TPOT as vLLM and OpenTelemetry's gen_ai.server.time_per_output_token define it: (end-to-end
    time - time to first token) / (output tokens - 1), the mean of the inter-token latencies."""
    steps = trace.steps
    return (sum(s.ms for s in steps) - steps[0].ms) / (len(steps) - 1) if len(steps) > 1 else 0.0


def _rhythm_overlay(trace: Trace) -> dict[str, Any]:
    itl = [s.ms for s in trace.decode_steps]
    if not itl:
        return {}
    lines = [("p50", percentile(itl, 50), MEDIAN), ("p90", percentile(itl, 90), P90), ("p99", percentile(itl, 99), P99)]
    return {"layout": {
        "shapes": [dict(type="line", yref="paper", y0=0, y1=1, x0=v, x1=v, line=dict(color=c, dash="dash", width=1.5))
                   for _, v, c in lines],
        "annotations": [dict(yref="paper", y=0.97 - 0.11 * i, x=v, text=f" {name} {v:.1f}", showarrow=False,
                             xanchor="left", yanchor="top", font=dict(color=c, size=12))
                        for i, (name, v, c) in enumerate(lines)]
        + [dict(xref="paper", yref="paper", x=0, y=1.02, xanchor="left", yanchor="bottom", showarrow=False,
                text=f"TPOT {time_per_output_token_ms(trace):.1f} ms (mean ITL)", font=dict(size=13))],
    }}


# KV cache --------------------------------------------------------------------------------------

def _kv_base(trace: Trace) -> go.Figure:
    layers = trace.model.layers
    traces = [go.Scatter(name=f"layer {i}", x=[], y=[], mode="lines", stackgroup="kv", line=dict(width=0.5),
                         fillcolor=f"hsla({210 + 120 * i / max(1, layers - 1):.0f},70%,55%,0.85)",
                         showlegend=False, hovertemplate=f"layer {i}: %{{y:.2f}} MB<extra></extra>")
              for i in range(layers)]
    fig = go.Figure(traces)
    return _layout(fig, "tokens in the sequence", "KV cache (MB), stacked by layer")


def _kv_columns(trace: Trace, start: int) -> Columns:
    steps = trace.steps[start:]
    layers = trace.model.layers
    x = [s.context_len for s in steps]
    per_layer = [s.kv_bytes / layers / 1e6 for s in steps]
    if start == 0 and steps:          # the cache starts empty: prefill jumps from 0 to the prompt
        x, per_layer = [0] + x, [0.0] + per_layer
    return {i: {"x": x, "y": per_layer} for i in range(layers)}


def _kv_overlay(trace: Trace) -> dict[str, Any]:
    m = trace.model
    if not trace.steps:
        return {}
    text = (f"{trace.steps[-1].kv_bytes / 1e6:.2f} MB = {trace.steps[-1].context_len} tokens × "
            f"{m.kv_bytes_per_token * trace.settings.batch_size:,} B/token")
    return {"layout": {"annotations": [dict(xref="paper", yref="paper", x=0.02, y=0.98, text=text, showarrow=False,
                                            xanchor="left", yanchor="top", font=dict(size=12))]}}


# Layers x steps heatmap ------------------------------------------------------------------------

_PARTS = (("layer_ms", "whole layer"), ("attn_ms", "attention"), ("mlp_ms", "MLP"))


def _heatmap_base(trace: Trace) -> go.Figure:
    # transpose=True: each row of z is one step, so appending a step appends a row.
    fig = go.Figure([go.Heatmap(name=label, x=[], z=[], y=list(range(trace.model.layers)), transpose=True,
                                visible=(i == 0), colorscale="Viridis", colorbar=dict(title="ms<br>(decode<br>range)", thickness=12),
                                hovertemplate=f"step %{{x}}, layer %{{y}}: %{{z:.2f}} ms ({label})<extra></extra>")
                     for i, (_, label) in enumerate(_PARTS)])
    buttons = [dict(label=label, method="restyle", args=[{"visible": [j == i for j in range(len(_PARTS))]}])
               for i, (_, label) in enumerate(_PARTS)]
    _layout(fig, "step (0 = prefill)", "layer", showlegend=False,
            updatemenus=[dict(type="buttons", direction="right", buttons=buttons, x=0, y=1.0, xanchor="left",
                              yanchor="bottom", pad=dict(t=0, b=2), showactive=True,
                              font=dict(size=11, color=DECODE), bgcolor="rgba(128,128,128,0.12)")])
    return fig


def _heatmap_columns(trace: Trace, start: int) -> Columns:
    steps = trace.steps[start:]
    return {i: {"x": [s.index for s in steps], "z": [list(getattr(s, field)) for s in steps]}
            for i, (field, _) in enumerate(_PARTS)}


def _heatmap_overlay(trace: Trace) -> dict[str, Any]:
    # Prefill's layers take far longer than decode's; cap each colour scale at decode's range so
    # the decode steps stay readable (the prefill column saturates; hover shows its real value).
    decode = trace.decode_steps
    if not decode or not decode[0].layer_ms:
        return {}
    caps = [max(max(getattr(s, field)) for s in decode) for field, _ in _PARTS]
    return {"restyle": {"zmin": [0.0] * len(caps), "zmax": caps, "zauto": [False] * len(caps)}}


# Roofline --------------------------------------------------------------------------------------

def _roofline_base(trace: Trace) -> go.Figure:
    d = trace.device
    ridge = d.ridge_intensity
    xs = [0.1, ridge, 10_000.0]
    roof = [min(d.peak_flops, x * d.peak_bytes_per_s) / 1e9 for x in xs]
    fig = go.Figure([
        go.Scatter(name="prefill", x=[], y=[], mode="markers", marker=dict(color=PREFILL, size=14, symbol="diamond"),
                   hovertemplate="prefill: %{x:.1f} FLOP/B, %{y:.1f} GFLOP/s<extra></extra>"),
        go.Scatter(name="decode steps", x=[], y=[], mode="markers", marker=dict(color=DECODE, size=6, opacity=0.6),
                   hovertemplate="decode: %{x:.2f} FLOP/B, %{y:.2f} GFLOP/s<extra></extra>"),
        go.Scatter(name=f"roof ({d.source})", x=xs, y=roof, mode="lines", line=dict(color=PALETTE["roof"], width=2),
                   hovertemplate="roof: %{y:.0f} GFLOP/s<extra></extra>"),
    ])
    if trace.cpu_wait_measured:
        # The same decode steps timed on a core only (the wait for one taken out): where the
        # model's own work sits when other programs took the processor.
        fig.add_trace(go.Scatter(name="decode, time on a core", x=[], y=[], mode="markers",
                                 marker=dict(color=DECODE, size=7, symbol="circle-open"),
                                 hovertemplate="decode on a core: %{x:.2f} FLOP/B, %{y:.2f} GFLOP/s<extra></extra>"))
    _layout(fig, "FLOPs per byte moved (cost model)", "achieved GFLOP/s")
    fig.update_xaxes(type="log")
    fig.update_yaxes(type="log")
    fig.add_annotation(x=_log10(ridge), y=_log10(d.peak_flops / 1e9), text=f"ridge {ridge:.0f} FLOP/B",
                       showarrow=True, ay=-24, ax=0, font=dict(size=11))
    fig.add_annotation(x=_log10(0.3), y=_log10(0.3 * d.peak_bytes_per_s / 1e9),
                       text=f"memory roof {d.peak_bytes_per_s / 1e9:.0f} GB/s", showarrow=False, textangle=-22,
                       yshift=12, font=dict(size=11))
    fig.add_annotation(x=_log10(2000), y=_log10(d.peak_flops / 1e9),
                       text=f"compute roof {d.peak_flops / 1e9:,.0f} GFLOP/s", showarrow=False, yshift=10,
                       font=dict(size=11))
    return fig


def _roofline_columns(trace: Trace, start: int) -> Columns:
    steps = trace.steps[start:]
    point = lambda phase: {"x": [s.intensity for s in steps if s.phase == phase],
                           "y": [s.achieved_flops / 1e9 for s in steps if s.phase == phase]}
    columns = {0: point("prefill"), 1: point("decode")}
    if trace.cpu_wait_measured:       # a step that waited ON_CORE_SHOWN of its time or more, by its time on a core
        waited = [s for s in steps if s.phase == "decode" and s.cpu_wait_ms >= ON_CORE_SHOWN * s.ms and s.ms > s.cpu_wait_ms]
        columns[3] = {"x": [s.intensity for s in waited], "y": [s.flops / (s.ms - s.cpu_wait_ms) / 1e6 for s in waited]}
    return columns


def _no_overlay(trace: Trace) -> dict[str, Any]:
    return {}


def _log10(x: float) -> float:
    return math.log10(x)


# Attention over the sequence -------------------------------------------------------------------

def _attention_base(trace: Trace) -> go.Figure:
    fig = go.Figure([go.Heatmap(x=[], z=[], transpose=True, colorscale="Magma", reversescale=True, zmin=0,
                                colorbar=dict(title="share of<br>attention", thickness=12),
                                hovertemplate="step %{x}, position %{y}: %{z:.3f}<extra></extra>")])
    return _layout(fig, "step (0 = prefill: the last prompt token's view)", "position in the sequence", showlegend=False)


def _attention_columns(trace: Trace, start: int) -> Columns:
    steps = trace.steps[start:]
    return {0: {"x": [s.index for s in steps], "z": [list(s.attention) for s in steps]}}


def _attention_overlay(trace: Trace) -> dict[str, Any]:
    """Every step reads every cached position; say how few of them hold the mass. The colour scale
    stops at the largest weight off position 0, which often takes far more (an "attention sink")."""
    rows = [s.attention for s in trace.steps if s.attention]
    if not rows:
        return {}
    last = rows[-1]
    half, most = mass_positions(last, 0.5), mass_positions(last, 0.9)
    cap = max((max(r[1:]) for r in rows if len(r) > 1), default=1.0) or 1.0
    text = (f"the last step read the keys and values of all {len(last)} positions;<br>{half} of them hold half "
            f"of its attention, {most} hold 90%")
    return {"restyle": {"zmax": [cap], "zauto": [False]},
            "layout": {"margin": {"l": 60, "r": 16, "t": 44, "b": 44},
                       "annotations": [dict(xref="paper", yref="paper", x=0, y=1.01, xanchor="left", yanchor="bottom",
                                            showarrow=False, align="left", text=text, font=dict(size=12))]}}


def mass_positions(weights: tuple[float, ...], share: float) -> int:
    """How many positions hold `share` of the attention mass (the fewest that do)."""
    target, total, count = share * sum(weights), 0.0, 0
    for w in sorted(weights, reverse=True):
        if total >= target:
            break
        total += w
        count += 1
    return count


def _attention_unavailable(trace: Trace) -> str:
    if trace.remote:
        return "A remote engine does not publish its attention weights."
    if not trace.settings.attention_map:
        return ("Turn on <b>Record attention</b> in Settings<br>to see where each step's attention goes<br>"
                "(it runs PyTorch's eager attention, which is slower:<br>the weights must exist as a tensor)")
    return ""


def _layers_unavailable(trace: Trace) -> str:
    return "A remote engine does not publish per-layer times:<br>this chart needs the embedded engine." \
        if trace.remote else ""


def _roofline_unavailable(trace: Trace) -> str:
    return ("A remote engine publishes neither its FLOPs and bytes per step<br>nor its device's roofs: "
            "no roofline for it.") if trace.remote else ""


def _kv_unavailable(trace: Trace) -> str:
    if not trace.remote:
        return ""
    usage = [(name, value) for name, value in trace.reported.items() if name.startswith("KV cache usage %")]
    told = (f"The engine reports its KV cache {usage[0][1]:.1f}% full<br>(all its requests together, "
            f"{usage[0][0].split('(')[-1].rstrip(')')})." if usage else "This engine does not publish its KV cache usage.")
    return f"A remote engine's cache bytes per token are its own business.<br>{told}"


CHARTS: tuple[Chart, ...] = (
    Chart("timeline", "Timeline: the prefill pause, then one tick per decode step", _timeline_base,
          _timeline_columns, _timeline_overlay),
    Chart("latency", "Per-token latency", _latency_base, _latency_columns, _latency_overlay),
    Chart("kv", "KV cache growth", _kv_base, _kv_columns, _kv_overlay, _kv_unavailable),
    Chart("heatmap", "Layers × steps (ms)", _heatmap_base, _heatmap_columns, _heatmap_overlay, _layers_unavailable),
    Chart("roofline", "Roofline", _roofline_base, _roofline_columns, _no_overlay, _roofline_unavailable),
    Chart("rhythm", "Decode rhythm: inter-token latency (ITL) and TPOT", _rhythm_base, _rhythm_columns,
          _rhythm_overlay),
    Chart("attention", "Attention over the sequence: what each step reads against what it uses", _attention_base,
          _attention_columns, _attention_overlay, _attention_unavailable),
)
