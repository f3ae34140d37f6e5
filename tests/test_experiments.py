"""Each experiment on the real bundled model, at small sizes: what it runs and records. Whether a
claim holds is a function of the figures (tests/test_verdicts.py); the figures this machine gives
are `make bench`'s (bench/experiments_bench.py), never a pass/fail threshold here."""
from __future__ import annotations


from gradio_client import Client

from inference.engine import Engine
from inference.lessons.experiments import run_batch_sweep, run_cache_race, run_sweep
from inference.lessons.verdicts import SweepResult, roofline_verdict
from inference.lessons.whatif import GPUS, PRESETS, estimate
from inference.trace import read_trace
from viz.experiments import batch_figure, race_figure, sweep_figure
from tests.conftest import EXAMPLE_TRACE as EXAMPLE


def test_the_prompt_length_sweep_prefills_each_length_once_and_judges_its_own_figures(real_engine: Engine) -> None:
    result = run_sweep(real_engine, [1024, 16], new_tokens=4)
    assert result.prompt_tokens == [16, 1024] and [t.steps[0].tokens_in for t in result.traces] == [16, 1024]
    assert all(s.tokens_in == 1 for t in result.traces for s in t.decode_steps)
    # The work the pause does grows with the prompt (the cost model's count, not a clock).
    short, long = (t.steps[0].flops for t in result.traces)
    assert long > 1024 / 16 * short
    assert result.verdict() == SweepResult(result.traces).verdict() and str(result.prompt_tokens[-1]) in result.verdict()
    assert list(sweep_figure(result).data[0].x) == [16, 1024]


def test_the_cache_race_writes_the_same_text_and_recomputes_a_growing_sequence(real_engine: Engine) -> None:
    race = run_cache_race(real_engine, prompt_tokens=32, new_tokens=12)
    assert [s.tokens_in for s in race.recomputed.decode_steps] == list(range(33, 33 + 11))
    assert all(s.tokens_in == 1 for s in race.cached.decode_steps)
    assert race.cached.text == race.recomputed.text, "cache on and off must write the same greedy text"
    assert race.cached.steps[-1].kv_bytes > 0 and race.recomputed.steps[-1].kv_bytes == 0
    assert len(race_figure(race).data) == 4


def test_the_batch_sweep_steps_every_row_together(real_engine: Engine) -> None:
    result = run_batch_sweep(real_engine, [1, 8], prompt_tokens=32, new_tokens=6)
    assert result.batch_sizes == [1, 8]
    assert [{s.batch_rows for s in t.steps} for t in result.traces] == [{1}, {8}]
    assert [len(t.decode_steps) for t in result.traces] == [5, 5]
    assert result.compute_bound_batch > 1
    assert list(batch_figure(result).data[0].x) == [1, 8]


def test_whatif_equals_a_hand_calculation_from_the_config() -> None:
    # Llama-3.1-8B config.json: 32 layers, hidden 4096, 32 heads, 8 KV heads, head_dim 128,
    # intermediate 14336, vocab 128256, untied embeddings.
    attention = 4096 * 4096 * 2 + 4096 * 1024 * 2            # q, o + k, v (8 KV heads x 128)
    mlp = 3 * 4096 * 14336
    params = 32 * (attention + mlp + 2 * 4096) + 2 * 128256 * 4096 + 4096
    preset = PRESETS["Llama-3.1-8B"]
    assert preset.params == params == 8_030_261_248
    e = estimate(preset, GPUS["H100 SXM"], prompt_tokens=1024, context=4096)
    assert e.weight_bytes == 2 * params
    assert e.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2 == 131_072
    assert e.kv_bytes_at_context == 131_072 * 4096
    # Decode is bandwidth-bound: every matrix (the LM head included; the embedding table only
    # gives one row) and the cached K/V are read once per step, at 3.35 TB/s.
    streamed = 2 * (32 * (attention + mlp) + 128256 * 4096) + 131_072 * 4095
    assert streamed / 3.35e12 * 1e3 < e.decode_ms_per_token < 1.02 * streamed / 3.35e12 * 1e3
    assert e.fits and not estimate(PRESETS["Llama-3.1-70B"], GPUS["H100 SXM"], 1024, 4096).fits


