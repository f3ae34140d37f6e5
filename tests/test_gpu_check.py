"""The GPU script's dry run: bench/gpu_check.sh with tiny shapes on the CPU, as it runs on a GPU
machine (each stage under its own limit, a failed stage reported and the next one run, a table last).
`make test` runs this file in the GPU machine's software too (tests/test_library_range.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("env", "roof", "smollm2-135m", "llama-1b", "llama-8b")


def dry_run(out: Path, python: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TINY": "1", "PYTHON": python}
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out)], env=env, capture_output=True,
                          text=True, timeout=600)


def test_the_dry_run_measures_every_stage_and_ends_with_the_table(tmp_path: Path) -> None:
    done = dry_run(tmp_path, sys.executable)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    status = (tmp_path / "status.txt").read_text().splitlines()
    assert status == [f"{stage} ok" for stage in STAGES], status
    results = json.loads((tmp_path / "results.json").read_text())
    for model in STAGES[2:]:
        figures = results[model]
        assert all(ms > 0 for ms in figures["ttft_ms"].values()), figures
        assert figures["plain_ms"] > 0 and figures["instrumented_ms"] > 0 and figures["step_bytes"] > 0, figures
        assert f"{figures['plain_ms']:.3f} ms" in figures["verdict"], "the verdict quotes the step it judged"
    table = (tmp_path / "table.md").read_text()
    assert table.strip() in done.stdout, "the table is printed last"
    assert "every stage ok" in table and table.count("(tiny): random Llama") == 3, table
    assert len(list(tmp_path.iterdir())) <= 8, "a device machine sends back at most 8 files"


def test_a_failing_stage_is_reported_and_the_next_ones_still_run(tmp_path: Path) -> None:
    python = tmp_path / "python"           # the interpreter, except that the 1B stage fails
    python.write_text(f'#!/bin/sh\ncase "$*" in *llama-1b*) echo "CUDA error: out of memory" >&2; exit 3;; esac\n'
                      f'exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    out = tmp_path / "out"
    done = dry_run(out, str(python))
    assert done.returncode == 0, done.stderr[-3000:]
    status = (out / "status.txt").read_text()
    assert "llama-1b failed (exit 3): CUDA error: out of memory" in status, status
    assert "llama-8b ok" in status, "the stage after the failed one did not run"
    table = (out / "table.md").read_text()
    assert "| llama-1b | failed (exit 3): CUDA error" in table and "stages not ok: llama-1b" in table, table
