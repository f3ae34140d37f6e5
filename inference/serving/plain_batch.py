"""A shared decode step in plain PyTorch, for machines without the fused kernel (no compiler, not
x86: an Apple-silicon laptop, a CPU Space without g++).

The batch's rows go through each projection and MLP together, so every weight is read once per
step for the whole class, as with the kernel; attention runs row by row, each over its own
blocks of the server's pool (different lengths, no padding). The arithmetic is the Llama modules' own (their
Linear, RMSNorm, MLP, rotary and attention functions), so a run writes the tokens it writes alone.
Stamps go to the run's LayerTimer as the layers' hooks would (the layers are not called as
modules, since each would take one cache).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from inference.serving.paged import gather_layer, write_position
from inference.timing import LayerTimer


def plain_stackable(model: nn.Module) -> bool:
    """Whether a causal LM's decode steps can be shared here: a Llama (its layers Llama attention,
    an MLP module and Llama's RMSNorms) with an nn.Linear head."""
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaModel, LlamaRMSNorm

    inner = getattr(model, "model", None)
    if type(inner) is not LlamaModel or len(inner.layers) == 0 or not isinstance(getattr(model, "lm_head", None),
                                                                                   nn.Linear):
        return False
    return all(type(layer.self_attn) is LlamaAttention and type(layer.input_layernorm) is LlamaRMSNorm
               and type(layer.post_attention_layernorm) is LlamaRMSNorm for layer in inner.layers)


class PlainStack:
    """`decode_paged(input_ids, pool, rows)` as FusedStack's, in PyTorch: (M, 1) newest tokens of
    the rows (PagedRow) in order -> (M, 1, hidden) after the final norm."""

    def __init__(self, model: nn.Module, timer: LayerTimer):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        from transformers.models.llama.modeling_llama import eager_attention_forward

        self.model, self.timer = model.model, timer
        self.attention: Callable[..., Any] = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.model.config._attn_implementation, eager_attention_forward)

    def decode_paged(self, input_ids: torch.Tensor, pool: Any, rows: list[Any]) -> torch.Tensor:
        """`decode` over the shared server's block pool (FusedStack.decode_paged's contract). PyTorch's
        attention takes contiguous K and V, so each row's are gathered from its blocks, layer by
        layer, every step: a copy of its whole cache, where the kernel reads the blocks in place."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        model, timer, stamp = self.model, self.timer, self.timer.clock.stamp
        position_ids = torch.tensor([row.length for row in rows], device=input_ids.device)
        hidden = model.embed_tokens(input_ids)                                       # (M, 1, hidden)
        cos, sin = model.rotary_emb(hidden, position_ids=position_ids[:, None])
        for i, layer in enumerate(model.layers):
            timer.check_cancel()
            attn = layer.self_attn
            start = stamp()
            residual, x = hidden, layer.input_layernorm(hidden)
            attn_start = stamp()
            shape = (x.shape[0], 1, -1, attn.head_dim)
            q = attn.q_proj(x).view(shape).transpose(1, 2)                           # (M, heads, 1, d)
            k = attn.k_proj(x).view(shape).transpose(1, 2)                           # (M, kv_heads, 1, d)
            v = attn.v_proj(x).view(shape).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            outs = []
            for m, row in enumerate(rows):
                write_position(pool, row, i, k[m, :, 0], v[m, :, 0])
                keys, values = gather_layer(pool, i, row.blocks, row.length + 1)
                out, _ = self.attention(attn, q[m:m + 1], keys, values, None, dropout=0.0, scaling=attn.scaling)
                outs.append(out)                                                     # (1, 1, heads, d)
            hidden = residual + attn.o_proj(torch.cat(outs).reshape(x.shape[0], 1, -1))
            attn_end = stamp()
            x = layer.post_attention_layernorm(hidden)
            mlp_start = stamp()
            hidden = hidden + layer.mlp(x)
            end_stamp = stamp()
            timer.record_layer(i, (start, end_stamp), (attn_start, attn_end), (mlp_start, end_stamp))
        return model.norm(hidden)
