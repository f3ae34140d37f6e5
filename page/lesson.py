"""The Lesson tab: the two phases told in seven steps on the student's own runs (inference/lessons/
lesson.py), one chart a step; a presenter view for the projector (large type, keyboard to move
between steps) and a phone's single column come from the same layout (assets/style.css).

Each step's button runs the model through the front door (inference/lessons/lesson_runs.py) and then
shows its chart and the sentence computed from what it measured; the runs behind a step can be
downloaded as traces. The charts are drawn once a step's runs have ended, so drawing never takes
the cores the runs are measured on; only step 1 streams its text live.
"""
from __future__ import annotations

import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from inference.engine import Engine
from inference.lessons import lesson, lesson_runs
from inference.lessons.experiments import run_dtype_comparison
from inference.lessons.verdicts import DtypeResult
from inference.prompts import DEFAULT_PROMPT, chat_prompt_ids
from inference.serving.background import ENGINE_THREAD, CancelFlag, WatchedRun
from inference.serving.door import prepare
from inference.settings import GenerationSettings
from inference.trace import Trace, read_trace
from page import NO_PROGRESS, progress_on
from page.state import Server
from viz import experiments as viz_experiments
from viz import lesson as viz_lesson
from viz import summary
from viz.figures import roofline_figure

FIRST_RUN_TOKENS = 48               # step 1: enough of a stream to see its beat
LIVE_UPDATES_PER_S = 4              # step 1's text and numbers while it runs (the chart comes at the end)
ASK_FOR_RUN = "Do step 1 first: this step reads the run you made there."

# Keyboard for the presenter: → / PageDown next step, ← / PageUp back (a clicker sends these), R or
# Enter runs the step on screen, P toggles the presenter view; never while typing in a box.
KEYS_JS = """
if (!window.psLessonKeys) {
  window.psLessonKeys = true;
  document.addEventListener('keydown', (event) => {
    const bar = document.getElementById('ps-lesson-bar');
    if (!bar || bar.offsetParent === null || event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target, tag = (target.tagName || '').toLowerCase();
    if (tag === 'input' || tag === 'textarea' || tag === 'select' || target.isContentEditable) return;
    const press = (button) => { if (button) { button.click(); event.preventDefault(); } };
    const byId = (id) => document.getElementById(id);
    if (event.key === 'ArrowRight' || event.key === 'PageDown') press(byId('ps-lesson-next'));
    else if (event.key === 'ArrowLeft' || event.key === 'PageUp') press(byId('ps-lesson-prev'));
    else if (event.key === 'p' || event.key === 'P') press(byId('ps-presenter'));
    else if (event.key === 'r' || event.key === 'R' || event.key === 'Enter')
      press([...document.querySelectorAll('.ps-lesson-run')].find((b) => b.offsetParent !== null));
  });
}
"""
PRESENTER_JS = "() => { document.body.classList.toggle('ps-presenter'); window.scrollTo(0, 0); }"


def nav_html(step: int) -> str:
    """Where the student is: "Step 2 of 7" and a dot per step."""
    dots = "".join(f'<span class="ps-dot{" ps-dot-on" if i == step else ""}"></span>' for i in range(len(lesson.STEPS)))
    return (f'<div class="ps-lesson-nav"><span class="ps-lesson-count">Step {step + 1} of {len(lesson.STEPS)}</span>'
            f'<span class="ps-dots">{dots}</span></div>')


