"""The guided lesson: the story of the two phases in seven steps, each an action on the model and a
sentence computed from what that action just measured (never written in advance).

Pure functions of traces and typed results (inference/lessons/verdicts.py), like the verdicts; the
runs behind each step are in inference/lessons/lesson_runs.py, the page in page/lesson.py. Where this
machine's figures do not show a step's claim, its sentence says so and why.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from inference.lessons.verdicts import (WAIT_WORTH_SAYING, BatchResult, CacheRace, DtypeResult, SweepResult,
                                       interference_note)
from inference.lessons.whatif import GPUS, PRESETS, Estimate, estimate
from inference.trace import Trace, percentile


@dataclass(frozen=True)
class LessonStep:
    title: str
    action: str           # the button's label
    what_to_do: str       # one or two sentences: what to press and what to watch


STEPS: tuple[LessonStep, ...] = (
    LessonStep("The pause, then the stream", "Run my prompt",
               "Press Run and watch the text: first nothing happens (the model reads your whole prompt), then "
               "words arrive one by one at a steady beat."),
    LessonStep("A longer prompt: the pause grows, the stream does not", "Run it longer and longer",
               "Your prompt runs again, pasted over and over to about 256 and 1,024 tokens. Compare how long each "
               "waited for its first token with how fast each then wrote."),
    LessonStep("Why: prefill computes, decode reads", "Place my run on the roofline",
               "Prefill does the math for every prompt token at once; decode reads every weight to write one "
               "token. The roofline shows where your run's two phases sit against this machine's limits."),
    LessonStep("The KV cache: turn it off and race", "Race with and without the cache",
               "The cache keeps every layer's keys and values of the tokens so far. Without it, each new token "
               "recomputes the whole sequence: every step becomes a prefill."),
    LessonStep("Batching is nearly free in decode", "Decode 1, 2 and 8 rows at once",
               "Several copies of your prompt decode in the same steps: the weights are read once for all of "
               "them. Compare the time of a step with the tokens it writes."),
    LessonStep("Bytes per weight set the speed", "Compare two formats",
               "The same model loaded at fewer bytes per weight: decode reads fewer bytes each step. (Loading "
               "the second copy takes a few seconds.)"),
    LessonStep("What this means for GPUs, batching and memory", "Estimate for big models",
               "The same arithmetic, applied to large models on large GPUs. These are estimates from datasheet "
               "peaks, not measurements."),
)


def _spread(values: list[float]) -> tuple[float, float]:
    """(p10, p90) of a run's step times."""
    return percentile(values, 10), percentile(values, 90)


def run_sentence(trace: Trace) -> str:
    """Step 1: this run's pause (its prefill) and the beat of its stream (its decode steps)."""
    decode = [s.ms for s in trace.decode_steps]
    pause = (f"Your prompt of {trace.prompt_tokens} tokens waited {trace.summary.ttft_ms:,.0f} ms for its first "
             f"token: that pause is **prefill**, every prompt token through all {trace.model.layers} layers at once.")
    if len(decode) < 2:
        return f"{pause} The run ended before a stream could be measured: raise the new tokens or ask a longer answer."
    low, high = _spread(decode)
    tokens = sum(s.tokens_out for s in trace.decode_steps)
    stream = (f" Then {tokens} tokens came at a steady {trace.summary.decode_ms_median:.1f} ms each "
              f"({trace.summary.decode_tokens_per_s:.1f} tokens/s; 8 in 10 between {low:.1f} and {high:.1f} ms): "
              f"that is **decode**, one token per step.")
    return pause + stream + _interference(trace)


def _interference(trace: Trace) -> str:
    share = trace.decode_cpu_wait_share
    if share is None or share < WAIT_WORTH_SAYING:
        return ""
    return (f" But this run waited {share:.0%} of its decode time for a core (other programs, such as this browser, "
            f"were using it): the beat is this machine's as much as the model's.")


DECODE_HARDLY = 1.15        # a decode step this much slower or less "hardly notices" the longer prompt


