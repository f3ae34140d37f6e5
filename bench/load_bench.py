"""A class at once: N simulated students press Run through the real API (Gradio's HTTP API, from
one light client process), their arrivals spread over a few seconds, each asking for 64 new
tokens; with runs sharing decode steps (continuous batching, the default), again with the kernel
switched off (the plain PyTorch shared step, as where it did not build), and in solo mode (one run
at a time), on the same server in the same run. Prints completed runs, errors,
p50/p90 time to first token as a student sees it (from pressing Run) and the aggregate decode rate
(every run's tokens over the whole session's time)."""
from __future__ import annotations

import asyncio
import json
import multiprocessing
import random
import threading
import time
from typing import Callable

import httpx

import app
from bench.common import row
from inference.serving.background import ENGINE_THREAD
from inference.serving.batching import batch_server
from inference.trace import percentile

STUDENTS = 30
NEW_TOKENS = 64
SPREAD_S = 3.0
PROMPTS = ["What is the capital of France?", "Name three colours.", "What is 2 + 2?", "Say hello in Spanish.",
           "Why is the sky blue? Answer in one sentence.", "Write a haiku about the sea."]


def api_inputs(url: str, api_name: str) -> Callable[..., list]:
    """A maker of the whole input list the HTTP API wants for `api_name`: each named parameter (its
    default unless given) and None where the handler takes per-session state, as gradio_client
    builds it, from the server's own /config and /gradio_api/info (read once)."""
    config = httpx.get(f"{url}/config").json()
    dependency = next(d for d in config["dependencies"] if d.get("api_name") == api_name)
    kinds = {c["id"]: c["type"] for c in config["components"]}
    named = iter(httpx.get(f"{url}/gradio_api/info").json()["named_endpoints"][f"/{api_name}"]["parameters"])
    slots = [None if kinds[component] == "state" else next(named) for component in dependency["inputs"]]

    def inputs(**values: object) -> list:
        return [None if slot is None else values.get(slot["parameter_name"], slot["parameter_default"])
                for slot in slots]

    return inputs


async def _student(http: httpx.AsyncClient, url: str, body: list, delay: float) -> dict:
    """One student: presses Run after `delay`, reads the stream as the page would. The first token
    is the first update whose text output (the 4th) is a non-empty string; later updates are only
    read, not decoded (a student's browser decodes them on its own machine, not on the server's)."""
    await asyncio.sleep(delay)
    record: dict = {"error": None}
    start = time.perf_counter()
    try:
        posted = await http.post(f"{url}/gradio_api/call/run", json={"data": body})
        posted.raise_for_status()
        event = ""
        async with http.stream("GET", f"{url}/gradio_api/call/run/{posted.json()['event_id']}") as stream:
            async for line in stream.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "error":
                    raise RuntimeError(f"the server sent an error: {line[5:].strip()[:200]}")
                elif line.startswith("data:") and event == "generating" and "ttft" not in record:
                    text = json.loads(line[5:])[3]          # skipped outputs come as dicts
                    if isinstance(text, str) and text:
                        record["ttft"] = time.perf_counter() - start
                elif event == "complete":
                    break
        if event != "complete":
            raise RuntimeError("the stream ended without completing")
        record["end"] = time.perf_counter()
        record["total"] = record["end"] - start
    except Exception as exc:        # a failed run is counted, not fatal to the benchmark
        record["error"] = f"{type(exc).__name__}: {exc}"
    return record


async def _students(url: str, students: int) -> list[dict]:
    rng = random.Random(0)
    timeout = httpx.Timeout(600.0, connect=30.0)
    limits = httpx.Limits(max_connections=2 * students + 4)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
        inputs = api_inputs(url, "run")
        bodies = [inputs(prompt=prompt, max_new_tokens=NEW_TOKENS, temperature=0, top_p=1, seed=0, kv_cache=True,
                         batch_size=1) for prompt in PROMPTS]
        return list(await asyncio.gather(*(_student(http, url, bodies[i % len(bodies)], rng.uniform(0, SPREAD_S))
                                           for i in range(students))))


def _class(url: str, students: int, out: "multiprocessing.Queue[list[dict]]") -> None:
    """The students, in a process of their own (their browsers are not on the server), on one
    event loop: a load generator must not take the cores the server it measures needs (gradio_client
    polls each job's outputs a thousand times a second in a thread of its own; 30 of them cost the
    2-core server more than the shared batch's gain)."""
    out.put(asyncio.run(_students(url.rstrip("/"), students)))


