"""The page's first three experiments and the shared-context one on the default engine, as a student would run them: their
figures and verdicts on this machine (the tests check what they run and that each verdict follows
its numbers; whether this machine shows each claim is measured here)."""
from __future__ import annotations

from bench.common import row
from inference.lessons.experiments import run_batch_sweep, run_cache_race, run_shared_context, run_sweep
from inference.model.factory import load_engine
from inference.model.loading import DEFAULT_MODEL


def main() -> list[str]:
    engine = load_engine(DEFAULT_MODEL)
    sweep = run_sweep(engine, [16, 128, 512, 1024], new_tokens=16)
    race = run_cache_race(engine, prompt_tokens=64, new_tokens=48)
    batch = run_batch_sweep(engine, [1, 8], prompt_tokens=32, new_tokens=12)
    prefix = run_shared_context(engine)
    cached, recomputed = race.growth
    return ["| experiment (the page's, default engine) | value | verdict |", "|---|---|---|",
            row("prompt 16 -> 1024 tokens: TTFT growth / decode ms growth",
                f"{sweep.ttft_ms[-1] / sweep.ttft_ms[0]:.1f}x / {sweep.decode_ms[-1] / sweep.decode_ms[0]:.2f}x",
                sweep.verdict()),
            row("KV cache race (64 + 48 tokens): step growth cached / recomputed", f"{cached:.2f}x / {recomputed:.2f}x",
                race.verdict()),
            row("decode step, batch 8 / batch 1", f"{batch.step_ms[1] / batch.step_ms[0]:.1f}x", batch.verdict()),
            row(f"{len(prefix.on.traces)} students, {prefix.context_tokens}-token shared context: p90 TTFT off / on",
                f"{prefix.off.ttft_p(90) / prefix.on.ttft_p(90):.1f}x", prefix.verdict())]


if __name__ == "__main__":
    print("\n".join(main()))