class LessonTab:
    """The tab's handlers, on the server state they share."""

    def __init__(self, server: Server):
        self.server = server
        # On ZeroGPU each step that runs the model is one GPU call.
        self.first_run = server.gpu(self.first_run, duration=lambda prompt, *_: server.run_seconds(prompt,
                                                                                                     FIRST_RUN_TOKENS))
        self.longer_prompt = server.gpu(self.longer_prompt)
        self.cache_race = server.gpu(self.cache_race)
        self.batch_rows = server.gpu(self.batch_rows)
        self.two_formats = server.gpu(self.two_formats)

    def build(self) -> Any:
        with gr.Tab("Lesson", id="lesson", elem_id="ps-lesson") as tab:
            step = gr.State(0)
            cancel = gr.State(CancelFlag, delete_callback=lambda flag: flag.clear())    # step 1's, not Live run's
            with gr.Row(elem_id="ps-lesson-bar", equal_height=True):
                back = gr.Button("← Back", elem_id="ps-lesson-prev", size="sm", scale=0, min_width=90)
                nav = gr.HTML(nav_html(0), js_on_load=KEYS_JS, elem_id="ps-lesson-where")
                forward = gr.Button("Next →", elem_id="ps-lesson-next", size="sm", scale=0, min_width=90)
                gr.Button("Presenter view (P)", elem_id="ps-presenter", size="sm", scale=0,
                          min_width=150).click(None, js=PRESENTER_JS)
            prompt = gr.Textbox(DEFAULT_PROMPT, label="Your prompt (steps 1, 2, 4 and 5 run it)", lines=1,
                                max_lines=4, elem_id="ps-lesson-prompt")
            first_trace = gr.State(None)
            step_rows, parts = [], []
            for i, s in enumerate(lesson.STEPS):
                with gr.Row(visible=i == 0, elem_classes="ps-lesson-step", equal_height=False) as step_row:
                    with gr.Column(scale=2, min_width=300):
                        gr.Markdown(f"### {i + 1}. {s.title}\n{s.what_to_do}", elem_classes="ps-lesson-todo")
                        button = gr.Button(s.action, variant="primary", elem_id=f"ps-lesson-run-{i + 1}",
                                           elem_classes="ps-lesson-run")
                        said = gr.Markdown(elem_id=f"ps-lesson-said-{i + 1}", elem_classes="ps-lesson-said")
                        text = [gr.Textbox(label="Generated text", lines=3, max_lines=3, interactive=False,
                                           elem_id="ps-lesson-text")] if i == 0 else []
                    with gr.Column(scale=3, min_width=300):
                        headline = [gr.HTML(elem_id="ps-lesson-headline")] if i == 0 else []     # large, live
                        plot = gr.Plot(show_label=False, elem_id=f"ps-lesson-plot-{i + 1}")
                        runs = gr.File(label="The runs behind this step (traces, JSON)", interactive=False,
                                       elem_id=f"ps-lesson-runs-{i + 1}", elem_classes="ps-lesson-runs")
                step_rows.append(step_row)
                parts.append((button, [*text, *headline, said, plot, runs], plot))
            self._wire(parts, prompt, cancel, first_trace)
            for button, delta in ((back, -1), (forward, 1)):
                button.click(lambda at, d=delta: self.go_to(at + d), [step], [step, nav, *step_rows], api_name=False,
                             queue=False, **NO_PROGRESS)
        return tab

    def _wire(self, parts: list, prompt: gr.Textbox, cancel: gr.State, first_trace: gr.State) -> None:
        """Each step's button: its runs, then its sentence, chart and traces."""
        runs_queue = dict(concurrency_limit="default", concurrency_id="runs")
        (b1, o1, _), (b2, o2, c2), (b3, o3, _), (b4, o4, c4), (b5, o5, c5), (b6, o6, c6), (b7, o7, _) = parts
        b1.click(self.first_run, [prompt, cancel], [*o1, first_trace], api_name="lesson_run", **NO_PROGRESS,
                 **runs_queue)
        b2.click(self.longer_prompt, [prompt], o2, api_name="lesson_sweep", **progress_on(c2), **runs_queue)
        b3.click(self.roofline, [first_trace], o3, api_name="lesson_roofline")
        b4.click(self.cache_race, [prompt], o4, api_name="lesson_race", **progress_on(c4), **runs_queue)
        b5.click(self.batch_rows, [prompt], o5, api_name="lesson_batch", **progress_on(c5), **runs_queue)
        b6.click(self.two_formats, [], o6, api_name="lesson_formats", **progress_on(c6), concurrency_limit=1,
                 concurrency_id="engine")
        b7.click(self.what_if, [first_trace], o7, api_name="lesson_whatif")

    @staticmethod
    def go_to(step: int) -> tuple:
        """Show step `step` (kept within the lesson), with what it measured last time, if anything."""
        step = max(0, min(len(lesson.STEPS) - 1, int(step)))
        return (step, nav_html(step), *(gr.Row(visible=i == step) for i in range(len(lesson.STEPS))))

    def _engine(self) -> Engine:
        try:
            return self.server.get_engine()
        except ValueError as exc:
            raise gr.Error(f"The model could not be loaded: {exc}", print_exception=False) from None

    def _launcher(self, engine: Engine, cancel: CancelFlag) -> lesson_runs.Launch:
        """A run in through the front door, as the Live run tab's go: into the class's batch where it can."""
        return lambda ids, settings: self.server.start(
            engine, prepare(engine, ids, settings, alone=self.server.config.why_alone), cancel)

    def _ids(self, engine: Engine, prompt: str) -> list[int]:
        try:
            return chat_prompt_ids(engine.loaded.tokenizer, prompt)
        except ValueError as exc:
            raise gr.Error(str(exc), print_exception=False) from None

    def first_run(self, prompt: str, cancel: CancelFlag) -> Iterator[tuple]:
        """Step 1: the student's prompt, its text and numbers live, the chart and sentence at the end."""
        engine = self._engine()
        engine.ensure_warm()
        ids = self._ids(engine, prompt)
        cancel.clear()
        try:
            run = self._launcher(engine, cancel)(ids, GenerationSettings(max_new_tokens=FIRST_RUN_TOKENS))
        except ValueError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        # closing(): a closed tab stops the run at once.
        with contextlib.closing(_follow(run, engine.loaded.info.layers)) as updates:
            yield from updates
        trace = _whole(run)
        yield (trace.text, summary.compact_headline_html(trace), lesson.run_sentence(trace),
               viz_lesson.stream_figure(trace), _runs_file("run", [trace]), trace.to_json())

    def longer_prompt(self, prompt: str, progress: gr.Progress = gr.Progress()) -> tuple:
        engine = self._engine()
        launch = self._launcher(engine, CancelFlag())       # an empty prompt: prompt_sweep's ValueError, a message
        result = _measured(lambda: lesson_runs.prompt_sweep(launch, engine.loaded.tokenizer, prompt,
                                                            _reporter(progress)))
        return (lesson.sweep_sentence(result), viz_lesson.large(viz_experiments.sweep_figure(result)),
                _runs_file("longer-prompt", result.traces))

    def roofline(self, trace_json: str | None) -> tuple:
        trace = _first(trace_json)
        return (lesson.roofline_sentence(trace), viz_lesson.large(roofline_figure(trace)), _runs_file("run", [trace]))

    def cache_race(self, prompt: str, progress: gr.Progress = gr.Progress()) -> tuple:
        engine = self._engine()
        ids, launch = self._ids(engine, prompt), self._launcher(engine, CancelFlag())
        race = _measured(lambda: lesson_runs.cache_race(launch, ids, _reporter(progress)))
        return (lesson.race_sentence(race), viz_lesson.large(viz_experiments.race_figure(race)),
                _runs_file("kv-cache-race", [race.cached, race.recomputed]))

    def batch_rows(self, prompt: str, progress: gr.Progress = gr.Progress()) -> tuple:
        engine = self._engine()
        ids, launch = self._ids(engine, prompt), self._launcher(engine, CancelFlag())
        result = _measured(lambda: lesson_runs.batch_rows(launch, ids, _reporter(progress)))
        return (lesson.batch_sentence(result), viz_lesson.large(viz_experiments.batch_figure(result)),
                _runs_file("batch", result.traces))

    def two_formats(self, progress: gr.Progress = gr.Progress()) -> tuple:
        """Step 6: float32 against the narrowest format this machine decodes from its own blocks
        (int8 where the CPU decode kernel runs, else bfloat16), each a fresh copy of the model."""
        config, engine = self.server.config, self._engine()
        narrow = "int8" if engine.fast_kernels and engine.loaded.device.type == "cpu" else "bfloat16"
        measure = lambda: run_dtype_comparison(config.model, config.device, ["float32", narrow],
                                               progress=_reporter(progress))
        result: DtypeResult = _measured(lambda: ENGINE_THREAD.call(measure))
        return (lesson.dtype_sentence(result), viz_lesson.large(viz_experiments.dtype_figure(result)),
                _runs_file("formats", result.traces))

    def what_if(self, trace_json: str | None) -> tuple:
        trace = _first(trace_json)
        if not trace.decode_steps:
            raise gr.Error("Your step 1 run wrote no decode step to scale: run it again.", print_exception=False)
        w = lesson.what_if(trace)
        return lesson.whatif_sentence(w), viz_lesson.whatif_figure(w), _runs_file("run", [trace])


