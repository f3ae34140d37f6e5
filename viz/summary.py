"""Headline numbers and status lines as small HTML fragments. Every string from the model or the
user is escaped here; the numbers are formatted from the trace."""
from __future__ import annotations

import html

from typing import Callable

from inference.lessons.verdicts import WAIT_WORTH_SAYING, speculation_verdict
from inference.trace import DeviceInfo, ModelInfo, Step, Trace


def _card(label: str, value: str, note: str) -> str:
    return (f'<div class="ps-card"><div class="ps-card-label">{html.escape(label)}</div>'
            f'<div class="ps-card-value">{html.escape(value)}</div>'
            f'<div class="ps-card-note">{html.escape(note)}</div></div>')


def headline_numbers(trace: Trace) -> dict[str, float]:
    """The five numbers the page shows in large type (all measured, the bandwidth via the cost model)."""
    s, d = trace.summary, trace.device
    bytes_per_s = trace.decode_bytes_per_s
    return {"ttft_ms": s.ttft_ms, "decode_ms_median": s.decode_ms_median, "tokens_per_s": s.decode_tokens_per_s,
            "kv_bytes": float(s.kv_bytes_final), "bandwidth_share": bytes_per_s / d.peak_bytes_per_s}


def headline_html(trace: Trace, token_text: Callable[[list[int]], str] | None = None) -> str:
    """The run's numbers in large type, what bent them, and (speculative decoding) what the drafts
    did, its text coloured by `token_text` (token ids -> text) where given."""
    if not trace.steps:
        return '<div class="ps-cards"></div>'
    if trace.remote:
        return remote_headline_html(trace)
    n = headline_numbers(trace)
    decode = bool(trace.decode_steps)
    cards = [
        _card("TTFT", f"{n['ttft_ms']:,.0f} ms", _prefill_line(trace)),
        _card("decode", f"{n['decode_ms_median']:.1f} ms" if decode else "–",
              "per step (median; a check writes several tokens)" if trace.settings.speculate else "per token (median)"),
        _card("speed", f"{n['tokens_per_s']:.1f} tok/s" if decode else "–",
              f"batch {trace.settings.batch_size}" if trace.settings.batch_size > 1 else "decode"),
        _card("KV cache", _bytes(n["kv_bytes"]), f"{trace.model.kv_bytes_per_token:,} B per token"),
        _card("bandwidth", f"{n['bandwidth_share']:.0%}" if decode else "–",
              "of the memory roof (bytes from the cost model)"),
    ]
    why = "; ".join(d for d in (trace.device.dtype_choice, trace.device.arithmetic) if d)
    note = f'<div class="ps-why">{html.escape(trace.model.precision)}: {html.escape(why)}</div>' if why else ""
    return (f'<div class="ps-cards" data-stop="{html.escape(trace.summary.stop_reason)}">{"".join(cards)}</div>'
            f'{wait_html(trace)}{speculation_html(trace, token_text)}{note}')


def compact_headline_html(trace: Trace) -> str:
    """The lesson's headline: the pause, the beat and the speed alone, large enough for a projector,
    and what bent them."""
    if not trace.steps:
        return '<div class="ps-cards"></div>'
    n, decode = headline_numbers(trace), bool(trace.decode_steps)
    cards = [_card("the pause (TTFT)", f"{n['ttft_ms']:,.0f} ms", f"{trace.prompt_tokens} prompt tokens"),
             _card("a decode step", f"{n['decode_ms_median']:.1f} ms" if decode else "–", "median"),
             _card("speed", f"{n['tokens_per_s']:.1f} tok/s" if decode else "–", "decode")]
    return f'<div class="ps-cards ps-cards-compact">{"".join(cards)}</div>{wait_html(trace)}'


def _prefill_line(trace: Trace) -> str:
    """What the first token's pause computed: the whole prompt, or what the cache did not hold (and
    then, where the server made one, its estimate of the same prompt's TTFT with nothing cached)."""
    reused = trace.reused_tokens
    if not reused:
        return f"prefill of {trace.prompt_tokens} prompt tokens"
    where = "the class's shared blocks" if trace.serving == "batched" else "the cache"
    cold = (f"; cold, about {trace.cold_ttft_ms:,.0f} ms (estimate: the server's last cold prefill, scaled)"
            if trace.cold_ttft_ms else "")
    return f"prefill of {trace.prompt_tokens - reused} new prompt tokens, {reused} from {where}{cold}"


