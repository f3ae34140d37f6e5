"""Which dtype `--dtype auto` runs. On a CPU: the one that finished a student's run first here.

Measured, not assumed: the first time on a CPU (per roofs.cpu_key), the default model answers the
page's default prompt with 64 new tokens in float32 and in bfloat16, on the fast path, and the one
that finished first, prefill and decode together, wins. The choice and its reason (with the times)
are cached; the page and every trace show the reason. A trial whose runs waited for a core for
CROWDED of their time or more (another program had the CPU: a build, a test suite, a browser) is
not kept: it decides this start only, and the next start measures again. On CUDA: bfloat16, which
GPUs compute natively.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from inference.disk_cache import cached, cached_per_key
from inference.hardware.cpu_wait import CROWDED
from inference.hardware.device import DTYPES, dtype_named

TRIAL_NEW_TOKENS = 64
Progress = Callable[[str], None]


@dataclass(frozen=True)
class DtypeChoice:
    key: str
    dtype: str
    reason: str
    waited: float = 0.0       # the largest share of a trial run's time spent waiting for a core


def choose_dtype(name: str, device: torch.device, progress: Progress = lambda _: None,
                 wait_for_kernel: bool = True) -> tuple[torch.dtype, str]:
    """(dtype, why) for a --dtype value: auto, float32 or bfloat16 (see `cpu_dtype_choice` for
    `wait_for_kernel`)."""
    if name != "auto":
        return dtype_named(name), f"{name}, as asked (--dtype {name})"
    if device.type == "cuda":
        return torch.bfloat16, "auto: bfloat16 on a CUDA GPU (its tensor cores compute it natively, at half the bytes)"
    choice = cpu_dtype_choice(progress, wait_for_kernel)
    return DTYPES[choice.dtype], choice.reason


def cpu_dtype_choice(progress: Progress = lambda _: None, wait_for_kernel: bool = True) -> DtypeChoice:
    """The trial's result for this CPU and this decode kernel (the trial runs it: a changed kernel
    is measured again), run once and then read from disk. Without `wait_for_kernel`, while the
    kernel is still building (a first start that serves before it is ready), the CPU's flags
    decide this start and the trial runs at the next (it times the kernel, which is not there yet)."""
    from inference.hardware.roofs import bf16_native, cpu_key
    from inference.kernels.build import kernel_for_now, library_path

    key = f"{cpu_key()}|kernel {library_path().name}"
    if not wait_for_kernel and kernel_for_now()[1]:
        found = cached("dtype-choice", key, DtypeChoice)
        if found is not None:
            return found
        dtype = "bfloat16" if bf16_native() else "float32"
        return DtypeChoice(key, dtype, f"auto: {dtype} for this start, because this CPU "
                                       f"{'has' if dtype == 'bfloat16' else 'lacks'} bfloat16 arithmetic; the trial "
                                       "timing float32 against bfloat16 runs at the next start, once the decode "
                                       "kernel it times is built")
    return cached_per_key("dtype-choice", key, DtypeChoice, lambda: _trial(key, progress),
                          keep=lambda choice: choice.waited < CROWDED)


def _trial(key: str, progress: Progress) -> DtypeChoice:
    """Both dtypes on the default model; the faster wins. Without the model, the CPU's flags decide."""
    from inference.hardware.roofs import bf16_native

    progress("First start on this CPU: timing float32 against bfloat16 on the default prompt (once)")
    try:
        runs = {name: _timed_run(dtype, progress) for name, dtype in DTYPES.items()}
    except ValueError as exc:
        dtype = "bfloat16" if bf16_native() else "float32"
        return DtypeChoice(key, dtype, f"auto: {dtype}, because this CPU {'has' if dtype == 'bfloat16' else 'lacks'} "
                                       f"bfloat16 arithmetic (no trial run was possible: {exc})")
    winner = min(runs, key=lambda name: runs[name][0])
    loser = next(name for name in runs if name != winner)
    parts = [f"{name} {total:.2f} s (prefill {ttft:.0f} ms, decode {decode:.1f} ms/token)"
             for name, (total, ttft, decode, _) in runs.items()]
    waited = max(wait for *_, wait in runs.values())
    when = ("measured at the first start" if waited < CROWDED else
            f"measured while other programs took the CPU (a run waited {waited:.0%} of its time for a core): "
            "for this start only, measured again at the next")
    return DtypeChoice(key, winner, f"auto: {winner} answered the default prompt with {TRIAL_NEW_TOKENS} new tokens "
                                    f"{runs[loser][0] / runs[winner][0]:.2f}x as fast as {loser} on this CPU "
                                    f"({'; '.join(parts)}; {when})", waited)


def _timed_run(dtype: torch.dtype, progress: Progress) -> tuple[float, float, float, float]:
    """(seconds for the whole run, TTFT ms, median decode ms, the share of its time it waited for a
    core: 0 where that is not measured) of the default prompt in `dtype`."""
    from inference.engine import Engine
    from inference.model.loading import DEFAULT_MODEL, load_model
    from inference.prompts import DEFAULT_PROMPT, chat_prompt_ids
    from inference.settings import GenerationSettings
    from inference.trace import cpu_wait_share

    engine = Engine(load_model(DEFAULT_MODEL, "cpu", dtype, progress))
    engine.warm_up()
    ids = chat_prompt_ids(engine.loaded.tokenizer, DEFAULT_PROMPT)
    start = time.perf_counter()
    trace = engine.generate(ids, GenerationSettings(max_new_tokens=TRIAL_NEW_TOKENS), stop_at_eos=False).run_to_end()
    seconds = time.perf_counter() - start
    waited = cpu_wait_share(trace.steps) if trace.cpu_wait_measured else 0.0
    return seconds, trace.summary.ttft_ms, trace.summary.decode_ms_median, waited
