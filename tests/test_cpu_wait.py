"""The time the engine's threads waited for a core, read from Linux's per-thread counts (a folder
laid out as /proc/self/task stands in for it, so the figures are set by the test)."""
from __future__ import annotations

from pathlib import Path

import pytest

from inference.hardware.cpu_wait import CpuWait, measurable
from inference.settings import GenerationSettings
from tests.conftest import engine_for, tiny_llama


def counts(tasks: Path, **threads: tuple[int, int]) -> None:
    """Each thread's (ns on a core, ns waiting for one), as schedstat writes them."""
    for tid, (ran, waited) in threads.items():
        (tasks / tid).mkdir(parents=True, exist_ok=True)
        (tasks / tid / "schedstat").write_text(f"{ran} {waited} 7\n")


def test_a_step_counts_the_wait_of_the_threads_that_ran_it(tmp_path: Path) -> None:
    counts(tmp_path, engine=(0, 0), worker=(0, 0), server=(0, 0))
    wait = CpuWait(tmp_path)
    wait.start()        # a 10 ms step: the engine and its worker ran, the server's thread hardly did
    counts(tmp_path, engine=(9_000_000, 1_000_000), worker=(8_000_000, 3_000_000), server=(100_000, 50_000_000))
    assert wait.finish(10.0) == 2.0                       # (1 + 3) ms over the two engine threads
    assert wait.threads == ["engine", "worker"]
    counts(tmp_path, late=(0, 0))                          # a worker that the first step started
    wait.start()        # is found on the second
    counts(tmp_path, engine=(18_000_000, 1_000_000), worker=(16_000_000, 3_000_000), late=(9_000_000, 3_000_000))
    assert wait.finish(10.0) == 1.0 and wait.threads == ["engine", "late", "worker"]
    (tmp_path / "server" / "schedstat").unlink()          # after that, only the engine's threads are read
    wait.start()        # the worker waited 6 ms of a 10 ms step
    counts(tmp_path, engine=(27_000_000, 1_000_000), worker=(20_000_000, 9_000_000), late=(18_000_000, 3_000_000))
    assert wait.finish(10.0) == 2.0


def test_where_the_counts_cannot_be_read_the_wait_is_unknown(tmp_path: Path) -> None:
    wait = CpuWait(tmp_path / "none")
    wait.start()
    assert not measurable(tmp_path / "none") and wait.finish(10.0) is None


def test_an_instrumented_run_records_its_wait_and_says_it_measured_it() -> None:
    """On this machine's own counts (any figure: how loaded the machine is is not the test's)."""
    engine = engine_for(tiny_llama(), "tiny-llama", fast_kernels=False)
    if not engine.measures_cpu_wait:
        pytest.skip("this machine does not count the time a thread waits for a core")
    trace = engine.generate([1, 5, 9], GenerationSettings(max_new_tokens=4)).run_to_end()
    assert trace.cpu_wait_measured and all(s.cpu_wait_ms >= 0 for s in trace.steps)
    assert trace.decode_cpu_wait_share is not None and 0 <= trace.decode_cpu_wait_share <= 1
    plain = engine.generate([1, 5, 9], GenerationSettings(max_new_tokens=4), instrument=False).run_to_end()
    assert not plain.cpu_wait_measured and all(s.cpu_wait_ms == 0 for s in plain.steps)


def test_the_page_updates_less_often_while_the_run_waits_for_a_core(example_trace) -> None:
    import dataclasses

    from page.live import crowded

    steps = list(example_trace.steps)
    assert not crowded(steps), "the example run did not wait"
    waiting = [dataclasses.replace(s, cpu_wait_ms=s.ms * 0.5) for s in steps]
    assert crowded(waiting)
    # A wait long past (before the newest steps) no longer counts.
    assert not crowded(waiting[:-8] + steps[-8:])
