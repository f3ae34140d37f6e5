"""The guided lesson's sentences as functions of the numbers (traces whose times the test sets): each
step quotes the figures its runs measured, and says so where they do not show its claim; the
estimates of step 7 are labelled as such; the lesson's figures and navigation."""
from __future__ import annotations

import dataclasses

from inference.lessons import lesson
from inference.lessons.verdicts import BatchResult, CacheRace, DtypeResult, SweepResult
from inference.trace import Trace
from tests.test_verdicts import timed, waiting
from viz import lesson as viz_lesson


def test_step_one_quotes_the_pause_and_the_beat(example_trace: Trace) -> None:
    run = timed(example_trace, 180, [20, 21, 19, 20, 22, 20, 20, 21], prompt_tokens=37)
    said = lesson.run_sentence(run)
    assert "Your prompt of 37 tokens waited 180 ms for its first token" in said, said
    assert "8 tokens came at a steady 20.0 ms each" in said, said
    assert "core" not in said, "no interference was measured, so none may be claimed"
    assert "waited 60% of its decode time for a core" in lesson.run_sentence(waiting(run, 0.6))
    short = lesson.run_sentence(timed(example_trace, 180, [20], prompt_tokens=37))
    assert "ended before a stream could be measured" in short


def test_step_two_quotes_the_ratios_of_the_sweep_and_says_when_it_fails(example_trace: Trace) -> None:
    runs = (timed(example_trace, 100, [20] * 4, 40), timed(example_trace, 400, [20] * 4, 160),
            timed(example_trace, 1600, [22] * 4, 640))
    said = lesson.sweep_sentence(SweepResult(runs))
    assert "With 16.0x the prompt (40 → 640 tokens) the pause grew 16.0x (100 → 1,600 ms)" in said, said
    assert "from 20.0 to 22.0 ms (1.10x)" in said and "hardly notices" in said
    slower = SweepResult((runs[0], timed(example_trace, 1600, [30] * 4, 640)))
    assert "slowed far less" in lesson.sweep_sentence(slower)
    flat = SweepResult((timed(example_trace, 100, [20] * 4, 40), timed(example_trace, 110, [40] * 4, 640)))
    assert "does not show the claim" in lesson.sweep_sentence(flat)


def test_step_three_places_prefill_and_decode_against_this_machines_roofs(example_trace: Trace) -> None:
    said = lesson.roofline_sentence(example_trace)
    prefill = example_trace.steps[0]
    assert f"Prefill did {prefill.intensity:,.0f} FLOPs per byte" in said, said
    assert f"{example_trace.decode_bytes_per_s / 1e9:.1f} GB/s" in said
    assert f"{example_trace.model.weight_bytes / 1e6:,.0f} MB of weights" in said


def test_step_four_quotes_the_cost_of_recomputing(example_trace: Trace) -> None:
    flat, growing = [20.0] * 8, [20.0 + 10 * i for i in range(8)]
    race = CacheRace(timed(example_trace, 30, flat), timed(example_trace, 30, growing))
    said = lesson.race_sentence(race)
    with_ms, without_ms = 30 + sum(flat), 30 + sum(growing)
    assert f"took {with_ms:,.0f} ms against {without_ms:,.0f} ms ({without_ms / with_ms:.1f}x)" in said, said
    assert "With the cache a decode step took 20.0 ms; without it 55.0 ms (2.8x)" in said
    assert "the gap grows with every token" in said and "did not show" not in said
    flat_but_dear = CacheRace(timed(example_trace, 30, flat), timed(example_trace, 30, [60.0] * 8))
    assert "hardly grew" in lesson.race_sentence(flat_but_dear)
    assert "did not show the cache's saving" in lesson.race_sentence(CacheRace(race.recomputed, race.cached))


def test_step_five_says_batching_is_nearly_free_only_where_it_measured_so(example_trace: Trace) -> None:
    rows = [timed(example_trace, 30, [20] * 4, batch_size=1), timed(example_trace, 30, [22] * 4, batch_size=2),
            timed(example_trace, 30, [30] * 4, batch_size=8)]
    said = lesson.batch_sentence(BatchResult(tuple(rows)))
    assert "A step of 8 rows took 30.0 ms against 20.0 ms for 1 (1.50x as long)" in said, said
    assert "5.3x the tokens per second" in said and "cost little" in said
    costly = BatchResult((rows[0], timed(example_trace, 30, [150] * 4, batch_size=8)))
    assert "batching is not free on it" in lesson.batch_sentence(costly)


