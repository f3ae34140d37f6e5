"""Generation settings: every value in range is accepted, anything else is a ValueError naming it."""
from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference.settings import MAX_BATCH_SIZE, MAX_NEW_TOKENS_LIMIT, GenerationSettings

ANY_INPUT = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)


@given(ANY_INPUT, ANY_INPUT, ANY_INPUT, ANY_INPUT, ANY_INPUT, ANY_INPUT)
def test_form_input_of_any_kind_gives_valid_settings_or_a_one_line_value_error(max_new, temperature, top_p, seed,
                                                                              kv, batch) -> None:
    try:
        result = GenerationSettings.from_form(max_new, temperature, top_p, seed, kv, batch)
    except ValueError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert 1 <= result.max_new_tokens <= MAX_NEW_TOKENS_LIMIT and 1 <= result.batch_size <= MAX_BATCH_SIZE
    assert 0 < result.top_p <= 1 and math.isfinite(result.temperature) and result.temperature >= 0
    assert isinstance(result.kv_cache, bool)


@given(st.integers(1, 4096), st.floats(0, 10), st.floats(0.01, 1), st.integers(0, 2**31), st.booleans(), st.integers(1, 64))
def test_every_setting_in_range_is_accepted_as_given(max_new, temperature, top_p, seed, kv, batch) -> None:
    s = GenerationSettings.from_form(max_new, temperature, top_p, seed, kv, batch)
    assert (s.max_new_tokens, s.temperature, s.top_p, s.seed, s.kv_cache, s.batch_size) == (
        max_new, temperature, top_p, seed, kv, batch)


def test_a_form_sends_whole_numbers_as_floats_or_text_and_they_are_taken() -> None:
    s = GenerationSettings.from_form(64.0, "0.5", 1, "7", True, 2.0)
    assert (s.max_new_tokens, s.temperature, s.seed, s.batch_size) == (64, 0.5, 7, 2)


@pytest.mark.parametrize("field, value, message", [
    ("max_new_tokens", 0, "max_new_tokens must be between 1 and 4096, got 0"),
    ("max_new_tokens", 2.5, "max_new_tokens must be a whole number, got 2.5"),
    ("temperature", float("nan"), "temperature must be between 0 and 10, got nan"),
    ("top_p", 0, "top_p must be above 0 (it is the share of probability kept), got 0"),
    ("seed", "abc", "seed must be a number, got 'abc'"),
    ("batch_size", 65, "batch_size must be between 1 and 64, got 65"),
    ("kv_cache", "yes", "kv_cache must be true or false, got 'yes'"),
])
def test_each_bad_value_is_named_with_its_value(field: str, value: object, message: str) -> None:
    form = dict(max_new_tokens=8, temperature=0, top_p=1, seed=0, kv_cache=True, batch_size=1)
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        GenerationSettings.from_form(**{**form, field: value})


def test_an_unknown_kernel_is_refused() -> None:
    with pytest.raises(ValueError, match="kernel must be one of fast, eager, got 'turbo'"):
        GenerationSettings(kernel="turbo")
