"""Running a generation off the caller's thread, so a UI can look at it at its own pace.

The engine never waits for drawing: it appends each Step as it comes, and the caller follows the
run (`follow`: once a frame, the steps so far) at whatever rate it draws, or waits for its end. `stop()` cancels (before the next layer during a
prefill, before the next step in decode) and waits for the end; a run that outlives its
`max_seconds` is cancelled the same way, and says so in `timed_out`.

A run may also happen in another process: on a ZeroGPU Space the run function executes in a forked
worker that gets pickled copies of its arguments. So the Stop flag (`CancelFlag`) is a file, the
same flag in every copy, and `ENGINE_THREAD` serves only in the process that called serve_forever.

Where the runs happen matters: measured here, bfloat16 matrix-vector products run about 30%
slower on a thread other than the process's main thread (the OpenMP thread team behaves
differently there), which would distort what the page measures. So a server hands its main
thread to `ENGINE_THREAD.serve_forever()` and every run executes there; without that (tests,
notebooks) a run gets a thread of its own.
"""
from __future__ import annotations

import abc
import math
import os
import queue
import tempfile
import threading
import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

from inference.trace import Step, Trace

if TYPE_CHECKING:                   # a type only: reading the server's configuration must not load torch
    from inference.engine import GenerationRun

T = TypeVar("T")


class CancelFlag:
    """One per browser session: Stop sets it, the session's run polls it (set, clear, is_set, as a
    threading.Event). It is a file, so a copy (Gradio deep-copies state values) or a pickled copy in
    another process (a ZeroGPU worker) is the same flag; checking it costs about a microsecond."""

    FOLDER = Path(tempfile.gettempdir()) / "phasescope-stop"

    def __init__(self) -> None:
        self.path = self.FOLDER / uuid.uuid4().hex

    def set(self) -> None:
        self.FOLDER.mkdir(exist_ok=True)
        self.path.touch()

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def is_set(self) -> bool:
        return self.path.exists()

    def __deepcopy__(self, memo: dict) -> CancelFlag:
        return self


class EngineThread:
    """Executes jobs on the thread that called `serve_forever`, one at a time."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[Callable[[], None]] = queue.Queue()
        self._serving_pid: int | None = None

    @property
    def serving(self) -> bool:
        """Someone serves jobs in this process (a forked copy of a serving process has no such thread)."""
        return self._serving_pid == os.getpid()

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
        self._serving_pid = os.getpid()
        try:
            while stop is None or not stop.is_set():
                try:
                    job = self._jobs.get(timeout=0.2)
                except queue.Empty:
                    continue
                job()
        finally:
            self._serving_pid = None


ENGINE_THREAD = EngineThread()


class WatchedRun(abc.ABC):
    """What a page watches of a run that goes on elsewhere: its steps as they come, its end, its
    time limit, Stop. A subclass provides `steps`, `cancel`, `prompt_ids` and `trace()`, and calls `_notify()` on
    each new step, `_end()` when the run has ended (its trace is whole) and `_release()` once
    whatever ran it holds nothing of it any more (the engine's lock included, where it was the last
    run): `stop()` returns only then, so a closed tab frees the engine by construction."""

    steps: list[Step]
    cancel: Any
    prompt_ids: list[int]

    def __init__(self, max_seconds: float = math.inf):
        self.error: BaseException | None = None
        self.max_seconds = max_seconds
        self.timed_out = False          # cancelled for running longer than max_seconds
        self.started = time.perf_counter()
        self._finished = False
        self._released = False
        self._changed = threading.Condition()

    @property
    def done(self) -> bool:
        return self._finished

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def queue_position(self) -> int:
        """Place in a queue for room to run (0: none, or no longer waiting)."""
        return 0

    def wait_for_steps(self, have: int, timeout: float) -> None:
        """Return when there are more than `have` steps, the run has ended, or `timeout` passed;
        cancel the run if it has run longer than max_seconds."""
        with self._changed:
            self._changed.wait_for(lambda: len(self.steps) > have or self._finished, timeout)
        if not self._finished and not self.timed_out and self.elapsed > self.max_seconds:
            self.timed_out = True
            self.cancel.set()

    def follow(self, frame_s: Callable[[], float] | float) -> Iterator[int]:
        """The one way to watch a run go on: once a frame, how many steps it has. A frame ends early
        when a step comes, but no sooner than `frame_s` (seconds, or a function giving them) after
        the last, so a watcher draws at most once a frame; it ends when the run has ended (its
        last steps are then in `steps`)."""
        seen = 0
        while not self._finished:
            frame = frame_s() if callable(frame_s) else frame_s
            frame_end = time.perf_counter() + frame
            self.wait_for_steps(seen, frame)
            time.sleep(max(0.0, frame_end - time.perf_counter()))
            seen = len(self.steps)
            yield seen

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run has ended (or `timeout` passed); whether it has."""
        with self._changed:
            return self._changed.wait_for(lambda: self._finished, timeout)

    def stop(self) -> None:
        """Cancel (unless it has ended) and wait until the run has released the engine."""
        if not self._finished:
            self.cancel.set()
        with self._changed:
            self._changed.wait_for(lambda: self._released)

    @abc.abstractmethod
    def trace(self) -> Trace:
        """The run's trace so far (whole once it has ended)."""

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _end(self) -> None:
        with self._changed:
            self._finished = True
            self._changed.notify_all()

    def _release(self) -> None:
        with self._changed:
            self._finished = self._released = True
            self._changed.notify_all()


class BackgroundRun(WatchedRun):
    """A GenerationRun iterated on the engine thread."""

    def __init__(self, run: GenerationRun, engine_thread: EngineThread = ENGINE_THREAD,
                 max_seconds: float = math.inf):
        super().__init__(max_seconds)
        self.run = run
        engine_thread.submit(self._work)

    def _work(self) -> None:
        try:
            for _ in self.run:
                self._notify()
        except BaseException as exc:      # reported to the caller, who shows it as a message
            self.error = exc
        finally:
            # The generator has returned: its `with engine.lock` has exited, so it holds nothing.
            self._release()

    @property
    def steps(self) -> list[Step]:
        return self.run.steps

    @property
    def cancel(self) -> Any:
        return self.run.cancel

    @property
    def prompt_ids(self) -> list[int]:
        return self.run.prompt_ids

    @property
    def prefill_start(self) -> float | None:
        return self.run.prefill_start

    @property
    def layers_done(self) -> int:
        timer = self.run.timer
        return timer.layers_done if timer else 0

    def trace(self) -> Trace:
        return self.run.trace()


class ReplayRun(WatchedRun):
    """A recorded trace played again as if it ran now, at `speed` x its recorded pace: each step
    arrives when its recorded time (over `speed`) has passed, so a replay is watched exactly as a
    live run is (`follow`)."""

    def __init__(self, trace: Trace, speed: float = 1.0):
        super().__init__()
        self.recorded, self.speed = trace, speed
        self.steps: list[Step] = []
        self.cancel = threading.Event()
        self.prompt_ids = []                 # a trace keeps the prompt's length, not its ids
        threading.Thread(target=self._play, name="phasescope-replay", daemon=True).start()

    def _play(self) -> None:
        try:
            due = 0.0
            for step in self.recorded.steps:
                due += step.ms / 1e3 / self.speed
                if self.cancel.wait(max(0.0, self.started + due - time.perf_counter())):
                    return
                self.steps.append(step)
                self._notify()
        finally:
            self._release()

    def trace(self) -> Trace:
        return self.recorded.prefix(len(self.steps))