def test_step_six_says_when_the_smaller_format_did_not_decode_faster(example_trace: Trace) -> None:
    wide = timed(example_trace, 100, [40] * 4)
    small_model = dataclasses.replace(example_trace.model, weight_bytes=example_trace.model.weight_bytes // 4,
                                      dtype="int8")
    narrow = dataclasses.replace(timed(example_trace, 90, [12] * 4), model=small_model)
    said = lesson.dtype_sentence(DtypeResult((wide, narrow)))
    assert "4.0x fewer weight bytes" in said and "decode ran 3.33x faster (40.0 → 12.0 ms a token)" in said, said
    slow = dataclasses.replace(timed(example_trace, 90, [44] * 4), model=small_model)
    assert "did not decode faster" in lesson.dtype_sentence(DtypeResult((wide, slow)))


def test_step_seven_labels_every_estimate(example_trace: Trace) -> None:
    w = lesson.what_if(example_trace)
    said = lesson.whatif_sentence(w)
    measured, estimated = said.split("**Estimates**")
    assert f"Measured here: {example_trace.summary.decode_tokens_per_s:.0f} tokens/s" in measured
    assert "(an estimate)" in measured, "what the roofs allow is an estimate too"
    assert all(f"on an {gpu}" in estimated for gpu in lesson.BIG_GPUS) and "A class of 32" in estimated
    figure = viz_lesson.whatif_figure(w)
    labels = list(figure.data[0].y)
    assert labels[0].endswith("measured") and all(label.endswith("(estimate)") for label in labels[1:]), labels


def test_the_first_steps_chart_shows_the_pause_then_the_tokens(example_trace: Trace) -> None:
    run = timed(example_trace, 180, [20] * 5)
    figure = viz_lesson.stream_figure(run)
    tokens = figure.data[1]
    assert tokens.x[0] == 180 and tokens.x[-1] == 280 and list(tokens.y) == [1, 2, 3, 4, 5, 6]
    assert figure.layout.shapes[0].x1 == 180, "the prefill's band ends at the first token"


def test_the_lesson_moves_one_step_at_a_time_and_stays_inside_it() -> None:
    from page.lesson import LessonTab, nav_html

    step, nav, *rows = LessonTab.go_to(9)
    assert step == len(lesson.STEPS) - 1 and f"Step {len(lesson.STEPS)} of {len(lesson.STEPS)}" in nav
    assert [r.visible for r in rows] == [False] * (len(rows) - 1) + [True]
    assert LessonTab.go_to(-1)[0] == 0
    assert nav_html(2).count("ps-dot-on") == 1


def test_the_join_code_names_the_teachers_address_and_refuses_loopback() -> None:
    from viz.classroom import join_html

    code = join_html("http://192.168.1.20:7860/?__theme=dark#lesson")
    assert "<svg" in code and "192.168.1.20:7860/" in code and "__theme" not in code
    local = join_html("http://127.0.0.1:7860/")
    assert "<svg" not in local and "--host 0.0.0.0" in local
    assert join_html("javascript:alert(1)") == "" and join_html("") == ""
    assert "&lt;b&gt;" in join_html("http://example.org/<b>/")


class WordTokenizer:
    """One token a word, no chat template: prompt lengths a test can count."""

    chat_template = None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [7] * len(text.split())}


def test_step_two_pastes_the_prompt_until_each_length_is_reached() -> None:
    from inference.lessons.lesson_runs import repeated_prompts

    prompts = repeated_prompts(WordTokenizer(), "why is the sky blue", (40, 100))
    assert [(k, len(ids)) for k, ids in prompts] == [(1, 5), (8, 40), (20, 100)]
    assert len(repeated_prompts(WordTokenizer(), " ".join(["word"] * 200), (40, 100))) == 1


def test_the_steps_runs_go_in_through_the_front_door() -> None:
    """Each step's runs are planned and started as the page's are; their traces say where they ran."""
    from inference.lessons import lesson_runs
    from inference.serving.background import CancelFlag
    from inference.serving.door import prepare, start
    from tests.conftest import engine_for, tiny_llama

    engine = engine_for(tiny_llama(), "tiny-llama", fast_kernels=False)     # the plain shared step: any machine
    launch = lambda ids, settings: start(engine, prepare(engine, ids, settings), CancelFlag())
    race = lesson_runs.cache_race(launch, [1, 5, 9, 11])
    assert race.cached.settings.kv_cache and not race.recomputed.settings.kv_cache
    assert race.recomputed.serving == "solo" and "KV cache" in race.recomputed.serving_why
    assert race.cached.output_ids == race.recomputed.output_ids, "greedy with and without the cache: the same tokens"
    rows = lesson_runs.batch_rows(launch, [1, 5, 9, 11])
    assert rows.batch_sizes == list(lesson_runs.BATCH_ROWS)
    sweep = lesson_runs.prompt_sweep(launch, WordTokenizer(), "a b c d", lengths=(16, 64))
    assert sweep.prompt_tokens == [4, 16, 64] and all(t.serving == "batched" for t in sweep.traces)
