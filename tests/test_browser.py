"""A real browser on the real page: headless Chromium driven as a user would (Playwright)."""
from __future__ import annotations

import shutil
import statistics
import threading
from pathlib import Path
from typing import Iterator
from urllib.parse import urljoin

import pytest

from bench.common import CHROMIUM as DEFAULT_CHROMIUM, CHROMIUM_FLAGS

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or DEFAULT_CHROMIUM
SCREENSHOTS = Path(__file__).resolve().parent.parent / "out" / "screenshots"
DONE = "#ps-status .ps-done"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: `make test` installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, app_url: str) -> Iterator[object]:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.on("console", lambda msg: page.errors.append(msg.text) if msg.type == "error" else None)
    page.dialogs = []
    page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(app_url)
    page.wait_for_selector("#ps-dashboard [data-chart=latency]", state="attached")
    page.wait_for_function("() => window.Plotly !== undefined")
    yield page
    page.close()


def run_prompt(page, prompt: str, max_new_tokens: int) -> None:
    page.fill("textarea", prompt)
    number, slider = "#ps-max-new input[type=number]", "#ps-max-new input[type=range]"
    if not page.is_visible(number):
        page.click("#ps-settings .label-wrap")
    # A value typed while the just-opened accordion is still mounting the slider is reset to the
    # default (seen: 400 became 64), so type it until the slider holds it.
    for _ in range(20):
        page.fill(number, str(max_new_tokens))
        page.press(number, "Enter")
        if page.input_value(slider) == str(max_new_tokens):
            break
        page.wait_for_timeout(250)
    assert page.input_value(slider) == str(max_new_tokens), "the max-new-tokens slider did not take the value"
    page.click("#ps-run")


def chart_points(page, chart: str, trace: int) -> int:
    return page.evaluate(f"() => (document.querySelector('[data-chart={chart}]').data || [])[{trace}]?.x?.length ?? -1")


def decode_steps_done(page) -> int:
    """Tokens in the finished run, read from the status line ('Done: N tokens, ...')."""
    text = page.inner_text(DONE)
    return int(text.split("Done: ")[1].split(" tokens")[0]) - 1


def test_a_run_streams_text_and_fills_every_chart(page) -> None:
    run_prompt(page, "What is the capital of France?", 24)
    page.wait_for_selector("#ps-status .ps-decode, #ps-status .ps-prefill", timeout=60_000)
    page.wait_for_selector(DONE, timeout=120_000)
    decode = decode_steps_done(page)
    assert 1 <= decode <= 23, "the max-new-tokens setting was not applied"
    assert chart_points(page, "latency", 1) == decode, "one latency point per decode step"
    assert chart_points(page, "timeline", 1) == decode, "one timeline tick per decode step"
    assert chart_points(page, "roofline", 1) == decode
    assert "Paris" in page.input_value("#ps-text textarea")
    assert "TTFT" in page.inner_text("#ps-headline")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "run.png"), full_page=True)
    assert page.errors == [], f"page errors: {page.errors}"


def test_stop_ends_a_run_early(page) -> None:
    run_prompt(page, "Write a long story about a dragon who learns to bake bread.", 400)
    page.wait_for_function("() => document.querySelector('#ps-text textarea').value.length > 20", timeout=120_000)
    # Mid-run, the deltas merged so far (before any final whole redraw) hold one point per step.
    steps, counts = page.evaluate("""() => {
        const d = [...document.querySelectorAll('#ps-dashboard, #ps-dashboard *')].find((e) => e.dataset.steps);
        const n = (id, i, a) => document.querySelector(`[data-chart=${id}]`).data[i][a].length;
        return [Number(d.dataset.steps), [n('latency', 1, 'x'), n('timeline', 1, 'x'), n('roofline', 1, 'y'),
                                          n('kv', 5, 'y'), n('heatmap', 2, 'z')]];
    }""")
    assert steps > 1 and counts == [steps - 1, steps - 1, steps - 1, steps + 1, steps], (steps, counts)
    page.click("#ps-stop")
    page.wait_for_selector(DONE, timeout=30_000)
    assert "stopped" in page.inner_text(DONE)
    assert decode_steps_done(page) < 399
    assert page.errors == [], f"page errors: {page.errors}"