def test_the_smallest_preset_matches_the_real_model(real_engine: Engine) -> None:
    assert PRESETS["SmolLM2-135M"].params == real_engine.loaded.info.params
    assert PRESETS["SmolLM2-135M"].model_info("float32").matmul_params == real_engine.loaded.info.matmul_params


def test_roofline_verdict_reads_the_run() -> None:
    verdict = roofline_verdict(read_trace(EXAMPLE.read_text()))
    assert "bandwidth-bound" in verdict and verdict.startswith("✔")


def test_whatif_through_the_page_api_is_labelled_an_estimate(app_url: str) -> None:
    table = Client(app_url, verbose=False).predict(["Llama-3.1-8B"], ["H100 SXM", "T4"], 1024, 4096, 1, False, None,
                                                   api_name="/whatif")
    assert "Estimates" in table and "not measurements" in table and table.count("<tr>") == 3


def test_calibrated_estimates_scale_by_what_this_run_reached_of_its_roofs() -> None:
    from inference.lessons.whatif import measured_efficiency

    trace = read_trace(EXAMPLE.read_text())
    efficiency = measured_efficiency(trace)
    assert efficiency.prefill == min(1.0, trace.steps[0].achieved_flops / trace.device.peak_flops)
    assert efficiency.decode == min(1.0, trace.decode_bytes_per_s / trace.device.peak_bytes_per_s)
    assert f"{efficiency.decode:.0%}" in efficiency.note
    assert measured_efficiency(trace.prefix(0)).prefill == 1.0, "a trace with no steps calibrates nothing"


def test_the_batch_where_decode_turns_compute_bound_is_one_computation() -> None:
    from inference.cost_model import compute_bound_batch

    preset, gpu = PRESETS["Llama-3.1-8B"], GPUS["H100 SXM"]
    e = estimate(preset, gpu, 1024, 4096)
    ridge = gpu.bf16_flops / gpu.bytes_per_s
    assert e.compute_bound_batch == compute_bound_batch(preset.model_info(), ridge, 4096)
    # About 2 FLOPs per 2-byte weight per sequence, so near the ridge (FLOPs per byte) in sequences;
    # attention over 4096 positions adds FLOPs, so a little before it.
    assert 0.7 * ridge < e.compute_bound_batch <= ridge


def test_chunked_prefill_shrinks_the_others_worst_step_at_the_long_prompts_cost(real_engine) -> None:
    from inference.lessons.experiments import run_chunked_prefill
    from viz.experiments import chunk_figure

    result = run_chunked_prefill(real_engine, long_prompt=768, chunk=64, streams=2)
    for stream, late in (result.off, result.on):
        assert stream.serving == "batched" and late.prompt_tokens == 768
        assert max(s.foreign_prefill_tokens for s in stream.steps) > 0, "the long prefill ran inside its steps"
    # Whole, one step of the streaming run absorbs the entire prompt; in chunks, no step holds more than one chunk.
    assert max(s.foreign_prefill_tokens for s in result.off[0].steps) == 768
    assert max(s.foreign_prefill_tokens for s in result.on[0].steps) <= 64
    assert "chunks of 64" in result.verdict()
    assert len(chunk_figure(result).data) == 4


def test_a_shared_context_is_prefilled_once_and_the_answers_do_not_change(real_engine) -> None:
    from inference.lessons.experiments import run_shared_context
    from viz.experiments import prefix_figure

    result = run_shared_context(real_engine, students=4, context_tokens=200, new_tokens=6)
    assert result.identical, "prefix caching changed a student's answer"
    off, on = result.off, result.on
    assert [t.reused_tokens for t in off.traces] == [0] * 4
    first, *rest = on.traces
    assert first.reused_tokens == 0 and all(t.reused_tokens >= 192 for t in rest), \
        "after the first run, every run should start after the context's full blocks"
    assert on.prefill_tokens < off.prefill_tokens - 3 * 192
    assert on.kv_peak_bytes < off.kv_peak_bytes, "shared blocks are held once"
    assert all(t.serving == "batched" for t in [*off.traces, *on.traces])
    assert off.goodput.finished == on.goodput.finished == 4
    # The verdict follows its numbers, whatever this machine measured.
    ratio = off.ttft_p(90) / on.ttft_p(90)
    assert result.holds == (ratio >= 5) and f"{ratio:.1f}x sooner" in result.verdict()
    assert len(prefix_figure(result).data) == 4
