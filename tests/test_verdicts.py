"""The experiments' verdicts as functions of the numbers: traces whose times are set by the test,
so each claim is shown to hold where the figures support it and to fail where they do not (the
figures a real machine gives belong to `make bench`, not to a pass/fail test)."""
from __future__ import annotations

import dataclasses

from inference.lessons.verdicts import BatchResult, CacheRace, SweepResult, roofline_verdict
from inference.trace import Summary, Trace


def timed(trace: Trace, prefill_ms: float, decode_ms: list[float], prompt_tokens: int | None = None,
          batch_size: int | None = None) -> Trace:
    """`trace` with its prefill and decode steps taking the given times (as many decode steps)."""
    prefill, decode = trace.steps[0], trace.steps[1]
    steps = (dataclasses.replace(prefill, ms=prefill_ms),
             *(dataclasses.replace(decode, index=i + 1, ms=ms) for i, ms in enumerate(decode_ms)))
    settings = dataclasses.replace(trace.settings, batch_size=batch_size or trace.settings.batch_size)
    return dataclasses.replace(trace, steps=steps, prompt_tokens=prompt_tokens or trace.prompt_tokens,
                               settings=settings, summary=Summary.of(steps, settings.batch_size, "length"))


def test_the_sweep_holds_when_the_pause_grows_and_the_stream_stays(example_trace: Trace) -> None:
    short, long = timed(example_trace, 10, [20] * 4, 16), timed(example_trace, 200, [21] * 4, 1024)
    result = SweepResult((short, long))
    assert result.holds and result.verdict().startswith("✔ From 16 to 1024 prompt tokens the pause grew 20.0x")
    assert "decode changed 1.05x" in result.verdict()
    assert not SweepResult((timed(example_trace, 10, [20] * 4, 16), timed(example_trace, 12, [40] * 4, 1024))).holds


def test_the_cache_race_holds_when_recomputing_grows_and_costs_more(example_trace: Trace) -> None:
    flat, growing = [20.0] * 8, [20.0 + 5 * i for i in range(8)]
    race = CacheRace(timed(example_trace, 30, flat), timed(example_trace, 30, growing))
    assert race.holds and race.growth[0] == 1.0 and race.growth[1] > 2
    assert race.verdict().startswith("✔ With the cache each step took about the same time (1.00x")
    assert not CacheRace(timed(example_trace, 30, growing), timed(example_trace, 30, flat)).holds


def test_the_batch_claim_holds_when_a_bigger_batch_costs_little_more_per_step(example_trace: Trace) -> None:
    alone, eight = timed(example_trace, 30, [20] * 4, batch_size=1), timed(example_trace, 30, [30] * 4, batch_size=8)
    result = BatchResult((alone, eight))
    assert result.holds and result.tokens_per_s == [50.0, 8 * 1000 / 30]
    assert result.verdict().startswith("✔ Going from batch 1 to 8 made each decode step 1.5x slower")
    assert not BatchResult((alone, timed(example_trace, 30, [150] * 4, batch_size=8))).holds


def waiting(trace: Trace, share: float) -> Trace:
    """`trace` as if its steps' threads had waited `share` of each step for a core."""
    steps = tuple(dataclasses.replace(s, cpu_wait_ms=share * s.ms) for s in trace.steps)
    return dataclasses.replace(trace, steps=steps, cpu_wait_measured=True)


def test_a_verdict_says_when_waiting_for_a_core_bent_its_figures(example_trace: Trace) -> None:
    short, long = timed(example_trace, 10, [20] * 4, 16), timed(example_trace, 200, [21] * 4, 1024)
    assert "Caution" not in SweepResult((short, long)).verdict()
    assert "Caution" not in SweepResult((waiting(short, 0.1), waiting(long, 0.1))).verdict()
    bent = SweepResult((waiting(short, 0.1), waiting(long, 0.6))).verdict()
    assert "waited up to 60% of their time for a core" in bent
    assert "60%" in roofline_verdict(waiting(example_trace, 0.6)) and "Caution" not in roofline_verdict(example_trace)


