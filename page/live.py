"""The Live run tab: a prompt in, the run streamed onto the dashboard as it happens; Replay,
Export and Load of a trace.

A run is planned once (inference/serving/door.py: fitted to the model, into the shared batch or alone,
and why), then followed here: this loop draws at most UPDATES_PER_S times a second while the
engine works on its own thread, and the engine never waits for it.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr
import plotly

from inference.conversation import Conversation
from inference.engine import Engine
from inference.lessons.verdicts import WAIT_WORTH_SAYING
from inference.prompts import DEFAULT_PROMPT, check_prompt_text
from inference.remote import RemoteClient, RemoteError, RemoteRun
from inference.serving.background import CancelFlag, ReplayRun, WatchedRun
from inference.serving.batching import batch_server
from inference.serving.door import Plan, prepare
from inference.settings import GenerationSettings
from inference.trace import Step, Trace, cpu_wait_share, read_trace, steps_csv
from inference.trace.perfetto import to_chrome_trace_json
from page import NO_PROGRESS
from page.state import Server
from viz import live, summary
from viz.dashboard import DASHBOARD_CSS, dashboard_js, dashboard_template

UPDATES_PER_S = 15                 # live redraws per second: smooth, and cheap next to a decode step
# ... for one run. Each update costs the server a few ms of Python (the partial trace, the chart
# deltas): with a whole class streaming at once that would take the cores the shared batch needs,
# so the server's updates are shared out, each run getting at least one a second.
SERVER_UPDATES_PER_S = 20
# While the run's recent steps wait for a core (WAIT_WORTH_SAYING of their time or more: the browser
# drawing, or another program), updates come this often instead: the text still streams live, the
# charts cost the engine less.
CROWDED_UPDATES_PER_S = 4
# While a prefill runs, its block grows on the timeline this often: each update is browser work on
# the cores the prefill needs (measured: a 160 ms prefill took 4.7x as long with the page drawing at 15 a second).
PREFILL_UPDATES_PER_S = 4
MAX_TRACE_UPLOAD_BYTES = 20 * 1024 * 1024
PLOTLY_JS = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"


@dataclass
class LiveTabParts:
    """What the rest of the page needs of the Live run tab."""
    tab: Any
    engine_choice: Any
    model: Any
    model_status: Any
    status: Any


class LiveTab:
    """The tab's handlers, on the server state they share."""

    def __init__(self, server: Server):
        self.server = server
        # On ZeroGPU a run happens in a GPU worker that asks for what the run needs.
        self._run_generation = server.gpu(self._run_generation, duration=server.run_seconds)

    def build(self, cancel: gr.State, conversation: gr.State, trace_state: gr.State) -> LiveTabParts:
        """The tab's layout and events, inside the page's Blocks."""
        config = self.server.config
        with gr.Tab("Live run", id="live") as live_tab:
            with gr.Row(equal_height=False):
                with gr.Column(scale=1, min_width=300):
                    prompt = gr.Textbox(label="Prompt", value=DEFAULT_PROMPT, lines=3, max_lines=8)
                    with gr.Row():
                        run_button = gr.Button("Run", variant="primary", elem_id="ps-run")
                        stop_button = gr.Button("Stop", variant="stop", elem_id="ps-stop")
                    # A custom value is allowed so that engines named by flags after the page was
                    # built can be picked by API clients too; run_generation refuses any name the
                    # operator did not configure.
                    engine_choice = gr.Dropdown(self.server.engine_choices(), value="", label="Engine",
                                                elem_id="ps-engine", allow_custom_value=True,
                                                visible=bool(config.remotes))
                    status = gr.HTML(elem_id="ps-status")
                    text = gr.Textbox(label="Generated text", lines=6, max_lines=14, interactive=False,
                                      elem_id="ps-text")
                    headline = gr.HTML(elem_id="ps-headline")
                    with gr.Accordion("Settings", open=False, elem_id="ps-settings"):
                        with gr.Row():
                            model = gr.Dropdown(config.allowed_models, value=config.model, label="Model",
                                                allow_custom_value=config.allow_any_model, scale=3)
                            load_button = gr.Button("Load", scale=1, min_width=60)
                        model_status = gr.HTML(elem_id="ps-model-status")
                        max_new_tokens = gr.Slider(1, 512, value=64, step=1, label="Max new tokens",
                                                   elem_id="ps-max-new")
                        temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature (0 = greedy)")
                        top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p")
                        seed = gr.Number(0, precision=0, label="Seed", minimum=0)
                        kv_cache = gr.Checkbox(True, label="KV cache (off: recompute the whole sequence each step)")
                        with gr.Row():
                            chat = gr.Checkbox(False, label="Conversation: each Run continues it", elem_id="ps-chat")
                            forget = gr.Checkbox(False, label="forget the cache between turns (to compare)",
                                                 elem_id="ps-forget")
                        new_chat = gr.Button("New conversation", size="sm", elem_id="ps-new-chat")
                        batch_size = gr.Slider(1, 16, value=1, step=1, label="Batch size (copies of the prompt)")
                        kernel = gr.Radio([("fast: fused decode kernels on every core", "fast"),
                                           ("eager: plain PyTorch (the reference)", "eager")], value="fast",
                                          label="Decode kernel (CPU)")
                        attention = gr.Checkbox(False, elem_id="ps-attention",
                                                label="Record attention (where each step looks; runs eager "
                                                      "attention on plain PyTorch: slower)")
                        quiet = gr.Checkbox(False, elem_id="ps-quiet",
                                            label="Quiet run: the text live, the charts once it ends (clean "
                                                  "figures on a small machine, where drawing takes the cores)")
                        with gr.Row():
                            speculate = gr.Radio([("off", "off"), ("prompt lookup", "lookup")], value="off",
                                                 elem_id="ps-speculate", scale=2,
                                                 label="Speculative decoding: draft tokens from the text so far, "
                                                       "check them in one pass (runs alone)")
                            draft_tokens = gr.Slider(1, 16, value=4, step=1, label="Drafted tokens per check (k)",
                                                     elem_id="ps-draft-tokens", scale=1)
                    with gr.Accordion("Replay, export, load", open=False, elem_id="ps-replay-box"):
                        speed = gr.Slider(0.1, 1.0, value=0.5, step=0.1, label="Replay speed (x real time)",
                                          elem_id="ps-speed")
                        replay_button = gr.Button("Replay", elem_id="ps-replay")
                        export_button = gr.Button("Export JSON + CSV + Perfetto")
                        files = gr.File(label="Exported files", file_count="multiple", interactive=False)
                        upload = gr.File(label="Load a trace (JSON)", file_types=[".json"], type="filepath")
                with gr.Column(scale=3):
                    dashboard = gr.HTML(value="", html_template=dashboard_template(), css_template=DASHBOARD_CSS,
                                        js_on_load=dashboard_js(), elem_id="ps-dashboard",
                                        head=f'<script src="/gradio_api/file={PLOTLY_JS}"></script>')
            outputs = [dashboard, status, headline, text, trace_state]
            run_inputs = [prompt, max_new_tokens, temperature, top_p, seed, kv_cache, batch_size, cancel, kernel,
                          chat, forget, conversation, engine_choice, attention, quiet, speculate, draft_tokens]
            # Up to a full batch of runs at once (they share decode steps, inference/serving/batching.py), or one
            # at a time in solo mode: the limit is the queue's default, set at launch from the config.
            # The page's own status line says what a run is doing: Gradio's progress overlays and
            # their animations would take the cores the model runs on.
            runs_queue = dict(concurrency_limit="default", concurrency_id="runs", **NO_PROGRESS)
            run_button.click(self.run_generation, run_inputs, outputs, api_name="run", **runs_queue)
            prompt.submit(self.run_generation, run_inputs, outputs, api_name=False, **runs_queue)
            stop_button.click(stop_generation, [cancel], None, queue=False, api_name="stop")
            new_chat.click(lambda c: c.reset(), [conversation], None, queue=False, api_name="new_conversation")
            load_button.click(self.server.switch_model, [model], model_status, api_name="model",
                              concurrency_limit=1, concurrency_id="engine")
            replay_button.click(replay, [trace_state, speed], outputs, api_name="replay", **NO_PROGRESS)
            export_button.click(export, [trace_state], files, api_name="export")
            upload.upload(load_trace, [upload], outputs, api_name="load")
        return LiveTabParts(live_tab, engine_choice, model, model_status, status)

    def run_generation(self, prompt: str, max_new_tokens: float, temperature: float, top_p: float, seed: float,
                       kv_cache: bool, batch_size: float, cancel: CancelFlag, kernel: str = "fast",
                       chat: bool = False, forget: bool = False, conversation: Conversation | None = None,
                       remote: str = "", attention: bool = False, quiet: bool = False, speculate: str = "off",
                       draft_tokens: float = 4) -> Iterator[tuple]:
        """One run's updates (see _run_generation). On ZeroGPU the run happens in a GPU worker; its
        finished trace and the worker's start teach the next calls what to ask for."""
        called, first_update, final = time.perf_counter(), None, None
        # closing(): a closed tab closes this generator, and with it the run's, at once.
        updates = self._run_generation(prompt, max_new_tokens, temperature, top_p, seed, kv_cache, batch_size, cancel,
                                       kernel, chat, forget, conversation, remote, attention, quiet, speculate,
                                       draft_tokens)
        with contextlib.closing(updates):
            for update in updates:
                first_update = first_update or time.perf_counter() - called
                final = update[4] if isinstance(update[4], str) else final
                yield update
        if self.server.config.zero_gpu and final is not None:
            self.server.gpu_budget.observe(read_trace(final), first_update or 0.0)

    def _run_generation(self, prompt: str, max_new_tokens: float, temperature: float, top_p: float, seed: float,
                        kv_cache: bool, batch_size: float, cancel: CancelFlag, kernel: str = "fast",
                        chat: bool = False, forget: bool = False, conversation: Conversation | None = None,
                        remote: str = "", attention: bool = False, quiet: bool = False, speculate: str = "off",
                        draft_tokens: float = 4) -> Iterator[tuple]:
        """Stream one run: the engine works on its own thread; this loop draws at UPDATES_PER_S. With
        `chat`, the prompt continues the session's conversation, reusing its cache unless `forget`.
        With `remote` (one of the operator's endpoint names), the run goes to that serving engine.
        `quiet`: the text streams, the charts are drawn once, at the end."""
        if remote:
            yield from self._run_remote(remote, prompt, cancel, max_new_tokens, temperature, top_p, seed)
            return
        waited = time.perf_counter()
        while self.server.load_under_way:       # the page came up first: the model is still loading
            yield _only(status=summary.loading_run_status_html(self.server.loading, time.perf_counter() - waited))
            self.server.wait_for_load(1.0)
        engine = self._engine()
        engine.ensure_warm()
        conversation = conversation if chat else None
        received = time.perf_counter()
        settings, ids = _prompt_and_settings(engine, prompt, conversation, max_new_tokens, temperature, top_p, seed,
                                             kv_cache, batch_size, kernel, attention, speculate, draft_tokens,
                                             context=self.server.config.class_context)
        plan = self._plan(engine, ids, settings, prompt, conversation, forget)
        tokenized = time.perf_counter()
        cancel.clear()
        seq = itertools.count()
        background = self._start(engine, plan, cancel)
        try:
            yield from _stream(background, engine, seq, ((tokenized - received) * 1e3, tokenized), bool(quiet),
                               engine.trace_of(ids, settings, [], None, prompt))
        finally:
            background.stop()          # Stop, a closed tab or an error: the engine is free again
        trace = background.trace()
        if conversation is not None and trace.steps and background.error is None:
            conversation.add(prompt, trace, background.run.cached_prefix, keep_cache=not forget)
        note = conversation.summary() if conversation is not None and trace.steps else ""
        if quiet:
            note += " (a quiet run: the charts were drawn once it had ended, the text live)"
        yield from _finish(background, trace, seq, note, _token_text(engine))

    def _engine(self) -> Engine:
        try:
            return self.server.get_engine()
        except ValueError as exc:
            raise gr.Error(f"The model could not be loaded: {exc}", print_exception=False) from None

    def _run_remote(self, name: str, prompt: str, cancel: CancelFlag, *form: Any) -> Iterator[tuple]:
        """A run on one of the operator's remote engines: its stream drawn as it arrives, measured here;
        what the engine says of itself shown beside it. Settings that only the embedded engine has (KV
        cache off, batch copies, the kernel, conversations) do not apply."""
        try:
            endpoint = self.server.config.remote(name)
            settings = GenerationSettings.from_form(*form, True, 1)
            check_prompt_text(prompt)
        except ValueError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        cancel.clear()
        seq = itertools.count()
        config = self.server.config
        run = RemoteRun(RemoteClient(endpoint), prompt, settings, cancel, max_seconds=config.max_run_seconds)
        sent, waiting_shown = 0, 0
        try:
            yield _outputs(live.full_message(run.trace(), next(seq), lazy=True), summary.remote_waiting_html(name, 0.0),
                           run.trace())
            for have in run.follow(1 / UPDATES_PER_S):
                if have > sent:
                    partial = run.trace()
                    status = summary.decode_status_html(sum(s.tokens_out for s in partial.steps), run.elapsed)
                    # From outside, the server's share of the first token's time is one wait.
                    parts = {"network, the engine's queue and its prefill": partial.steps[0].ms} if sent == 0 else None
                    yield _outputs(live.extend_message(partial, sent, next(seq), parts), status, partial)
                    sent = len(partial.steps)
                elif not run.steps and int(run.elapsed * 2) != waiting_shown:     # the wait, twice a second
                    waiting_shown = int(run.elapsed * 2)
                    yield _only(status=summary.remote_waiting_html(name, run.elapsed))
        finally:
            run.stop()
        yield from _finish(run, run.trace(), seq)

    def _plan(self, engine: Engine, ids: list[int], settings: GenerationSettings, prompt: str,
              conversation: Conversation | None, forget: bool) -> Plan:
        """The run's plan (inference/serving/door.py): into the shared batch where it can, else alone, and why."""
        reuse = conversation.prefix if conversation is not None and not forget else None
        try:
            return prepare(engine, ids, settings, prompt, alone=self.server.config.why_alone,
                           turn=conversation is not None, reuse=reuse)
        except ValueError as exc:
            hint = "; press New conversation" if conversation is not None and conversation.messages else ""
            raise gr.Error(f"{exc}{hint}", print_exception=False) from None

    def _start(self, engine: Engine, plan: Plan, cancel: CancelFlag) -> WatchedRun:
        try:
            return self.server.start(engine, plan, cancel)
        except ValueError as exc:
            raise gr.Error(str(exc), print_exception=False) from None