def speculation_html(trace: Trace, token_text: Callable[[list[int]], str] | None) -> str:
    """A speculative run's verdict, and its text as it was written: drafts the model kept (green),
    drafts it rejected (struck out, red), then its own token; "" for a plain run."""
    verdict = speculation_verdict(trace)
    if not verdict:
        return ""
    strip = ""
    if token_text is not None:
        parts = [html.escape(trace.steps[0].text)]
        for step in trace.decode_steps:
            if not step.drafted:
                parts.append(html.escape(step.text))
                continue
            kept, rejected = list(step.draft_ids[:step.accepted]), list(step.draft_ids[step.accepted:])
            own = list(step.output_ids[len(kept):])
            if kept:
                parts.append(f'<span class="ps-kept">{html.escape(token_text(kept))}</span>')
            if rejected:
                parts.append(f'<span class="ps-rejected">{html.escape(token_text(rejected))}</span>')
            parts.append(html.escape(token_text(own)))
        strip = ('<div class="ps-drafts" data-checks="' + str(sum(1 for s in trace.decode_steps if s.drafted)) + '">'
                 '<span class="ps-kept">kept drafts</span> <span class="ps-rejected">rejected drafts</span> '
                 f'the model\'s own tokens<br>{"".join(parts)}</div>')
    return f'<div class="ps-why ps-spec" role="note">{html.escape(verdict)}</div>{strip}'


def wait_html(trace: Trace) -> str:
    """Where the run's decode waited for a core long enough to bend its figures: by how much, and why."""
    share = trace.decode_cpu_wait_share
    if share is None or share < WAIT_WORTH_SAYING:
        return ""
    return (f'<div class="ps-why ps-wait" role="note">This run waited {share:.0%} of its decode time for a core: '
            f'other programs on this machine (such as this browser drawing the charts) were using it, so the '
            f'decode figures above are the machine\'s as much as the model\'s.</div>')


def remote_headline_html(trace: Trace) -> str:
    """A remote engine's run: what this server measured of its stream, then what the engine said of
    itself (only what it sent), then where the two disagree."""
    s, decode = trace.summary, bool(trace.decode_steps)
    prompt = f"{trace.prompt_tokens} prompt tokens" if trace.prompt_tokens else "a prompt the engine did not count"
    tokens = sum(step.tokens_out for step in trace.steps)
    cards = [
        _card("TTFT", f"{s.ttft_ms:,.0f} ms", f"first chunk, seen from here: network, queue and prefill of {prompt}"),
        _card("ITL", f"{s.decode_ms_median:.1f} ms" if decode else "–", "between chunks (median)"),
        _card("speed", f"{s.decode_tokens_per_s:.1f} tok/s" if decode else "–",
              f"{tokens} tokens in {len(trace.steps)} chunks"),
    ]
    inside = "".join(f"<li>{html.escape(name)}: {value:,.1f}</li>" for name, value in trace.reported.items())
    told = (f'<div class="ps-why">The engine\'s own figures for this run:<ul>{inside}</ul></div>' if inside else
            '<div class="ps-why">This engine sent no figures of its own (no timings in its stream, no metrics '
            'endpoint): everything above is measured from outside.</div>')
    notes = "".join(f'<div class="ps-why">Note: {html.escape(n)}</div>' for n in trace.notes)
    return (f'<div class="ps-cards" data-stop="{html.escape(s.stop_reason)}">{"".join(cards)}</div>'
            f'<div class="ps-why">{html.escape(trace.engine)}, model {html.escape(trace.model.name)}</div>{told}{notes}')


def waiting_status_html(position: int, elapsed_s: float) -> str:
    """A run waiting for the engine: for room in the shared batch (its position known), or for the
    runs ahead of it to finish (solo mode, or a run that cannot share steps)."""
    if position:
        return (f'<div class="ps-status ps-prefill"><b>Waiting for room in the batch</b>: position {position} · '
                f'{elapsed_s:.0f} s (other runs are decoding; yours starts when one ends)</div>')
    return (f'<div class="ps-status ps-prefill"><b>Waiting for the engine</b>: other runs go first · '
            f'{elapsed_s:.0f} s</div>')


def remote_waiting_html(name: str, elapsed_s: float) -> str:
    """A remote run before its first chunk: the network, the engine's queue and its prefill, which
    from outside are one wait."""
    return (f'<div class="ps-status ps-prefill"><b>Waiting for the first chunk</b> from the remote engine '
            f'{html.escape(name)} (network, its queue and its prefill) · {elapsed_s:.2f} s</div>')