def _session(url: str, students: int, runs: list) -> dict:
    """One class pressing Run; engine work happens on this (main) thread, as in app.py."""
    out: multiprocessing.Queue[list[dict]] = multiprocessing.get_context("spawn").Queue()
    process = multiprocessing.get_context("spawn").Process(target=_class, args=(url, students, out))
    process.start()
    results: list[dict] = []
    all_done = threading.Event()
    threading.Thread(target=lambda: (results.extend(out.get()), all_done.set()), daemon=True).start()
    ENGINE_THREAD.serve_forever(stop=all_done)
    process.join()
    ok = [r for r in results if r["error"] is None and "ttft" in r]
    wall = max(r["end"] for r in ok) - min(r["end"] - r["total"] for r in ok) if ok else 1.0
    rows = max((step.batch_rows for run in runs for step in run.steps), default=0)
    return {"ok": ok, "errors": [r["error"] for r in results if r["error"]],
            "rate": sum(len(run.steps) for run in runs) / wall, "ttft": [r["ttft"] for r in ok], "rows": rows}


def chunk_lines(chunk: int = 128) -> list[str]:
    """The chunked-prefill experiment (the page's, inference/lessons/experiments.py) with 8 streaming runs."""
    from inference.lessons.experiments import run_chunked_prefill

    result = run_chunked_prefill(app.server.get_engine(progress=lambda _: None), 2048, chunk, streams=8)
    off, on = result.worst_step_ms(False), result.worst_step_ms(True)
    ttft_off, ttft_on = result.off[1].summary.ttft_ms, result.on[1].summary.ttft_ms
    return ["| chunked prefill (engine, no page) | value | note |", "|---|---|---|",
            row(f"8 runs decoding, a 2,048-token prompt joins: their worst step, off / chunks of {chunk}",
                f"{off / on:.1f}x smaller", f"{off:.0f} ms vs {on:.0f} ms (goal >= 3x)"),
            row("the long prompt's time to first token, off / chunks", f"{ttft_on / ttft_off:.1f}x later",
                f"{ttft_off:.0f} ms vs {ttft_on:.0f} ms (the price)")]


def main(students: int = STUDENTS) -> list[str]:
    engine = app.server.get_engine(progress=lambda _: None)
    server = batch_server(engine)
    url = app.launch_on_free_port()
    runs: list = []                                  # every run started, batched or solo
    real_submit, real_generate = server.submit, engine.generate
    server.submit = lambda *a, **k: runs.append(real_submit(*a, **k)) or runs[-1]
    engine.generate = lambda *a, **k: runs.append(real_generate(*a, **k)) or runs[-1]
    sessions = {}
    try:
        kernel = engine.kernel
        for mode, solo, kernel_on in (("batched", False, True), ("batched, no kernel", False, False),
                                      ("solo", True, True)):
            runs.clear()
            app.server.config = app.server.config.replace(solo=solo)
            engine.kernel = kernel if kernel_on else None    # as where it did not build: the plain shared step
            sessions[mode] = _session(url, students, runs)
    finally:
        del server.submit, engine.generate
        engine.kernel = kernel
        app.server.config = app.server.config.replace(solo=False)
        app.demo.close()
    lines = ["| a class at once (load) | value | note |", "|---|---|---|"]
    for mode, s in sessions.items():
        lines.append(row(f"{mode}: {students} students, {NEW_TOKENS} new tokens each, arriving over {SPREAD_S:g} s",
                         f"{len(s['ok'])} completed, {len(s['errors'])} errors", "; ".join(sorted(set(s["errors"])))[:120]))
        if s["ttft"]:
            lines.append(row(f"{mode}: time to first token p50 / p90",
                             f"{percentile(s['ttft'], 50):.1f} s / {percentile(s['ttft'], 90):.1f} s",
                             "from pressing Run, queue included"))
        lines.append(row(f"{mode}: aggregate decode tokens/s", f"{s['rate']:.1f}",
                         f"every run's tokens / session time; at most {s['rows']} sequences in a step"))
    s = sessions["solo"]
    for mode in ("batched", "batched, no kernel"):
        b = sessions[mode]
        if b["ttft"] and s["ttft"]:
            lines += [row(f"{mode} / solo: aggregate tokens/s", f"{b['rate'] / s['rate']:.1f}x", "goal >= 3x"),
                      row(f"{mode} / solo: p90 time to first token",
                          f"{percentile(b['ttft'], 90) / percentile(s['ttft'], 90):.2f}", "goal <= 0.2")]
    return lines


if __name__ == "__main__":
    print("\n".join(main()) + "\n")
    print("\n".join(chunk_lines()))