def test_replay_redraws_the_run(page) -> None:
    run_prompt(page, "Name three colours.", 12)
    page.wait_for_selector(DONE, timeout=120_000)
    decode = decode_steps_done(page)
    page.click("#ps-replay-box .label-wrap")
    page.fill("#ps-speed input[type=number]", "1")
    page.press("#ps-speed input[type=number]", "Enter")
    page.click("#ps-replay")
    page.wait_for_selector("#ps-status .ps-decode", timeout=30_000)      # the replay has begun
    page.wait_for_selector(DONE + ":has-text('replayed')", timeout=60_000)
    assert chart_points(page, "latency", 1) == decode
    assert page.errors == [], f"page errors: {page.errors}"


def test_html_in_the_prompt_is_shown_as_text_and_never_runs(page) -> None:
    hostile = "<img src=x onerror=alert(1)> repeat this: <script>alert(2)</script>"
    run_prompt(page, hostile, 16)
    page.wait_for_selector(DONE, timeout=120_000)
    assert page.dialogs == [], f"a script ran: {page.dialogs}"
    assert page.evaluate("() => document.querySelectorAll('img[src=\"x\"], #ps-dashboard script').length") == 0
    assert page.input_value("textarea") == hostile


def test_odd_text_streams_as_text(page) -> None:
    odd = "Répète: 🙂🚀 مرحبا بالعالم \u202e reversed \u0007 " + "x" * 400
    run_prompt(page, odd, 8)
    page.wait_for_selector(DONE, timeout=120_000)
    assert page.input_value("textarea") == odd
    assert page.errors == [], f"page errors: {page.errors}"


def test_a_hostile_trace_upload_is_refused_with_a_message_and_nothing_is_drawn(page, tmp_path: Path) -> None:
    hostile = tmp_path / "hostile.json"
    hostile.write_text('{"schema": "phasescope.trace/1", "model": {"name": "<img src=x onerror=alert(3)>"}, '
                       '"steps": [{"ms": NaN}]}')
    page.click("#ps-replay-box .label-wrap")
    page.set_input_files("#ps-replay-box input[type=file]", str(hostile))
    page.wait_for_selector("text=Could not load that trace", timeout=30_000)
    assert chart_points(page, "latency", 1) == -1, "a refused trace was drawn"
    assert page.dialogs == []
    run_prompt(page, "What is the capital of France?", 12)          # and the next run still works
    page.wait_for_selector(DONE, timeout=120_000)
    assert "Paris" in page.input_value("#ps-text textarea")


@pytest.mark.parametrize("width, height, scheme", [(390, 844, "light"), (1280, 800, "dark")])
def test_phone_width_and_dark_theme_render_without_errors(browser, app_url: str, width: int, height: int,
                                                          scheme: str) -> None:
    page = browser.new_page(viewport={"width": width, "height": height}, color_scheme=scheme)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{app_url}?__theme={scheme}")
    page.wait_for_function("() => window.Plotly !== undefined")
    page.fill("textarea", "Hi")
    page.click("#ps-run")
    page.wait_for_selector(DONE, timeout=120_000)
    assert chart_points(page, "latency", 0) == 1, "the prefill point is missing"
    assert chart_points(page, "latency", 1) == decode_steps_done(page), "one latency point per decode step"
    page.screenshot(path=str(SCREENSHOTS / f"{scheme}-{width}.png"), full_page=True)
    page.close()
    assert errors == []


def test_two_students_pressing_run_share_decode_steps_and_both_pages_say_so(browser, app_url: str) -> None:
    pages = []
    for _ in range(2):
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(app_url)
        page.wait_for_function("() => window.Plotly !== undefined")
        pages.append(page)
    try:
        for page in pages:
            run_prompt(page, "Write a long story about a lighthouse keeper.", 200)
        for page in pages:
            page.wait_for_selector("#ps-status:has-text('step shared with 1 other row')", timeout=60_000)
        pages[0].click("#ps-class-button") if pages[0].is_visible("#ps-class-button") else pages[0].get_by_role(
            "tab", name="Class").click()
        pages[0].wait_for_selector("#ps-class-summary:has-text('2 runs decoding together')", timeout=30_000)
        pages[0].screenshot(path=str(SCREENSHOTS / "class-view.png"))
        for page in pages:
            page.get_by_role("tab", name="Live run").click()
            page.click("#ps-stop")
            page.wait_for_selector(DONE, timeout=60_000)
    finally:
        for page in pages:
            page.close()