def _outputs(message: str, status: str, trace: Trace, state: Any = gr.skip(),
             token_text: Callable[[list[int]], str] | None = None) -> tuple:
    """One update of the tab's outputs: dashboard message, status, headline, text, trace state.
    `token_text` (token ids -> text) colours a speculative run's drafts in the headline."""
    return message, status, summary.headline_html(trace, token_text), trace.text, state


def _token_text(engine: Engine) -> Callable[[list[int]], str]:
    tokenizer = engine.loaded.tokenizer
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


def _only(message: Any = gr.skip(), status: Any = gr.skip(), text: Any = gr.skip()) -> tuple:
    """An update of the dashboard message, the status line and/or the text, the other outputs left
    as they are."""
    return message, status, gr.skip(), text, gr.skip()


def _finish(background: WatchedRun, trace: Trace, seq: Iterator[int], note: str = "",
            token_text: Callable[[list[int]], str] | None = None) -> Iterator[tuple]:
    """The run's last update: the whole trace redrawn, and why it ended (or what went wrong)."""
    if background.error is not None:
        error = background.error
        message = str(error) if isinstance(error, RemoteError) else f"The run failed: {type(error).__name__}: {error}"
        yield _outputs(live.full_message(trace, next(seq)), summary.error_html(message), trace,
                       trace.to_json() if trace.steps else gr.skip(), token_text)
        raise gr.Error(message, print_exception=False)
    limit = f" at the {background.max_seconds:g} s limit per run" if background.timed_out else ""
    yield _outputs(live.full_message(trace, next(seq)), summary.done_status_html(trace, limit + note), trace,
                   trace.to_json() if trace.steps else gr.skip(), token_text)


