"""The claims' verdicts: typed results of the experiments, and the sentences drawn from them.

Pure functions of traces (no torch, no engine), so the figures in viz/ can import them; the
experiments that produce the traces live in inference/lessons/experiments.py. Each verdict is a sentence
computed from the numbers, never written in advance: when a claim does not hold, it says so.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from inference.cost_model import compute_bound_batch
from inference.trace import Goodput, Trace, percentile


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (slope, intercept)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return slope, my - slope * mx


@dataclass(frozen=True)
class SweepResult:
    """Claim 1: the pause grows with the prompt; the stream does not."""
    traces: tuple[Trace, ...]

    @property
    def prompt_tokens(self) -> list[int]:
        return [t.prompt_tokens for t in self.traces]

    @property
    def ttft_ms(self) -> list[float]:
        return [t.summary.ttft_ms for t in self.traces]

    @property
    def decode_ms(self) -> list[float]:
        return [t.summary.decode_ms_median for t in self.traces]

    @property
    def ttft_fit(self) -> tuple[float, float]:
        """(ms per prompt token, ms at zero tokens)."""
        return linear_fit([float(n) for n in self.prompt_tokens], self.ttft_ms)

    @property
    def prefill_tokens_per_s(self) -> float:
        longest = max(self.traces, key=lambda t: t.prompt_tokens)
        return longest.prompt_tokens / longest.summary.ttft_ms * 1e3

    @property
    def decode_tokens_per_s(self) -> float:
        return statistics.median(t.summary.decode_tokens_per_s for t in self.traces)

    @property
    def holds(self) -> bool:
        return self.ttft_ms[-1] / self.ttft_ms[0] > 2 * self.decode_ms[-1] / self.decode_ms[0]

    def verdict(self) -> str:
        ttft_growth = self.ttft_ms[-1] / self.ttft_ms[0]
        decode_growth = self.decode_ms[-1] / self.decode_ms[0]
        return (f"{'✔' if self.holds else '✘'} From {self.prompt_tokens[0]} to {self.prompt_tokens[-1]} prompt tokens the "
                f"pause grew {ttft_growth:.1f}x ({self.ttft_fit[0]:.2f} ms per prompt token) while decode changed "
                f"{decode_growth:.2f}x. Prefill ran {self.prefill_tokens_per_s:,.0f} tokens/s, decode "
                f"{self.decode_tokens_per_s:.1f} tokens/s: {self.prefill_tokens_per_s / self.decode_tokens_per_s:.0f}x."
                f"{interference_note(self.traces)}")


# From this share of its decode time spent waiting for a core, a run's step times are the
# machine's as much as the model's, and the page and the verdicts say so.
WAIT_WORTH_SAYING = 0.2


def interference_note(traces: tuple[Trace, ...] | list[Trace]) -> str:
    """A sentence, where the runs' decode steps waited for a core long enough to bend their times
    (inference/hardware/cpu_wait.py), saying by how much; "" otherwise or where it was not measured."""
    shares = [share for t in traces if (share := t.decode_cpu_wait_share) is not None]
    if not shares or max(shares) < WAIT_WORTH_SAYING:
        return ""
    return (f" Caution: its decode steps waited up to {max(shares):.0%} of their time for a core (other programs "
            f"on this machine were using it), so these times are the machine's as much as the model's.")


def _quarter_growth(values: list[float]) -> float:
    """Median of the last quarter over median of the first: how much a per-step time grew."""
    q = max(1, len(values) // 4)
    return statistics.median(values[-q:]) / statistics.median(values[:q])


@dataclass(frozen=True)
class CacheRace:
    """Claim 2: the KV cache keeps decode cheap (flat steps, linear total) versus recomputing."""
    cached: Trace
    recomputed: Trace

    @property
    def growth(self) -> tuple[float, float]:
        """(cached, recomputed) growth of decode step time from the first to the last quarter."""
        return (_quarter_growth([s.ms for s in self.cached.decode_steps]),
                _quarter_growth([s.ms for s in self.recomputed.decode_steps]))

    @property
    def holds(self) -> bool:
        cached, recomputed = self.growth
        return recomputed > cached and sum(s.ms for s in self.recomputed.steps) > sum(s.ms for s in self.cached.steps)

    def verdict(self) -> str:
        cached, recomputed = self.growth
        total = sum(s.ms for s in self.recomputed.steps) / sum(s.ms for s in self.cached.steps)
        return (f"{'✔' if self.holds else '✘'} With the cache each step took about the same time ({cached:.2f}x from "
                f"first to last quarter); recomputing the whole sequence grew {recomputed:.2f}x and took {total:.1f}x "
                f"as long in total for the same {len(self.cached.steps)} tokens."
                f"{interference_note((self.cached, self.recomputed))}")


@dataclass(frozen=True)
class BatchResult:
    """Claim 3: decode is memory-bound, so a batch costs little more per step than one sequence."""
    traces: tuple[Trace, ...]

    @property
    def batch_sizes(self) -> list[int]:
        return [t.settings.batch_size for t in self.traces]

    @property
    def step_ms(self) -> list[float]:
        return [t.summary.decode_ms_median for t in self.traces]

    @property
    def tokens_per_s(self) -> list[float]:
        return [t.summary.decode_tokens_per_s for t in self.traces]

    @property
    def compute_bound_batch(self) -> float:
        """Roofline estimate: the batch at which this model's decode step meets this device's ridge."""
        first = self.traces[0]
        return compute_bound_batch(first.model, first.device.ridge_intensity, first.decode_steps[0].context_len)

    @property
    def holds(self) -> bool:
        return self.step_ms[-1] / self.step_ms[0] < 0.5 * self.batch_sizes[-1] / self.batch_sizes[0]

    @property
    def knee(self) -> int | None:
        """Where the measured curve flattens: the smallest batch from which throughput gains less
        than KNEE_GAIN more at any larger batch measured (None: it still gained at the largest)."""
        tps = self.tokens_per_s
        for i in range(len(tps) - 1):
            if max(tps[i + 1:]) < KNEE_GAIN * tps[i]:
                return self.batch_sizes[i]
        return None

    def verdict(self) -> str:
        b0, b1 = self.batch_sizes[0], self.batch_sizes[-1]
        growth = self.step_ms[-1] / self.step_ms[0]
        text = (f"{'✔' if self.holds else '✘'} Going from batch {b0} to {b1} made each decode step "
                f"{growth:.1f}x slower while producing {b1 // b0}x the tokens: throughput "
                f"{self.tokens_per_s[0]:.1f} -> {self.tokens_per_s[-1]:.1f} tokens/s.")
        text += interference_note(self.traces)
        return f"{text} {self._knee_against_roofline()}"

    def _knee_against_roofline(self) -> str:
        """The turn to compute-bound read off the measured curve, beside the roofline's estimate."""
        estimate, device, sizes = self.compute_bound_batch, self.traces[0].device, self.batch_sizes
        roof = f"this device's compute roof ({device.peak_flops / 1e9:,.0f} GFLOP/s, {device.source})"
        knee = self.knee
        if knee is None:
            measured = (f"Throughput still grew at batch {sizes[-1]}, so the turn to compute-bound lies beyond "
                        f"the batches measured")
            agrees = estimate >= sizes[-2] if len(sizes) > 1 else True
        else:
            at = sizes.index(knee)
            after = sizes[at + 1]
            gain = max(self.tokens_per_s[at + 1:]) / self.tokens_per_s[at]
            measured = (f"Throughput flattens from batch {knee} (at most {gain:.2f}x more up to batch {sizes[-1]}), "
                        f"so the step turns compute-bound between batch {knee} and {after}")
            # Within half a step of the measured bracket either way: the sweep's batches are far apart.
            agrees = knee / KNEE_SLACK <= estimate <= after * KNEE_SLACK
        verdict = "which agrees" if agrees else f"which these measurements contradict ({roof} is off)"
        return f"{measured}; the roofline puts the turn near batch {estimate:,.1f} (an estimate), {verdict}."


