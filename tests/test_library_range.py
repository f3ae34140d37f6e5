"""The engine on the GPU machine's software, mirrored on this CPU: Python 3.12, torch 2.11, transformers
5.17 and no gradio (.venv-gpu-mirror, which `make test` builds; see the Makefile). transformers 5.17
names the KV cache `past_key_values` where 5.24 says `cache`: inference/model/kv_cache.py handles both, and
these are the engine's own tests, the GPU script's dry run among them, passing there."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MIRROR = ROOT / ".venv-gpu-mirror" / "bin" / "python"
ENGINE_TESTS = ["tests/test_engine.py", "tests/test_trace.py", "tests/test_settings.py", "tests/test_scheduler.py",
                "tests/test_cuda.py", "tests/test_gpu_check.py", "tests/test_batching.py", "tests/test_paged.py"]


@pytest.fixture(scope="module")
def mirror() -> Path:
    if not MIRROR.exists():
        if os.environ.get("PHASESCOPE_REQUIRE_MIRROR") == "1":
            pytest.fail("make test builds .venv-gpu-mirror, but it is missing")
        pytest.skip("no .venv-gpu-mirror here: `make gpu-mirror` builds it")
    return MIRROR


def test_the_mirror_is_the_gpu_machines_software(mirror: Path) -> None:
    probe = ("import sys, importlib.util, torch, transformers; "
             "print(sys.version_info[:2] == (3, 12), torch.__version__.split('+')[0], transformers.__version__, "
             "importlib.util.find_spec('gradio') is None, torch.cuda.is_available())")
    found = subprocess.run([str(mirror), "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert found == ["True", "2.11.0", "5.17.0", "True", "False"], found


def test_the_engines_tests_pass_on_transformers_5_17(mirror: Path) -> None:
    done = subprocess.run([str(mirror), "-m", "pytest", "-q", "-p", "no:cacheprovider", *ENGINE_TESTS], cwd=ROOT,
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout.splitlines()[-1], done.stdout[-1000:]