def sweep_sentence(result: SweepResult) -> str:
    """Step 2: from the shortest prompt to the longest, how the pause and a decode step changed."""
    n0, n1 = result.prompt_tokens[0], result.prompt_tokens[-1]
    t0, t1 = result.ttft_ms[0], result.ttft_ms[-1]
    d0, d1 = result.decode_ms[0], result.decode_ms[-1]
    said = (f"With {n1 / n0:.1f}x the prompt ({n0:,} → {n1:,} tokens) the pause grew {t1 / t0:.1f}x ({t0:,.0f} → "
            f"{t1:,.0f} ms), while a decode step went from {d0:.1f} to {d1:.1f} ms ({d1 / d0:.2f}x).")
    if result.holds and d1 / d0 < DECODE_HARDLY:
        said += " The pause follows the prompt; the stream hardly notices it."
    elif result.holds:
        said += (" The pause follows the prompt; the stream slowed far less: each step reads the same weights, and "
                 "only its attention reads the longer cache.")
    else:
        said += (" Here the pause did not grow much faster than the stream slowed, so this run does not show the "
                 "claim: at these lengths fixed costs dominate the pause (try a longer prompt).")
    return said + interference_note(result.traces)


def roofline_sentence(trace: Trace) -> str:
    """Step 3: where this run's prefill and decode sit against this machine's roofs."""
    d, prefill, decode = trace.device, trace.steps[0], trace.decode_steps
    ridge = d.ridge_intensity
    said = (f"Prefill did {prefill.intensity:,.0f} FLOPs per byte, at {prefill.achieved_flops / 1e9:,.0f} "
            f"GFLOP/s ({prefill.achieved_flops / d.peak_flops:.0%} of this machine's compute roof).")
    if not decode:
        return said + " This run has no decode step to place: run step 1 with more new tokens."
    intensity = statistics.median(s.intensity for s in decode)
    read = trace.decode_bytes_per_s
    said += (f" Decode did {intensity:.1f} FLOPs per byte: each step read the {trace.model.weight_bytes / 1e6:,.0f} MB "
             f"of weights for one token, at {read / 1e9:.1f} GB/s ({read / d.peak_bytes_per_s:.0%} of the memory "
             f"roof).")
    if prefill.intensity >= ridge > intensity:
        said += (f" The ridge is at {ridge:.0f} FLOPs per byte: prefill sits right of it (compute), decode left "
                 f"(memory).")
    elif intensity < ridge:
        said += (f" Both sit left of the ridge ({ridge:.0f} FLOPs per byte): a {trace.prompt_tokens}-token prompt is "
                 f"too short to make prefill compute-bound here; a longer one moves it right.")
    else:
        said += f" Decode sits right of the ridge ({ridge:.0f} FLOPs per byte) here: this machine's roofs say so."
    return said + _interference(trace)


def race_sentence(race: CacheRace) -> str:
    """Step 4: the cost of recomputing, measured."""
    cached, recomputed = race.growth
    with_ms = sum(s.ms for s in race.cached.steps)
    without_ms = sum(s.ms for s in race.recomputed.steps)
    with_step, without_step = race.cached.summary.decode_ms_median, race.recomputed.summary.decode_ms_median
    longest = max((s.tokens_in for s in race.recomputed.decode_steps), default=race.recomputed.prompt_tokens)
    said = (f"With the cache a decode step took {with_step:.1f} ms; without it {without_step:.1f} ms "
            f"({without_step / with_step:.1f}x), each step recomputing the whole sequence (up to {longest:,} tokens). "
            f"The {len(race.cached.steps)} tokens took {with_ms:,.0f} ms against {without_ms:,.0f} ms "
            f"({without_ms / with_ms:.1f}x).")
    if recomputed > 1.2 * cached:
        said += f" And the gap grows with every token: by the last quarter those steps were {recomputed:.2f}x slower."
    else:
        said += (f" Its steps hardly grew here ({recomputed:.2f}x from first to last quarter): at a few dozen tokens "
                 f"a step's fixed cost hides the longer sequence; the gap grows on longer answers.")
    if not race.holds:
        said += (" This race did not show the cache's saving: the sequence is too short for recomputing to cost "
                 "much here.")
    return said + interference_note((race.cached, race.recomputed))


def batch_sentence(result: BatchResult) -> str:
    """Step 5: rows per step against the time of a step."""
    b0, b1 = result.batch_sizes[0], result.batch_sizes[-1]
    s0, s1 = result.step_ms[0], result.step_ms[-1]
    gain = result.tokens_per_s[-1] / result.tokens_per_s[0]
    said = (f"A step of {b1} rows took {s1:.1f} ms against {s0:.1f} ms for {b0} ({s1 / s0:.2f}x as long) and wrote "
            f"{b1 // b0}x the tokens: {gain:.1f}x the tokens per second "
            f"({result.tokens_per_s[0]:.0f} → {result.tokens_per_s[-1]:.0f}).")
    if result.holds:
        said += " The weights were read once per step whatever the rows: in decode, more rows cost little."
    else:
        said += (f" Here {b1} rows cost nearly {b1 // b0}x one row: this machine ran out of arithmetic before the "
                 f"weights' bytes stopped dominating, so batching is not free on it.")
    return said + interference_note(result.traces)


