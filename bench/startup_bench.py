"""The first start from an empty cache, part by part, each in a fresh process: dequantizing the
GGUF, building the kernel, measuring the roofs, the dtype trial, then loading and warming up the
chosen engine; and the whole `load_engine` from an empty and from a warm cache."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from bench.common import row

PARTS = """
import json, time, torch
t = {}
s = time.perf_counter()
from inference.model.loading import default_model_folder
default_model_folder(torch.float32); t['dequantize the GGUF'] = time.perf_counter() - s; s = time.perf_counter()
from inference.kernels.build import kernel_module
kernel_module(); t['build the kernel'] = time.perf_counter() - s; s = time.perf_counter()
from inference.hardware.roofs import cpu_roofs
cpu_roofs(); t['measure the roofs'] = time.perf_counter() - s; s = time.perf_counter()
from inference.hardware.dtype_choice import cpu_dtype_choice
choice = cpu_dtype_choice(); t['dtype trial (both dtypes, 64 tokens each)'] = time.perf_counter() - s; s = time.perf_counter()
from inference.model.factory import load_engine
load_engine('SmolLM2-135M-Instruct'); t['load and warm up the chosen engine'] = time.perf_counter() - s
print(json.dumps({'parts': t, 'dtype': choice.dtype}))
"""
WHOLE = "import time; s = time.perf_counter(); from inference.model.factory import load_engine; " \
        "load_engine('SmolLM2-135M-Instruct'); print(time.perf_counter() - s)"


def _python(code: str, cache: str) -> str:
    env = {**os.environ, "PHASESCOPE_CACHE": cache, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip().splitlines()[-1]


def main() -> list[str]:
    with tempfile.TemporaryDirectory() as cache:
        result = json.loads(_python(PARTS, cache))
    with tempfile.TemporaryDirectory() as cache:
        first = float(_python(WHOLE, cache))
        warm = float(_python(WHOLE, cache))
    lines = ["| first start (empty cache) | seconds | note |", "|---|---|---|"]
    lines += [row(part, f"{seconds:.1f}", "one after another, fresh process") for part, seconds in result["parts"].items()]
    lines += [row("whole start, empty cache", f"{first:.1f}", f"kernel built beside the load; goal < 60 s; chose {result['dtype']}"),
              row("whole start, warm cache", f"{warm:.1f}", "goal < 5 s (imports included)")]
    return lines


if __name__ == "__main__":
    print("\n".join(main()))