def test_the_first_tokens_time_is_broken_down_from_the_click(page) -> None:
    run_prompt(page, "What is the capital of France?", 8)
    page.wait_for_selector(DONE, timeout=120_000)
    page.wait_for_selector(".ps-ttft-legend", timeout=10_000)
    legend = page.inner_text(".ps-ttft-legend")
    for part in ("template and tokenizing", "waiting for the engine", "prefill and first sample",
                 "in your browser", "ms in all, from your click"):
        assert part in legend, legend
    total = page.evaluate("() => Number([...document.querySelectorAll('#ps-dashboard, #ps-dashboard *')]"
                          ".find((e) => e.dataset.ttft).dataset.ttft)")
    ttft_card = float(page.inner_text("#ps-headline .ps-card-value").split()[0].replace(",", ""))
    assert total >= ttft_card, "from the click it cannot take less than the prefill step alone"


def test_while_a_run_waits_for_its_first_token_the_page_draws_nothing(page) -> None:
    """The prefill shares the cores with this browser: until the first token's update nothing in the
    run's outputs may change (Gradio's progress trackers counted seconds there on every frame)."""
    page.evaluate("""() => {
        window.changed = [];
        const outputs = ["#ps-status", "#ps-headline", "#ps-text", "#ps-dashboard"].map((s) => document.querySelector(s));
        const observer = new MutationObserver((records) => { for (const r of records) window.changed.push(r.type); });
        outputs.forEach((el) => observer.observe(el, {subtree: true, childList: true, attributes: true, characterData: true}));
        document.querySelector("#ps-run").addEventListener("click", () => { window.changed = []; }, true);
        window.stopWatching = () => observer.disconnect();
    }""")
    run_prompt(page, "What is the capital of France?", 8)
    # The first update the run sends is its first token's, or its prefill's status after a quarter
    # of a second (a slow machine); either way the status line is the first thing to change.
    page.wait_for_function("() => window.changed.length > 0", timeout=60_000)
    first = page.evaluate("() => { window.stopWatching(); return document.querySelector('#ps-status').innerHTML; }")
    assert "ps-prefill" in first or "ps-decode" in first or "ps-done" in first, \
        f"the run's outputs changed before its first update (the status line then held {first[:300]!r})"
    page.wait_for_selector(DONE, timeout=120_000)


def test_a_remote_engine_is_picked_on_the_page_and_its_stream_drawn(browser, app_url: str) -> None:
    """The operator configured a remote engine (here a stand-in replaying vLLM's recorded stream):
    the page offers it, streams its run, and says which charts only the embedded engine can fill."""
    import app
    from inference.remote import RemoteEndpoint
    from tests.remote_standin import StandIn, load_recording

    standin = StandIn(load_recording("remote-vllm.json"))
    saved = app.server.config
    app.server.config = saved.replace(remotes=(RemoteEndpoint("gpu-server", standin.url),))
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(app_url)
        page.wait_for_function("() => window.Plotly !== undefined")
        page.click("#ps-engine input")
        page.click("text=remote: gpu-server")
        page.fill("textarea", "What is the capital of France?")
        page.click("#ps-run")
        page.wait_for_selector(DONE, timeout=60_000)
        assert page.input_value("#ps-text textarea") == "The capital of France is Paris."
        headline = page.inner_text("#ps-headline")
        assert "engine prefill ms" in headline and "remote gpu-server" in headline
        assert "does not publish per-layer times" in page.inner_text("[data-chart=heatmap]")
        assert chart_points(page, "latency", 1) >= 1
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "remote.png"), full_page=True)
        assert errors == [], f"page errors: {errors}"
    finally:
        page.close()
        app.server.config = saved
        standin.close()


def test_recorded_attention_is_drawn_steps_by_positions(page) -> None:
    page.click("#ps-settings .label-wrap")
    page.click("#ps-attention input")
    run_prompt(page, "Name three colours of the rainbow.", 12)
    page.wait_for_selector(DONE, timeout=120_000)
    steps = decode_steps_done(page) + 1
    rows = page.evaluate("() => document.querySelector('[data-chart=attention]').data[0].z.map((r) => r.length)")
    assert len(rows) == steps and rows == sorted(rows) and rows[-1] - rows[0] == steps - 1, rows
    assert "of them hold half" in page.inner_text("[data-chart=attention]")
    page.locator(".ps-chart-attention").screenshot(path=str(SCREENSHOTS / "attention.png"))
    assert page.errors == [], f"page errors: {page.errors}"


