"""PhaseScope's page: wires the Gradio UI to inference/ (the engine) and viz/ (figures, messages).

`python app.py` loads the model (with progress in the terminal) and serves the page. Nothing
heavy happens at import: the engine loads at launch, or on the first run when imported. What the
server offers (model, device, dtype, the models a visitor may load) is one ServerConfig, read from
the environment and overridden by the flags.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")     # a classroom page calls no one home

import gradio as gr
import plotly

from inference import experiments
from inference.background import ENGINE_THREAD, BackgroundRun, CancelFlag, WatchedRun
from inference.batching import batch_server
from inference.conversation import Conversation
from inference.engine import Engine, load_engine
from inference.gpu_budget import GpuBudget
from inference.perfetto import to_chrome_trace_json
from inference.prompts import DEFAULT_PROMPT, check_prompt_text
from inference.remote import RemoteClient, RemoteError, RemoteRun, parse_remotes
from inference.server_config import ServerConfig
from inference.settings import GenerationSettings
from inference.trace import Trace, steps_csv
from inference.verdicts import roofline_verdict
from inference.whatif import GPUS, PRESETS, Efficiency, device_as_gpu, estimate, measured_efficiency
from viz import experiments as viz_experiments
from viz import classroom, live, summary
from viz.claims import claims_html
from viz.dashboard import DASHBOARD_CSS, dashboard_js, dashboard_template, header_html, phase_colour_css
from viz.figures import roofline_figure

RUNS_AT_ONCE = 32                  # the fused kernel's rows per step (gemv.cpp kMaxRows): one class's batch
UPDATES_PER_S = 15                 # live redraws per second: smooth, and cheap next to a decode step
# ... for one run. Each update costs the server a few ms of Python (the partial trace, the chart
# deltas): with a whole class streaming at once that would take the cores the shared batch needs,
# so the server's updates are shared out, each run getting at least one a second.
SERVER_UPDATES_PER_S = 20
MAX_TRACE_UPLOAD_BYTES = 20 * 1024 * 1024
THIS_MACHINE = "this machine (measured roofs)"
PLOTLY_JS = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
CSS = phase_colour_css() + (Path(__file__).resolve().parent / "assets" / "style.css").read_text()

try:                                # a Hugging Face Space's image carries `spaces`
    import spaces
except ImportError:
    spaces = None

gr.set_static_paths([PLOTLY_JS])    # plotly.js from the installed package: the page works offline


_config = ServerConfig.from_env()    # replaced whole, by main()'s flags and by a model switch
_engine: Engine | None = None
_engine_lock = threading.Lock()
_gpu_budget = GpuBudget()          # what a ZeroGPU run asks for, learnt from the runs seen


def gpu(fn: Any = None, *, duration: Any = None) -> Any:
    """On a ZeroGPU Space, `fn` runs in a forked worker that holds a GPU for `duration(*args)`
    seconds (by default the run limit); its arguments and what it yields are pickled. Elsewhere
    `fn` as it is."""
    if fn is None:
        return lambda f: gpu(f, duration=duration)
    if spaces is None:
        return fn
    return spaces.GPU(duration=duration or (lambda *args, **kwargs: _config.max_run_seconds))(fn)


def run_seconds(prompt: str, max_new_tokens: float, *args: Any, **kwargs: Any) -> int:
    """A run's ZeroGPU duration: its worker's start, its prefill and its decode at the costs
    measured so far (inference/gpu_budget.py), so that a visitor's daily quota holds several runs."""
    from inference.prompts import chat_prompt_ids

    try:
        tokens = len(chat_prompt_ids(get_engine().loaded.tokenizer, str(prompt)))
    except (ValueError, TypeError):
        tokens = len(str(prompt))                  # at most one token a character
    try:
        new_tokens = int(max_new_tokens)
    except (ValueError, TypeError):
        new_tokens = 512
    return _gpu_budget.seconds_for(tokens, new_tokens, _config.max_run_seconds)


def switch_model(name: str) -> str:
    """Load `name` for everyone (there is one shared model); on any failure keep the current one."""
    global _config, _engine
    name = (name or "").strip()
    if not name:
        raise gr.Error("Choose a model.", print_exception=False)
    if not _config.may_load(name):
        raise gr.Error(f"{name!r} is not one of this server's models: {', '.join(_config.allowed_models)}",
                       print_exception=False)
    current = get_engine()
    if name == current.loaded.info.name:
        return engine_status()
    if _config.zero_gpu:
        raise gr.Error("A ZeroGPU Space serves the one model it started with (its GPU workers keep it): duplicate "
                       "the Space with PHASESCOPE_MODEL set to run another.", print_exception=False)
    try:
        engine = ENGINE_THREAD.call(lambda: load_engine(name, _config.device, _config.dtype))
    except ValueError as exc:
        raise gr.Error(f"{exc}. Still using {current.loaded.info.name}.", print_exception=False) from None
    with _engine_lock:
        _engine = engine
        _config = _config.replace(model=name)
    return engine_status()


