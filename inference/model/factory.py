"""Building an Engine from names, as the page, the CLI and the benchmarks ask for one: the device,
the dtype (asked for, or measured on this CPU), the model, its llama.cpp blocks where asked, the
device's roofs, and a warm-up.

Apart from inference/engine.py so that the dtype trial (inference/hardware/dtype_choice.py), which runs an
Engine, and the factory that asks it which dtype to use do not import each other.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any

from inference.engine import Engine
from inference.hardware.cpu_quota import fit_threads_to_quota
from inference.kernels.build import build_in_background, kernel_module
from inference.model.loading import LoadedModel

log = logging.getLogger("phasescope")


def with_blocks(loaded: LoadedModel, name: str, progress: Any = lambda _: None) -> tuple[LoadedModel, str]:
    """The model with its matrices also kept as int8 or q4_1 blocks for decode (inference/kernels/quantize.py):
    its ModelInfo says so and counts the bytes decode reads; and a line saying what was done."""
    from inference.kernels.quantize import quantize_model

    progress(f"Keeping the weights as {name} blocks for decode")
    matmul_bytes, note = quantize_model(loaded.model, name)
    info = loaded.info
    other = info.weight_bytes - info.matmul_params * 4          # norms (and an untied embedding), in float32
    head_shared = loaded.model.lm_head.weight is loaded.model.get_input_embeddings().weight
    if not head_shared:
        other -= info.vocab * info.hidden * 4                   # the embedding's rows are read one at a time
    info = dataclasses.replace(info, weights=name, matmul_bytes=matmul_bytes, weight_bytes=matmul_bytes + max(0, other))
    progress(note)
    return dataclasses.replace(loaded, info=info), note


def load_engine(model: str, device: str = "auto", dtype: str = "auto",
                progress: Any = lambda _: None, warm_up: bool = True, wait_for_kernel: bool = True) -> Engine:
    """Resolve device and dtype names, load the model and measure (or look up) the device's roofs;
    then warm it up and set the kernel's variant for this machine, unless `warm_up` is False (a
    process that must not run the model yet). Without `wait_for_kernel` (a page that should answer
    before a first start's kernel build ends) the engine comes back at once running plain PyTorch,
    and a thread switches it to the kernel when the build ends (Engine.finish_kernel)."""
    from inference.hardware.device import BLOCK_DTYPES, resolve_device
    from inference.hardware.dtype_choice import choose_dtype
    from inference.model.loading import load_model

    torch_device = resolve_device(device)
    if torch_device.type == "cpu":      # the compiler runs beside the model's first load (once)
        quota_note = fit_threads_to_quota()
        if quota_note:
            progress(quota_note)
        build_in_background()
    torch_dtype, why = choose_dtype(dtype, torch_device, progress, wait_for_kernel)
    if dtype in BLOCK_DTYPES and torch_device.type != "cpu":
        raise ValueError(f"--dtype {dtype} runs on the CPU decode kernel only; on CUDA use bfloat16 or float32")
    loaded = load_model(model, torch_device, torch_dtype, progress)
    if dtype in BLOCK_DTYPES:
        loaded, why = with_blocks(loaded, dtype, progress)
    progress("Measuring this device's compute and bandwidth roofs (cached after the first time)")
    engine = Engine(loaded, wait_for_kernel=wait_for_kernel, dtype_choice=why)
    if warm_up:
        engine.warm_up()
        if engine.kernel_pending:
            threading.Thread(target=_switch_when_built, args=(engine, progress), name="phasescope-kernel-switch",
                             daemon=True).start()
        else:
            engine.tune(progress)
    return engine


def _switch_when_built(engine: Engine, progress: Any) -> None:
    """Wait for the kernel's build, then switch the engine to it where its runs execute (the
    engine thread, where a server serves one: the roofs and the variants' timings are measured
    there, as the runs will be; inference/serving/background.py)."""
    from inference.serving.background import ENGINE_THREAD

    kernel_module()
    try:
        ENGINE_THREAD.call(lambda: engine.finish_kernel(progress))
    except Exception:                     # the engine keeps running (plain PyTorch, or the kernel's default variant)
        log.exception("Switching to the fast decode kernel failed")
