"""`make bench`: every benchmark, printed as Markdown tables for the README."""
import os
import platform

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from bench import engine_bench, load_bench, page_bench
from inference.device import cpu_name

print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} "
      f"({torch.get_num_threads()} threads), Python {platform.python_version()}\n", flush=True)
print("\n".join(engine_bench.main()) + "\n", flush=True)
print("\n".join(page_bench.main()) + "\n", flush=True)
print("\n".join(load_bench.main()) + "\n", flush=True)