def engine_status() -> str:
    engine = get_engine()
    return summary.model_status_html(engine.loaded.info, engine.device_info, engine.kernel_note)


def page_opened() -> tuple:
    """The model list, status and engines as this server is now (flags and switches happen after the
    page is built)."""
    return (gr.Dropdown(choices=_config.allowed_models, value=_config.model, allow_custom_value=_config.allow_any_model),
            engine_status(), gr.Dropdown(choices=engine_choices(), value="", visible=bool(_config.remotes)))


def engine_choices() -> list[tuple[str, str]]:
    """Where a run may go: the embedded engine, or one of the operator's remote engines by name."""
    return [("this machine (the embedded engine, instrumented per layer)", "")] + [
        (f"remote: {e.name} (measured from outside, and what it reports)", e.name) for e in _config.remotes]


def get_engine(progress: Any = print) -> Engine:
    """The one shared, read-only engine, loaded on first use."""
    global _engine
    with _engine_lock:
        if _engine is None:
            # On ZeroGPU the main process must not run the model: each worker warms its own copy.
            _engine = load_engine(_config.model, _config.device, _config.dtype, progress, warm_up=not _config.zero_gpu)
        return _engine


def _outputs(message: str, status: str, trace: Trace, state: Any = gr.skip()) -> tuple:
    return message, status, summary.headline_html(trace), trace.text, state


def run_generation(prompt: str, max_new_tokens: float, temperature: float, top_p: float, seed: float,
                   kv_cache: bool, batch_size: float, cancel: CancelFlag, kernel: str = "fast",
                   chat: bool = False, forget: bool = False, conversation: Conversation | None = None,
                   remote: str = "", attention: bool = False) -> Iterator[tuple]:
    """One run's updates (see _run_generation). On ZeroGPU the run happens in a GPU worker; its
    finished trace and the worker's start teach the next calls what to ask for."""
    called, first_update, final = time.perf_counter(), None, None
    # closing(): a closed tab closes this generator, and with it the run's, at once.
    with contextlib.closing(_run_generation(prompt, max_new_tokens, temperature, top_p, seed, kv_cache, batch_size,
                                            cancel, kernel, chat, forget, conversation, remote, attention)) as updates:
        for update in updates:
            first_update = first_update or time.perf_counter() - called
            final = update[4] if isinstance(update[4], str) else final
            yield update
    if _config.zero_gpu and final is not None:
        _gpu_budget.observe(Trace.from_json(final), first_update or 0.0)


@gpu(duration=run_seconds)
def _run_generation(prompt: str, max_new_tokens: float, temperature: float, top_p: float, seed: float,
                    kv_cache: bool, batch_size: float, cancel: CancelFlag, kernel: str = "fast",
                    chat: bool = False, forget: bool = False, conversation: Conversation | None = None,
                    remote: str = "", attention: bool = False) -> Iterator[tuple]:
    """Stream one run: the engine works on its own thread; this loop draws at UPDATES_PER_S. With
    `chat`, the prompt continues the session's conversation, reusing its cache unless `forget`.
    With `remote` (one of the operator's endpoint names), the run goes to that serving engine."""
    if remote:
        yield from _run_remote(remote, prompt, cancel, max_new_tokens, temperature, top_p, seed)
        return
    engine = get_engine()
    engine.ensure_warm()
    conversation = conversation if chat else None
    received = time.perf_counter()
    settings, ids = _prompt_and_settings(engine, prompt, conversation, max_new_tokens, temperature, top_p, seed,
                                         kv_cache, batch_size, kernel, attention)
    tokenized = time.perf_counter()
    cancel.clear()
    seq = itertools.count()
    # Draw the empty charts before the engine starts, so that work never competes with prefill.
    empty = engine.trace_of(ids, settings, [], None, prompt)
    yield _outputs(live.full_message(empty, next(seq)),
                   summary.prefill_status_html(len(ids), 0, engine.loaded.info.layers, 0.0), empty)
    background = _start(engine, ids, settings, cancel, prompt, conversation, forget)
    try:
        yield from _stream(background, engine, seq, ((tokenized - received) * 1e3, tokenized))
    finally:
        background.stop()          # Stop, a closed tab or an error: the engine is free again
    trace = background.trace()
    if conversation is not None and trace.steps and background.error is None:
        conversation.add(prompt, trace, background.run.cached_prefix, keep_cache=not forget)
    yield from _finish(background, trace, seq, conversation.summary() if conversation is not None and trace.steps else "")


