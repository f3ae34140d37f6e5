"""The decode kernel's variant for this machine, chosen by timing the variants on it.

The knobs (inference/kernels/cpp/common.h, `Tuning`) change how fast the kernel runs on a given CPU
and not one bit of what it computes: how far ahead each weight stream prefetches, how a product's
rows are shared between threads, and how Q4_1's 4-bit values are unpacked. Which is fastest depends
on the machine (its memory, its prefetchers, whether another program takes a core), not on the
CPU's name, so the first start on a CPU times them on the model it serves: a few decode steps
per variant, one knob at a time (prefetch distance, then sharing, then for q4_1
unpacking), each candidate timed in three interleaved rounds, its steps' lower quartile kept. The choice and every
time measured are cached per CPU, kernel build, kind of weights and model shape; a trial whose runs
waited for a core for CROWDED of their time or more (a build, a browser) decides this start only.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch

from inference.disk_cache import cached_per_key
from inference.hardware.cpu_wait import CROWDED
from inference.trace import percentile

Progress = Callable[[str], None]

PREFETCH_BYTES = (0, 1024, 2048, 4096, 8192)
PIECE_ROWS = (16, 64)              # beside 0: an equal contiguous share per thread
TRIAL_NEW_TOKENS = 10
ROUNDS = 3
_TRIAL_VERSION = 1           # bump when the trial measures differently


@dataclass(frozen=True)
class Variant:
    prefetch: int = 2048           # bytes ahead each weight stream asks for (0: none)
    chunk: int = 0                 # rows per piece handed to a free thread (0: equal shares)
    unpack: int = 0                # Q4_1: 0 split then widen, 1 widen then split

    @property
    def name(self) -> str:
        ahead = f"prefetch {self.prefetch // 1024} KiB ahead" if self.prefetch else "no software prefetch"
        shares = f"pieces of {self.chunk} rows to free threads" if self.chunk else "equal shares per thread"
        return f"{ahead}, {shares}" + (", q4_1 widened then split" if self.unpack else "")


DEFAULT = Variant()


@dataclass(frozen=True)
class KernelTuning:
    key: str
    kind: str                      # float32, bfloat16, int8 or q4_1
    prefetch: int
    chunk: int
    unpack: int
    trials: tuple = ()             # (variant name, decode ms a step: its steps' lower quartile), in order
    waited: float = 0.0            # the largest share of a trial run's time spent waiting for a core

    @property
    def variant(self) -> Variant:
        return Variant(self.prefetch, self.chunk, self.unpack)

    @property
    def note(self) -> str:
        """What the trace and the page say: the variant, and what it gained over the default."""
        times = dict((name, ms) for name, ms in self.trials)
        chosen, default = times.get(self.variant.name), times.get(DEFAULT.name)
        if chosen is None or default is None:
            return f"{self.variant.name} (the default; no trial ran)"
        if self.variant == DEFAULT:
            return f"{self.variant.name} (the default was fastest of {len(times)} variants timed here)"
        return (f"{self.variant.name} (fastest of {len(times)} variants timed here: {chosen:.1f} ms a decode step "
                f"against {default:.1f} for the default)")


def tune(engine: Any, progress: Progress = lambda _: None) -> KernelTuning | None:
    """Set the engine's kernel to this machine's variant for its weights, timing them the first
    time; None where the engine runs no kernel."""
    from inference.hardware.roofs import cpu_key
    from inference.kernels.build import library_path

    if engine.kernel is None or not hasattr(engine.kernel, "set_tuning"):
        return None
    info = engine.loaded.info
    kind = info.precision
    shape = f"{info.layers}x{info.hidden}x{info.intermediate}x{info.vocab}"
    key = f"{cpu_key()}|kernel {library_path().name}|{kind}|{shape}|trial v{_TRIAL_VERSION}"
    tuning = cached_per_key("kernel-variant", key, KernelTuning, lambda: _trial(engine, key, kind, progress),
                            keep=lambda t: t.waited < CROWDED)
    apply(engine.kernel, kind, tuning.variant)
    return tuning


def apply(kernel: Any, kind: str, variant: Variant) -> None:
    kernel.set_tuning(kernel.KINDS[kind], variant.prefetch, variant.chunk, variant.unpack)


def candidates(kind: str) -> list[list[Variant]]:
    """The trial's stages, one knob each; a stage's candidates keep the earlier stages' winners
    (filled in by `_trial`: here every stage starts from the default)."""
    stages = [[Variant(prefetch=p) for p in PREFETCH_BYTES], [Variant(chunk=c) for c in (0, *PIECE_ROWS)]]
    if kind == "q4_1":
        stages.append([Variant(unpack=u) for u in (0, 1)])
    return stages


def _trial(engine: Any, key: str, kind: str, progress: Progress) -> KernelTuning:
    progress(f"First start on this CPU: timing the decode kernel's variants for {kind} (once)")
    steps: dict[Variant, list[float]] = {}
    waited = 0.0
    best = DEFAULT
    for knob, stage in zip(("prefetch", "chunk", "unpack"), candidates(kind)):
        stage = [dataclasses.replace(best, **{knob: getattr(v, knob)}) for v in stage]
        new = [v for v in stage if v not in steps]           # the winner so far is timed already
        for _ in range(ROUNDS):
            for variant in new:
                ms, wait = _decode_steps(engine, kind, variant)
                steps.setdefault(variant, []).extend(ms)
                waited = max(waited, wait)
        best = min(stage, key=lambda v: typical(steps[v]))
    apply(engine.kernel, kind, DEFAULT)
    return KernelTuning(key, kind, best.prefetch, best.chunk, best.unpack,
                        tuple((v.name, round(typical(ms), 3)) for v, ms in steps.items()), waited)


def typical(step_ms: list[float]) -> float:
    """A variant's time: the lower quartile of its steps. A shared machine's noise (a neighbour on
    the host, a timer) only ever adds time, so the faster steps say more of the variant itself."""
    return percentile(step_ms, 25)


def _decode_steps(engine: Any, kind: str, variant: Variant) -> tuple[list[float], float]:
    """(the decode steps' ms, the share of the run's time it waited for a core) of a short run of
    `TRIAL_NEW_TOKENS` steps (after a 16-token prompt, as the warm-up's) in `variant`."""
    from inference.settings import GenerationSettings
    from inference.trace import cpu_wait_share

    apply(engine.kernel, kind, variant)
    with torch.inference_mode():
        trace = engine.generate([1] * 16, GenerationSettings(max_new_tokens=TRIAL_NEW_TOKENS), stop_at_eos=False).run_to_end()
    return [s.ms for s in trace.decode_steps], (cpu_wait_share(trace.steps) if trace.cpu_wait_measured else 0.0)
