"""Side by side with llama.cpp on the same weights, same prompt ids and thread count: decode
tokens/s (prompt 128, 48 new tokens) and a 512-token prefill, each the median of interleaved runs;
greedy tokens compared. llama.cpp runs in its own virtual environment (bench/llamacpp_peer.py)."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
from pathlib import Path

import torch

from bench.common import decode_rate, row, stamps
from inference.engine import Engine
from inference.kernels.tuning import KernelTuning
from inference.model.factory import load_engine
from inference.disk_cache import cache_dir
from inference.model.loading import bundled_gguf_path
from inference.prompts import fixed_length_prompt_ids
from inference.settings import GenerationSettings

ROOT = Path(__file__).resolve().parent.parent
# Under AVX2 emulation (PHASESCOPE_KERNEL_ARCH=x86-64-v3, see the README) llama.cpp must be held to
# AVX2 too: `make bench-avx2` builds it so in .venv-llamacpp-avx2.
EMULATING_AVX2 = os.environ.get("PHASESCOPE_KERNEL_ARCH") == "x86-64-v3"
PEER_PYTHON = ROOT / (".venv-llamacpp-avx2" if EMULATING_AVX2 else ".venv-llamacpp") / "bin" / "python"
PROMPT_TOKENS, NEW_TOKENS, PREFILL_TOKENS = 128, 48, 512
# 4, 2, 1 and about 0.6 bytes per weight (int8 and q4_1 keep llama.cpp's blocks for decode).
DTYPES = os.environ.get("PHASESCOPE_PEER_DTYPES", "float32,bfloat16,int8,q4_1").split(",")


def peer_run(request: dict) -> dict:
    out = subprocess.run([str(PEER_PYTHON), str(ROOT / "bench" / "llamacpp_peer.py")], input=json.dumps(request),
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def engine_run(engine: Engine, ids: list[int], prefill_ids: list[int]) -> dict:
    run = engine.generate(ids, GenerationSettings(max_new_tokens=NEW_TOKENS), stop_at_eos=False)
    times = stamps(run)
    trace = engine.generate(prefill_ids, GenerationSettings(max_new_tokens=1)).run_to_end()
    return {"decode_tokens_per_s": decode_rate(times), "prefill_s": trace.summary.ttft_ms / 1e3,
            "tokens": [s.token_id for s in run.steps]}


def main(repeats: int = 3) -> list[str]:
    if not PEER_PYTHON.is_file():
        return [f"(llama.cpp not installed in {PEER_PYTHON.parent.parent.name}: `make bench` or `make bench-avx2` builds it)"]
    lines = ["| vs llama.cpp (same weights, 2 threads) | PhaseScope / llama.cpp | figures |", "|---|---|---|"]
    trials = []
    for dtype in DTYPES:
        engine = load_engine("SmolLM2-135M-Instruct", "cpu", dtype)
        tokenizer = engine.loaded.tokenizer
        ids, prefill_ids = (fixed_length_prompt_ids(tokenizer, n) for n in (PROMPT_TOKENS, PREFILL_TOKENS))
        request = {"gguf": str(bundled_gguf_path()), "cache": str(cache_dir() / "llamacpp"), "dtype": dtype,
                   "prompt_ids": ids, "new_tokens": NEW_TOKENS, "prefill_ids": prefill_ids,
                   "threads": torch.get_num_threads()}
        ours, theirs = [], []
        peer_run(request)                               # converts the weights once, warms the page cache
        for _ in range(repeats):                        # interleaved, so machine noise hits both alike
            theirs.append(peer_run(request))
            ours.append(engine_run(engine, ids, prefill_ids))
        median = lambda runs, key: statistics.median(r[key] for r in runs)
        same = sum(a == b for a, b in zip(ours[0]["tokens"], theirs[0]["tokens"]))
        lines += [
            row(f"{dtype}: decode tokens/s", f"{median(ours, 'decode_tokens_per_s') / median(theirs, 'decode_tokens_per_s'):.2f}",
                f"{median(ours, 'decode_tokens_per_s'):.1f} vs {median(theirs, 'decode_tokens_per_s'):.1f} (goal >= 0.9)"),
            row(f"{dtype}: prefill of {PREFILL_TOKENS} tokens, speed", f"{median(theirs, 'prefill_s') / median(ours, 'prefill_s'):.2f}",
                f"{median(ours, 'prefill_s'):.2f} s vs {median(theirs, 'prefill_s'):.2f} s (goal >= 1.0)"),
            row(f"{dtype}: greedy tokens equal to llama.cpp's", f"{same} of {NEW_TOKENS}",
                "float32 should match exactly; the others may part at a near-tie (llama.cpp also rounds "
                "the activations to 8 bits for int8 and q4_1 products)"),
        ]
        trials.append(variant_lines(dtype, engine.kernel_tuning))
        del engine
    return lines + ["", "| decode kernel variants timed at first start (tuning.py) | decode ms a step | |", "|---|---|---|",
                    *[line for block in trials for line in block]]


def variant_lines(dtype: str, tuning: KernelTuning | None) -> list[str]:
    """The variants this machine's trial timed for `dtype` (read from its cache when it ran before)
    and the one chosen."""
    if tuning is None:
        return [row(f"{dtype}: no kernel", "-", "plain PyTorch")]
    return [row(f"{dtype}: {name}", f"{ms:.2f}", "**chosen**" if name == tuning.variant.name else "")
            for name, ms in tuning.trials]


if __name__ == "__main__":
    print("\n".join(main()))