def dtype_sentence(result: DtypeResult) -> str:
    """Step 6: fewer bytes per weight, measured against the widest format."""
    base = result.traces[0]
    parts = []
    for trace, (dtype, fewer, decode, prefill) in zip(result.traces[1:], result.ratios()):
        parts.append(f"{dtype} holds {fewer:.1f}x fewer weight bytes than {base.model.precision}; decode ran "
                     f"{_times(decode)} ({base.summary.decode_ms_median:.1f} → {trace.summary.decode_ms_median:.1f} "
                     f"ms a token), prefill {_times(prefill)}.")
    said = " ".join(parts)
    if all(decode > 1.1 for _, _, decode, _ in result.ratios()):
        said += " Decode reads every weight each step, so fewer bytes make it faster."
    else:
        said += (" On this machine the smaller format did not decode faster: unpacking it costs as much as the "
                 "bytes it saves here, so this CPU does not show the claim.")
    return said + interference_note(result.traces)


def _times(speedup: float) -> str:
    return f"{speedup:.2f}x faster" if speedup >= 1 else f"{1 / speedup:.2f}x slower"


@dataclass(frozen=True)
class WhatIf:
    """Step 7's figures: this run measured beside what this machine's roofs allow it, and the
    estimates for a large model on large GPUs, for one student and for a class."""
    measured: Trace
    alone: tuple[Estimate, ...]    # BIG_MODEL on each of BIG_GPUS, batch 1
    in_class: Estimate             # BIG_MODEL on the last of BIG_GPUS, CLASS_SIZE rows

    @property
    def roof_tokens_per_s(self) -> float:
        """What this machine's roofs allow this run's decode: a median step's bytes at the memory roof
        or its FLOPs at the compute roof, whichever takes longer (an estimate)."""
        d, decode = self.measured.device, self.measured.decode_steps
        seconds = statistics.median(max(s.bytes / d.peak_bytes_per_s, s.flops / d.peak_flops) for s in decode)
        return self.measured.settings.batch_size / seconds


BIG_MODEL, BIG_GPUS, CLASS_SIZE, CLASS_CONTEXT = "Llama-3.1-8B", ("L4", "H100 SXM"), 32, 4096


def what_if(trace: Trace) -> WhatIf:
    """Step 7's estimates, at this run's prompt length."""
    big = PRESETS[BIG_MODEL]
    alone = tuple(estimate(big, GPUS[g], trace.prompt_tokens, CLASS_CONTEXT) for g in BIG_GPUS)
    return WhatIf(trace, alone, estimate(big, GPUS[BIG_GPUS[-1]], trace.prompt_tokens, CLASS_CONTEXT, CLASS_SIZE))


def whatif_sentence(w: WhatIf) -> str:
    """Step 7, labelled as estimates wherever a figure is one."""
    measured, roof = w.measured.summary.decode_tokens_per_s, w.roof_tokens_per_s
    big = w.alone[0]
    each = "; ".join(f"on an {r.gpu} a pause of about {r.ttft_ms:,.0f} ms, then {1e3 / r.decode_ms_per_token:,.0f} "
                     f"tokens/s" for r in w.alone)
    c = w.in_class
    per_student = 1e3 / c.decode_ms_per_token
    fits = "together they fit" if c.fits else "together they do not fit"
    return (f"Measured here: {measured:.0f} tokens/s, {measured / roof:.0%} of the {roof:,.0f} this machine's roofs "
            f"allow (an estimate). **Estimates** for {big.model} ({big.weight_bytes / 1e9:.0f} GB of weights in "
            f"bfloat16) on your {w.measured.prompt_tokens}-token prompt: {each}, for one student. A class of "
            f"{CLASS_SIZE} sharing the {c.gpu}'s steps: about {per_student:,.0f} tokens/s each, "
            f"{per_student * CLASS_SIZE:,.0f} in all (compute-bound near batch {c.compute_bound_batch:,.0f}); their KV "
            f"caches at {CLASS_CONTEXT:,} tokens take {c.kv_bytes_at_context / 1e9:.1f} GB beside the weights: {fits} "
            f"in its {_memory_gb(c):.0f} GB.")


def _memory_gb(e: Estimate) -> float:
    return GPUS[e.gpu].memory_bytes / 1e9
