"""The decode kernel's variants (inference/kernels/tuning.py): each computes the same bits, the trial
keeps the fastest it measured, and the trace names the one that ran."""
from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from inference.engine import Engine
from inference.kernels import tuning
from inference.kernels.build import build_error, kernel_module
from inference.kernels.quantize import Q4_1, Q8_0, quantize
from inference.model.kv_cache import cache_of, forward
from inference.model.loading import LoadedModel, model_info
from inference.settings import GenerationSettings
from inference.trace import trace_from_dict
from tests.conftest import DigitTokenizer, tiny_llama
from tests.test_fast_path import fast

# Every knob's every value, not only the ones the trial's stages reach.
ALL_VARIANTS = [tuning.Variant(p, c, u) for p, c, u in
                itertools.product(tuning.PREFETCH_BYTES, (0, *tuning.PIECE_ROWS), (0, 1))]


@pytest.fixture(scope="module")
def kernel():
    module = kernel_module()
    assert module is not None, f"the decode kernel did not build: {build_error()}"
    yield module
    for kind in module.KINDS:
        tuning.apply(module, kind, tuning.DEFAULT)


def products(kernel, kind: str):
    """(rows of x, a function of x computing the product in `kind` the way decode does)."""
    torch.manual_seed(3)
    if kind in ("float32", "bfloat16"):
        dtype = torch.float32 if kind == "float32" else torch.bfloat16
        w = torch.randn(3000, 1000).to(dtype)               # 1000: whole chunks and a tail
        return torch.randn(32, 1000).to(dtype), lambda x: kernel.gemv(x, w)
    fmt = Q8_0 if kind == "int8" else Q4_1
    blocks = torch.from_numpy(quantize(np.random.default_rng(3).standard_normal((3000, 1024), dtype=np.float32), fmt))
    return torch.randn(32, 1024), lambda x: kernel.gemv_blocks(x, blocks, fmt)


@pytest.mark.parametrize("kind", ["float32", "bfloat16", "int8", "q4_1"])
def test_every_variant_computes_the_bits_of_the_default_for_every_row_count(kernel, kind: str) -> None:
    x, product = products(kernel, kind)
    tuning.apply(kernel, kind, tuning.DEFAULT)
    reference = {rows: product(x[:rows]) for rows in (1, 5, 32)}
    alone = torch.cat([product(x[m:m + 1]) for m in range(32)])
    assert torch.equal(reference[32], alone), "a row's bits depend on who shares its product"
    for variant in ALL_VARIANTS:
        tuning.apply(kernel, kind, variant)
        assert kernel.tuning(kernel.KINDS[kind]) == (variant.prefetch, variant.chunk, variant.unpack)
        for rows, expected in reference.items():
            assert torch.equal(product(x[:rows]), expected), f"{variant.name}, {rows} rows"
    tuning.apply(kernel, kind, tuning.DEFAULT)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_variant_gives_the_fused_decode_step_the_same_bits(kernel, dtype: torch.dtype) -> None:
    """The whole fused stack (attention, MLP, the threads' shares inside one parallel region)."""
    model = tiny_llama().to(dtype)
    torch.manual_seed(4)
    prompt = torch.randint(3, 100, (3, 40))
    kind = "float32" if dtype == torch.float32 else "bfloat16"

    def decode_logits() -> torch.Tensor:
        with torch.inference_mode(), fast(model, kernel):
            out = forward(model, prompt, use_cache=True)
            cache, logits = cache_of(out), []
            for _ in range(3):
                out = forward(model, out.logits[:, -1:].argmax(-1), cache, use_cache=True)
                logits.append(out.logits[:, -1].float())
        return torch.stack(logits)

    tuning.apply(kernel, kind, tuning.DEFAULT)
    expected = decode_logits()
    for variant in (tuning.Variant(0, 16), tuning.Variant(4096, 64), tuning.Variant(1024, 0)):
        tuning.apply(kernel, kind, variant)
        assert torch.equal(decode_logits(), expected), variant.name
    tuning.apply(kernel, kind, tuning.DEFAULT)