def _prompt_and_settings(engine: Engine, prompt: str, conversation: Conversation | None, *form: Any,
                         context: str = "") -> tuple[GenerationSettings, list[int]]:
    """The run's settings and prompt ids (the whole conversation in chat mode; else the question
    after the class's `context`, if any), or a gr.Error."""
    from inference.prompts import chat_prompt_ids

    try:
        settings = GenerationSettings.from_form(*form)
        tokenizer = engine.loaded.tokenizer
        ids = conversation.prompt_ids(tokenizer, prompt) if conversation is not None else chat_prompt_ids(tokenizer,
                                                                                                          prompt, context)
    except ValueError as exc:
        raise gr.Error(str(exc), print_exception=False) from None
    return settings, ids


def _stream(background: WatchedRun, engine: Engine, seq: Iterator[int], tokenizing: tuple[float, float],
            quiet: bool, empty: Trace) -> Iterator[tuple]:
    """Live updates while the run goes on; `tokenizing` = (ms the chat template and tokenizer took,
    perf_counter when they were done), for the first token's time breakdown; `empty`: the run's
    trace before its first step. `quiet`: the status and the text only, no chart (the browser draws
    nothing while the model runs).

    The browser shares the cores, and handling an update costs it tens of ms: so nothing is sent in
    a prefill's first 1/PREFILL_UPDATES_PER_S s (a student's short question is prefilled by then,
    undisturbed; measured on 2 cores: a 67 ms prefill took 170 ms when the page's first update came
    at its start). A longer prefill then gets its empty charts and its growing block; otherwise the
    first token's update redraws the charts whole."""
    server = batch_server(engine)
    sent, waiting_shown, prefill_shown, drawn = 0, None, None, False
    # At most UPDATES_PER_S a run (CROWDED_UPDATES_PER_S while it waits for a core), and the
    # server's updates shared out between the runs it serves.
    frame = lambda: max(1 / (CROWDED_UPDATES_PER_S if crowded(background.steps) else UPDATES_PER_S),
                        min(1.0, len(server.active) / SERVER_UPDATES_PER_S))
    for have in background.follow(frame):
        elapsed = background.elapsed
        if have == 0 and background.prefill_start is None:
            # Waiting for the engine: a new status only when the position or the second changes (a
            # class of waiting runs must not take the cores from the runs being served).
            shown = (background.queue_position, int(elapsed))
            if shown != waiting_shown:
                waiting_shown = shown
                yield _only(status=summary.waiting_status_html(shown[0], elapsed))
            continue
        if have == 0:                          # prefill running: its block grows on the timeline
            now = time.perf_counter()
            if now - (prefill_shown or background.prefill_start) < 1 / PREFILL_UPDATES_PER_S:
                continue
            prefill_shown = now
            done, layers = background.layers_done, engine.loaded.info.layers
            status = summary.prefill_status_html(len(background.prompt_ids), done, layers, elapsed)
            if quiet:
                yield _only(status=status)
            elif not drawn:
                drawn = True
                yield _outputs(live.full_message(empty, next(seq), lazy=True), status, empty)
            else:
                yield _only(live.prefill_message(elapsed * 1e3, done, layers, next(seq)), status)
            continue
        if have > sent:
            partial = background.trace()              # every step so far (the engine may have added one since)
            status = summary.decode_status_html(sum(s.tokens_out for s in partial.steps), elapsed, partial.steps[-1],
                                                partial.settings.batch_size)
            if quiet:
                yield _only(status=status, text=partial.text)
            else:
                parts = _ttft_parts(background, partial, tokenizing) if sent == 0 else None
                message = (live.extend_message(partial, sent, next(seq), parts) if drawn else
                           live.full_message(partial, next(seq), ttft_parts=parts))
                drawn = True
                yield _outputs(message, status, partial, token_text=_token_text(engine))
            sent = len(partial.steps)


