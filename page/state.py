"""What one PhaseScope server holds, in one object handed to every tab: its configuration (a
frozen ServerConfig, replaced whole by the flags or a model switch), the shared engine (loaded on
first use, or at launch after the page is up: meanwhile the page says what the load is doing),
and what a ZeroGPU run asks for (learnt from the runs seen)."""
from __future__ import annotations

import threading
from typing import Any, Callable

import gradio as gr

from inference.engine import Engine
from inference.model.factory import load_engine
from inference.serving.background import ENGINE_THREAD, WatchedRun
from inference.serving.door import Plan, start
from inference.serving.gpu_budget import GpuBudget
from inference.serving.server_config import ServerConfig
from viz import summary

try:                                # a Hugging Face Space's image carries `spaces`
    import spaces
except ImportError:
    spaces = None


class Server:
    def __init__(self, config: ServerConfig, engine: Engine | None = None):
        self.config = config
        self.engine = engine                    # None until the first run (or launch) loads it
        self.gpu_budget = GpuBudget()
        self.loading = ""                       # what the engine's load is doing now (its progress line)
        self.load_error: str | None = None      # why the last load failed, where it did
        self.load_under_way = False
        self._load_ended = threading.Condition()
        self._engine_lock = threading.Lock()

    def get_engine(self, progress: Any = print) -> Engine:
        """The one shared, read-only engine, loaded on first use."""
        with self._engine_lock:
            if self.engine is None:
                # On ZeroGPU the main process must not run the model: each worker warms its own copy.
                config = self.config

                def report(message: str) -> None:
                    self.loading = message
                    progress(message)

                self.load_under_way, self.load_error = True, None
                report(f"loading {config.model}")
                try:
                    # A first start answers on plain PyTorch while its kernel builds (not on
                    # ZeroGPU, whose main process never runs the model).
                    self.engine = load_engine(config.model, config.device, config.dtype, report,
                                              warm_up=not config.zero_gpu, wait_for_kernel=config.zero_gpu)
                except Exception as exc:
                    self.load_error = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
                    raise
                finally:
                    with self._load_ended:
                        self.load_under_way = False
                        self._load_ended.notify_all()
            return self.engine

    def start(self, engine: Engine, plan: Plan, cancel: Any, source: str = "page") -> WatchedRun:
        """A page's planned run started (inference/serving/door.py) with this server's settings: its
        time limit, the shared batch's prefill pieces, the teacher's context and its shared blocks."""
        config = self.config
        return start(engine, plan, cancel, config.max_run_seconds, config.prefill_chunk, config.class_context,
                     config.prefix_cache, source)

    @property
    def ready(self) -> bool:
        """The engine is loaded (runs need not wait)."""
        return self.engine is not None

    def wait_for_load(self, timeout: float) -> None:
        """Return when no load is under way any more, or after `timeout` seconds."""
        with self._load_ended:
            self._load_ended.wait_for(lambda: not self.load_under_way, timeout)

    def gpu(self, fn: Callable[..., Any], duration: Callable[..., Any] | None = None) -> Callable[..., Any]:
        """On a ZeroGPU Space, `fn` runs in a forked worker that holds a GPU for `duration(*args)`
        seconds (by default the run limit); its arguments and what it yields are pickled. Elsewhere
        `fn` as it is."""
        if spaces is None:
            return fn
        return spaces.GPU(duration=duration or (lambda *args, **kwargs: self.config.max_run_seconds))(fn)

    def run_seconds(self, prompt: str, max_new_tokens: float, *args: Any, **kwargs: Any) -> int:
        """A run's ZeroGPU duration: its worker's start, its prefill and its decode at the costs
        measured so far (inference/serving/gpu_budget.py), so that a visitor's daily quota holds several runs."""
        from inference.prompts import chat_prompt_ids

        try:
            tokens = len(chat_prompt_ids(self.get_engine().loaded.tokenizer, str(prompt)))
        except (ValueError, TypeError):
            tokens = len(str(prompt))                  # at most one token a character
        try:
            new_tokens = int(max_new_tokens)
        except (ValueError, TypeError):
            new_tokens = 512
        return self.gpu_budget.seconds_for(tokens, new_tokens, self.config.max_run_seconds)

    def switch_model(self, name: str) -> str:
        """Load `name` for everyone (there is one shared model); on any failure keep the current one."""
        name = (name or "").strip()
        if not name:
            raise gr.Error("Choose a model.", print_exception=False)
        config = self.config
        if not config.may_load(name):
            raise gr.Error(f"{name!r} is not one of this server's models: {', '.join(config.allowed_models)}",
                           print_exception=False)
        current = self.get_engine()
        if name == current.loaded.info.name:
            return self.engine_status()
        if config.zero_gpu:
            raise gr.Error("A ZeroGPU Space serves the one model it started with (its GPU workers keep it): "
                           "duplicate the Space with PHASESCOPE_MODEL set to run another.", print_exception=False)
        try:
            engine = ENGINE_THREAD.call(lambda: load_engine(name, config.device, config.dtype))
        except ValueError as exc:
            raise gr.Error(f"{exc}. Still using {current.loaded.info.name}.", print_exception=False) from None
        with self._engine_lock:
            self.engine = engine
            self.config = self.config.replace(model=name)
        return self.engine_status()

    def engine_status(self) -> str:
        """The model box: what runs and why, or, while the engine loads, what the load is doing."""
        if not self.ready:
            return summary.loading_status_html(self.config.model, self.loading, self.load_error, self.load_under_way)
        engine = self.engine
        return summary.model_status_html(engine.loaded.info, engine.device_info, engine.kernel_note)

    def loading_tick(self) -> tuple:
        """While the engine loads: the model box says what the load is doing; once it has ended, the
        run's status line says whether runs may start, and the timer stops (a run already waiting
        keeps its own status line meanwhile), handing over to the kernel's timer where the engine
        still waits for its kernel."""
        if self.load_under_way:
            return self.engine_status(), gr.skip(), gr.Timer(active=True), gr.skip()
        line = summary.ready_status_html() if self.ready else self.run_status()
        return self.engine_status(), line, gr.Timer(active=False), gr.Timer(active=self.kernel_pending)

    def kernel_tick(self) -> tuple:
        """While the engine runs plain PyTorch until its kernel is built: the model box follows the
        switch, and the timer stops once it is made."""
        return self.engine_status(), gr.Timer(active=self.kernel_pending)

    @property
    def kernel_pending(self) -> bool:
        """The engine is loaded but still waits for its kernel (runs meanwhile use plain PyTorch)."""
        return self.engine is not None and self.engine.kernel_pending

    def run_status(self) -> Any:
        """The run's status line as the page opens: that the model is loading, or why it could not
        be loaded (left alone otherwise)."""
        if self.load_under_way:
            return summary.loading_run_status_html()
        if self.load_error is not None:
            return summary.loading_status_html(self.config.model, "", self.load_error)
        return gr.skip()

    def engine_choices(self) -> list[tuple[str, str]]:
        """Where a run may go: the embedded engine, or one of the operator's remote engines by name."""
        return [("this machine (the embedded engine, instrumented per layer)", "")] + [
            (f"remote: {e.name} (measured from outside, and what it reports)", e.name) for e in self.config.remotes]

    def page_opened(self) -> tuple:
        """The model list, status and engines as this server is now (flags and switches happen after
        the page is built)."""
        config = self.config
        return (gr.Dropdown(choices=config.allowed_models, value=config.model, allow_custom_value=config.allow_any_model),
                self.engine_status(),
                gr.Dropdown(choices=self.engine_choices(), value="", visible=bool(config.remotes)),
                self.run_status(), gr.Timer(active=self.load_under_way), gr.Timer(active=self.kernel_pending))