def _finish(background: WatchedRun, trace: Trace, seq: Iterator[int], note: str = "") -> Iterator[tuple]:
    """The run's last update: the whole trace redrawn, and why it ended (or what went wrong)."""
    if background.error is not None:
        error = background.error
        message = str(error) if isinstance(error, RemoteError) else f"The run failed: {type(error).__name__}: {error}"
        yield _outputs(live.full_message(trace, next(seq)), summary.error_html(message), trace,
                       trace.to_json() if trace.steps else gr.skip())
        raise gr.Error(message, print_exception=False)
    limit = f" at the {background.max_seconds:g} s limit per run" if background.timed_out else ""
    yield _outputs(live.full_message(trace, next(seq)), summary.done_status_html(trace, limit + note), trace,
                   trace.to_json() if trace.steps else gr.skip())


def _run_remote(name: str, prompt: str, cancel: CancelFlag, *form: Any) -> Iterator[tuple]:
    """A run on one of the operator's remote engines: its stream drawn as it arrives, measured here;
    what the engine says of itself shown beside it. Settings that only the embedded engine has (KV
    cache off, batch copies, the kernel, conversations) do not apply."""
    try:
        endpoint = _config.remote(name)
        settings = GenerationSettings.from_form(*form, True, 1)
        check_prompt_text(prompt)
    except ValueError as exc:
        raise gr.Error(str(exc), print_exception=False) from None
    cancel.clear()
    seq = itertools.count()
    run = RemoteRun(RemoteClient(endpoint), prompt, settings, cancel, max_seconds=_config.max_run_seconds)
    sent, waiting_shown = 0, 0
    try:
        yield _outputs(live.full_message(run.trace(), next(seq)), summary.remote_waiting_html(name, 0.0), run.trace())
        while not run.done:
            run.wait_for_steps(sent, 1 / UPDATES_PER_S)
            if len(run.steps) > sent:
                partial = run.trace()
                status = summary.decode_status_html(sum(s.tokens_out for s in partial.steps), run.elapsed)
                # From outside, the server's share of the first token's time is one wait.
                parts = {"network, the engine's queue and its prefill": partial.steps[0].ms} if sent == 0 else None
                yield _outputs(live.extend_message(partial, sent, next(seq), parts), status, partial)
                sent = len(partial.steps)
            elif not run.steps and int(run.elapsed * 2) != waiting_shown:     # the wait, twice a second
                waiting_shown = int(run.elapsed * 2)
                yield gr.skip(), summary.remote_waiting_html(name, run.elapsed), gr.skip(), gr.skip(), gr.skip()
    finally:
        run.stop()
    yield from _finish(run, run.trace(), seq)


def _prompt_and_settings(engine: Engine, prompt: str, conversation: Conversation | None, *form: Any
                         ) -> tuple[GenerationSettings, list[int]]:
    """The run's settings and prompt ids (the whole conversation in chat mode), or a gr.Error."""
    from inference.prompts import chat_prompt_ids

    try:
        settings = GenerationSettings.from_form(*form)
        tokenizer = engine.loaded.tokenizer
        ids = conversation.prompt_ids(tokenizer, prompt) if conversation is not None else chat_prompt_ids(tokenizer,
                                                                                                          prompt)
        engine.check_fits(len(ids), settings.max_new_tokens)
    except ValueError as exc:
        hint = "; press New conversation" if conversation is not None and conversation.messages else ""
        raise gr.Error(f"{exc}{hint}", print_exception=False) from None
    return settings, ids


def _start(engine: Engine, ids: list[int], settings: GenerationSettings, cancel: CancelFlag, prompt: str,
           conversation: Conversation | None, forget: bool) -> WatchedRun:
    """Runs from every session decode together in one batch where they can (inference/batching.py);
    the others (no KV cache, the eager kernel, solo mode, a conversation's turn, which reuses its
    cache) run alone, one after another."""
    server = batch_server(engine)
    server.prefill_chunk = _config.prefill_chunk
    if conversation is None and not _config.solo and server.can_batch(settings):
        try:
            return server.submit(ids, settings, cancel, prompt, _config.max_run_seconds)
        except ValueError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
    reuse = conversation.prefix if conversation is not None and not forget else None
    return BackgroundRun(engine.generate(ids, settings, cancel=cancel, prompt=prompt, reuse=reuse),
                         max_seconds=_config.max_run_seconds)


