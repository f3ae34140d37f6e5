"""PhaseScope's page: wires the Gradio UI to inference/ (the engine) and viz/ (figures, messages).

`python app.py` loads the model (with progress in the terminal) and serves the page. Nothing
heavy happens at import: the engine loads at launch, or on the first run when imported.
"""
from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import gradio as gr
import plotly

from inference.background import ENGINE_THREAD, BackgroundRun
from inference.engine import Engine, load_engine
from inference.loading import DEFAULT_MODEL
from inference.settings import GenerationSettings
from inference.trace import Trace, steps_csv
from viz import live, summary
from viz.dashboard import DASHBOARD_CSS, dashboard_js, dashboard_template

UPDATES_PER_S = 15                 # live redraws per second: smooth, and cheap next to a decode step
MAX_RUN_SECONDS = float(os.environ.get("PHASESCOPE_MAX_RUN_SECONDS", "120"))   # one user cannot hold the model
MAX_TRACE_UPLOAD_BYTES = 20 * 1024 * 1024
DEFAULT_PROMPT = "Explain in three sentences why the sky is blue."
PLOTLY_JS = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
CSS = (Path(__file__).resolve().parent / "assets" / "style.css").read_text()

try:                                # on a Hugging Face ZeroGPU Space, runs borrow a GPU
    import spaces
    gpu = spaces.GPU
except ImportError:
    def gpu(fn: Any) -> Any:
        return fn

gr.set_static_paths([PLOTLY_JS])    # plotly.js from the installed package: the page works offline

class CancelFlag(threading.Event):
    """One per browser session (a gr.State): Stop sets it, the session's run polls it. Gradio
    deep-copies state values; a copy would be a different flag, so copying returns itself."""

    def __deepcopy__(self, memo: dict) -> CancelFlag:
        return self


_engine: Engine | None = None
_engine_lock = threading.Lock()
_engine_options = {"model": os.environ.get("PHASESCOPE_MODEL", DEFAULT_MODEL),
                   "device": os.environ.get("PHASESCOPE_DEVICE", "auto"),
                   "dtype": os.environ.get("PHASESCOPE_DTYPE", "auto")}


def get_engine(progress: Any = print) -> Engine:
    """The one shared, read-only engine, loaded on first use."""
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = load_engine(_engine_options["model"], _engine_options["device"], _engine_options["dtype"],
                                  progress)
        return _engine


def settings_from_inputs(max_new_tokens: Any, temperature: Any, top_p: Any, seed: Any, kv_cache: Any,
                         batch_size: Any) -> GenerationSettings:
    """Page (or API) inputs -> settings; ValueError with a readable message for anything off."""
    def number(name: str, value: Any, kind: type) -> Any:
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
        if kind is int:
            if not as_float.is_integer():
                raise ValueError(f"{name} must be a whole number, got {value!r}")
            return int(as_float)
        return as_float

    if not isinstance(kv_cache, bool):
        raise ValueError(f"kv_cache must be true or false, got {kv_cache!r}")
    return GenerationSettings(max_new_tokens=number("max_new_tokens", max_new_tokens, int),
                              temperature=number("temperature", temperature, float),
                              top_p=number("top_p", top_p, float), seed=number("seed", seed, int),
                              kv_cache=kv_cache, batch_size=number("batch_size", batch_size, int))


def _outputs(message: str, status: str, trace: Trace, state: Any = gr.skip()) -> tuple:
    return message, status, summary.headline_html(trace), trace.text, state


@gpu
def run_generation(prompt: str, max_new_tokens: float, temperature: float, top_p: float, seed: float,
                   kv_cache: bool, batch_size: float, cancel: threading.Event) -> Iterator[tuple]:
    """Stream one run: the engine works on its own thread; this loop draws at UPDATES_PER_S."""
    from inference.prompts import chat_prompt_ids

    engine = get_engine()
    try:
        settings = settings_from_inputs(max_new_tokens, temperature, top_p, seed, kv_cache, batch_size)
        run = engine.generate(chat_prompt_ids(engine.loaded.tokenizer, prompt), settings, cancel=cancel,
                              prompt=prompt)
    except ValueError as exc:
        raise gr.Error(str(exc), print_exception=False) from None
    cancel.clear()
    seq = itertools.count()
    # Draw the empty charts before the engine starts, so that work never competes with prefill.
    yield _outputs(live.full_message(run.trace(), next(seq)),
                   summary.prefill_status_html(len(run.prompt_ids), 0, engine.loaded.info.layers, 0.0), run.trace())
    background = BackgroundRun(run)
    try:
        yield from _stream(background, engine, seq)
    finally:
        background.stop()          # Stop, a closed tab or an error: the engine is free again
    trace = background.trace()
    if background.error is not None:
        message = f"The run failed: {type(background.error).__name__}: {background.error}"
        yield _outputs(live.full_message(trace, next(seq)), summary.error_html(message), trace, trace.to_json())
        raise gr.Error(message, print_exception=False)
    note = f" at the {MAX_RUN_SECONDS:g} s limit per run" if background.timed_out else ""
    yield _outputs(live.full_message(trace, next(seq)), summary.done_status_html(trace, note), trace,
                   trace.to_json() if trace.steps else gr.skip())


