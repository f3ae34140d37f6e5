"""The Class tab: every run on the server in the last minute, anonymous, on one time axis, and the
sequences that shared each decode step. It polls once a second while it is open."""
from __future__ import annotations

from typing import Any

import gradio as gr

from inference.serving.batching import batch_server
from page.state import Server
from viz import classroom


class ClassTab:
    def __init__(self, server: Server):
        self.server = server

    def class_view(self) -> tuple:
        """The class view's figure and summary, now."""
        if not self.server.ready:                # the page is up before the model: nothing to show yet
            return gr.skip(), gr.skip()
        snapshot = batch_server(self.server.engine).snapshot()
        return classroom.class_figure(snapshot), classroom.class_summary(snapshot)

    def build(self, other_tabs: list[Any]) -> None:
        """The tab's layout; its timer runs only while it is the tab open (`other_tabs` stop it)."""
        with gr.Tab("Class", id="class") as class_tab:
            gr.Markdown("Every run on this server right now, anonymous: waiting (grey), prefill (orange), decode "
                        "(blue). Runs that decode at the same time share each step: the weights are read once for all "
                        "of them, so the class together gets many more tokens per second than one run alone. Ask "
                        "everyone to press Run at once and watch the batch grow.")
            summary = gr.Markdown(elem_id="ps-class-summary")
            plot = gr.Plot(show_label=False, elem_id="ps-class")
            timer = gr.Timer(1.0, active=False)
        timer.tick(self.class_view, None, [plot, summary], api_name="class", show_progress="hidden")
        class_tab.select(lambda: gr.Timer(active=True), None, timer, api_name=False)
        for tab in other_tabs:
            tab.select(lambda: gr.Timer(active=False), None, timer, api_name=False)
