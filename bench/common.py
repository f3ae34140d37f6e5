"""Small helpers shared by the benchmarks (and the browser and remote tests): decode rates, medians,
Chromium, a free port."""
from __future__ import annotations

import socket
import statistics
import time
from typing import Any, Callable, Iterable


def decode_rate(token_times: list[float]) -> float:
    """Tokens/s between the first token and the last (the prefill pause is left out)."""
    return (len(token_times) - 1) / (token_times[-1] - token_times[0])


def stamps(tokens: Iterable[object]) -> list[float]:
    """perf_counter when each item of a stream arrives."""
    return [time.perf_counter() for _ in tokens]


def interleaved_medians(variants: dict[str, Callable[[], Any]], repeats: int) -> dict[str, Any]:
    """Median of each variant's figure (of each of its figures, where it gives a tuple), the variants
    taking turns so machine noise hits all alike."""
    results: dict[str, list[Any]] = {name: [] for name in variants}
    for name, fn in variants.items():       # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            results[name].append(fn())
    return {name: tuple(map(statistics.median, zip(*values))) if isinstance(values[0], tuple)
            else statistics.median(values) for name, values in results.items()}


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]


def row(label: str, value: str, note: str = "") -> str:
    return f"| {label} | {value} | {note} |"


def free_port(host: str = "127.0.0.1") -> int:
    """A loopback port nobody listens on now (for a server started next)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
