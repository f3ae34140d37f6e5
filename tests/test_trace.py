"""The trace record: prefixes read the steps as they happened."""
from __future__ import annotations

import json

from inference.trace import read_trace
from tests.conftest import EXAMPLE_TRACE as EXAMPLE


def test_a_prefix_is_the_run_as_it_stood_after_n_steps() -> None:
    trace = read_trace(EXAMPLE.read_text())
    partial = trace.prefix(3)
    assert partial.steps == trace.steps[:3] and partial.text == "".join(s.text for s in trace.steps[:3])
    assert json.loads(partial.to_json())["prompt_tokens"] == trace.prompt_tokens