def _stream(background: WatchedRun, engine: Engine, seq: Iterator[int],
            tokenizing: tuple[float, float]) -> Iterator[tuple]:
    """Live updates while the run goes on; `tokenizing` = (ms the chat template and tokenizer took,
    perf_counter when they were done), for the first token's time breakdown."""
    run, server = background.run, batch_server(engine)
    sent, waiting_shown = 0, None
    while not background.done:
        frame = max(1 / UPDATES_PER_S, min(1.0, len(server.active) / SERVER_UPDATES_PER_S))
        frame_end = time.perf_counter() + frame
        background.wait_for_steps(sent, frame)
        time.sleep(max(0.0, frame_end - time.perf_counter()))
        have, elapsed = len(background.steps), background.elapsed
        if have == 0 and background.prefill_start is None:
            # Waiting for the engine: a new status only when the position or the second changes (a
            # class of waiting runs must not take the cores from the runs being served).
            shown = (background.queue_position, int(elapsed))
            if shown != waiting_shown:
                waiting_shown = shown
                yield gr.skip(), summary.waiting_status_html(shown[0], elapsed), gr.skip(), gr.skip(), gr.skip()
            continue
        if have == 0:                          # prefill running: its block grows on the timeline
            done, layers = background.layers_done, engine.loaded.info.layers
            yield (live.prefill_message(elapsed * 1e3, done, layers, next(seq)),
                   summary.prefill_status_html(len(run.prompt_ids), done, layers, elapsed),
                   gr.skip(), gr.skip(), gr.skip())
            continue
        if have > sent:
            partial = run.trace()              # every step so far (the engine may have added one since)
            status = summary.decode_status_html(len(partial.steps), elapsed, partial.steps[-1],
                                                partial.settings.batch_size)
            parts = _ttft_parts(background, partial, tokenizing) if sent == 0 else None
            yield _outputs(live.extend_message(partial, sent, next(seq), parts), status, partial)
            sent = len(partial.steps)


def _ttft_parts(background: WatchedRun, trace: Trace, tokenizing: tuple[float, float]) -> dict:
    """The server's share of the time to first token, measured: template and tokenizing, waiting
    for the engine (other runs), prefill with the first sample, and the rest until this update."""
    tokenize_ms, tokenized = tokenizing
    started = background.prefill_start or tokenized
    prefill_ms = trace.steps[0].ms
    return {"template and tokenizing": tokenize_ms, "waiting for the engine": max(0.0, (started - tokenized) * 1e3),
            "prefill and first sample": prefill_ms,
            "detokenizing and the next live update": max(0.0, (time.perf_counter() - started) * 1e3 - prefill_ms)}


def stop_generation(cancel: CancelFlag) -> None:
    cancel.set()


def replay(trace_json: str | None, speed: float) -> Iterator[tuple]:
    """Animate a recorded trace again at `speed` x its real pace (0.1 = ten times slower)."""
    if not trace_json:
        raise gr.Error("Nothing to replay yet: run a prompt or load a trace first.", print_exception=False)
    trace = Trace.from_json(trace_json)
    speed = min(1.0, max(0.1, float(speed)))
    seq = itertools.count()
    empty = trace.prefix(0)
    yield _outputs(live.full_message(empty, next(seq)), summary.decode_status_html(0, 0.0), empty)
    start, sent = time.perf_counter(), 0
    while sent < len(trace.steps):
        time.sleep(1 / UPDATES_PER_S)
        now_ms = (time.perf_counter() - start) * 1e3 * speed
        have = trace.steps_done_by(now_ms)
        if have > sent:
            partial = trace.prefix(have)
            yield _outputs(live.extend_message(partial, sent, next(seq)),
                           summary.decode_status_html(have, now_ms / 1e3), partial)
            sent = have
    yield _outputs(live.full_message(trace, next(seq)), summary.done_status_html(trace, f" (replayed at {speed:g}x)"),
                   trace)


def export(trace_json: str | None) -> list[str]:
    if not trace_json:
        raise gr.Error("Nothing to export yet: run a prompt first.", print_exception=False)
    trace = Trace.from_json(trace_json)
    folder = Path(tempfile.mkdtemp(prefix="phasescope-"))
    (folder / "phasescope-trace.json").write_text(trace.to_json(indent=1))
    (folder / "phasescope-steps.csv").write_text(steps_csv(trace))
    (folder / "phasescope-perfetto.json").write_text(to_chrome_trace_json(trace))       # opens in ui.perfetto.dev
    return [str(folder / name) for name in ("phasescope-trace.json", "phasescope-steps.csv", "phasescope-perfetto.json")]


