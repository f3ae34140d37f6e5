"""Experiments made of several runs, each proving one claim about the two phases with measurements.

Each function returns a typed result holding the traces it ran and the figures a verdict is drawn
from; the verdict is a sentence computed from those numbers, never written in advance.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, Iterator

from inference.engine import Engine
from inference.prompts import fixed_length_prompt_ids
from inference.settings import GenerationSettings
from inference.trace import Trace

Progress = Callable[[float, str], None]


def _quiet(_: float, __: str) -> None:
    pass


def _run(engine: Engine, prompt_tokens: int, settings: GenerationSettings) -> Trace:
    ids = fixed_length_prompt_ids(engine.loaded.tokenizer, prompt_tokens)
    return engine.generate(ids, settings, stop_at_eos=False).run_to_end()


def prompt_length_sweep(engine: Engine, prompt_tokens: list[int], settings: GenerationSettings) -> Iterator[Trace]:
    """One run per prompt length, on exactly that many tokens of the fixed text."""
    for n in prompt_tokens:
        engine.check_fits(n, settings.max_new_tokens)
    for n in prompt_tokens:
        yield _run(engine, n, settings)


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
                f"{self.decode_tokens_per_s:.1f} tokens/s: {self.prefill_tokens_per_s / self.decode_tokens_per_s:.0f}x.")


def run_sweep(engine: Engine, prompt_tokens: list[int], new_tokens: int = 8, progress: Progress = _quiet,
              kernel: str = "fast") -> SweepResult:
    settings = GenerationSettings(max_new_tokens=new_tokens, kernel=kernel)
    traces = []
    for i, trace in enumerate(prompt_length_sweep(engine, sorted(prompt_tokens), settings)):
        traces.append(trace)
        progress((i + 1) / len(prompt_tokens), f"prompt of {trace.prompt_tokens} tokens done")
    return SweepResult(tuple(traces))


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
                f"as long in total for the same {len(self.cached.steps)} tokens.")


def run_cache_race(engine: Engine, prompt_tokens: int = 64, new_tokens: int = 48,
                   progress: Progress = _quiet, kernel: str = "fast") -> CacheRace:
    cached = _run(engine, prompt_tokens, GenerationSettings(max_new_tokens=new_tokens, kernel=kernel))
    progress(0.5, "cached run done")
    recomputed = _run(engine, prompt_tokens, GenerationSettings(max_new_tokens=new_tokens, kv_cache=False,
                                                                kernel=kernel))
    progress(1.0, "recomputing run done")
    return CacheRace(cached, recomputed)


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
        """Roofline estimate: the batch at which a decode step's intensity reaches the ridge point
        (intensity grows about linearly with B while the weights dominate the bytes)."""
        first = self.traces[0]
        per_sequence = first.decode_steps[0].intensity / first.settings.batch_size
        return first.device.ridge_intensity / per_sequence

    @property
    def holds(self) -> bool:
        return self.step_ms[-1] / self.step_ms[0] < 0.5 * self.batch_sizes[-1] / self.batch_sizes[0]

    def verdict(self) -> str:
        b0, b1 = self.batch_sizes[0], self.batch_sizes[-1]
        return (f"{'✔' if self.holds else '✘'} Going from batch {b0} to {b1} made each decode step "
                f"{self.step_ms[-1] / self.step_ms[0]:.1f}x slower while producing {b1 // b0}x the tokens: throughput "
                f"{self.tokens_per_s[0]:.1f} -> {self.tokens_per_s[-1]:.1f} tokens/s. The roofline puts the turn to "
                f"compute-bound near batch {self.compute_bound_batch:,.0f} (estimate).")


def run_batch_sweep(engine: Engine, batch_sizes: list[int], prompt_tokens: int = 32, new_tokens: int = 12,
                    progress: Progress = _quiet, kernel: str = "fast") -> BatchResult:
    traces = []
    for i, b in enumerate(sorted(batch_sizes)):
        settings = GenerationSettings(max_new_tokens=new_tokens, batch_size=b, kernel=kernel)
        traces.append(_run(engine, prompt_tokens, settings))
        progress((i + 1) / len(batch_sizes), f"batch {b} done")
    return BatchResult(tuple(traces))


def roofline_verdict(trace: Trace) -> str:
    """Claim 4, from one run: where prefill and decode sit against this device's roofs."""
    d = trace.device
    prefill = trace.steps[0]
    decode = trace.decode_steps
    holds = bool(decode) and prefill.intensity > 10 * max(s.intensity for s in decode) \
        and max(s.intensity for s in decode) < d.ridge_intensity
    lines = [f"{'✔' if holds else '✘'} Ridge point of this device: {d.ridge_intensity:.0f} FLOPs per byte."]
    lines.append(f"Prefill: {prefill.intensity:.0f} FLOPs/byte, {prefill.achieved_flops / d.peak_flops:.0%} of the "
                 f"compute roof{' (compute side of the ridge)' if prefill.intensity > d.ridge_intensity else ''}.")
    if decode:
        intensity = statistics.median(s.intensity for s in decode)
        share = statistics.median(s.achieved_bytes_per_s for s in decode) / d.peak_bytes_per_s
        lines.append(f"Decode: {intensity:.1f} FLOPs/byte, far left of the ridge: bandwidth-bound, at {share:.0%} of "
                     f"the memory roof.")
        if share < 0.5:
            lines.append("Decode sits well below the memory roof: per-step overhead and slow one-core "
                         "matrix-vector kernels, not the memory itself, hold it back here.")
    return " ".join(lines)


@dataclass(frozen=True)
class DtypeResult:
    """Claim 5: bytes per weight set decode speed; prefill changes by a different factor."""
    traces: tuple[Trace, ...]          # the same prompt, one run per dtype, widest dtype first

    def ratios(self) -> list[tuple[str, float, float, float]]:
        """Per dtype after the first: (dtype, weight-bytes ratio, decode speed-up, prefill speed-up)."""
        base = self.traces[0]
        return [(t.model.dtype, base.model.weight_bytes / t.model.weight_bytes,
                 base.summary.decode_ms_median / t.summary.decode_ms_median, base.summary.ttft_ms / t.summary.ttft_ms)
                for t in self.traces[1:]]

    def verdict(self) -> str:
        parts = [f"{dtype}: {size:.1f}x fewer weight bytes, decode {decode:.2f}x faster, prefill {prefill:.2f}x faster"
                 for dtype, size, decode, prefill in self.ratios()]
        holds = all(decode > 1.1 for _, _, decode, _ in self.ratios())
        return f"{'✔' if holds else '✘'} Against {self.traces[0].model.dtype}: " + "; ".join(parts) + "."


def run_dtype_comparison(model: str, device: str, dtypes: list[str], prompt_tokens: int = 32,
                         new_tokens: int = 24, progress: Progress = _quiet, kernel: str = "fast") -> DtypeResult:
    """The same prompt on a fresh copy of the model per dtype (loaded one at a time). The prompt is
    short so that weight bytes dominate decode; on these CPUs bfloat16 attention over a long context
    is slow, and a 256-token prompt measured only 1.03x (vs 1.7x at 32)."""
    from inference.engine import load_engine

    traces = []
    for i, dtype in enumerate(dtypes):
        engine = load_engine(model, device, dtype)
        traces.append(_run(engine, prompt_tokens, GenerationSettings(max_new_tokens=new_tokens, kernel=kernel)))
        del engine
        progress((i + 1) / len(dtypes), f"{dtype} done")
    return DtypeResult(tuple(traces))
