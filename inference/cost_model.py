"""FLOPs and bytes moved by one forward pass: the numbers that place a step on the roofline.

A model of the minimum work, not a measurement: every weight is read once per forward pass, the
KV cache is read once and the new K/V written once, and each layer's activations are written and
read back. Attention counts only the causal (unmasked) query-key pairs.
"""
from __future__ import annotations

from dataclasses import dataclass

from inference.trace import ModelInfo, dtype_itemsize


@dataclass(frozen=True)
class StepCost:
    flops: float
    weight_bytes: float
    kv_read_bytes: float
    kv_write_bytes: float
    activation_bytes: float

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.kv_read_bytes + self.kv_write_bytes + self.activation_bytes

    @property
    def intensity(self) -> float:
        """FLOPs per byte moved."""
        return self.flops / self.bytes


def step_cost(info: ModelInfo, batch: int, tokens_in: int, past: int, blocks: bool = False) -> StepCost:
    """Cost of one forward pass: `batch` sequences, each feeding `tokens_in` new tokens after
    `past` cached ones; logits are computed for the last position only. `blocks`: the pass read
    the matrices as the model's blocks (the decode kernel, for int8 and q4_1 weights), not in its
    dtype (prefill and the eager path run them expanded)."""
    itemsize = dtype_itemsize(info.dtype)
    lm_head_params = info.vocab * info.hidden
    layer_matmul_params = info.matmul_params - lm_head_params
    # Each new token j (0-based) attends to past + j + 1 positions; QK^T and AV are
    # 2 FLOPs per multiply-add each, over heads * head_dim.
    attended = tokens_in * past + tokens_in * (tokens_in + 1) // 2
    attention_flops = 4 * info.layers * info.heads * info.head_dim * attended
    flops = batch * (2 * tokens_in * layer_matmul_params + attention_flops + 2 * lm_head_params)

    kv_per_token = info.kv_bytes_per_token
    # Per layer and token: the hidden state through norm, attention in/out and residual
    # (about 4 x hidden) and the MLP's gate, up and down activations (about 3 x intermediate),
    # each written once and read once.
    activation_per_token = 2 * info.layers * (4 * info.hidden + 3 * info.intermediate) * itemsize
    return StepCost(
        flops=float(flops),
        weight_bytes=float(info.matmul_bytes if blocks and info.matmul_bytes else info.matmul_params * itemsize),
        kv_read_bytes=float(batch * past * kv_per_token),
        kv_write_bytes=float(batch * tokens_in * kv_per_token),
        activation_bytes=float(batch * tokens_in * activation_per_token + batch * info.vocab * 4),
    )


def compute_bound_batch(info: ModelInfo, ridge_intensity: float, context: int) -> float:
    """Roofline estimate of the batch at which a decode step at `context` tokens turns compute-bound:
    its FLOPs grow with the batch while the weight bytes, which dominate what it moves, do not."""
    one = step_cost(info, 1, 1, context - 1)
    return ridge_intensity * one.weight_bytes / one.flops


def shared_decode_cost(info: ModelInfo, groups: list[tuple[int, int]]) -> StepCost:
    """One decode step shared by several runs (continuous batching, always the fused kernel):
    `groups` holds each run's (rows, past tokens). The weights are read once for all of them;
    everything else adds up."""
    costs = [step_cost(info, rows, 1, past, blocks=True) for rows, past in groups]
    return StepCost(flops=sum(c.flops for c in costs), weight_bytes=costs[0].weight_bytes,
                    kv_read_bytes=sum(c.kv_read_bytes for c in costs),
                    kv_write_bytes=sum(c.kv_write_bytes for c in costs),
                    activation_bytes=sum(c.activation_bytes for c in costs))