def load_trace(path: str | None) -> tuple:
    if not path:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    try:
        size = os.path.getsize(path)
        if size > MAX_TRACE_UPLOAD_BYTES:
            raise ValueError(f"the file is {size / 1e6:.1f} MB; traces up to {MAX_TRACE_UPLOAD_BYTES / 1e6:.0f} MB load")
        with open(path, encoding="utf-8") as handle:
            trace = Trace.from_json(handle.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise gr.Error(f"Could not load that trace: {exc}", print_exception=False) from None
    return _outputs(live.full_message(trace, int(time.time() * 1000)),
                    summary.done_status_html(trace, f" (loaded from {Path(path).name})"), trace, trace.to_json())


def _experiment(claim: str, run: Any, figure: Any, claims: dict, progress: gr.Progress,
                on_engine_thread: bool = True) -> tuple:
    """Run one experiment (on the engine thread, unless it runs elsewhere); show its figure and
    verdict and tick its claim."""
    measure = lambda: run(lambda fraction, text: progress(fraction, desc=text))
    try:
        result = ENGINE_THREAD.call(measure) if on_engine_thread else measure()
    except (ValueError, RemoteError) as exc:
        raise gr.Error(str(exc), print_exception=False) from None
    verdict = result.verdict()
    claims = {**(claims or {}), claim: verdict}
    return figure(result), verdict, claims, claims_html(claims)


@gpu
def experiment_sweep(lengths: list, new_tokens: float, remote: str, claims: dict,
                     progress: gr.Progress = gr.Progress()) -> tuple:
    """The prompt-length sweep, on the embedded engine or on the remote engine the Live run tab picked."""
    lengths = sorted({int(n) for n in lengths or []})
    if len(lengths) < 2:
        raise gr.Error("Pick at least two prompt lengths to compare.", print_exception=False)
    engine = get_engine()
    if remote:
        try:
            client = RemoteClient(_config.remote(remote))
        except ValueError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return _experiment("sweep", lambda p: experiments.run_remote_sweep(client, engine.loaded.tokenizer, lengths,
                                                                           int(new_tokens), p),
                           viz_experiments.sweep_figure, claims, progress, on_engine_thread=False)
    return _experiment("sweep", lambda p: experiments.run_sweep(engine, lengths, int(new_tokens), p),
                       viz_experiments.sweep_figure, claims, progress)


@gpu
def experiment_race(prompt_tokens: float, new_tokens: float, claims: dict, progress: gr.Progress = gr.Progress()) -> tuple:
    engine = get_engine()
    return _experiment("race", lambda p: experiments.run_cache_race(engine, int(prompt_tokens), int(new_tokens), p),
                       viz_experiments.race_figure, claims, progress)


@gpu
def experiment_batch(sizes: list, claims: dict, progress: gr.Progress = gr.Progress()) -> tuple:
    sizes = sorted({int(b) for b in sizes or []})
    if len(sizes) < 2:
        raise gr.Error("Pick at least two batch sizes to compare.", print_exception=False)
    engine = get_engine()
    return _experiment("batch", lambda p: experiments.run_batch_sweep(engine, sizes, progress=p),
                       viz_experiments.batch_figure, claims, progress)


@gpu
def experiment_dtype(claims: dict, progress: gr.Progress = gr.Progress()) -> tuple:
    """4, 2, 1 and about 0.6 bytes per weight where the CPU decode kernel runs (int8 and q4_1 are its
    blocks), else float32 and bfloat16."""
    config, engine = _config, get_engine()
    blocks = engine.fast_kernels and engine.loaded.device.type == "cpu"
    dtypes = ["float32", "bfloat16", "int8", "q4_1"] if blocks else ["float32", "bfloat16"]
    return _experiment("dtype", lambda p: experiments.run_dtype_comparison(config.model, config.device, dtypes, progress=p),
        viz_experiments.dtype_figure, claims, progress)


@gpu
def experiment_chunks(long_prompt: float, chunk: float, streams: float, claims: dict,
                      progress: gr.Progress = gr.Progress()) -> tuple:
    engine = get_engine()
    return _experiment("chunks", lambda p: experiments.run_chunked_prefill(engine, int(long_prompt), int(chunk),
                                                                           int(streams), p),
                       viz_experiments.chunk_figure, claims, progress)


def explain_roofline(trace_json: str | None, claims: dict) -> tuple:
    if not trace_json:
        raise gr.Error("Run a prompt on the Live run tab first: this reads its measurements.", print_exception=False)
    trace = Trace.from_json(trace_json)
    verdict = roofline_verdict(trace)
    claims = {**(claims or {}), "roofline": verdict}
    return roofline_figure(trace), verdict, claims, claims_html(claims)


def what_if(models: list, gpus: list, prompt_tokens: float, context: float, batch: float, calibrate: bool,
            trace_json: str | None) -> str:
    efficiency = measured_efficiency(Trace.from_json(trace_json)) if calibrate and trace_json else Efficiency()
    chosen = [GPUS[g] for g in gpus or [] if g in GPUS]
    if THIS_MACHINE in (gpus or []):
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        chosen.append(device_as_gpu(THIS_MACHINE, get_engine().device_info, memory))
    try:
        rows = [estimate(PRESETS[m], g, int(prompt_tokens), int(context), int(batch), efficiency.prefill,
                         efficiency.decode) for m in models or [] if m in PRESETS for g in chosen]
    except (ValueError, ZeroDivisionError) as exc:
        raise gr.Error(f"Could not estimate: {exc}", print_exception=False) from None
    if not rows:
        raise gr.Error("Pick at least one model and one GPU.", print_exception=False)
    return viz_experiments.whatif_table_html(rows, efficiency.note)


def class_view() -> tuple:
    """The class view's figure and summary, now (the Class tab polls it while it is open)."""
    snapshot = batch_server(get_engine()).snapshot()
    return classroom.class_figure(snapshot), classroom.class_summary(snapshot)


def build_experiments_tab(trace_state: gr.State, claims: gr.State, engine_choice: gr.Dropdown) -> None:
    """One sub-tab per claim; each button measures on the model in front of the student (the
    prompt-length sweep also on the remote engine the Live run tab picked)."""
    panel = gr.HTML(claims_html({}), elem_id="ps-claims")
    engine_queue = dict(concurrency_limit=1, concurrency_id="engine")

    def measured_by(button: gr.Button, fn: Any, inputs: list, api_name: str, queued: bool = True) -> None:
        """The tab's result (its figure and verdict) under `button`, which runs `fn` and ticks its claim;
        `queued`: it runs the model, one experiment at a time."""
        plot, verdict = gr.Plot(show_label=False), gr.Markdown()
        button.click(fn, [*inputs, claims], [plot, verdict, claims, panel], api_name=api_name,
                     **(engine_queue if queued else {}))

    with gr.Tabs():
        with gr.Tab("1 · Prompt length"):
            gr.Markdown("Runs the model on prompts of several lengths (exact token counts, a fixed text) and plots "
                        "time to first token and decode time per token against prompt length. With a remote engine "
                        "picked on the Live run tab, the sweep runs there (measured from outside).")
            lengths = gr.CheckboxGroup([16, 64, 256, 512, 1024, 2048], value=[16, 256, 1024], label="prompt tokens")
            new_tokens = gr.Slider(2, 32, value=8, step=1, label="new tokens per run")
            button = gr.Button("Run the sweep", variant="primary")
            measured_by(button, experiment_sweep, [lengths, new_tokens, engine_choice], "sweep")
        with gr.Tab("2 · KV cache"):
            gr.Markdown("The same prompt twice: with the KV cache, and recomputing the whole sequence every step.")
            prompt_tokens = gr.Slider(16, 512, value=64, step=16, label="prompt tokens")
            race_tokens = gr.Slider(8, 96, value=48, step=8, label="new tokens")
            button = gr.Button("Race them", variant="primary")
            measured_by(button, experiment_race, [prompt_tokens, race_tokens], "race")
        with gr.Tab("3 · Batch size"):
            gr.Markdown("B copies of a 32-token prompt decode together: step time against throughput.")
            sizes = gr.CheckboxGroup([1, 2, 4, 8, 16], value=[1, 2, 4, 8, 16], label="batch sizes")
            button = gr.Button("Measure", variant="primary")
            measured_by(button, experiment_batch, [sizes], "batch")
        with gr.Tab("4 · Roofline"):
            gr.Markdown("Reads your last run on the Live run tab: where prefill and decode sit under this device's roofs.")
            button = gr.Button("Explain my last run", variant="primary")
            measured_by(button, explain_roofline, [trace_state], "roofline", queued=False)
        with gr.Tab("5 · Bytes per weight"):
            gr.Markdown("Loads the model again at 4 bytes per weight (float32), 2 (bfloat16), about 1 (int8: "
                        "llama.cpp's Q8_0 blocks) and about 0.6 (q4_1: the blocks the bundled file ships) and runs the "
                        "same 32-token prompt on each (short, so that weight bytes dominate decode). int8 and q4_1 "
                        "decode reads the blocks; their prefill runs the same values expanded to float32.")
            button = gr.Button("Compare the bytes per weight", variant="primary")
            measured_by(button, experiment_dtype, [], "dtype")
        with gr.Tab("6 · Chunked prefill"):
            gr.Markdown("A few runs stream together in the shared batch; then a long prompt joins. Its prefill runs "
                        "once whole (every stream stalls for the whole pause) and once in chunks between the batch's "
                        "decode steps (the streams stall a little, many times; the long prompt waits longer for its "
                        "first token). This sets the chunk for this experiment only; the server's own setting is "
                        "`--prefill-chunk`.")
            long_prompt = gr.Slider(256, 2048, value=1024, step=128, label="long prompt (tokens)")
            chunk_size = gr.Slider(32, 512, value=128, step=32, label="chunk (tokens)")
            streams = gr.Slider(1, 8, value=4, step=1, label="streaming runs")
            button = gr.Button("Let the long prompt in", variant="primary")
            measured_by(button, experiment_chunks, [long_prompt, chunk_size, streams], "chunks")
        with gr.Tab("7 · Big models"):
            gr.Markdown("What the same arithmetic predicts for large models on large GPUs: **estimates** from public "
                        "configs and datasheet peaks, not measurements.")
            models = gr.CheckboxGroup(list(PRESETS), value=["Llama-3.1-8B", "Llama-3.1-70B"], label="models")
            gpus = gr.CheckboxGroup([*GPUS, THIS_MACHINE], value=["H100 SXM", "L4"], label="devices")
            with gr.Row():
                whatif_prompt = gr.Number(1024, precision=0, minimum=1, label="prompt tokens")
                context = gr.Number(4096, precision=0, minimum=1, label="context for decode")
                whatif_batch = gr.Number(1, precision=0, minimum=1, maximum=1024, label="batch")
            calibrate = gr.Checkbox(False, label="scale by the efficiency measured in my last run")
            button = gr.Button("Estimate", variant="primary")
            table = gr.HTML()
            button.click(what_if, [models, gpus, whatif_prompt, context, whatif_batch, calibrate, trace_state], table,
                         api_name="whatif")


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="PhaseScope: prefill and decode, live") as demo:
        gr.HTML(header_html())
        cancel = gr.State(CancelFlag, delete_callback=lambda flag: flag.clear())
        conversation = gr.State(Conversation)
        trace_state = gr.State(None)
        claims = gr.State({})
        with gr.Tabs():
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
                        engine_choice = gr.Dropdown(engine_choices(), value="", label="Engine", elem_id="ps-engine",
                                                    allow_custom_value=True, visible=bool(_config.remotes))
                        status = gr.HTML(elem_id="ps-status")
                        text = gr.Textbox(label="Generated text", lines=6, max_lines=14, interactive=False,
                                          elem_id="ps-text")
                        headline = gr.HTML(elem_id="ps-headline")
                        with gr.Accordion("Settings", open=False, elem_id="ps-settings"):
                            with gr.Row():
                                model = gr.Dropdown(_config.allowed_models, value=_config.model, label="Model",
                                                    allow_custom_value=_config.allow_any_model, scale=3)
                                load_button = gr.Button("Load", scale=1, min_width=60)
                            model_status = gr.HTML(elem_id="ps-model-status")
                            max_new_tokens = gr.Slider(1, 512, value=64, step=1, label="Max new tokens", elem_id="ps-max-new")
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
                        with gr.Accordion("Replay, export, load", open=False, elem_id="ps-replay-box"):
                            speed = gr.Slider(0.1, 1.0, value=0.5, step=0.1, label="Replay speed (x real time)", elem_id="ps-speed")
                            replay_button = gr.Button("Replay", elem_id="ps-replay")
                            export_button = gr.Button("Export JSON + CSV + Perfetto")
                            files = gr.File(label="Exported files", file_count="multiple", interactive=False)
                            upload = gr.File(label="Load a trace (JSON)", file_types=[".json"], type="filepath")
                    with gr.Column(scale=3):
                        dashboard = gr.HTML(value="", html_template=dashboard_template(), css_template=DASHBOARD_CSS,
                                            js_on_load=dashboard_js(), elem_id="ps-dashboard",
                                            head=f'<script src="/gradio_api/file={PLOTLY_JS}"></script>')
            with gr.Tab("Experiments", id="experiments") as experiments_tab:
                build_experiments_tab(trace_state, claims, engine_choice)
            with gr.Tab("Class", id="class") as class_tab:
                gr.Markdown("Every run on this server right now, anonymous: waiting (grey), prefill (orange), "
                            "decode (blue). Runs that decode at the same time share each step: the weights are "
                            "read once for all of them, so the class together gets many more tokens per second "
                            "than one run alone. Ask everyone to press Run at once and watch the batch grow.")
                class_summary = gr.Markdown(elem_id="ps-class-summary")
                class_plot = gr.Plot(show_label=False, elem_id="ps-class")
                class_timer = gr.Timer(1.0, active=False)
        outputs = [dashboard, status, headline, text, trace_state]
        run_inputs = [prompt, max_new_tokens, temperature, top_p, seed, kv_cache, batch_size, cancel, kernel, chat, forget,
                      conversation, engine_choice, attention]
        # Up to a full batch of runs at once (they share decode steps, inference/batching.py), or one
        # at a time in solo mode: the limit is the queue's default, set at launch from the config.
        runs_queue = dict(concurrency_limit="default", concurrency_id="runs")
        run_button.click(run_generation, run_inputs, outputs, api_name="run", **runs_queue)
        prompt.submit(run_generation, run_inputs, outputs, api_name=False, **runs_queue)
        stop_button.click(stop_generation, [cancel], None, queue=False, api_name="stop")
        new_chat.click(lambda c: c.reset(), [conversation], None, queue=False, api_name="new_conversation")
        load_button.click(switch_model, [model], model_status, api_name="model", concurrency_limit=1,
                          concurrency_id="engine")
        replay_button.click(replay, [trace_state, speed], outputs, api_name="replay")
        export_button.click(export, [trace_state], files, api_name="export")
        upload.upload(load_trace, [upload], outputs, api_name="load")
        demo.load(page_opened, None, [model, model_status, engine_choice], api_name=False)
        # The class view polls only while its tab is open.
        class_timer.tick(class_view, None, [class_plot, class_summary], api_name="class", show_progress="hidden")
        class_tab.select(lambda: gr.Timer(active=True), None, class_timer, api_name=False)
        for tab in (live_tab, experiments_tab):
            tab.select(lambda: gr.Timer(active=False), None, class_timer, api_name=False)
    return demo