# A batch sweep's throughput has flattened once no larger batch gains this much over it; the
# roofline's turn agrees with the measured one within this factor of the batches around the knee.
KNEE_GAIN = 1.25
KNEE_SLACK = 1.5


def roofline_verdict(trace: Trace) -> str:
    """Claim 4, from one run: where prefill and decode sit against this device's roofs. Every
    sentence is computed from this run's numbers."""
    d = trace.device
    prefill, decode = trace.steps[0], trace.decode_steps
    ridge = d.ridge_intensity
    decode_intensity = statistics.median(s.intensity for s in decode) if decode else 0.0
    holds = bool(decode) and prefill.intensity > 10 * decode_intensity and decode_intensity < ridge
    lines = [f"{'✔' if holds else '✘'} Ridge point of this device: {ridge:.0f} FLOPs per byte."]
    lines.append(f"Prefill: {prefill.intensity:.0f} FLOPs/byte ({_side(prefill.intensity, ridge)}), "
                 f"{_share(prefill.achieved_flops, d.peak_flops, 'compute')}.")
    if decode:
        share = statistics.median(s.achieved_bytes_per_s for s in decode) / d.peak_bytes_per_s
        lines.append(f"Decode: {decode_intensity:.1f} FLOPs/byte ({_side(decode_intensity, ridge)}): "
                     f"{'bandwidth-bound' if decode_intensity < ridge else 'compute-bound'} by the roofline, "
                     f"{_share(share * d.peak_bytes_per_s, d.peak_bytes_per_s, 'memory')}.")
        if d.type == "cuda":
            bytes_per_step = statistics.median(s.bytes for s in decode)
            lines.append(decode_bound_verdict(trace.summary.decode_ms_median, bytes_per_step, d.peak_bytes_per_s,
                                              f"this GPU's memory roof ({d.source})"))
        elif share < 0.5:
            kernel = {"fast": "the fused decode kernels", "eager": "plain PyTorch"}.get(trace.settings.kernel,
                                                                                      trace.settings.kernel)
            lines.append(f"At {share:.0%} of the memory roof, most of each decode step ({trace.summary.decode_ms_median:.1f} "
                         f"ms) goes to something other than reading memory, with {kernel}.")
        if prefill.intensity <= 10 * decode_intensity:
            lines.append(f"Prefill's intensity is only {prefill.intensity / decode_intensity:.1f}x decode's here "
                         f"(a short prompt of {trace.prompt_tokens} tokens).")
    else:
        lines.append("This run has no decode step to place.")
    return " ".join(lines) + interference_note([trace])


