"""`make bench`: every benchmark, printed as Markdown tables for the README."""
import os
import platform

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from bench import engine_bench, load_bench, page_bench, peer_bench, startup_bench
from inference.roofs import cpu_flags, cpu_name

emulated = [f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "PHASESCOPE_KERNEL_ARCH")
            if k in os.environ]
print(f"machine: {cpu_name()} [{' '.join(cpu_flags())}], {os.cpu_count()} cores, torch {torch.__version__} "
      f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
      f"{'; EMULATING: ' + ' '.join(emulated) if emulated else ''}\n", flush=True)
print("\n".join(startup_bench.main()) + "\n", flush=True)
print("\n".join(peer_bench.main()) + "\n", flush=True)
print("\n".join(engine_bench.main()) + "\n", flush=True)
print("\n".join(page_bench.main()) + "\n", flush=True)
print("\n".join(load_bench.main()) + "\n", flush=True)
print("\n".join(load_bench.chunk_lines()) + "\n", flush=True)