def crowded(steps: list[Step], recent: int = 8) -> bool:
    """Whether the newest decode steps waited for a core for WAIT_WORTH_SAYING of their time or more."""
    return cpu_wait_share([s for s in steps[-recent:] if s.phase == "decode"]) >= WAIT_WORTH_SAYING


def _ttft_parts(background: WatchedRun, trace: Trace, tokenizing: tuple[float, float]) -> dict:
    """The server's share of the time to first token, measured: template and tokenizing, waiting
    for the engine (other runs), prefill with the first sample, and the rest until this update."""
    tokenize_ms, tokenized = tokenizing
    started = background.prefill_start or tokenized
    prefill_ms = trace.steps[0].ms
    cached = (f" ({trace.reused_tokens} of {trace.prompt_tokens} prompt tokens from "
              f"{'shared blocks' if trace.serving == 'batched' else 'the cache'})" if trace.reused_tokens else "")
    return {"template and tokenizing": tokenize_ms, "waiting for the engine": max(0.0, (started - tokenized) * 1e3),
            f"prefill and first sample{cached}": prefill_ms,
            "detokenizing and the next live update": max(0.0, (time.perf_counter() - started) * 1e3 - prefill_ms)}


def stop_generation(cancel: CancelFlag) -> None:
    cancel.set()