def test_the_headline_says_whose_figures_they_are_when_the_run_waited_for_a_core(example_trace: Trace) -> None:
    from viz.summary import headline_html

    assert "waited" not in headline_html(example_trace)
    assert "waited" not in headline_html(waiting(example_trace, 0.1))
    assert "This run waited 68% of its decode time for a core" in headline_html(waiting(example_trace, 0.68))


def sweep_of(example_trace: Trace, step_ms: dict[int, float]) -> BatchResult:
    return BatchResult(tuple(timed(example_trace, 30, [ms] * 4, batch_size=b) for b, ms in step_ms.items()))


def test_the_batch_verdict_reads_the_knee_off_its_own_curve(example_trace: Trace) -> None:
    # The curve a 2-core Zen 3 measured in bfloat16: flat throughput from batch 4 on.
    result = sweep_of(example_trace, {1: 23.4, 2: 22.8, 4: 27.7, 8: 53.7, 16: 108.8})
    assert result.knee == 4
    estimate = result.compute_bound_batch
    verdict = result.verdict()
    assert "Throughput flattens from batch 4" in verdict and "between batch 4 and 8" in verdict
    assert ("which agrees" in verdict) == (4 / 1.5 <= estimate <= 8 * 1.5), (estimate, verdict)
    # Throughput that still doubles with every doubling of the batch: no knee in the range.
    growing = sweep_of(example_trace, {1: 20.0, 2: 20.0, 4: 20.5, 8: 21.0})
    assert growing.knee is None and "still grew at batch 8" in growing.verdict()


def test_a_roofline_turn_far_from_the_measured_knee_is_called_a_contradiction(example_trace: Trace) -> None:
    curve = {1: 23.4, 2: 22.8, 4: 27.7, 8: 53.7, 16: 108.8}
    for peak_flops, agrees in ((example_trace.device.peak_flops * 0.6, True), (example_trace.device.peak_flops * 20,
                                                                                False)):
        device = dataclasses.replace(example_trace.device, peak_flops=peak_flops)
        result = sweep_of(dataclasses.replace(example_trace, device=device), curve)
        assert (4 / 1.5 <= result.compute_bound_batch <= 12) == agrees, result.compute_bound_batch
        assert ("which agrees" in result.verdict()) == agrees


def _answer(trace: Trace, tokens: list[int], precision: str) -> Trace:
    steps = tuple(dataclasses.replace(s, token_id=t, token_ids=()) for s, t in zip(trace.steps, tokens))
    model = dataclasses.replace(trace.model, dtype=precision, weights="")
    return dataclasses.replace(trace, steps=steps, model=model)


def test_the_shared_context_claim_needs_the_same_answers_in_float32_and_says_where_bfloat16_parted(
        example_trace: Trace) -> None:
    from inference.lessons.verdicts import PrefixResult, PrefixSide
    from inference.trace import Goodput

    n = len(example_trace.steps)
    same, moved = list(range(n)), list(range(n - 1)) + [999]

    def result(on_tokens: list[int], precision: str, on_ttft: float) -> PrefixResult:
        def side(tokens: list[int], ttft: float) -> PrefixSide:
            answers = (_answer(example_trace, same, precision), _answer(example_trace, tokens, precision))
            return PrefixSide(answers, (ttft, ttft), 10.0, 1000, Goodput(2, 0, 0.0))

        return PrefixResult(1000, side(same, 10.0), side(on_tokens, on_ttft), 2.0, 0.2)

    assert result(same, "float32", 1.0).holds, "10x sooner and the same answers"
    assert not result(same, "float32", 5.0).holds, "2x sooner is not the claim"
    bug = result(moved, "float32", 1.0)
    assert not bug.holds and "1 of 2 answers" in bug.verdict() and "a bug" in bug.verdict()
    rounding = result(moved, "bfloat16", 1.0)
    assert rounding.holds and f"part from token {n} on" in rounding.verdict() and "bfloat16 rounds" in rounding.verdict()
