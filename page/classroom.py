"""The Class tab: every run on the server in the last minute, anonymous, on one time axis, the
sequences that shared each decode step, the KV cache's pages and the class's goodput against the
teacher's objectives. It polls once a second while it is open."""
from __future__ import annotations

from typing import Any

import gradio as gr

from inference.defaults import GOODPUT_TPOT_S, GOODPUT_TTFT_S
from inference.serving.batching import batch_server
from page import NO_PROGRESS
from page.state import Server
from viz import classroom

DEFAULT_TTFT_S, DEFAULT_TPOT_MS = GOODPUT_TTFT_S, GOODPUT_TPOT_S * 1e3     # until the teacher sets their own


class ClassTab:
    def __init__(self, server: Server):
        self.server = server

    def class_view(self, ttft_s: float | None = DEFAULT_TTFT_S, tpot_ms: float | None = DEFAULT_TPOT_MS) -> tuple:
        """The class view's figure, summary (with goodput against the objectives) and pool, now."""
        if not self.server.ready:                # the page is up before the model: nothing to show yet
            return gr.skip(), gr.skip(), gr.skip()
        snapshot = batch_server(self.server.engine).snapshot()
        ttft = ttft_s if ttft_s and ttft_s > 0 else DEFAULT_TTFT_S
        tpot = (tpot_ms if tpot_ms and tpot_ms > 0 else DEFAULT_TPOT_MS) / 1e3
        summary = f"{classroom.class_summary(snapshot)}\n\n{classroom.goodput_text(snapshot, ttft, tpot)}"
        return classroom.class_figure(snapshot), summary, classroom.pool_html(snapshot)

    def build(self, other_tabs: list[Any]) -> None:
        """The tab's layout; its timer runs only while it is the tab open (`other_tabs` stop it)."""
        with gr.Tab("Class", id="class") as class_tab:
            gr.Markdown("Every run on this server right now, anonymous: waiting (grey), prefill (orange), decode "
                        "(blue). Runs that decode at the same time share each step: the weights are read once for all "
                        "of them, so the class together gets many more tokens per second than one run alone. Ask "
                        "everyone to press Run at once and watch the batch grow. Requests sent from a notebook through the "
                        "OpenAI-compatible API (this page's address + `/v1`, where the server has it on) join the "
                        "same batch and show as API runs.")
            with gr.Row():
                ttft = gr.Number(DEFAULT_TTFT_S, label="TTFT objective (s)", minimum=0.01, scale=1)
                tpot = gr.Number(DEFAULT_TPOT_MS, label="TPOT objective (ms a token)", minimum=1, scale=1)
            join = gr.HTML(elem_id="ps-class-join")
            address = gr.Textbox(visible=False)
            summary = gr.Markdown(elem_id="ps-class-summary")
            plot = gr.Plot(show_label=False, elem_id="ps-class")
            pool = gr.HTML(elem_id="ps-class-pool")
            timer = gr.Timer(1.0, active=False)
        timer.tick(self.class_view, [ttft, tpot], [plot, summary, pool], api_name="class", **NO_PROGRESS)
        class_tab.select(lambda: gr.Timer(active=True), None, timer, api_name=False)
        # The address the teacher's browser shows (behind a proxy or a Space too), read by the page itself.
        class_tab.select(classroom.join_html, address, join, js="() => window.location.href", api_name=False,
                         queue=False)
        for tab in other_tabs:
            tab.select(lambda: gr.Timer(active=False), None, timer, api_name=False)
