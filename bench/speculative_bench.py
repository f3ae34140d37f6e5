"""Speculative decoding (prompt lookup) against plain decode, float32 and bfloat16, on this CPU:
what a check of k drafted tokens costs against a plain decode step, the drafts kept on a prompt whose
answer repeats its input and on one whose answer does not, the speedup, and whether every
speculative run wrote plain decode's tokens (greedy)."""
from __future__ import annotations

from inference.lessons.experiments import run_speculation
from inference.model.factory import load_engine
from inference.model.loading import DEFAULT_MODEL


def main() -> list[str]:
    lines = ["| speculative decoding (prompt lookup, 64 new tokens) | check / plain step | drafts kept | "
             "tokens a step | speedup | same tokens as plain |", "|---|---|---|---|---|---|"]
    verdicts = []
    for dtype in ("float32", "bfloat16"):
        result = run_speculation(load_engine(DEFAULT_MODEL, dtype=dtype))
        for kind, k, f, same in result.figures():
            lines.append(f"| {dtype}, {kind}, k={k} | {f['check_ratio']:.2f}x | {100 * f['acceptance']:.0f}% | "
                         f"{f['tokens_per_step']:.2f} | {f['speedup']:.2f}x | {'yes' if same else 'NO'} |")
        verdicts.append(f"{dtype}: {result.verdict()}")
    return lines + [""] + verdicts


if __name__ == "__main__":
    print("\n".join(main()))
