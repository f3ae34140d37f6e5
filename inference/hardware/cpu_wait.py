"""Time the engine's threads spent waiting for a core while they could have run: what another
program (a browser drawing the charts, a compile, another student's tab) took from a step.

Linux counts it per thread, in nanoseconds: the second field of /proc/self/task/<tid>/schedstat
(run delay). A step's wait is the growth of that count during the step, averaged over the engine's
threads (so that it reads against the step's wall time: 0 none, the step's ms all of it).
The engine's threads are found on a run's first two steps (a worker that the first parallel region
starts is there for the second), as the threads that ran for at least a tenth of a step (the
engine's own and its OpenMP workers; the server's other threads run far less), and read alone on
the steps after (a few files a step instead of every thread's). Where the counts cannot be
read (not Linux, no schedstat), the wait is unknown: None, and the page says nothing of it.
"""
from __future__ import annotations

import os
from pathlib import Path

TASKS = Path("/proc/self/task")
# A measurement whose threads waited for a core this share of its time or more was taken on a
# crowded machine (a build, a test suite, a browser on the same cores): not one to keep.
CROWDED = 0.2


def _read(tasks: Path, tid: str) -> tuple[int, int] | None:
    """(time on a core, time waiting for one) of one thread, in ns; None once it has ended."""
    try:
        with open(tasks / tid / "schedstat", "rb") as f:
            fields = f.read().split()
        return int(fields[0]), int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def measurable(tasks: Path = TASKS) -> bool:
    """Whether this machine counts the time a thread waits for a core."""
    return (tasks / str(os.getpid()) / "schedstat").is_file() or any(tasks.glob("*/schedstat"))


class CpuWait:
    """Per step: `start()`, then `finish(step_ms)` -> ms the engine's threads waited for a core
    (averaged over them), or None where it cannot be read."""

    def __init__(self, tasks: Path = TASKS, discovering: int = 2):
        self.tasks = tasks
        self.threads: list[str] = []               # the engine's, found on the first steps
        self._discovering = discovering            # steps left on which every thread is read
        self._before: dict[str, tuple[int, int]] = {}
        self.available = measurable(tasks)

    def _all(self) -> list[str]:
        try:
            return os.listdir(self.tasks)
        except OSError:
            return []

    def start(self) -> None:
        if not self.available:
            return
        threads = self._all() if self._discovering else self.threads
        self._before = {tid: stat for tid in threads if (stat := _read(self.tasks, tid)) is not None}

    def finish(self, step_ms: float) -> float | None:
        if not self.available or not self._before:
            return None
        growth = {}                                # tid -> (ms on a core, ns waiting) during the step
        for tid, (exec_before, wait_before) in self._before.items():
            stat = _read(self.tasks, tid)
            if stat is not None:
                growth[tid] = ((stat[0] - exec_before) / 1e6, max(0, stat[1] - wait_before))
        if self._discovering:                      # the first steps: which threads are the engine's (a
            self._discovering -= 1                 # worker its first parallel region starts is seen on the next)
            ran = [tid for tid, (on_core, _) in growth.items() if on_core >= 0.1 * step_ms]
            self.threads = sorted(set(self.threads) | set(ran or growth))
        counted = [growth[tid][1] for tid in self.threads if tid in growth]
        return sum(counted) / len(counted) / 1e6 if counted else None
