"""`make bench`: every benchmark, printed as Markdown tables and written to bench/RESULTS.md (the
README quotes its headline ratios). One run, one machine, named at the top."""
import datetime
import os
import platform
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from bench import (engine_bench, experiments_bench, load_bench, page_bench, peer_bench, speculative_bench,
                   startup_bench, tool_bench)
from inference.hardware.roofs import cpu_flags, cpu_name

RESULTS = Path(__file__).with_name("RESULTS.md")

emulated = [f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "PHASESCOPE_KERNEL_ARCH")
            if k in os.environ]
sections = [
    "# PhaseScope benchmarks\n\nWritten by `make bench` on "
    f"{datetime.date.today().isoformat()}, one run on one machine: every ratio below was measured in this run.\n",
    f"machine: {cpu_name()} [{' '.join(cpu_flags())}], {os.cpu_count()} cores, torch {torch.__version__} "
    f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    f"{'; EMULATING: ' + ' '.join(emulated) if emulated else ''}\n",
]
print("\n".join(sections), flush=True)
for bench in (startup_bench.main, peer_bench.main, engine_bench.main, experiments_bench.main, speculative_bench.main,
              page_bench.main, load_bench.main, load_bench.chunk_lines, tool_bench.main):
    sections.append("\n".join(bench()) + "\n")
    print(sections[-1], flush=True)
    RESULTS.with_suffix(".partial.md").write_text("\n".join(sections))
RESULTS.write_text("\n".join(sections))
RESULTS.with_suffix(".partial.md").unlink()
print(f"written to {RESULTS}")
