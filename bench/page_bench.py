"""Page benchmarks, each interleaved with the engine alone on the main thread, on the same engine:

- a run driven through the page's own event handler (live deltas built and yielded at the page's
  rate on a server thread, the engine on the main thread as in `python app.py`);
- a run started from a real page in headless Chromium on this same machine, which draws every
  chart live: what a student sees when browser and model share one small computer.
"""
from __future__ import annotations

import queue
import shutil
import statistics
import threading

import app
from page import live as live_page
from bench.common import CHROMIUM, CHROMIUM_FLAGS, interleaved_medians, row
from inference.engine import Engine
from inference.prompts import chat_prompt_ids
from inference.serving.background import ENGINE_THREAD
from inference.settings import GenerationSettings
from inference.trace import read_trace

PROMPT = "Explain in three sentences why the sky is blue."
NEW_TOKENS = 48


def through_page() -> float:
    """Consume the handler on another thread (as Gradio does) while this thread serves the engine."""
    finals: list[tuple] = []
    done = threading.Event()

    def consume() -> None:
        try:
            *_, final = app.live.run_generation(PROMPT, NEW_TOKENS, 0, 1, 0, True, 1, app.CancelFlag())
            finals.append(final)
        finally:
            done.set()

    threading.Thread(target=consume).start()
    ENGINE_THREAD.serve_forever(stop=done)
    return read_trace(finals[0][4]).summary.decode_tokens_per_s


def engine_alone(engine: Engine) -> float:
    return engine_run(engine)[0]


def engine_run(engine: Engine) -> tuple[float, float]:
    """The engine alone on this thread: (decode tokens/s, TTFT ms)."""
    ids = chat_prompt_ids(engine.loaded.tokenizer, PROMPT)
    summary = engine.generate(ids, GenerationSettings(max_new_tokens=NEW_TOKENS)).run_to_end().summary
    return summary.decode_tokens_per_s, summary.ttft_ms


class BrowserRuns:
    """Headless Chromium on its own thread, on the page served by this process; `rate()` presses Run
    once (the default 64 new tokens) while this thread serves the engine, and returns the run's
    decode tokens/s and TTFT (ms) from the per-token latency chart the page drew."""

    def __init__(self) -> None:
        self.url = app.launch_on_free_port()
        self.jobs: queue.Queue[bool] = queue.Queue()
        self.rates: queue.Queue[tuple[float, float] | BaseException] = queue.Queue()
        self.done = threading.Event()
        threading.Thread(target=self._browse, daemon=True).start()

    def _browse(self) -> None:
        from playwright.sync_api import sync_playwright

        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.goto(self.url)
                page.wait_for_function("() => window.Plotly !== undefined")
                while self.jobs.get():
                    page.fill("textarea", PROMPT)
                    page.click("#ps-run")
                    page.wait_for_selector("#ps-status .ps-decode", timeout=120_000)
                    page.wait_for_selector("#ps-status .ps-done", timeout=300_000)
                    latency = page.evaluate("() => document.querySelector('[data-chart=latency]').data.map((d) => d.y)")
                    self.rates.put((1e3 / statistics.median(latency[1]), latency[0][0]))
                    self.done.set()
                browser.close()
        except BaseException as exc:          # reported on the main thread
            self.rates.put(exc)
            self.done.set()

    def rate(self) -> tuple[float, float]:
        self.done.clear()
        self.jobs.put(True)
        ENGINE_THREAD.serve_forever(stop=self.done)
        result = self.rates.get()
        if isinstance(result, BaseException):
            raise result
        return result

    def close(self) -> None:
        self.jobs.put(False)
        app.demo.close()


def main(repeats: int = 5) -> list[str]:
    engine = app.server.get_engine(progress=lambda _: None)
    rates = interleaved_medians({"page": through_page, "engine": lambda: engine_alone(engine)}, repeats)
    lines = ["| page figure | value | note |", "|---|---|---|",
             row("decode tokens/s through the page's handler / engine alone", f"{rates['page'] / rates['engine']:.2f}",
                 f"{rates['page']:.1f} vs {rates['engine']:.1f} tok/s, {live_page.UPDATES_PER_S} live updates/s "
                 f"(goal >= 0.95)")]
    if not shutil.which("chromium") and not shutil.which(CHROMIUM):
        return lines + [row("with Chromium drawing the page on this machine", "not measured", "no chromium")]
    browser = BrowserRuns()
    try:
        runs = interleaved_medians({"browser": browser.rate, "engine": lambda: engine_run(engine)}, 7)
    finally:
        browser.close()
    (browser_rate, browser_ttft), (rate, ttft) = runs["browser"], runs["engine"]
    return lines + [row("decode tokens/s with Chromium drawing the page on this machine / engine alone",
                        f"{browser_rate / rate:.2f}",
                        f"{browser_rate:.1f} vs {rate:.1f} tok/s (browser and model share the cores; goal >= 0.85)"),
                    row("TTFT with Chromium drawing the page / engine alone", f"{browser_ttft / ttft:.2f}",
                        f"{browser_ttft:.0f} vs {ttft:.0f} ms, the prefill as the engine timed it (goal <= 1.3)")]


if __name__ == "__main__":
    print("\n".join(main()))