class FakeKernel:
    KINDS = {"float32": 0, "bfloat16": 1, "int8": 2, "q4_1": 3}

    def __init__(self) -> None:
        self.set: list[tuple[int, int, int, int]] = []

    def set_tuning(self, *args: int) -> None:
        self.set.append(args)


def fake_engine(precision: str) -> SimpleNamespace:
    info = SimpleNamespace(precision=precision, layers=3, hidden=64, intermediate=128, vocab=128)
    return SimpleNamespace(kernel=FakeKernel(), loaded=SimpleNamespace(info=info))


def timed(ms_of, waited: float = 0.0):
    """A stand-in for the trial's runs: each variant's steps take ms_of(variant)."""
    runs: list[tuning.Variant] = []

    def decode_steps(engine, kind, variant):
        runs.append(variant)
        return [ms_of(variant) + noise for noise in (0.0, 0.5, 3.0)], waited

    return runs, decode_steps


def test_the_trial_keeps_each_knobs_fastest_value_and_caches_the_choice(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PHASESCOPE_CACHE", str(tmp_path))
    best = tuning.Variant(prefetch=1024, chunk=64, unpack=1)
    runs, decode_steps = timed(lambda v: 10.0 + (v.prefetch != 1024) + 2 * (v.chunk != 64) + 0.5 * (v.unpack != 1))
    monkeypatch.setattr(tuning, "_decode_steps", decode_steps)
    engine = fake_engine("q4_1")
    chosen = tuning.tune(engine)
    assert chosen.variant == best
    # Each stage keeps the winners before it: the sharing stage ran with 1 KiB, unpacking with both.
    assert {v.prefetch for v in runs if v.chunk} == {1024} and {v.chunk for v in runs if v.unpack} == {64}
    assert len(runs) == tuning.ROUNDS * (len(tuning.PREFETCH_BYTES) + len(tuning.PIECE_ROWS) + 1)
    assert engine.kernel.set[-1] == (3, 1024, 64, 1), "the engine's kernel runs the chosen variant"
    times = dict(chosen.trials)
    assert times[best.name] == 10.0 and times[tuning.DEFAULT.name] == 13.5   # the lower quartile of its steps
    assert "fastest of 8 variants" in chosen.note and "10.0 ms" in chosen.note and "13.5" in chosen.note
    runs.clear()
    assert tuning.tune(fake_engine("q4_1")).variant == best and runs == [], "read from the cache the second time"


def test_a_trial_on_a_crowded_machine_decides_this_start_only(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PHASESCOPE_CACHE", str(tmp_path))
    runs, decode_steps = timed(lambda v: 10.0 + (v.prefetch != 0), waited=0.5)
    monkeypatch.setattr(tuning, "_decode_steps", decode_steps)
    assert tuning.tune(fake_engine("float32")).variant == tuning.Variant(prefetch=0)
    first = len(runs)
    assert not any(v.unpack for v in runs), "unpacking is tried for q4_1 only"
    tuning.tune(fake_engine("float32"))
    assert len(runs) == 2 * first, "a crowded trial is measured again at the next start"


def test_the_trace_names_the_variant_that_ran(kernel, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PHASESCOPE_CACHE", str(tmp_path))
    model = tiny_llama()
    engine = Engine(LoadedModel(model, DigitTokenizer(), model_info(model, "tiny"), torch.device("cpu")))
    engine.tune()                                    # a real trial, on the tiny model
    assert engine.kernel_tuning is not None and engine.kernel_tuning.trials
    name = engine.kernel_tuning.variant.name
    assert kernel.tuning(kernel.KINDS["float32"]) == tuple(
        getattr(engine.kernel_tuning, knob) for knob in ("prefetch", "chunk", "unpack"))
    fast_run = engine.generate([5, 6, 7], GenerationSettings(max_new_tokens=3), stop_at_eos=False).run_to_end()
    assert fast_run.device.kernel_variant == name
    assert trace_from_dict(json.loads(fast_run.to_json())).device.kernel_variant == name
    assert name in engine.kernel_note
    eager = engine.generate([5, 6, 7], GenerationSettings(max_new_tokens=3, kernel="eager"),
                            stop_at_eos=False).run_to_end()
    assert eager.device.kernel_variant == "", "no kernel ran: no variant"
    tuning.apply(kernel, "float32", tuning.DEFAULT)
