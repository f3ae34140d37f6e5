"""The class view: every run on the server as a bar on one time axis, the batch size over time,
the KV cache's pages and the class's goodput.

A pure function of a ClassSnapshot (inference/serving/batching.py records it): the same snapshot gives the
same figure. Runs are anonymous, numbered in the order they were asked for.
"""
from __future__ import annotations

import html

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from inference.trace import ClassSnapshot, Goodput
from viz.charts import DECODE, OTHERS, PREFILL
from viz.theme import PALETTE, layout

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
    api = sum(1 for r in [*decoding, *waiting] if r.source == "api")
    api = f" ({api} of them sent through the API)" if api else ""
    return (f"{runs}, {len(waiting)} waiting{api} · all together "
            f"{aggregate_tokens_per_s(snapshot):.1f} tokens/s over the last {RATE_WINDOW_S:g} s{own}")


def class_figure(snapshot: ClassSnapshot) -> go.Figure:
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3], vertical_spacing=0.08)
    now = snapshot.now
    phases = {"waiting": ([], [], [], OTHERS), "prefill": ([], [], [], PREFILL), "decode": ([], [], [], DECODE)}
    for number, run in enumerate(snapshot.runs, start=1):
        label = f"API run {number}" if run.source == "api" else f"run {number}"
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


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def pool_html(snapshot: ClassSnapshot) -> str:
    """The KV block pool: one square per block handed out so far (shared by several rows, owned by
    one, cached with no run using it, free), each run's block table, the prefix cache's hit rate
    with its denominator, and what the pages hold against contiguous caches at full length."""
    pool = snapshot.pool
    if pool is None:
        return ""
    colours = {"shared": PALETTE["done"], "owned": DECODE, "cached": PALETTE["waiting"], "free": PALETTE["grid"]}

    def kind(state: int) -> str:
        return "shared" if state > 1 else "owned" if state == 1 else "cached" if state < 0 else "free"

    counts = {k: 0 for k in colours}
    squares = []
    for block, state in enumerate(pool.states):
        counts[kind(state)] += 1
        title = f"block {block}: " + (f"shared by {state} rows" if state > 1 else kind(state))
        squares.append(f'<span class="ps-block" title="{html.escape(title)}" '
                       f'style="background:{colours[kind(state)]}"></span>')
    counts["free"] += pool.capacity - len(pool.states)
    legend = " · ".join(f'<span class="ps-block" style="background:{colours[k]}"></span> {k} {counts[k]:,}'
                        for k in colours)
    shared = {b for b, s in enumerate(pool.states) if s > 1}
    tables = "".join(
        f"<li>{html.escape(label)}: " + " ".join(f"<b>{b}</b>" if b in shared else str(b) for b in blocks) + "</li>"
        for label, blocks in pool.tables)
    hit = (f"{pool.hit_tokens:,} of {pool.queried_tokens:,} prompt tokens ({pool.hit_tokens / pool.queried_tokens:.0%})"
           if pool.queried_tokens else "no prompts yet")
    return (f'<div class="ps-pool"><p><b>KV cache pages</b> ({pool.block_tokens} tokens, '
            f'{_mb(pool.block_bytes)} a block; the budget holds {pool.capacity:,}): {legend}</p>'
            f'<div class="ps-blocks">{"".join(squares)}</div>'
            f"<p>Prefix cache hits: {hit} came from shared blocks instead of being prefilled again. "
            f"Running now: the pages hold {_mb(pool.used_bytes)}; caches reserved at each run's full length "
            f"would hold {_mb(pool.reserved_bytes)}.</p>"
            f'<ul class="ps-tables">{tables}</ul>'
            "<p><i>Only the class's shared context is shared: a faster first token would tell a student that "
            "someone else had sent the same text, so a cache shared across users leaks through timing.</i></p></div>")


def goodput_text(snapshot: ClassSnapshot, ttft_s: float, tpot_s: float) -> str:
    g = Goodput.of(snapshot.runs, snapshot.window_s, ttft_s, tpot_s)
    if not g.finished:
        return f"Goodput (TTFT ≤ {ttft_s:g} s, TPOT ≤ {tpot_s * 1e3:g} ms): no run has finished in the last minute."
    return (f"Goodput (TTFT ≤ {ttft_s:g} s and TPOT ≤ {tpot_s * 1e3:g} ms): {g.met} of {g.finished} runs that finished "
            f"in the last {snapshot.window_s:g} s met both ({g.met / g.finished:.0%}), {g.per_s:.2f} runs a second.")


LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0")


def join_html(address: str) -> str:
    """A QR code of the page's address (as the teacher's browser shows it), for students to join from
    their phones; where that address is this machine's loopback, why a phone cannot reach it."""
    from urllib.parse import urlsplit

    import segno

    parts = urlsplit(address or "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return ""
    url = f"{parts.scheme}://{parts.netloc}{parts.path}"
    shown = html.escape(url)
    if parts.hostname in LOOPBACK:
        return (f'<div class="ps-join ps-join-local"><p>This page is open at <code>{shown}</code>, this machine\'s own '
                f'address: a phone cannot reach it. To let students join, start the page with '
                f'<code>--host 0.0.0.0</code> and open it here at this machine\'s network address; its QR code then '
                f'appears here.</p></div>')
    code = segno.make(url, error="m").svg_inline(scale=8, border=2)
    return (f'<div class="ps-join"><div class="ps-qr" role="img" aria-label="QR code of {shown}">{code}</div>'
            f'<p>Students join from their phones: scan, or open <b>{shown}</b>, then the Lesson or Live run '
            f'tab.</p></div>')
