"""A shared decode step in plain PyTorch, for machines without the fused kernel (no compiler, not
x86: an Apple-silicon laptop, a CPU Space without g++).

The batch's rows go through each projection and MLP together, so every weight is read once per
step for the whole class, as with the kernel; attention runs run by run, each row over its own
run's cache (different lengths, no padding). The arithmetic is the Llama modules' own (their
Linear, RMSNorm, MLP, rotary and attention functions), so a run writes the tokens it writes alone.
Stamps go to the run's LayerTimer as the layers' hooks would (the layers are not called as
modules, since each would take one cache).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from inference.model.kv_cache import decodable_in_place, layer_kv, next_slot, rows_of
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
    """`decode(input_ids, caches)` as FusedStack's, in PyTorch: (M, 1) newest tokens of the runs
    whose caches are listed in order -> (M, 1, hidden) after the final norm; each cache grows by one."""

    def __init__(self, model: nn.Module, timer: LayerTimer):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        from transformers.models.llama.modeling_llama import eager_attention_forward

        self.model, self.timer = model.model, timer
        self.attention: Callable[..., Any] = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.model.config._attn_implementation, eager_attention_forward)

    def decode(self, input_ids: torch.Tensor, caches: list[Any]) -> torch.Tensor:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        model, timer, stamp = self.model, self.timer, self.timer.clock.stamp
        layers = model.layers
        rows = [rows_of(cache) for cache in caches]
        in_place = [decodable_in_place(cache, len(layers), n) for cache, n in zip(caches, rows)]
        lengths = [cache.get_seq_length() for cache in caches]
        position_ids = torch.tensor([p for p, n in zip(lengths, rows) for _ in range(n)], device=input_ids.device)
        hidden = model.embed_tokens(input_ids)                                       # (M, 1, hidden)
        cos, sin = model.rotary_emb(hidden, position_ids=position_ids[:, None])
        for i, layer in enumerate(layers):
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
            outs, first = [], 0
            for cache, n, whole in zip(caches, rows, in_place):
                end = first + n
                keys, values = self._extend(cache, i, k[first:end], v[first:end], whole)
                out, _ = self.attention(attn, q[first:end], keys, values, None, dropout=0.0, scaling=attn.scaling)
                outs.append(out)                                                     # (n, 1, heads, d)
                first = end
            hidden = residual + attn.o_proj(torch.cat(outs).reshape(x.shape[0], 1, -1))
            attn_end = stamp()
            x = layer.post_attention_layernorm(hidden)
            mlp_start = stamp()
            hidden = hidden + layer.mlp(x)
            end_stamp = stamp()
            timer.record_layer(i, (start, end_stamp), (attn_start, attn_end), (mlp_start, end_stamp))
        return model.norm(hidden)

    @staticmethod
    def _extend(cache: Any, i: int, k: torch.Tensor, v: torch.Tensor, in_place: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `i` of `cache` with the new position appended -> its whole keys and values."""
        if not in_place:
            return cache.update(k, v, i)
        k_buf, v_buf, n = next_slot(cache, i)
        k_buf[:, :, n:n + 1].copy_(k)
        v_buf[:, :, n:n + 1].copy_(v)
        return layer_kv(cache, i)
