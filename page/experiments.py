"""The Experiments tab: each claim proved by an experiment on the model in front of the student,
with a verdict computed from the numbers and a panel that ticks a claim only from this session's
measurements."""
from __future__ import annotations

import os
from typing import Any

import gradio as gr

from inference import defaults as D
from inference.lessons import experiments
from inference.lessons.verdicts import roofline_verdict
from inference.lessons.whatif import GPUS, PRESETS, Efficiency, device_as_gpu, estimate, measured_efficiency
from inference.remote import RemoteClient, RemoteError
from inference.serving.background import ENGINE_THREAD
from inference.trace import read_trace
from page import progress_on
from page.state import Server
from viz import experiments as viz_experiments
from viz.claims import claims_html
from viz.figures import roofline_figure

THIS_MACHINE = "this machine (measured roofs)"


class ExperimentsTab:
    """The tab's handlers, on the server state they share."""

    def __init__(self, server: Server):
        self.server = server
        # On ZeroGPU each experiment that runs the model is one GPU call (asking for the run limit).
        self.experiment_sweep = server.gpu(self.experiment_sweep)
        self.experiment_race = server.gpu(self.experiment_race)
        self.experiment_batch = server.gpu(self.experiment_batch)
        self.experiment_dtype = server.gpu(self.experiment_dtype)
        self.experiment_chunks = server.gpu(self.experiment_chunks)
        self.experiment_speculate = server.gpu(self.experiment_speculate)

    def build(self, trace_state: gr.State, claims: gr.State, engine_choice: gr.Dropdown) -> Any:
        """One sub-tab per claim; each button measures on the model in front of the student (the
        prompt-length sweep also on the remote engine the Live run tab picked)."""
        with gr.Tab("Experiments", id="experiments") as tab:
            panel = gr.HTML(claims_html({}), elem_id="ps-claims")
            engine_queue = dict(concurrency_limit=1, concurrency_id="engine")

            def measured_by(button: gr.Button, fn: Any, inputs: list, api_name: str, queued: bool = True) -> None:
                """The tab's result (its figure and verdict) under `button`, which runs `fn` and ticks its
                claim; `queued`: it runs the model, one experiment at a time."""
                plot, verdict = gr.Plot(show_label=False), gr.Markdown()
                button.click(fn, [*inputs, claims], [plot, verdict, claims, panel], api_name=api_name,
                             **progress_on(plot), **(engine_queue if queued else {}))

            with gr.Tabs():
                with gr.Tab("1 · Prompt length"):
                    gr.Markdown("Runs the model on prompts of several lengths (exact token counts, a fixed text) and "
                                "plots time to first token and decode time per token against prompt length. With a "
                                "remote engine picked on the Live run tab, the sweep runs there (measured from "
                                "outside).")
                    lengths = gr.CheckboxGroup([16, 64, 256, 512, 1024, 2048], value=list(D.SWEEP_PROMPT_TOKENS),
                                               label="prompt tokens")
                    new_tokens = gr.Slider(2, 32, value=D.SWEEP_NEW_TOKENS, step=1, label="new tokens per run")
                    button = gr.Button("Run the sweep", variant="primary")
                    measured_by(button, self.experiment_sweep, [lengths, new_tokens, engine_choice], "sweep")
                with gr.Tab("2 · KV cache"):
                    gr.Markdown("The same prompt twice: with the KV cache, and recomputing the whole sequence every "
                                "step.")
                    prompt_tokens = gr.Slider(16, 512, value=D.RACE_PROMPT_TOKENS, step=16, label="prompt tokens")
                    race_tokens = gr.Slider(8, 96, value=D.RACE_NEW_TOKENS, step=8, label="new tokens")
                    button = gr.Button("Race them", variant="primary")
                    measured_by(button, self.experiment_race, [prompt_tokens, race_tokens], "race")
                with gr.Tab("3 · Batch size"):
                    gr.Markdown("B copies of a 32-token prompt decode together: step time against throughput.")
                    sizes = gr.CheckboxGroup(list(D.BATCH_SIZES), value=list(D.BATCH_SIZES), label="batch sizes")
                    button = gr.Button("Measure", variant="primary")
                    measured_by(button, self.experiment_batch, [sizes], "batch")
                with gr.Tab("4 · Roofline"):
                    gr.Markdown("Reads your last run on the Live run tab: where prefill and decode sit under this "
                                "device's roofs.")
                    button = gr.Button("Explain my last run", variant="primary")
                    measured_by(button, self.explain_roofline, [trace_state], "roofline", queued=False)
                with gr.Tab("5 · Bytes per weight"):
                    gr.Markdown("Loads the model again at 4 bytes per weight (float32), 2 (bfloat16), about 1 (int8: "
                                "llama.cpp's Q8_0 blocks) and about 0.6 (q4_1: the blocks the bundled file ships) and"
                                " runs the same 32-token prompt on each (short, so that weight bytes dominate "
                                "decode). int8 and q4_1 decode reads the blocks; their prefill runs the same values "
                                "expanded to float32.")
                    button = gr.Button("Compare the bytes per weight", variant="primary")
                    measured_by(button, self.experiment_dtype, [], "dtype")
                with gr.Tab("6 · Chunked prefill"):
                    gr.Markdown("A few runs stream together in the shared batch; then a long prompt joins. Its "
                                "prefill runs once whole (every stream stalls for the whole pause) and once in chunks"
                                " between the batch's decode steps (the streams stall a little, many times; the long "
                                "prompt waits longer for its first token). This sets the chunk for this experiment "
                                "only; the server's own setting is `--prefill-chunk`.")
                    long_prompt = gr.Slider(256, 2048, value=D.CHUNK_LONG_PROMPT, step=128,
                                            label="long prompt (tokens)")
                    chunk_size = gr.Slider(32, 512, value=D.CHUNK_SIZE, step=32, label="chunk (tokens)")
                    streams = gr.Slider(1, 8, value=D.CHUNK_STREAMS, step=1, label="streaming runs")
                    button = gr.Button("Let the long prompt in", variant="primary")
                    measured_by(button, self.experiment_chunks, [long_prompt, chunk_size, streams], "chunks")
                with gr.Tab("7 · Speculative decoding"):
                    gr.Markdown("Two prompts, one whose answer repeats its input and one whose answer does not, each "
                                "with prompt lookup (drafts: the tokens that followed the last earlier match of the "
                                "text's last few tokens) at several k, each right after a plain run of the same "
                                "prompt. A check passes the newest token and its k drafts through the model at once; "
                                "the model keeps the drafts it would have written itself (greedy: the same tokens).")
                    draft_ks = gr.CheckboxGroup([1, 2, 3, 4, 7, 8, 15], value=list(D.SPECULATE_DRAFT_TOKENS),
                                                label="k (drafted tokens per check)")
                    button = gr.Button("Race speculation against plain decode", variant="primary")
                    measured_by(button, self.experiment_speculate, [draft_ks], "speculate")
                with gr.Tab("8 · Shared context"):
                    gr.Markdown("A class presses Run at once: every student's own short question after the same "
                                "context (the teacher's text, as a system message), on a batch server of their own. "
                                "Once with prefix caching off (each prompt prefilled whole), once on (the context's KV "
                                "blocks prefilled once, then shared by every run). Greedy: the answers must not change.")
                    students = gr.Slider(2, 30, value=D.PREFIX_STUDENTS, step=1, label="students")
                    context_tokens = gr.Slider(64, 2048, value=D.PREFIX_CONTEXT_TOKENS, step=64,
                                               label="shared context (tokens)")
                    button = gr.Button("Ask the class's questions", variant="primary")
                    measured_by(button, self.experiment_prefix, [students, context_tokens], "prefix")
                with gr.Tab("9 · Big models"):
                    gr.Markdown("What the same arithmetic predicts for large models on large GPUs: **estimates** from"
                                " public configs and datasheet peaks, not measurements.")
                    models = gr.CheckboxGroup(list(PRESETS), value=["Llama-3.1-8B", "Llama-3.1-70B"], label="models")
                    gpus = gr.CheckboxGroup([*GPUS, THIS_MACHINE], value=["H100 SXM", "L4"], label="devices")
                    with gr.Row():
                        whatif_prompt = gr.Number(1024, precision=0, minimum=1, label="prompt tokens")
                        context = gr.Number(4096, precision=0, minimum=1, label="context for decode")
                        whatif_batch = gr.Number(1, precision=0, minimum=1, maximum=1024, label="batch")
                    calibrate = gr.Checkbox(False, label="scale by the efficiency measured in my last run")
                    button = gr.Button("Estimate", variant="primary")
                    table = gr.HTML()
                    inputs = [models, gpus, whatif_prompt, context, whatif_batch, calibrate, trace_state]
                    button.click(self.what_if, inputs, table, api_name="whatif")
        return tab

    def _experiment(self, claim: str, run: Any, figure: Any, claims: dict, progress: gr.Progress,
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

    def experiment_sweep(self, lengths: list, new_tokens: float, remote: str, claims: dict,
                         progress: gr.Progress = gr.Progress()) -> tuple:
        """The prompt-length sweep, on the embedded engine or on the remote engine the Live run tab picked."""
        lengths = at_least_two(lengths, "prompt lengths")
        engine = self.server.get_engine()
        if remote:
            try:
                client = RemoteClient(self.server.config.remote(remote))
            except ValueError as exc:
                raise gr.Error(str(exc), print_exception=False) from None
            tokenizer = engine.loaded.tokenizer
            return self._experiment(
                "sweep", lambda p: experiments.run_remote_sweep(client, tokenizer, lengths, int(new_tokens), p),
                viz_experiments.sweep_figure, claims, progress, on_engine_thread=False)
        return self._experiment("sweep", lambda p: experiments.run_sweep(engine, lengths, int(new_tokens), p),
                                viz_experiments.sweep_figure, claims, progress)

    def experiment_race(self, prompt_tokens: float, new_tokens: float, claims: dict,
                        progress: gr.Progress = gr.Progress()) -> tuple:
        engine = self.server.get_engine()
        return self._experiment(
            "race", lambda p: experiments.run_cache_race(engine, int(prompt_tokens), int(new_tokens), p),
            viz_experiments.race_figure, claims, progress)

    def experiment_batch(self, sizes: list, claims: dict, progress: gr.Progress = gr.Progress()) -> tuple:
        sizes = at_least_two(sizes, "batch sizes")
        engine = self.server.get_engine()
        return self._experiment("batch", lambda p: experiments.run_batch_sweep(engine, sizes, progress=p),
                                viz_experiments.batch_figure, claims, progress)

    def experiment_dtype(self, claims: dict, progress: gr.Progress = gr.Progress()) -> tuple:
        """4, 2, 1 and about 0.6 bytes per weight where the CPU decode kernel runs (int8 and q4_1 are
        its blocks), else float32 and bfloat16."""
        config, engine = self.server.config, self.server.get_engine()
        blocks = engine.fast_kernels and engine.loaded.device.type == "cpu"
        dtypes = list(D.DTYPES_COMPARED) if blocks else [d for d in D.DTYPES_COMPARED if d in ("float32", "bfloat16")]
        return self._experiment(
            "dtype", lambda p: experiments.run_dtype_comparison(config.model, config.device, dtypes, progress=p),
            viz_experiments.dtype_figure, claims, progress)

    def experiment_chunks(self, long_prompt: float, chunk: float, streams: float, claims: dict,
                          progress: gr.Progress = gr.Progress()) -> tuple:
        engine = self.server.get_engine()
        sizes = int(long_prompt), int(chunk), int(streams)
        return self._experiment("chunks", lambda p: experiments.run_chunked_prefill(engine, *sizes, p),
                                viz_experiments.chunk_figure, claims, progress)

    def experiment_speculate(self, ks: list, claims: dict, progress: gr.Progress = gr.Progress()) -> tuple:
        ks = at_least_two(ks, "values of k")
        engine = self.server.get_engine()
        return self._experiment("speculate", lambda p: experiments.run_speculation(engine, ks, progress=p),
                                viz_experiments.speculation_figure, claims, progress)

    def experiment_prefix(self, students: float, context_tokens: float, claims: dict,
                          progress: gr.Progress = gr.Progress()) -> tuple:
        engine = self.server.get_engine()
        sizes = int(students), int(context_tokens)
        return self._experiment("prefix", lambda p: experiments.run_shared_context(engine, *sizes, progress=p),
                                viz_experiments.prefix_figure, claims, progress)

    def explain_roofline(self, trace_json: str | None, claims: dict) -> tuple:
        if not trace_json:
            raise gr.Error("Run a prompt on the Live run tab first: this reads its measurements.",
                           print_exception=False)
        trace = read_trace(trace_json)
        verdict = roofline_verdict(trace)
        claims = {**(claims or {}), "roofline": verdict}
        return roofline_figure(trace), verdict, claims, claims_html(claims)

    def what_if(self, models: list, gpus: list, prompt_tokens: float, context: float, batch: float,
                calibrate: bool, trace_json: str | None) -> str:
        efficiency = measured_efficiency(read_trace(trace_json)) if calibrate and trace_json else Efficiency()
        chosen = [GPUS[g] for g in gpus or [] if g in GPUS]
        if THIS_MACHINE in (gpus or []):
            memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            chosen.append(device_as_gpu(THIS_MACHINE, self.server.get_engine().device_info, memory))
        try:
            rows = [estimate(PRESETS[m], g, int(prompt_tokens), int(context), int(batch), efficiency.prefill,
                             efficiency.decode) for m in models or [] if m in PRESETS for g in chosen]
        except (ValueError, ZeroDivisionError) as exc:
            raise gr.Error(f"Could not estimate: {exc}", print_exception=False) from None
        if not rows:
            raise gr.Error("Pick at least one model and one GPU.", print_exception=False)
        return viz_experiments.whatif_table_html(rows, efficiency.note)


def at_least_two(values: list | None, what: str) -> list[int]:
    """The distinct whole numbers picked, in order; a message unless there are two to compare."""
    picked = sorted({int(v) for v in values or []})
    if len(picked) < 2:
        raise gr.Error(f"Pick at least two {what} to compare.", print_exception=False)
    return picked
