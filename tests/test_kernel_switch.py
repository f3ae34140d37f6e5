"""A first start serves before its kernel is built: the engine runs plain PyTorch (and its traces
say so) while the compiler works at the lowest priority, measures the roofs briefly and says so,
then switches to the kernel between runs; the page's model box follows the switch."""
from __future__ import annotations

import dataclasses
import os
import platform
import threading

import pytest
import torch

from inference import engine as engine_module
from inference.disk_cache import cached
from inference.hardware import device as device_module
from inference.hardware import roofs
from inference.kernels import build
from inference.kernels.build import build_error, kernel_module
from inference.serving.server_config import ServerConfig
from inference.settings import GenerationSettings
from page import state
from tests.conftest import TEST_DEVICE, engine_for, tiny_llama

GREEDY = GenerationSettings(max_new_tokens=6, temperature=0.0)


@pytest.fixture
def kernel():
    module = kernel_module()
    if module is None:
        pytest.skip(f"the kernel did not build here: {build_error()}")
    return module


@pytest.fixture
def building(monkeypatch):
    """The kernel as a first start sees it: not built yet, a build under way."""
    monkeypatch.setattr(engine_module, "kernel_for_now", lambda: (None, True))


def pending_engine(monkeypatch) -> engine_module.Engine:
    engine = engine_for(tiny_llama(), "tiny-llama")       # built with the kernel, as a later start
    tuned = []
    monkeypatch.setattr(engine_module, "tune", lambda engine, progress: tuned.append(engine.kernel) or None)
    monkeypatch.setattr(engine_module, "device_info",
                        lambda device, dtype, choice="", quick=False:
                        dataclasses.replace(TEST_DEVICE, source="measured in full" if not quick else "short probes"))
    waiting = engine_module.Engine(engine.loaded, wait_for_kernel=False)
    waiting.tuned = tuned
    return waiting


def test_while_the_kernel_builds_runs_use_plain_pytorch_and_then_switch_to_it(kernel, building, monkeypatch) -> None:
    engine = pending_engine(monkeypatch)
    assert engine.kernel_pending and engine.kernel is None
    assert engine.device_info.source == "short probes", "the roofs are measured briefly while the kernel builds"
    assert "building" in engine.kernel_note and "plain PyTorch" in engine.kernel_note
    before = engine.generate([1, 5, 9, 13], GREEDY).run_to_end()
    assert before.settings.kernel == "eager", "the trace says what ran: plain PyTorch"
    said = []
    engine.finish_kernel(said.append)
    assert not engine.kernel_pending and engine.kernel is kernel
    assert engine.tuned == [kernel], "its variants are timed once it is there"
    assert engine.device_info.source == "measured in full", "the roofs measured beside the compiler are measured again"
    assert "built for this CPU" in said[-1] and "building" not in engine.kernel_note
    after = engine.generate([1, 5, 9, 13], GREEDY).run_to_end()
    assert after.settings.kernel == "fast"
    assert [s.token_id for s in after.steps] == [s.token_id for s in before.steps], "the same greedy answer"


def test_the_switch_waits_for_the_run_under_way(kernel, building, monkeypatch) -> None:
    engine = pending_engine(monkeypatch)
    with engine.lock:                                   # a run holds the engine
        switch = threading.Thread(target=engine.finish_kernel)
        switch.start()
        switch.join(0.5)
        assert engine.kernel is None, "not in the middle of a run"
    switch.join(60)
    assert engine.kernel is kernel and not engine.kernel_pending


def test_an_engine_that_waits_for_its_kernel_never_runs_without_it(kernel) -> None:
    engine = engine_for(tiny_llama(), "tiny-llama")
    assert engine.kernel is kernel and not engine.kernel_pending
    assert build.kernel_for_now() == (kernel, False), "a built kernel is there now, nothing more to come"
    engine.finish_kernel()                              # nothing to do
    assert engine.kernel is kernel


def test_the_model_box_follows_the_switch_and_its_timer_stops(kernel, building, monkeypatch) -> None:
    engine = pending_engine(monkeypatch)
    server = state.Server(ServerConfig.from_env(), engine)
    box, line, loading, switching = server.loading_tick()
    assert "building" in box and "ready" in line and not loading.active and switching.active
    *_, opened_switching = server.page_opened()
    assert opened_switching.active, "a page opened meanwhile follows it too"
    engine.finish_kernel()
    box, switching = server.kernel_tick()
    assert "building" not in box and "built for this CPU" in box and not switching.active


def test_roofs_measured_while_the_kernel_builds_are_short_labelled_and_not_kept(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PHASESCOPE_CACHE", str(tmp_path))
    asked = []

    def measure(key, target_s=roofs.PROBE_SECONDS):
        asked.append(target_s)
        return roofs.CpuRoofs(key=key, name="cpu (2 threads)", threads=2, fp32_flops=1e11, bf16_flops=2e11,
                              bytes_per_s=2e10, bf16_native=True, bf16_torch_flops=2e11, seconds=1.0,
                              quick=target_s < roofs.PROBE_SECONDS)

    monkeypatch.setattr(roofs, "measure_cpu_roofs", measure)
    quick = device_module.device_info(torch.device("cpu"), torch.float32, quick=True)
    assert asked == [roofs.QUICK_PROBE_SECONDS] and "short probes while the kernel builds" in quick.source
    assert cached("cpu-roofs", roofs.cpu_key(), roofs.CpuRoofs) is None, "a short measurement is not kept"
    full = device_module.device_info(torch.device("cpu"), torch.float32)
    assert asked[-1] == roofs.PROBE_SECONDS and "short" not in full.source
    assert device_module.device_info(torch.device("cpu"), torch.float32, quick=True).source == full.source, \
        "once measured in full, a quick start reads them"
    assert len(asked) == 2


@pytest.mark.skipif(platform.system() != "Linux", reason="a thread's own priority is Linux's")
def test_the_compiler_runs_at_the_lowest_priority(monkeypatch) -> None:
    seen = []
    done = threading.Event()
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def build_here():
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        done.set()

    monkeypatch.setattr(build, "kernel_module", build_here)
    build.build_in_background()
    assert done.wait(30)
    assert seen == [19], "the build thread (and the compiler it starts) yields to everything else"
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine, "the thread that started it does not"