def prefill_status_html(prompt_tokens: int, layers_done: int, layers: int, elapsed_s: float) -> str:
    share = 100 * layers_done / layers if layers else 0
    return (f'<div class="ps-status ps-prefill"><b>Prefill running</b>: {prompt_tokens:,} prompt tokens '
            f'through layer {layers_done}/{layers} · {elapsed_s:.2f} s'
            f'<div class="ps-bar"><div style="width:{share:.0f}%"></div></div></div>')


def decode_status_html(steps: int, elapsed_s: float, last: Step | None = None, rows: int = 1) -> str:
    """The status while decoding; on a shared server, whom the latest step was shared with."""
    shared = ""
    if last is not None and last.batch_rows > rows:
        others = last.batch_rows - rows
        shared = f" · step shared with {others} other row{'s' if others > 1 else ''} (other runs on this server)"
        if last.waited_ms > 0:
            shared += f", after {last.waited_ms:.0f} ms of their prefill ({last.foreign_prefill_tokens} tokens)"
    return f'<div class="ps-status ps-decode"><b>Decoding</b>: {steps} tokens · {elapsed_s:.2f} s{shared}</div>'


def done_status_html(trace: Trace, note: str = "") -> str:
    reasons = {"eos": "the model ended its answer", "length": "reached max new tokens", "cancelled": "stopped"}
    steps = f" in {len(trace.steps)} steps" if trace.settings.speculate else ""
    text = f"Done: {sum(s.tokens_out for s in trace.steps)} tokens{steps}, {reasons.get(trace.summary.stop_reason, trace.summary.stop_reason)}"
    if trace.serving == "solo" and trace.serving_why:      # why it did not share the class's steps
        text += f"; it ran alone: {trace.serving_why}"
    return f'<div class="ps-status ps-done">{html.escape(text)}{html.escape(note)}</div>'


def model_status_html(model: ModelInfo, device: DeviceInfo, kernel_note: str = "") -> str:
    """What runs and why: the model, its dtype and why it was chosen, how products are computed."""
    text = (f"{model.name}: {model.params / 1e6:,.0f}M parameters, {_precision(model)}, {model.weight_bytes / 1e6:,.0f} MB "
            f"of weights, on {device.type} ({device.name})")
    details = [d for d in (device.dtype_choice, device.arithmetic, kernel_note) if d]
    items = "".join(f"<li>{html.escape(d)}</li>" for d in details)
    return f'<div class="ps-status ps-done ps-engine">{html.escape(text)}{f"<ul>{items}</ul>" if items else ""}</div>'


def loading_status_html(model: str, doing: str, error: str | None = None, under_way: bool = True) -> str:
    """The model box before the engine is there: what its load is doing now, why it failed, or that
    the first run will load it."""
    if error:
        return f'<div class="ps-status ps-error ps-engine">{html.escape(model)} could not be loaded: {html.escape(error)}</div>'
    if not under_way:
        return f'<div class="ps-status ps-engine">{html.escape(model)}: loaded by the first run</div>'
    return (f'<div class="ps-status ps-prefill ps-engine">{html.escape(model)}: {html.escape(doing)}. Runs wait until '
            "it is ready (a first start converts the weights and builds the kernel, once).</div>")


def loading_run_status_html(doing: str = "", elapsed_s: float | None = None) -> str:
    """The run's status line while the model loads: before a run (the page came up first), or while
    a run waits for it (`doing`: what the load is doing; `elapsed_s`: how long the run has waited)."""
    if elapsed_s is None:
        return ('<div class="ps-status ps-prefill"><b>The model is loading</b> (a first start converts the weights, '
                "a few seconds, once); you can press Run now: it starts when the model is ready</div>")
    return (f'<div class="ps-status ps-prefill">Waiting for the model to load ({html.escape(doing)}), '
            f"{elapsed_s:.0f} s so far</div>")


def ready_status_html() -> str:
    """The run's status line once a load the page waited for has ended (not a run's end: no ps-done)."""
    return '<div class="ps-status">The model is ready: press Run</div>'


def _precision(model: ModelInfo) -> str:
    return f"{model.weights} weights (computed in {model.dtype})" if model.weights else model.dtype


def error_html(message: str) -> str:
    return f'<div class="ps-status ps-error" role="alert">{html.escape(message)}</div>'


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"
