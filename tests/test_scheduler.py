"""The shared server's decisions (inference/serving/scheduler.py), checked without a model."""
from __future__ import annotations

from inference.serving.scheduler import Ask, Limits, admissible, piece_end, refusal

LIMITS = Limits(max_rows=8, kv_budget=1000)


def test_the_queue_is_served_in_order_while_rows_and_cache_fit() -> None:
    assert admissible([], [Ask(2, 100)] * 5, LIMITS) == 4                      # rows: 4 x 2 = 8
    assert admissible([Ask(6, 100)], [Ask(2, 100), Ask(1, 10)], LIMITS) == 1
    assert admissible([], [Ask(1, 600), Ask(1, 600)], LIMITS) == 1              # the KV budget
    assert admissible([Ask(8, 10)], [Ask(1, 1)], LIMITS) == 0                   # the batch is full


def test_nobody_overtakes_the_head_of_the_queue() -> None:
    """A big run at the head waits for room; the small ones behind it wait too (never starved)."""
    assert admissible([Ask(4, 100)], [Ask(5, 100), Ask(1, 1), Ask(1, 1)], LIMITS) == 0


def test_a_run_that_could_never_fit_is_refused_with_the_reason() -> None:
    assert refusal(Ask(8, 1000), LIMITS) is None
    assert "at most 8" in refusal(Ask(9, 10), LIMITS)
    assert "budget of 0.00 GB" in refusal(Ask(1, 1001), LIMITS)


def test_a_prompt_is_cut_into_pieces_of_the_chunk() -> None:
    ends, done = [], 0
    while done < 300:
        done = piece_end(done, 300, 128)
        ends.append(done)
    assert ends == [128, 256, 300]
    assert piece_end(0, 300, 0) == 300, "no chunk: the whole prompt at once"
    assert piece_end(100, 300, 0) == 300