def test_a_run_beside_a_cpu_hog_records_its_wait_and_the_page_says_whose_figures_they_are(page) -> None:
    """Programs that keep every core busy (for at most a minute) take the engine's time; the trace
    of the run pressed in the browser records it, and the headline says so."""
    import os
    import subprocess
    import sys

    import app
    from inference.serving.batching import batch_server

    if not app.server.get_engine().measures_cpu_wait:
        pytest.skip("this machine does not count the time a thread waits for a core")
    spin = "import time\nend = time.time() + 60\nwhile time.time() < end:\n    pass\n"
    hogs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(os.cpu_count() or 2)]
    try:
        run_prompt(page, "Write a long story about a lighthouse.", 24)
        page.wait_for_selector(DONE, timeout=120_000)
    finally:
        for hog in hogs:
            hog.kill()
    trace = batch_server(app.server.get_engine())._recent[-1].trace()
    assert trace.cpu_wait_measured and trace.decode_cpu_wait_share >= 0.2, trace.decode_cpu_wait_share
    page.wait_for_selector("#ps-headline .ps-wait")
    assert "for a core" in page.inner_text("#ps-headline .ps-wait")
    page.locator("#ps-headline").screenshot(path=str(SCREENSHOTS / "cpu-wait.png"))


def test_a_notebooks_api_request_joins_the_class_and_shows_as_an_api_run(page, app_url: str) -> None:
    import httpx

    body = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "Count from 1 to 500."}],
            "max_tokens": 300, "temperature": 0}
    run_prompt(page, "Write a long story about a lighthouse keeper.", 400)
    page.wait_for_selector("#ps-status:has-text('Decoding')", timeout=60_000)
    answers: list[httpx.Response] = []
    notebook = threading.Thread(target=lambda: answers.append(
        httpx.post(f"{app_url}v1/chat/completions", json=body, timeout=120)))
    notebook.start()
    try:
        page.wait_for_selector("#ps-status:has-text('step shared with 1 other row')", timeout=60_000)
        page.get_by_role("tab", name="Class").click()
        page.wait_for_selector("#ps-class:has-text('API run')", timeout=30_000)      # its bar, named
        page.screenshot(path=str(SCREENSHOTS / "class-view-api.png"))
    finally:
        notebook.join()
    assert answers[0].status_code == 200 and answers[0].json()["usage"]["completion_tokens"] > 0
    page.get_by_role("tab", name="Live run").click()
    page.click("#ps-stop")
    page.wait_for_selector(DONE, timeout=60_000)


def lesson_traces(page, step: int) -> list[dict]:
    """The traces behind the lesson step on screen, downloaded as a student would (its JSON file)."""
    link = page.locator(f"#ps-lesson-runs-{step} a[href]").first
    return page.request.get(urljoin(page.url, link.get_attribute("href"))).json()


def decode_median(trace: dict) -> float:
    return statistics.median(s["ms"] for s in trace["steps"] if s["phase"] == "decode")


