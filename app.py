"""PhaseScope's page: the layout and its wiring; the tabs' Gradio code is in page/, the engine in
inference/, the figures in viz/.

`python app.py` serves the page at once, then loads the model (with progress in the terminal and
on the page; runs wait for it). Nothing heavy happens at import: the engine loads at launch, or on
the first run when imported. What the
server offers (model, device, dtype, the models a visitor may load) is one ServerConfig, read from
the environment and overridden by the flags, held with the engine in one `Server` (page/state.py).
"""
from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")     # a classroom page calls no one home

import gradio as gr

from inference.conversation import Conversation
from inference.kernels.build import MAX_ROWS
from inference.remote import parse_remotes
from inference.serving.api import ApiService
from inference.serving.background import ENGINE_THREAD, CancelFlag
from inference.serving.server_config import ServerConfig
from inference.settings import DEVICES, DTYPES
from page import NO_PROGRESS
from page.classroom import ClassTab
from page.experiments import ExperimentsTab
from page.lesson import LessonTab
from page.live import PLOTLY_JS, LiveTab
from page.state import Server
from viz.dashboard import header_html, theme_css

RUNS_AT_ONCE = MAX_ROWS             # as many runs at once as a shared step holds rows: one class's batch
CSS = theme_css() + (Path(__file__).resolve().parent / "assets" / "style.css").read_text()

gr.set_static_paths([PLOTLY_JS])    # plotly.js from the installed package: the page works offline

server = Server(ServerConfig.from_env())
live = LiveTab(server)
lesson = LessonTab(server)
experiments = ExperimentsTab(server)
classroom = ClassTab(server)


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="PhaseScope: prefill and decode, live") as demo:
        gr.HTML(header_html())
        cancel = gr.State(CancelFlag, delete_callback=lambda flag: flag.clear())
        conversation = gr.State(Conversation)
        trace_state = gr.State(None)
        claims = gr.State({})
        with gr.Tabs():
            parts = live.build(cancel, conversation, trace_state)
            lesson_tab = lesson.build()
            experiments_tab = experiments.build(trace_state, claims, parts.engine_choice)
            classroom.build([parts.tab, lesson_tab, experiments_tab])
        loading = gr.Timer(1.0, active=False)              # the model box follows a load under way
        switching = gr.Timer(3.0, active=False)            # and then the kernel's build, where runs wait for it
        loading.tick(server.loading_tick, None, [parts.model_status, parts.status, loading, switching], api_name=False,
                     **NO_PROGRESS)
        switching.tick(server.kernel_tick, None, [parts.model_status, switching], api_name=False,
                       **NO_PROGRESS)
        demo.load(server.page_opened, None, [parts.model, parts.model_status, parts.engine_choice, parts.status,
                                             loading, switching], api_name=False, **NO_PROGRESS)
    return demo


demo = build_demo()


def launch(**kwargs: Any) -> Any:
    """Serve the page (theme and CSS go to launch() in Gradio 6), and beside it, where the operator
    allows it, the OpenAI-compatible API and /metrics (inference/serving/api.py) on the same port."""
    config = server.config
    demo.queue(max_size=config.queue_size, default_concurrency_limit=1 if config.solo else RUNS_AT_ONCE)
    launched = demo.launch(css=CSS, theme=gr.themes.Soft(), **kwargs)
    if config.api:
        demo.app.include_router(ApiService(lambda: server.engine, lambda: server.config).router())
    return launched


def launch_on_free_port(host: str = "127.0.0.1") -> str:
    """Serve the page in this process on a free loopback port (tests, benchmarks); returns its URL."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True)
    return f"http://{host}:{port}/"


def main() -> None:
    config = server.config
    parser = argparse.ArgumentParser(description="Serve the PhaseScope page.")
    parser.add_argument("--model", default=config.model)
    parser.add_argument("--device", default=config.device, choices=DEVICES)
    parser.add_argument("--dtype", default=config.dtype, choices=DTYPES)
    parser.add_argument("--solo", action="store_true",
                        help="runs one at a time (clean single-run timings) instead of sharing decode steps")
    parser.add_argument("--prefill-chunk", type=int, default=config.prefill_chunk, metavar="N",
                        help="prefill long prompts N tokens at a time between the batch's decode steps (0 = off)")
    parser.add_argument("--class-context", type=Path, metavar="FILE",
                        help="the teacher's context (a text file): the system message before every question on the "
                             "page, prefilled once and shared by the class")
    parser.add_argument("--no-prefix-cache", action="store_true",
                        help="prefill every run's whole prompt (no blocks shared between runs)")
    parser.add_argument("--allow-any-model", action="store_true",
                        help="let the page load any hub id or folder (local use only; never on a public server)")
    parser.add_argument("--remote", action="append", default=[], metavar="NAME=URL",
                        help="a serving engine with an OpenAI-compatible API the page may send runs to (repeatable)")
    parser.add_argument("--api", action=argparse.BooleanOptionalAction, default=config.api,
                        help="serve the OpenAI-compatible API (/v1) and /metrics beside the page (default: on, "
                             "except on a Hugging Face Space; PHASESCOPE_API_KEY asks clients for a key)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    args = parser.parse_args()
    try:
        remotes = config.remotes + parse_remotes(",".join(args.remote))
    except ValueError as exc:
        parser.exit(2, f"app.py: error: {exc}\n")
    try:
        context = args.class_context.read_text() if args.class_context else config.class_context
    except OSError as exc:
        parser.exit(2, f"app.py: error: --class-context: {exc}\n")
    server.config = config.replace(class_context=context, prefix_cache=config.prefix_cache and not args.no_prefix_cache,
                                   remotes=remotes, model=args.model, device=args.device, dtype=args.dtype,
                                   allow_any_model=config.allow_any_model or args.allow_any_model,
                                   solo=config.solo or args.solo, prefill_chunk=max(0, args.prefill_chunk),
                                   api=args.api)
    launch(server_name=args.host, server_port=args.port, prevent_thread_lock=True)
    try:                                   # the page is up: it shows the load's progress, runs wait for it
        server.get_engine(progress=lambda message: print(message, flush=True))
    except ValueError as exc:
        demo.close()
        parser.exit(2, f"app.py: error: {exc}\n")
    try:
        ENGINE_THREAD.serve_forever()      # the page's runs execute on the main thread (inference/serving/background.py)
    except KeyboardInterrupt:
        demo.close()


if __name__ == "__main__":
    main()
