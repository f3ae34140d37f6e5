"""`python app.py` as a ZeroGPU Space starts it, on a machine without a GPU (used by test_space.py).

The real `spaces` package runs in its ZeroGPU mode (SPACES_ZERO_GPU=true): it patches torch in
this process, asks the device API (a local stand-in) for a GPU per call, forks a worker, pickles the
arguments and every yield. What needs a real GPU is replaced here: the package reads which CUDA
the torch build targets and keeps its low-level CUDA init (given one that fails, as it fails on a
machine without a GPU), and the worker's CUDA initialisation and its move of CUDA weights are skipped
(the app runs on the CPU in this test, so there are none to move). Everything else is the package's own code.
"""
import runpy
import sys
from pathlib import Path

import torch



def no_cuda() -> None:
    raise RuntimeError("Torch not compiled with CUDA enabled")


def not_in_bad_fork() -> bool:       # the CPU build's own is a lambda, which the package cannot pickle
    return False


torch.version.cuda = torch.version.cuda or "12.8"
# The Space's torch is PyPI's CUDA build: its init must fail as a machine without a GPU fails it.
torch._C._cuda_init = no_cuda
torch.cuda._is_in_bad_fork = not_in_bad_fork

import spaces  # noqa: E402,F401  (before anything uses CUDA: it patches torch)
import spaces.zero.torch as zero_torch  # noqa: E402

zero_torch.init = lambda nvidia_uuid: None
zero_torch.move = lambda callback=None: None

app = Path(__file__).resolve().parent.parent / "app.py"
sys.path.insert(0, str(app.parent))
sys.argv = [str(app)]
runpy.run_path(str(app), run_name="__main__")