def decode_bound_verdict(step_ms: float, step_bytes: float, bytes_per_s: float, roof_name: str,
                         graph_ms: float | None = None, device_type: str = "cuda") -> str:
    """What bounds a decode step, from its figures: the time its bytes need at the roof against the
    time it took. Where the bytes explain most of it, the step is bound by bandwidth; where they
    explain little (a small model on a big GPU), by launching its many small kernels one after
    another, which a step captured as one CUDA graph (`graph_ms`, where measured) shows."""
    needed_ms = step_bytes / bytes_per_s * 1e3
    share = needed_ms / step_ms if step_ms > 0 else 0.0
    figures = (f"reading its {step_bytes / 1e6:,.1f} MB at {bytes_per_s / 1e9:,.0f} GB/s ({roof_name}) takes "
               f"{needed_ms:.3f} ms of the {step_ms:.3f} ms a decode step took ({share:.0%})")
    if share >= 0.5:
        sentence = f"Decode is bound by memory bandwidth here: {figures}."
    elif device_type == "cuda":
        sentence = (f"Decode is not bound by bandwidth here but by launching kernels: {figures}; the rest is the "
                    f"host issuing hundreds of small kernels one after another.")
    else:
        sentence = (f"Decode is not bound by bandwidth here: {figures}; the rest is per-operation overhead "
                    f"(Python, dispatch, threads) and arithmetic.")
    if graph_ms:
        graph_share = needed_ms / graph_ms
        sentence += (f" Captured as one CUDA graph the step took {graph_ms:.3f} ms ({step_ms / graph_ms:.1f}x "
                     f"{'faster' if graph_ms < step_ms else 'slower'}), {graph_share:.0%} of it explained by the bytes.")
    return sentence


def _side(intensity: float, ridge: float) -> str:
    if intensity >= ridge:
        return f"{intensity / ridge:.1f}x right of the ridge, the compute side"
    return f"{ridge / intensity:.0f}x left of the ridge, the bandwidth side"


def _share(achieved: float, roof: float, kind: str) -> str:
    share = achieved / roof
    if share > 1:
        return (f"{share:.0%} of the {kind} roof: above a roof is impossible, so that roof was measured too low "
                f"(delete the cached roofs to measure again)")
    return f"{share:.0%} of the {kind} roof"


