"""Engine benchmark: our loop vs model.generate, hooks vs none, roofs reached, start-up and memory."""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

import torch
from transformers import TextStreamer

from bench.common import decode_rate, interleaved_medians, row, stamps
from inference.engine import Engine
from inference.hardware.roofs import memory_bytes_per_s
from inference.model.factory import load_engine
from inference.prompts import fixed_length_prompt_ids
from inference.settings import GenerationSettings

NEW_TOKENS = 48
PROMPT_TOKENS = 128


class _Clock(TextStreamer):
    """A streamer that only notes when each new token arrives."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.skipped_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if self.skipped_prompt:
            self.times.append(time.perf_counter())
        self.skipped_prompt = True

    def end(self) -> None:
        pass


def generate_rate(engine: Engine, ids: list[int]) -> float:
    clock = _Clock()
    model = engine.loaded.model
    with torch.inference_mode():
        model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                       streamer=clock, pad_token_id=engine.loaded.tokenizer.eos_token_id)
    return decode_rate(clock.times)


def engine_rate(engine: Engine, ids: list[int], instrument: bool, kernel: str) -> float:
    settings = GenerationSettings(max_new_tokens=NEW_TOKENS, kernel=kernel)
    return decode_rate(stamps(engine.generate(ids, settings, instrument=instrument, stop_at_eos=False)))


def bytes_per_decode_token(engine: Engine, ids: list[int]) -> float:
    """Bytes a decode step moves at this prompt length, from the cost model (weights dominate)."""
    trace = engine.generate(ids, GenerationSettings(max_new_tokens=NEW_TOKENS), stop_at_eos=False).run_to_end()
    return statistics.median(step.bytes for step in trace.decode_steps)


def prefill_share(engine: Engine, kernel: str) -> float:
    """512-token prefill FLOP/s over the measured matmul FLOP/s."""
    step = engine.generate(fixed_length_prompt_ids(engine.loaded.tokenizer, 512),
                           GenerationSettings(max_new_tokens=1, kernel=kernel)).run_to_end().steps[0]
    return step.achieved_flops / engine.device_info.peak_flops


def run_memory() -> list[str]:
    """The peak memory of a whole `run`, as the run process itself reports it (VmHWM); the start-up
    times are startup_bench's."""
    # VmHWM, not ru_maxrss: Linux carries a forked child's pre-exec peak (this big process's) into
    # ru_maxrss, which read 1296 MiB in a full run against 649 MiB alone.
    code = ("import runpy, sys; sys.argv = ['inference', 'run', 'What is the capital of France?', "
            "'--max-new-tokens', '32']\ntry:\n    runpy.run_module('inference', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('PEAK', [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "HF_HUB_OFFLINE": "1"},
                         capture_output=True, text=True, check=True).stdout
    peak_mib = int(out.split("PEAK")[-1]) / 1024
    return [row("peak resident memory of `run` (cached model, auto dtype)", f"{peak_mib:.0f} MiB", "goal < 1024 MiB")]


def main(repeats: int = 5) -> list[str]:
    lines = ["| engine figure | value | note |", "|---|---|---|"]
    for dtype in ("float32", "bfloat16"):
        engine = load_engine("SmolLM2-135M-Instruct", "auto", dtype)
        ids = fixed_length_prompt_ids(engine.loaded.tokenizer, PROMPT_TOKENS)
        rates = interleaved_medians({
            "generate": lambda: generate_rate(engine, ids),
            "eager": lambda: engine_rate(engine, ids, instrument=True, kernel="eager"),
            "bare eager": lambda: engine_rate(engine, ids, instrument=False, kernel="eager"),
            "fast": lambda: engine_rate(engine, ids, instrument=True, kernel="fast"),
            "bare fast": lambda: engine_rate(engine, ids, instrument=False, kernel="fast"),
        }, repeats)
        # Shares of the bandwidth roof from the interleaved median rates: the cached roof may come
        # from a quieter moment, so also against a bandwidth measured now, next to these runs.
        per_token = bytes_per_decode_token(engine, ids)
        bandwidth_now = memory_bytes_per_s()
        eager_compute, fast_compute = prefill_share(engine, "eager"), prefill_share(engine, "fast")
        d = engine.device_info
        lines += [
            row(f"{dtype}: decode tokens/s, eager engine / model.generate",
                f"{rates['eager'] / rates['generate']:.2f}",
                f"{rates['eager']:.1f} vs {rates['generate']:.1f} tok/s (goal >= 1.0)"),
            row(f"{dtype}: decode tokens/s, fast kernel / eager", f"{rates['fast'] / rates['eager']:.2f}",
                f"{rates['fast']:.1f} vs {rates['eager']:.1f} tok/s"),
            row(f"{dtype}: instrumented / uninstrumented tokens/s (eager, fast)",
                f"{rates['eager'] / rates['bare eager']:.3f}, {rates['fast'] / rates['bare fast']:.3f}",
                f"{rates['bare eager']:.1f}, {rates['bare fast']:.1f} tok/s without hooks (goal >= 0.97)"),
            row(f"{dtype}: decode bytes/s / measured bandwidth (eager, fast)",
                f"{rates['eager'] * per_token / d.peak_bytes_per_s:.0%}, {rates['fast'] * per_token / d.peak_bytes_per_s:.0%}",
                f"{per_token / 1e6:.0f} MB per token; roof {d.peak_bytes_per_s / 1e9:.1f} GB/s (cached); against "
                f"{bandwidth_now / 1e9:.1f} GB/s measured now: {rates['eager'] * per_token / bandwidth_now:.0%}, "
                f"{rates['fast'] * per_token / bandwidth_now:.0%}"),
            row(f"{dtype}: prefill (512 tokens) FLOP/s / measured matmul FLOP/s (eager, fast)",
                f"{eager_compute:.0%}, {fast_compute:.0%}",
                f"roof {d.peak_flops / 1e9:.0f} GFLOP/s; prefill never takes the decode kernel"),
        ]
        del engine
    lines += run_memory()
    return lines


if __name__ == "__main__":
    print("\n".join(main()))
