"""Load scenario: N simulated students, each sending a short prompt through the real API at once.
Prints completed runs, errors, and p50/p90 of queue wait and of time to first token (both as a
student sees them: from pressing Run)."""
from __future__ import annotations

import threading
import time

from gradio_client import Client

import app
from bench.common import row
from inference.background import ENGINE_THREAD
from inference.trace import percentile

STUDENTS = 20
PROMPTS = ["What is the capital of France?", "Name three colours.", "What is 2 + 2?", "Say hello in Spanish."]


def _student(url: str, prompt: str, results: list[dict]) -> None:
    record: dict = {"error": None}
    start = time.perf_counter()
    try:
        job = Client(url, verbose=False).submit(prompt, 16, 0, 1, 0, True, 1, api_name="/run")
        for update in job:
            now = time.perf_counter() - start
            record.setdefault("queue_wait", now)          # the first update comes when the run starts
            if update[3] and "ttft" not in record:
                record["ttft"] = now
        job.result()
    except Exception as exc:        # a failed run is counted, not fatal to the benchmark
        record["error"] = f"{type(exc).__name__}: {exc}"
    results.append(record)


def main(students: int = STUDENTS) -> list[str]:
    app.get_engine(progress=lambda _: None)
    url = app.launch_on_free_port()
    results: list[dict] = []
    threads = [threading.Thread(target=_student, args=(url, PROMPTS[i % len(PROMPTS)], results))
               for i in range(students)]
    for thread in threads:
        thread.start()
    all_done = threading.Event()
    threading.Thread(target=lambda: ([t.join() for t in threads], all_done.set())).start()
    ENGINE_THREAD.serve_forever(stop=all_done)          # runs execute on this (main) thread, as in app.py
    app.demo.close()
    ok = [r for r in results if r["error"] is None and "ttft" in r]
    waits = [r["queue_wait"] for r in ok]
    ttfts = [r["ttft"] for r in ok]
    errors = [r["error"] for r in results if r["error"]]
    lines = ["| load figure | value | note |", "|---|---|---|",
             row(f"{students} students at once, 16 new tokens each", f"{len(ok)} completed, {len(errors)} errors",
                 "; ".join(sorted(set(errors)))[:120])]
    if ok:
        lines += [row("queue wait p50 / p90", f"{percentile(waits, 50):.1f} s / {percentile(waits, 90):.1f} s",
                      "one run at a time on the shared model"),
                  row("time to first token p50 / p90", f"{percentile(ttfts, 50):.1f} s / {percentile(ttfts, 90):.1f} s",
                      "from pressing Run, queue included")]
    return lines


if __name__ == "__main__":
    print("\n".join(main()))