@dataclass(frozen=True)
class DtypeResult:
    """Claim 5: bytes per weight set decode speed; prefill changes by a different factor."""
    traces: tuple[Trace, ...]          # the same prompt, one run per dtype, widest dtype first

    def ratios(self) -> list[tuple[str, float, float, float]]:
        """Per dtype after the first: (dtype, weight-bytes ratio, decode speed-up, prefill speed-up)."""
        base = self.traces[0]
        return [(t.model.precision, base.model.weight_bytes / t.model.weight_bytes,
                 base.summary.decode_ms_median / t.summary.decode_ms_median, base.summary.ttft_ms / t.summary.ttft_ms)
                for t in self.traces[1:]]

    def verdict(self) -> str:
        parts = [f"{dtype}: {size:.1f}x fewer weight bytes, decode {_faster(decode)}, prefill {_faster(prefill)}"
                 for dtype, size, decode, prefill in self.ratios()]
        holds = all(decode > 1.1 for _, _, decode, _ in self.ratios())
        return f"{'✔' if holds else '✘'} Against {self.traces[0].model.precision}: " + "; ".join(parts) + "."


def _faster(speedup: float) -> str:
    """A speed-up as a student reads it: 1.38x faster, or 3.2x slower (never "0.31x faster")."""
    return f"{speedup:.2f}x faster" if speedup >= 1 else f"{1 / speedup:.2f}x slower"


@dataclass(frozen=True)
class ChunkResult:
    """Chunked prefill: runs stream while a long prompt joins the shared batch, its prefill whole
    (`off`) and in chunks (`on`). Each side holds a streaming run's trace and the long run's."""
    chunk: int
    off: tuple[Trace, Trace]
    on: tuple[Trace, Trace]
    joined: tuple[int, int] = (0, 0)   # the streaming run's steps before the long prompt arrived (off, on)
    goodput: tuple[Goodput, Goodput] | None = None     # every run of each side against the default objectives

    def worst_step_ms(self, chunked: bool) -> float:
        """The streaming run's slowest decode step after the long prompt arrived (the steps before
        it held the other streams' own admissions)."""
        stream, joined = (self.on[0], self.joined[1]) if chunked else (self.off[0], self.joined[0])
        return max(s.ms for s in stream.steps[joined:] if s.phase == "decode")

    @property
    def holds(self) -> bool:
        """Chunks make the others' worst step clearly smaller, at the price of the long run's TTFT."""
        return self.worst_step_ms(False) > 1.5 * self.worst_step_ms(True)

    def verdict(self) -> str:
        off, on = self.worst_step_ms(False), self.worst_step_ms(True)
        long_off, long_on = self.off[1].summary.ttft_ms, self.on[1].summary.ttft_ms
        return (f"{'✔' if self.holds else '✘'} While a {self.off[1].prompt_tokens:,}-token prompt joined, the streaming "
                f"runs' worst step took {off:,.0f} ms with its prefill whole and {on:,.0f} ms with chunks of "
                f"{self.chunk} ({off / on:.1f}x smaller); the long prompt's first token came after {long_on:,.0f} ms "
                f"instead of {long_off:,.0f} ms: chunks trade its wait for everyone else's smooth stream."
                + (f" Goodput: {self.goodput[0].met} of {self.goodput[0].finished} runs met the objectives with the "
                   f"prefill whole, {self.goodput[1].met} of {self.goodput[1].finished} with chunks."
                   if self.goodput else ""))


@dataclass(frozen=True)
class PrefixSide:
    """A class pressing Run at once, on one side of the prefix-caching experiment."""
    traces: tuple[Trace, ...]
    ttft_s: tuple[float, ...]      # each student's wait from pressing Run to the first token (the queue included)
    seconds: float                 # from the first Run to the last token
    kv_peak_bytes: int             # the most the KV pages held at once
    goodput: Goodput

    @property
    def prefill_tokens(self) -> int:
        """Prompt tokens the server computed (not served from shared blocks)."""
        return sum(t.prompt_tokens - t.reused_tokens for t in self.traces)

    @property
    def tokens_per_s(self) -> float:
        return sum(len(t.output_ids) for t in self.traces) / self.seconds

    def ttft_p(self, q: float) -> float:
        return percentile(list(self.ttft_s), q)