demo = build_demo()


def launch(**kwargs: Any) -> Any:
    """Serve the page (theme and CSS go to launch() in Gradio 6)."""
    demo.queue(max_size=_config.queue_size, default_concurrency_limit=1 if _config.solo else RUNS_AT_ONCE)
    return demo.launch(css=CSS, theme=gr.themes.Soft(), **kwargs)


def launch_on_free_port(host: str = "127.0.0.1") -> str:
    """Serve the page in this process on a free loopback port (tests, benchmarks); returns its URL."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True)
    return f"http://{host}:{port}/"


def main() -> None:
    global _config
    parser = argparse.ArgumentParser(description="Serve the PhaseScope page.")
    parser.add_argument("--model", default=_config.model)
    parser.add_argument("--device", default=_config.device, choices=("auto", "cpu", "cuda"))
    parser.add_argument("--dtype", default=_config.dtype, choices=("auto", "float32", "bfloat16", "int8", "q4_1"))
    parser.add_argument("--solo", action="store_true",
                        help="runs one at a time (clean single-run timings) instead of sharing decode steps")
    parser.add_argument("--prefill-chunk", type=int, default=_config.prefill_chunk, metavar="N",
                        help="prefill long prompts N tokens at a time between the batch's decode steps (0 = off)")
    parser.add_argument("--allow-any-model", action="store_true",
                        help="let the page load any hub id or folder (local use only; never on a public server)")
    parser.add_argument("--remote", action="append", default=[], metavar="NAME=URL",
                        help="a serving engine with an OpenAI-compatible API the page may send runs to (repeatable)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    args = parser.parse_args()
    try:
        remotes = _config.remotes + parse_remotes(",".join(args.remote))
    except ValueError as exc:
        parser.exit(2, f"app.py: error: {exc}\n")
    _config = _config.replace(remotes=remotes, model=args.model, device=args.device, dtype=args.dtype,
                              allow_any_model=_config.allow_any_model or args.allow_any_model,
                              solo=_config.solo or args.solo, prefill_chunk=max(0, args.prefill_chunk))
    try:
        get_engine(progress=lambda message: print(message, flush=True))
    except ValueError as exc:
        parser.exit(2, f"app.py: error: {exc}\n")
    launch(server_name=args.host, server_port=args.port, prevent_thread_lock=True)
    try:
        ENGINE_THREAD.serve_forever()      # runs execute on the main thread (see inference/background.py)
    except KeyboardInterrupt:
        demo.close()


if __name__ == "__main__":
    main()
