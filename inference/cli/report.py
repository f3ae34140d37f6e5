"""The CLI's text reports: what a run did in each phase, in a few lines a student can read."""
from __future__ import annotations

from inference.lessons.verdicts import speculation_verdict
from inference.trace import Trace


def format_remote_summary(trace: Trace) -> str:
    """A remote run: what was measured here, then what the engine said of itself."""
    s = trace.summary
    tokens = sum(step.tokens_out for step in trace.steps)
    lines = [f"engine    {trace.engine}, model {trace.model.name}",
             f"prompt    {trace.prompt_tokens or 'not counted by the engine'} tokens -> {tokens} new tokens in "
             f"{len(trace.steps)} chunks (stopped: {s.stop_reason})",
             f"outside   TTFT {s.ttft_ms:.1f} ms (network, queue and prefill); inter-token {s.decode_ms_median:.1f} ms "
             f"median, {s.decode_ms_p90:.1f} p90; {s.decode_tokens_per_s:.1f} tokens/s"]
    lines += [f"inside    {name}: {value:,.1f}" for name, value in trace.reported.items()] or \
        ["inside    the engine reported nothing of its own"]
    lines += [f"note      {note}" for note in trace.notes]
    return "\n".join(lines)


def format_summary(trace: Trace) -> str:
    """What happened in each phase, in a few lines a student can read."""
    m, d, s = trace.model, trace.device, trace.summary
    if not trace.steps:
        return f"no token was generated (stopped: {s.stop_reason} during prefill)"
    prefill = trace.steps[0]
    decode_gbs = trace.decode_bytes_per_s
    lines = [
        f"model     {m.name}: {m.params / 1e6:.1f}M params, {m.precision}, {m.weight_bytes / 1e6:.1f} MB of weights"
        + (f" as decode reads them (computed in {m.dtype})" if m.weights else ""),
        f"device    {d.type}: {d.name}; roofs {d.peak_flops / 1e9:,.0f} GFLOP/s, {d.peak_bytes_per_s / 1e9:,.1f} GB/s ({d.source})",
        *[f"          {line}" for line in (d.dtype_choice, d.arithmetic) if line],
        f"prompt    {trace.prompt_tokens} tokens x batch {trace.settings.batch_size} -> {len(trace.output_ids)} new tokens "
        f"(stopped: {s.stop_reason}; KV cache {'on' if trace.settings.kv_cache else 'off'})",
        f"prefill   TTFT {s.ttft_ms:.1f} ms: {prefill.achieved_flops / 1e9:,.1f} GFLOP/s achieved, "
        f"{100 * prefill.achieved_flops / d.peak_flops:.0f}% of the compute roof",
    ]
    if trace.decode_steps:
        lines += [
            f"decode    {s.decode_ms_median:.1f} ms/{'step' if trace.settings.speculate else 'token'} median, "
            f"{s.decode_ms_p90:.1f} p90, "
            f"{s.decode_tokens_per_s:.1f} tokens/s",
            f"          {decode_gbs / 1e9:.1f} GB/s achieved (cost model), "
            f"{100 * decode_gbs / d.peak_bytes_per_s:.0f}% of the bandwidth roof",
        ]
    if trace.settings.speculate:
        lines.append(f"speculate {speculation_verdict(trace)}")
    lines.append(f"KV cache  {s.kv_bytes_final:,} bytes at the end ({m.kv_bytes_per_token * trace.settings.batch_size:,} per token)")
    return "\n".join(lines)
