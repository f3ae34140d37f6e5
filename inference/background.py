"""Running a generation off the caller's thread, so a UI can look at it at its own pace.

The engine never waits for drawing: it appends each Step as it comes, and the caller polls
(`wait_for_steps`) at whatever rate it draws. `stop()` cancels (before the next layer during a
prefill, before the next step in decode) and waits for the end; a run that outlives its
`max_seconds` is cancelled the same way, and says so in `timed_out`.

Where the runs happen matters: measured here, bfloat16 matrix-vector products run about 30%
slower on a thread other than the process's main thread (the OpenMP thread team behaves
differently there), which would distort what the page measures. So a server hands its main
thread to `ENGINE_THREAD.serve_forever()` and every run executes there; without that (tests,
notebooks) a run gets a thread of its own.
"""
from __future__ import annotations

import math
import queue
import threading
import time
from concurrent.futures import Future
from typing import Callable, TypeVar

from inference.engine import GenerationRun
from inference.trace import Step, Trace

T = TypeVar("T")


class EngineThread:
    """Executes jobs on the thread that called `serve_forever`, one at a time."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[Callable[[], None]] = queue.Queue()
        self.serving = False

    def submit(self, job: Callable[[], None]) -> None:
        if self.serving:
            self._jobs.put(job)
        else:
            threading.Thread(target=job, name="phasescope-run", daemon=True).start()

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the engine thread and return its result (or raise its exception)."""
        if not self.serving:
            return fn()
        future: Future[T] = Future()

        def job() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self._jobs.put(job)
        return future.result()

    def serve_forever(self, stop: threading.Event | None = None) -> None:
        """Run submitted jobs on this thread until `stop` is set (or forever)."""
        self.serving = True
        try:
            while stop is None or not stop.is_set():
                try:
                    job = self._jobs.get(timeout=0.2)
                except queue.Empty:
                    continue
                job()
        finally:
            self.serving = False


ENGINE_THREAD = EngineThread()


class BackgroundRun:
    def __init__(self, run: GenerationRun, engine_thread: EngineThread = ENGINE_THREAD,
                 max_seconds: float = math.inf):
        self.run = run
        self.error: BaseException | None = None
        self.max_seconds = max_seconds
        self.timed_out = False          # cancelled for running longer than max_seconds
        self.started = time.perf_counter()
        self._finished = False
        self._new_step = threading.Condition()
        engine_thread.submit(self._work)

    def _work(self) -> None:
        try:
            for _ in self.run:
                with self._new_step:
                    self._new_step.notify_all()
        except BaseException as exc:      # reported to the caller, who shows it as a message
            self.error = exc
        finally:
            with self._new_step:
                self._finished = True
                self._new_step.notify_all()

    @property
    def done(self) -> bool:
        return self._finished

    @property
    def steps(self) -> list[Step]:
        return self.run.steps

    @property
    def layers_done(self) -> int:
        timer = self.run.timer
        return timer.layers_done if timer else 0

    def wait_for_steps(self, have: int, timeout: float) -> None:
        """Return when there are more than `have` steps, the run has ended, or `timeout` passed;
        cancel the run if it has run longer than max_seconds."""
        with self._new_step:
            self._new_step.wait_for(lambda: len(self.run.steps) > have or self._finished, timeout)
        if not self._finished and not self.timed_out and self.elapsed > self.max_seconds:
            self.timed_out = True
            self.run.cancel.set()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def stop(self) -> None:
        """Cancel and wait until the run has released the engine."""
        self.run.cancel.set()
        with self._new_step:
            self._new_step.wait_for(lambda: self._finished)

    def trace(self) -> Trace:
        return self.run.trace()