def replay(trace_json: str | None, speed: float) -> Iterator[tuple]:
    """Animate a recorded trace again at `speed` x its real pace (0.1 = ten times slower)."""
    if not trace_json:
        raise gr.Error("Nothing to replay yet: run a prompt or load a trace first.", print_exception=False)
    trace = read_trace(trace_json)
    speed = min(1.0, max(0.1, float(speed)))
    seq = itertools.count()
    run = ReplayRun(trace, speed)
    sent = 0
    try:
        yield _outputs(live.full_message(trace.prefix(0), next(seq), lazy=True), summary.decode_status_html(0, 0.0),
                       trace.prefix(0))
        for have in run.follow(1 / UPDATES_PER_S):
            if have > sent:
                partial = run.trace()
                yield _outputs(live.extend_message(partial, sent, next(seq)),
                               summary.decode_status_html(have, run.elapsed * speed), partial)
                sent = have
    finally:
        run.stop()
    yield _outputs(live.full_message(trace, next(seq)), summary.done_status_html(trace, f" (replayed at {speed:g}x)"),
                   trace)


def export(trace_json: str | None) -> list[str]:
    if not trace_json:
        raise gr.Error("Nothing to export yet: run a prompt first.", print_exception=False)
    trace = read_trace(trace_json)
    folder = Path(tempfile.mkdtemp(prefix="phasescope-"))
    (folder / "phasescope-trace.json").write_text(trace.to_json(indent=1))
    (folder / "phasescope-steps.csv").write_text(steps_csv(trace))
    (folder / "phasescope-perfetto.json").write_text(to_chrome_trace_json(trace))       # opens in ui.perfetto.dev
    names = ("phasescope-trace.json", "phasescope-steps.csv", "phasescope-perfetto.json")
    return [str(folder / name) for name in names]


def load_trace(path: str | None) -> tuple:
    if not path:
        return _only()
    try:
        size = os.path.getsize(path)
        if size > MAX_TRACE_UPLOAD_BYTES:
            raise ValueError(f"the file is {size / 1e6:.1f} MB; traces up to {MAX_TRACE_UPLOAD_BYTES / 1e6:.0f} MB "
                             f"load")
        with open(path, encoding="utf-8") as handle:
            trace = read_trace(handle.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise gr.Error(f"Could not load that trace: {exc}", print_exception=False) from None
    return _outputs(live.full_message(trace, int(time.time() * 1000)),
                    summary.done_status_html(trace, f" (loaded from {Path(path).name})"), trace, trace.to_json())
