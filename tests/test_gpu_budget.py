"""What a ZeroGPU call asks for: grows with the run, learns from the runs seen, never past the limit."""
from __future__ import annotations

import dataclasses

from inference.serving.gpu_budget import MARGIN, Costs, GpuBudget
from inference.trace import read_trace
from tests.conftest import EXAMPLE_TRACE as EXAMPLE


def test_a_longer_run_asks_for_more_and_none_for_more_than_the_limit() -> None:
    budget = GpuBudget(Costs(start_s=2.0, prefill_s_per_token=0.01, decode_s_per_token=0.1))
    assert budget.seconds_for(40, 64, 120) == 14                  # (2 + 0.4 + 6.4) x 1.5, rounded up
    assert budget.seconds_for(40, 64, 120) < budget.seconds_for(40, 512, 120) == 81
    assert budget.seconds_for(4000, 4000, 120) == 120


def test_the_slowest_recent_run_sets_the_costs() -> None:
    trace = read_trace(EXAMPLE.read_text())
    budget = GpuBudget(Costs(start_s=0.0, prefill_s_per_token=0.0, decode_s_per_token=0.0))
    budget.observe(trace, start_s=3.0)
    slow = dataclasses.replace(trace, summary=dataclasses.replace(trace.summary,
                                                                  decode_ms_median=trace.summary.decode_ms_median * 4))
    budget.observe(slow, start_s=1.0)
    costs = budget.costs
    assert costs.start_s == 3.0
    assert costs.decode_s_per_token == slow.summary.decode_ms_median / 1e3
    assert costs.prefill_s_per_token == trace.steps[0].ms / 1e3 / trace.steps[0].tokens_in
    need = 3.0 + 10 * costs.prefill_s_per_token + 100 * costs.decode_s_per_token
    assert budget.seconds_for(10, 100, 10_000) >= need * MARGIN
