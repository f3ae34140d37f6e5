"""Weights kept as llama.cpp's blocks of 32, for decode to read as they are: 1 and 0.6 bytes a weight.

`--dtype int8` keeps every matrix as Q8_0 (a float16 scale and 32 int8 per block: 34 bytes per 32
weights); `--dtype q4_1` keeps the decoder layers' matrices as Q4_1 (a float16 scale and minimum and
32 4-bit numbers: 20 bytes) and the LM head (the tied embedding) as Q8_0, which is how the bundled
GGUF file stores them. Blocks are made with llama.cpp's reference rounding. The bundled model's
float32 weights are that GGUF's Q4_1 blocks dequantized, so its Q4_1 blocks come back exactly
(tests/test_quantize.py checks every weight).

The decode kernel (gemv.cpp) streams the blocks, for every product of a few rows (decode steps, and
prompts of up to 32 tokens). Longer prefills and the eager path run PyTorch on the blocks expanded
to float32: the model's weights are replaced by exactly the values the blocks hold, so every path
computes with the same weights and only the kernel reads fewer bytes.
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import torch
from torch import nn

from inference.kernels.build import BLOCK, BLOCK_BYTES, FORMAT_CODES

Q8_0, Q4_1 = FORMAT_CODES["Q8_0"], FORMAT_CODES["Q4_1"]       # the kernel's format codes
FORMAT_NAMES = {code: name for name, code in FORMAT_CODES.items()}
# --dtype name -> the decoder layers' format (the LM head is Q8_0 in both, as in the GGUF)
LAYER_FORMAT = {"int8": Q8_0, "q4_1": Q4_1}
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _roundf(v: np.ndarray) -> np.ndarray:
    """C's roundf (halves away from zero), exactly, on float32 values."""
    t = np.trunc(v)
    return np.where(np.abs(v - t) == 0.5, t + np.sign(v), np.rint(v))


def quantize(weight: np.ndarray, fmt: int) -> np.ndarray:
    """(N, K) float32 -> (N, K / 32 * block bytes) uint8 blocks, as llama.cpp's quantize_row_*_ref."""
    n, k = weight.shape
    if k % BLOCK:
        raise ValueError(f"a row of {k} weights is not whole blocks of {BLOCK}")
    x = weight.astype(np.float32, copy=False).reshape(n, k // BLOCK, BLOCK)
    out = np.empty((n, k // BLOCK, BLOCK_BYTES[fmt]), np.uint8)
    if fmt == Q8_0:
        d = np.abs(x).max(-1) / np.float32(127)
        inverse = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
        q = _roundf(x * inverse[..., None]).astype(np.int8)
        out[..., :2] = d.astype(np.float16)[..., None].view(np.uint8)
        out[..., 2:] = q.view(np.uint8)
    else:
        low, high = x.min(-1), x.max(-1)
        d = (high - low) / np.float32(15)
        inverse = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
        q = np.minimum(15, ((x - low[..., None]) * inverse[..., None] + np.float32(0.5)).astype(np.int8)).astype(np.uint8)
        out[..., :2] = d.astype(np.float16)[..., None].view(np.uint8)
        out[..., 2:4] = low.astype(np.float16)[..., None].view(np.uint8)
        out[..., 4:] = q[..., :16] | (q[..., 16:] << 4)
    return out.reshape(n, -1)


def dequantize(blocks: np.ndarray, fmt: int) -> np.ndarray:
    """The float32 weights `blocks` hold (what llama.cpp's dequantize_row_* gives: d * q + m,
    rounded after each operation). In torch, whose threads share the work: a first start
    expands the bundled model's 135M weights this way."""
    n = blocks.shape[0]
    with warnings.catch_warnings():           # a file's read-only bytes: only read here
        warnings.simplefilter("ignore", UserWarning)
        b = torch.from_numpy(blocks).reshape(n, -1, BLOCK_BYTES[fmt])
    d = b[..., :2].contiguous().view(torch.float16).float()
    if fmt == Q8_0:
        return (b[..., 2:].contiguous().view(torch.int8).float().mul_(d)).reshape(n, -1).numpy()
    m = b[..., 2:4].contiguous().view(torch.float16).float()
    q = b[..., 4:]
    half = q.shape[-1]
    values = torch.empty(*q.shape[:-1], 2 * half)
    values[..., :half] = q & 15
    values[..., half:] = q >> 4
    return values.mul_(d).add_(m).reshape(n, -1).numpy()


@dataclasses.dataclass(frozen=True)
class Blocks:
    """A matrix's blocks, attached to its nn.Linear as `phasescope_blocks` for the decode kernel."""
    format: int
    data: torch.Tensor                          # (rows, K / 32 * block bytes) uint8

    @property
    def nbytes(self) -> int:
        return self.data.numel()


def quantize_model(model: nn.Module, name: str) -> tuple[int, str]:
    """Keep a Llama causal LM's matrices as blocks (`name`: int8 or q4_1) and replace each float
    weight by the values its blocks hold. Returns (bytes of the matrices as decode reads them, a
    line saying what was done)."""
    if name not in LAYER_FORMAT:
        raise ValueError(f"unknown weight format {name!r}; expected one of {sorted(LAYER_FORMAT)}")
    layers = getattr(getattr(model, "model", None), "layers", None)
    head = getattr(model, "lm_head", None)
    if layers is None or not isinstance(head, nn.Linear):
        raise ValueError(f"--dtype {name} needs a Llama-style model (decoder layers and an LM head)")
    targets = [(layer.get_submodule(path), LAYER_FORMAT[name]) for layer in layers for path in PROJECTIONS]
    targets.append((head, Q8_0))
    total, changed = 0, 0.0
    for linear, fmt in targets:
        weight = linear.weight.detach()
        if weight.dtype != torch.float32 or weight.device.type != "cpu":
            raise ValueError(f"--dtype {name} quantizes float32 weights on the CPU")
        blocks = quantize(weight.numpy(), fmt)
        values = torch.from_numpy(dequantize(blocks, fmt)).view_as(weight)
        changed = max(changed, float((values - weight).abs().max()))
        with torch.no_grad():
            weight.copy_(values)
        linear.phasescope_blocks = Blocks(fmt, torch.from_numpy(blocks))
        total += blocks.size
    layer_format = FORMAT_NAMES[LAYER_FORMAT[name]]
    note = (f"{name}: decode reads the layers' matrices as {layer_format} blocks and the LM head as Q8_0 "
            f"({total / 1e6:.0f} MB); prefills longer than 32 tokens run the same values expanded to float32 "
            f"(largest change from the loaded weights: {changed:.2g})")
    return total, note


def blocks_of(linear: nn.Module) -> Blocks | None:
    return getattr(linear, "phasescope_blocks", None)
