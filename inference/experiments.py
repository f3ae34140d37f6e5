"""Experiments made of several runs: each returns the traces a figure or a verdict is drawn from."""
from __future__ import annotations

from typing import Iterator

from inference.engine import Engine
from inference.prompts import fixed_length_prompt_ids
from inference.settings import GenerationSettings
from inference.trace import Trace


def prompt_length_sweep(engine: Engine, prompt_tokens: list[int], settings: GenerationSettings) -> Iterator[Trace]:
    """One run per prompt length, on exactly that many tokens of the fixed text."""
    for n in prompt_tokens:
        engine.check_fits(n, settings.max_new_tokens)
    for n in prompt_tokens:
        ids = fixed_length_prompt_ids(engine.loaded.tokenizer, n)
        yield engine.generate(ids, settings).run_to_end()