def _follow(run: WatchedRun, layers: int) -> Iterator[tuple]:
    """Step 1 while it runs: the prefill's progress, then its text and headline numbers, a few
    times a second (no chart)."""
    sent = 0
    try:
        for have in run.follow(1 / LIVE_UPDATES_PER_S):
            if have > sent:
                partial = run.trace()
                sent = len(partial.steps)
                yield partial.text, summary.compact_headline_html(partial), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            elif have == 0 and run.prefill_start is not None:       # the pause: prefill under way
                status = summary.prefill_status_html(len(run.prompt_ids), run.layers_done, layers, run.elapsed)
                yield "", status, gr.skip(), gr.skip(), gr.skip(), gr.skip()
    finally:
        run.stop()


def _whole(run: WatchedRun) -> Trace:
    """Step 1's run, ended: its trace, or what went wrong as the page's message."""
    trace = _measured(lambda: lesson_runs.finished(run))
    if not trace.steps:
        raise gr.Error("The run was stopped before its first token: press the button again.", print_exception=False)
    return trace


def _measured(measure: Any) -> Any:
    """A step's runs, with what went wrong as a message on the page."""
    try:
        return measure()
    except ValueError as exc:
        raise gr.Error(str(exc), print_exception=False) from None


def _first(trace_json: str | None) -> Trace:
    if not trace_json:
        raise gr.Error(ASK_FOR_RUN, print_exception=False)
    return read_trace(trace_json)


def _reporter(progress: gr.Progress) -> Any:
    return lambda fraction, text: progress(fraction, desc=text)


def _runs_file(name: str, traces: Any) -> str:
    """The step's traces in one JSON file (a list of traces, the trace format of DESIGN.md), to download."""
    folder = Path(tempfile.mkdtemp(prefix="phasescope-lesson-"))
    path = folder / f"phasescope-lesson-{name}-{time.strftime('%H%M%S')}.json"
    path.write_text(json.dumps([json.loads(t.to_json()) for t in traces], indent=1))
    return str(path)