@dataclass(frozen=True)
class PrefixResult:
    """A class's questions after one shared context, prefix caching off, then on."""
    context_tokens: int
    off: PrefixSide
    on: PrefixSide
    ttft_objective_s: float
    tpot_objective_s: float

    @property
    def same_answers(self) -> int:
        """Students who got the same answer, token for token, with sharing on as with it off."""
        return sum(a.output_ids == b.output_ids for a, b in zip(self.off.traces, self.on.traces))

    @property
    def identical(self) -> bool:
        return self.same_answers == len(self.off.traces)

    @property
    def precision(self) -> str:
        return self.off.traces[0].model.precision

    @property
    def holds(self) -> bool:
        """Sharing the context's blocks makes the class's slow first tokens (p90) at least 5x sooner,
        and changes no answer in float32 (in bfloat16 a prefill in two pieces rounds otherwise than
        one piece: the verdict says how many answers that moved)."""
        return (self.identical or self.precision != "float32") and self.off.ttft_p(90) >= 5 * self.on.ttft_p(90)

    def verdict(self) -> str:
        off, on, n = self.off, self.on, len(self.off.traces)
        if self.identical:
            same = "the same answers, token for token"
        else:
            parted = [next((i for i, (x, y) in enumerate(zip(a.output_ids, b.output_ids)) if x != y), 0)
                      for a, b in zip(off.traces, on.traces) if a.output_ids != b.output_ids]
            why = (f"{self.precision} rounds a prefill in two pieces otherwise than in one" if self.precision != "float32"
                   else "in float32 that is a bug")
            same = (f"{self.same_answers} of {n} answers the same token for token, the others part from token "
                    f"{min(parted) + 1} on ({why})")
        return (f"{'✔' if self.holds else '✘'} {n} students after a {self.context_tokens:,}-token "
                f"shared context: p90 TTFT {off.ttft_p(90):.2f} s without prefix caching, {on.ttft_p(90):.2f} s "
                f"with it ({off.ttft_p(90) / on.ttft_p(90):.1f}x sooner; p50 {off.ttft_p(50):.2f} s -> "
                f"{on.ttft_p(50):.2f} s), {off.prefill_tokens:,} -> {on.prefill_tokens:,} prompt tokens prefilled, "
                f"{off.tokens_per_s:.1f} -> {on.tokens_per_s:.1f} tokens/s for the class, KV pages at most "
                f"{off.kv_peak_bytes / 1e6:,.0f} -> {on.kv_peak_bytes / 1e6:,.0f} MB; goodput (TTFT <= "
                f"{self.ttft_objective_s:g} s, TPOT <= {self.tpot_objective_s * 1e3:g} ms) {off.goodput.met} -> "
                f"{on.goodput.met} of {n} runs; {same}.")


def _checks(trace: Trace) -> list:
    return [s for s in trace.decode_steps if s.drafted]


def _plain_steps(trace: Trace) -> list:
    return [s for s in trace.decode_steps if not s.drafted]


def speculation_figures(trace: Trace, plain_step_ms: float | None = None) -> dict[str, float] | None:
    """A speculative run's figures (None for a run that did not speculate): its check steps' median
    time against a plain decode step's (`plain_step_ms`, else the median of this run's own steps that
    had nothing to check), drafts made and kept, tokens per decode step (each step reads the weights
    once), and the speedup over `plain_step_ms` a token."""
    if not trace.settings.speculate:
        return None
    checks, decode = _checks(trace), trace.decode_steps
    own = _plain_steps(trace)
    plain = plain_step_ms if plain_step_ms else (statistics.median(s.ms for s in own) if own else 0.0)
    tokens = sum(s.tokens_out for s in decode)
    figures = {"checks": len(checks), "drafted": sum(s.drafted for s in checks),
               "accepted": sum(s.accepted for s in checks), "steps": len(decode), "tokens": tokens,
               "plain_step_ms": plain, "check_ms": statistics.median(s.ms for s in checks) if checks else 0.0,
               "draft_tokens": trace.settings.draft_tokens}
    figures["check_ratio"] = figures["check_ms"] / plain if plain and checks else 0.0
    figures["acceptance"] = figures["accepted"] / figures["drafted"] if figures["drafted"] else 0.0
    figures["kept_per_check"] = figures["accepted"] / len(checks) if checks else 0.0
    figures["tokens_per_step"] = tokens / len(decode) if decode else 0.0
    decode_ms = sum(s.ms for s in decode)
    figures["speedup"] = plain * tokens / decode_ms if plain and decode_ms else 0.0
    return figures