def _stream(background: BackgroundRun, engine: Engine, seq: Iterator[int]) -> Iterator[tuple]:
    run = background.run
    sent, shown_layers = 0, -1
    while not background.done:
        frame_end = time.perf_counter() + 1 / UPDATES_PER_S
        background.wait_for_steps(sent, 1 / UPDATES_PER_S)
        time.sleep(max(0.0, frame_end - time.perf_counter()))
        have = len(background.steps)
        elapsed = time.perf_counter() - background.started
        if elapsed > MAX_RUN_SECONDS and not run.cancel.is_set():
            background.timed_out = True
            run.cancel.set()
        if have == 0:
            if background.layers_done != shown_layers:
                shown_layers = background.layers_done
                yield (gr.skip(), summary.prefill_status_html(len(run.prompt_ids), shown_layers,
                                                              engine.loaded.info.layers, elapsed),
                       gr.skip(), gr.skip(), gr.skip())
            continue
        if have > sent:
            partial = run.trace().prefix(have)
            yield _outputs(live.extend_message(partial, sent, next(seq)),
                           summary.decode_status_html(have, elapsed), partial)
            sent = have


def stop_generation(cancel: threading.Event) -> None:
    cancel.set()


def replay(trace_json: str | None, speed: float) -> Iterator[tuple]:
    """Animate a recorded trace again at `speed` x its real pace (0.1 = ten times slower)."""
    if not trace_json:
        raise gr.Error("Nothing to replay yet: run a prompt or load a trace first.", print_exception=False)
    trace = Trace.from_json(trace_json)
    speed = min(1.0, max(0.1, float(speed)))
    seq = itertools.count()
    ends = list(itertools.accumulate(s.ms for s in trace.steps))
    yield _outputs(live.full_message(trace.prefix(0), next(seq)), summary.decode_status_html(0, 0.0), trace.prefix(0))
    start, sent = time.perf_counter(), 0
    while sent < len(trace.steps):
        time.sleep(1 / UPDATES_PER_S)
        now_ms = (time.perf_counter() - start) * 1e3 * speed
        have = sum(1 for end in ends if end <= now_ms)
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
    return [str(folder / "phasescope-trace.json"), str(folder / "phasescope-steps.csv")]


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


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="PhaseScope: prefill and decode, live") as demo:
        gr.HTML('<div class="ps-header"><h1>PhaseScope</h1><p>Watch a real language model answer: first '
                '<b style="color:#e8710a">prefill</b> reads your whole prompt at once (the pause), then '
                '<b style="color:#1a73e8">decode</b> writes one token per step, reading every weight again.</p></div>')
        cancel = gr.State(CancelFlag)
        trace_state = gr.State(None)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300):
                prompt = gr.Textbox(label="Prompt", value=DEFAULT_PROMPT, lines=3, max_lines=8)
                with gr.Row():
                    run_button = gr.Button("Run", variant="primary", elem_id="ps-run")
                    stop_button = gr.Button("Stop", variant="stop", elem_id="ps-stop")
                status = gr.HTML(elem_id="ps-status")
                text = gr.Textbox(label="Generated text", lines=6, max_lines=14, interactive=False,
                                  elem_id="ps-text")
                headline = gr.HTML(elem_id="ps-headline")
                with gr.Accordion("Settings", open=False, elem_id="ps-settings"):
                    max_new_tokens = gr.Slider(1, 512, value=64, step=1, label="Max new tokens", elem_id="ps-max-new")
                    temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature (0 = greedy)")
                    top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p")
                    seed = gr.Number(0, precision=0, label="Seed", minimum=0)
                    kv_cache = gr.Checkbox(True, label="KV cache (off: recompute the whole sequence each step)")
                    batch_size = gr.Slider(1, 16, value=1, step=1, label="Batch size (copies of the prompt)")
                with gr.Accordion("Replay, export, load", open=False, elem_id="ps-replay-box"):
                    speed = gr.Slider(0.1, 1.0, value=0.5, step=0.1, label="Replay speed (x real time)", elem_id="ps-speed")
                    replay_button = gr.Button("Replay", elem_id="ps-replay")
                    export_button = gr.Button("Export JSON + CSV")
                    files = gr.File(label="Exported files", file_count="multiple", interactive=False)
                    upload = gr.File(label="Load a trace (JSON)", file_types=[".json"], type="filepath")
            with gr.Column(scale=3):
                dashboard = gr.HTML(value="", html_template=dashboard_template(), css_template=DASHBOARD_CSS,
                                    js_on_load=dashboard_js(), elem_id="ps-dashboard",
                                    head=f'<script src="/gradio_api/file={PLOTLY_JS}"></script>')
        outputs = [dashboard, status, headline, text, trace_state]
        run_button.click(run_generation, [prompt, max_new_tokens, temperature, top_p, seed, kv_cache,
                                                 batch_size, cancel], outputs, api_name="run",
                           concurrency_limit=1, concurrency_id="engine")
        prompt.submit(run_generation, [prompt, max_new_tokens, temperature, top_p, seed, kv_cache, batch_size,
                                       cancel], outputs, api_name=False, concurrency_limit=1,
                      concurrency_id="engine")
        stop_button.click(stop_generation, [cancel], None, queue=False, api_name="stop")
        replay_button.click(replay, [trace_state, speed], outputs, api_name="replay")
        export_button.click(export, [trace_state], files, api_name="export")
        upload.upload(load_trace, [upload], outputs, api_name="load")
    return demo


demo = build_demo()


def launch(**kwargs: Any) -> Any:
    """Serve the page (theme and CSS go to launch() in Gradio 6)."""
    demo.queue(max_size=int(os.environ.get("PHASESCOPE_QUEUE_SIZE", "64")))
    return demo.launch(css=CSS, theme=gr.themes.Soft(), **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the PhaseScope page.")
    parser.add_argument("--model", default=_engine_options["model"])
    parser.add_argument("--device", default=_engine_options["device"], choices=("auto", "cpu", "cuda"))
    parser.add_argument("--dtype", default=_engine_options["dtype"], choices=("auto", "float32", "bfloat16"))
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    args = parser.parse_args()
    _engine_options.update(model=args.model, device=args.device, dtype=args.dtype)
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
