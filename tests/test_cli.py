"""The command line on the real bundled model, and its error paths (one line, exit 2, no traceback)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inference.cli.commands import ALONE
from inference.trace import read_trace, sweep_from_json

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "inference", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_run_answers_with_the_real_model_and_writes_a_trace(tmp_path: Path) -> None:
    out, perfetto = tmp_path / "trace.json", tmp_path / "perfetto.json"
    result = cli("run", "What is the capital of France?", "--dtype", "float32", "--max-new-tokens", "20",
                 "--json", str(out), "--perfetto", str(perfetto))
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    for label in ("TTFT", "ms/token", "tokens/s", "KV cache", "GB/s"):
        assert label in result.stdout, f"summary lacks {label!r}:\n{result.stdout}"
    trace = read_trace(out.read_text())
    assert "The capital of France is Paris." in trace.text
    assert trace.model.layers == 30 and all(len(s.layer_ms) == 30 for s in trace.steps)
    assert trace.serving == "solo" and trace.serving_why == ALONE, "through the front door, alone, and why"
    assert json.loads(out.read_text())["schema"] == "phasescope.trace/1"
    events = json.loads(perfetto.read_text())["traceEvents"]
    assert sum(1 for e in events if e.get("tid") == 1 and e["ph"] == "X") == len(trace.steps)


def test_sweep_writes_one_trace_per_prompt_length(tmp_path: Path) -> None:
    out = tmp_path / "sweep.json"
    result = cli("sweep", "--prompt-tokens", "16,512", "--max-new-tokens", "3", "--dtype", "float32",
                 "--json", str(out))
    assert result.returncode == 0, result.stderr
    short, long = sweep_from_json(out.read_text())
    assert (short.prompt_tokens, long.prompt_tokens) == (16, 512)
    assert (short.steps[0].tokens_in, long.steps[0].tokens_in) == (16, 512)
    assert long.steps[0].flops > 512 / 16 * short.steps[0].flops, "the cost model's prefill work follows the prompt"


@pytest.mark.parametrize("args, message", [
    (["run", ""], "prompt is empty"),
    (["run", "   "], "prompt is empty"),
    (["run", "hi", "--max-new-tokens", "-3"], "max_new_tokens must be between"),
    (["run", "hi", "--max-new-tokens", "many"], "invalid int value"),
    (["run", "hi", "--batch-size", "0"], "batch_size must be between"),
    (["run", "hi", "--temperature", "nan"], "temperature must be between"),
    (["run", "hi", "--top-p", "1.5"], "top_p must be between"),
    (["run"], "either a PROMPT or --prompt-tokens"),
    (["run", "hi", "--model", "/no/such/model/folder"], "could not load model"),
    (["run", "--prompt-tokens", "9000"], "holds at most 8,192 tokens"),
    (["sweep", "--prompt-tokens", "16,-4"], "at least 1"),
    (["run", "hi", "--device", "tpu"], "invalid choice"),
    (["run", "hi", "--speculate", "lookup", "--draft-tokens", "40"], "draft_tokens must be between 1 and 16"),
    (["run", "hi", "--speculate", "draft"], "needs --draft-model"),
    (["run", "hi", "--speculate", "lookup", "--batch-size", "2"], "runs one sequence"),
    (["speculate", "--draft-tokens", "2,99"], "go up to 16"),
    (["prefix", "--students", "0"], "at least one student"),
    (["prefix", "--context-tokens", "9000"], "holds at most 8,192 tokens"),
    (["serve", "--max-tokens", "0"], "--max-tokens must be at least 1"),
    (["serve", "--max-concurrent", "-2"], "--max-concurrent must be at least 1"),
])
def test_bad_arguments_give_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = cli(*args)
    assert result.returncode == 2, f"exit {result.returncode} for {args}: {result.stderr}"
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0], result.stderr


def test_chat_reuses_the_conversation_cache_and_answers_as_without_it(tmp_path: Path) -> None:
    turns = ["--turn", "What is the capital of France?", "--turn", "And of Japan?"]
    runs = {}
    for mode in ("reuse", "no-reuse"):
        out = tmp_path / f"{mode}.json"
        result = cli("chat", *turns, "--dtype", "float32", "--max-new-tokens", "16", "--json", str(out),
                     *(["--no-reuse"] if mode == "no-reuse" else []))
        assert result.returncode == 0, result.stderr
        runs[mode] = sweep_from_json(out.read_text())
    reused, fresh = runs["reuse"], runs["no-reuse"]
    assert "Paris" in reused[0].text and "Tokyo" in reused[1].text
    assert [t.text for t in reused] == [t.text for t in fresh], "reusing the cache changed the answer"
    assert reused[1].reused_tokens > reused[0].prompt_tokens and fresh[1].reused_tokens == 0
    assert reused[1].steps[0].tokens_in == reused[1].prompt_tokens - reused[1].reused_tokens


def test_run_with_speculation_writes_plain_decodes_tokens_and_says_what_the_checks_did(tmp_path: Path) -> None:
    prompt = "Copy this list exactly: red, green, blue, red, green, blue, red, green, blue"
    traces = {}
    for flags in ([], ["--speculate", "lookup", "--draft-tokens", "3"]):
        out = tmp_path / f"{len(flags)}.json"
        result = cli("run", prompt, "--dtype", "float32", "--max-new-tokens", "24", "--json", str(out), *flags)
        assert result.returncode == 0, result.stderr
        traces[bool(flags)] = read_trace(out.read_text())
    plain, spec = traces[False], traces[True]
    assert spec.output_ids == plain.output_ids and spec.text == plain.text
    assert "speculate " in result.stdout and "drafted" in result.stdout
    assert f"-> {len(spec.output_ids)} new tokens" in result.stdout
    assert sum(s.accepted for s in spec.steps) > 0 and len(spec.steps) < len(plain.steps)


def test_serve_on_a_port_already_taken_says_so() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = cli("serve", "--port", str(taken.getsockname()[1]), "--dtype", "float32")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "could not listen on 127.0.0.1" in result.stderr