def speculation_verdict(trace: Trace) -> str:
    """One speculative run's lesson, from its own figures: what a check cost against the run's own
    plain decode steps, how many drafts were kept, and whether it paid ("" for a run that did not
    speculate)."""
    f = speculation_figures(trace)
    if f is None:
        return ""
    method = "prompt lookup" if trace.settings.speculate == "lookup" else "the draft model"
    if not f["checks"]:
        return (f"✘ {method} found nothing to draft from in {f['steps']:.0f} steps: every step was a plain "
                f"decode step, so speculation changed nothing.")
    if not f["plain_step_ms"]:
        return (f"{method} drafted {f['drafted']:.0f} tokens and the model kept {f['accepted']:.0f} "
                f"({f['tokens_per_step']:.1f} tokens a step); no plain step was measured to compare with.")
    cost = (f"checking up to {f['draft_tokens']:.0f} drafted tokens cost {f['check_ratio']:.2f}x one plain decode "
            f"step (median {f['check_ms']:.1f} vs {f['plain_step_ms']:.1f} ms, this run's steps that had nothing "
            f"to check)")
    why = ", because the weights are read once either way" if f["check_ratio"] < 1.5 else \
        ", more than one step: on this machine the check is no longer only reading weights"
    if f["accepted"] == 0:
        return (f"✘ {cost}{why}; but nothing drafted was kept ({f['checks']:.0f} checks), so every check was "
                f"wasted work: decode ran at {f['speedup']:.2f}x the plain rate.")
    paid = f["speedup"] > 1.0
    return (f"{'✔' if paid else '✘'} {cost}{why}; {f['kept_per_check']:.1f} of them were kept per check "
            f"({100 * f['acceptance']:.0f}% of {f['drafted']:.0f} drafted), {f['tokens_per_step']:.2f} tokens a step: "
            f"{f['tokens_per_step']:.1f}x fewer weight reads per token, decode "
            f"{'ran' if paid else 'still ran only'} {f['speedup']:.2f}x the plain rate.")


@dataclass(frozen=True)
class SpeculationResult:
    """Claim: checking k guesses costs about one decode step (the weights are read once), so a
    prompt whose answer repeats its input decodes several tokens per weight read. `runs`: (prompt
    kind, plain trace, speculative trace), the plain run of the same prompt just before each."""
    runs: tuple[tuple[str, Trace, Trace], ...]

    def figures(self) -> list[tuple[str, int, dict[str, float], bool]]:
        """(kind, k, figures against the plain run's median decode step, same tokens as plain)."""
        return [(kind, spec.settings.draft_tokens, speculation_figures(spec, plain.summary.decode_ms_median),
                 spec.output_ids == plain.output_ids) for kind, plain, spec in self.runs]

    @property
    def kinds(self) -> list[str]:
        return list(dict.fromkeys(kind for kind, _, _ in self.runs))

    @property
    def holds(self) -> bool:
        """Some check of several drafts cost under 1.5 plain steps, and on the first prompt (the one
        whose answer repeats its input) some k decoded faster than plain decode."""
        rows = self.figures()
        cheap = any(k > 1 and 0 < f["check_ratio"] < 1.5 for kind, k, f, _ in rows)
        return cheap and any(f["speedup"] > 1 for kind, _, f, _ in rows if kind == self.kinds[0])

    def verdict(self) -> str:
        rows = self.figures()
        first = self.runs[0][2]
        ridge = compute_bound_batch(first.model, first.device.ridge_intensity, first.decode_steps[0].context_len)
        ratios = {k: f["check_ratio"] for kind, k, f, _ in rows if kind == self.kinds[0] and f["checks"]}
        ks = sorted(ratios)
        cost = ", ".join(f"k={k}: {ratios[k]:.2f}x" for k in ks)
        text = (f"{'✔' if self.holds else '✘'} A check of k drafted tokens against one plain decode step: {cost} "
                f"(the roofline puts a pass "
                f"turning compute-bound near {ridge:,.1f} tokens, an estimate).")
        for kind in self.kinds:
            mine = [(k, f) for kd, k, f, _ in rows if kd == kind]
            best_k, best = max(mine, key=lambda kf: kf[1]["speedup"])
            accept = ", ".join(f"{100 * f['acceptance']:.0f}%" for _, f in mine)
            text += (f" {kind}: drafts kept {accept} for k = {', '.join(str(k) for k, _ in mine)}; best "
                     f"{best['speedup']:.2f}x the plain rate at k={best_k} ({best['tokens_per_step']:.1f} tokens a step)"
                     f"{'' if best['speedup'] > 1 else ': speculation did not pay here'}.")
        if first.settings.greedy:
            text += (" Every speculative run wrote exactly plain decode's tokens." if all(same for *_, same in rows)
                     else " ✘ Some speculative runs wrote other tokens than plain decode did: a bug.")
        return text + interference_note([t for _, p, s in self.runs for t in (p, s)])