def test_the_lesson_walks_seven_steps_and_each_sentence_quotes_its_own_runs(browser, app_url: str) -> None:
    """A presenter walks the whole lesson on the real model with the keyboard; each step's sentence
    carries the figures of the traces that step just recorded (downloaded, recomputed here)."""
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(app_url)
        page.get_by_role("tab", name="Lesson").click()
        page.locator("#ps-lesson-run-1").wait_for()
        page.keyboard.press("p")                                   # the presenter view
        page.wait_for_function("() => document.body.classList.contains('ps-presenter')")
        said, traces = {}, {}
        for step in range(1, 8):
            page.wait_for_selector(f"#ps-lesson-run-{step}", state="visible")
            assert f"Step {step} of 7" in page.inner_text("#ps-lesson-where")
            page.keyboard.press("r")                               # run the step on screen
            # (attached: the presenter view hides the downloads)
            page.wait_for_selector(f"#ps-lesson-runs-{step} a[href]", state="attached", timeout=300_000)
            said[step], traces[step] = page.inner_text(f"#ps-lesson-said-{step}"), lesson_traces(page, step)
            page.wait_for_selector(f"#ps-lesson-plot-{step} .main-svg", timeout=30_000)   # one chart a step
            if step == 1:
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SCREENSHOTS / "lesson-presenter.png"))
                sizes = page.evaluate("""() => ['#ps-lesson-said-1 p', '.ps-lesson-todo p', '#ps-lesson-run-1']
                    .map((s) => parseFloat(getComputedStyle(document.querySelector(s)).fontSize))""")
                assert min(sizes) >= 18, f"the presenter view's text is at least 18 px, got {sizes}"
                chart = page.locator("#ps-lesson-plot-1 .main-svg").first.bounding_box()
                assert chart["y"] + chart["height"] <= 720, "the step's chart fits the projector's screen"
            page.keyboard.press("ArrowRight")
        first, = traces[1]
        assert (f"Your prompt of {first['prompt_tokens']} tokens waited {first['steps'][0]['ms']:,.0f} ms"
                in said[1]), said[1]
        assert f"at a steady {decode_median(first):.1f} ms each" in said[1], said[1]
        sweep = traces[2]
        t0, t1 = sweep[0]["steps"][0]["ms"], sweep[-1]["steps"][0]["ms"]
        assert sweep[-1]["prompt_tokens"] >= 1024 > sweep[0]["prompt_tokens"]
        assert f"the pause grew {t1 / t0:.1f}x ({t0:,.0f} → {t1:,.0f} ms)" in said[2], said[2]
        assert f"{first['model']['weight_bytes'] / 1e6:,.0f} MB of weights" in said[3], said[3]
        cached, recomputed = traces[4]
        with_ms, without_ms = (sum(s["ms"] for s in t["steps"]) for t in (cached, recomputed))
        assert f"took {with_ms:,.0f} ms against {without_ms:,.0f} ms ({without_ms / with_ms:.1f}x)" in said[4], said[4]
        rows = traces[5]
        assert [t["settings"]["batch_size"] for t in rows] == [1, 2, 8]
        assert (f"A step of 8 rows took {decode_median(rows[-1]):.1f} ms against {decode_median(rows[0]):.1f} ms"
                in said[5]), said[5]
        wide, narrow = traces[6]
        assert f"({decode_median(wide):.1f} → {decode_median(narrow):.1f} ms a token)" in said[6], said[6]
        tokens_per_s = first["summary"]["decode_tokens_per_s"]
        assert f"Measured here: {tokens_per_s:.0f} tokens/s" in said[7] and "Estimate" in said[7], said[7]
        page.keyboard.press("ArrowLeft")                           # back a step: what it measured is still there
        page.wait_for_selector("#ps-lesson-where:has-text('Step 6 of 7')")
        assert said[6] in page.inner_text("#ps-lesson-said-6")
        page.keyboard.press("p")                                   # back to the whole page, its tabs
        page.get_by_role("tab", name="Class").click()
        # The test's page is on loopback: the join box says why a phone cannot scan that address.
        page.wait_for_selector("#ps-class-join .ps-join-local", timeout=30_000)
        assert "--host 0.0.0.0" in page.inner_text("#ps-class-join")
        assert errors == [], f"page errors: {errors}"
    finally:
        page.close()


def test_the_lesson_on_a_phone_is_one_column(browser, app_url: str) -> None:
    page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        page.goto(app_url)
        page.get_by_role("tab", name="Lesson").click()
        page.click("#ps-lesson-run-1")
        page.wait_for_selector("#ps-lesson-runs-1 a[href]", timeout=300_000)
        page.wait_for_selector("#ps-lesson-plot-1 .main-svg", timeout=30_000)      # the step's chart drawn
        boxes = [page.locator(f"#ps-lesson-{part}").bounding_box() for part in ("said-1", "plot-1")]
        assert boxes[0]["y"] + boxes[0]["height"] <= boxes[1]["y"], "on a phone the chart comes after the sentence"
        assert all(box["x"] >= 0 and box["x"] + box["width"] <= 390 for box in boxes), boxes
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390, "nothing wider than the phone"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "lesson-phone.png"), full_page=True)
    finally:
        page.close()
