"""Prompt ids: the chat template when the model has one, exact lengths from the fixed text, clear refusals."""
from __future__ import annotations

import pytest

from inference.prompts import MAX_PROMPT_CHARS, chat_prompt_ids, check_prompt_text, fixed_length_prompt_ids


@pytest.fixture(scope="module")
def tokenizer():
    from inference.model.loading import load_model

    import torch
    return load_model(dtype=torch.float32).tokenizer


@pytest.mark.parametrize("n", [1, 16, 700, 5000])
def test_a_fixed_length_prompt_has_exactly_that_many_tokens_and_is_the_same_each_time(tokenizer, n: int) -> None:
    ids = fixed_length_prompt_ids(tokenizer, n)
    assert len(ids) == n and ids == fixed_length_prompt_ids(tokenizer, n)


@pytest.mark.parametrize("n", [0, -3, 2.5, True, "16"])
def test_a_bad_length_is_refused_with_its_value(tokenizer, n: object) -> None:
    with pytest.raises(ValueError, match=f"got {n!r}"):
        fixed_length_prompt_ids(tokenizer, n)


def test_a_typed_prompt_goes_through_the_chat_template(tokenizer) -> None:
    text = tokenizer.decode(chat_prompt_ids(tokenizer, "What is the capital of France?"))
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>" in text
    assert text.rstrip().endswith("<|im_start|>assistant"), "the model must be asked to answer as the assistant"


@pytest.mark.parametrize("prompt, message", [("", "empty"), (" \n\t", "empty"), (None, "empty"),
                                             ("x" * (MAX_PROMPT_CHARS + 1), "100,001 characters")])
def test_empty_or_huge_prompts_are_refused_with_a_reason(prompt: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_prompt_text(prompt)
