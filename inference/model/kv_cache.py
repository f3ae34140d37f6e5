"""The one module that knows how transformers names and lays out the KV cache (it changes between
releases): the forward keyword and output field that carry it, and the tensors inside it.

Tested against transformers 5.17 and 5.24 (`make test` runs the engine's tests on both):
`DynamicCache.layers[i].keys` / `.values`, each (batch, kv_heads, seq_len, head_dim). The keyword
and field are `cache` from 5.24 on (`past_key_values` stays there as a deprecated alias); 5.17
knows only `past_key_values`, and would silently swallow a `cache=` keyword into `**kwargs`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

# The name of the KV cache in a model's forward keywords and its output, in this transformers.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def forward(model: nn.Module, input_ids: torch.Tensor, cache: Any = None, **kwargs: Any) -> Any:
    """`model(input_ids=..., **kwargs)` with `cache` (if any) passed under this transformers' name."""
    if cache is not None:
        kwargs[CACHE_FIELD] = cache
    return model(input_ids=input_ids, **kwargs)


def cache_of(output: Any) -> Any:
    """The KV cache a forward pass returned."""
    return getattr(output, CACHE_FIELD)


def shared_prefix(a: tuple[int, ...] | list[int], b: list[int]) -> int:
    """How many leading tokens two sequences have in common (what a cache of `a` can serve of `b`)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def cache_from(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """A DynamicCache holding these K and V per layer, each (batch, kv_heads, seq_len, head_dim)
    (a prefill that starts after a prefix cached elsewhere: the shared server's blocks)."""
    cache = DynamicCache()
    for i, (keys, values) in enumerate(layers):
        cache.update(keys, values, i)
    return cache


def kv_cache_bytes(cache: Any) -> int:
    """Bytes held by every K and V tensor in the cache, read from the tensors themselves (a paged
    cache of the shared server says what its positions hold)."""
    if cache is None:
        return 0
    held = getattr(cache, "kv_bytes", None)
    if held is not None:
        return held
    total = 0
    for layer in cache.layers:
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if tensor is not None:
                total += tensor.numel() * tensor.element_size()
    return total


def keep_first(cache: Any, tokens: int) -> None:
    """Drop every position after the first `tokens` from the cache (a conversation's next turn
    reuses the prefix it shares with the last one)."""
    length = cache.get_seq_length()
    if tokens < length:
        cache.crop(tokens - length)


def decodable_in_place(cache: Any, layers: int, batch: int) -> bool:
    """Whether every one of the cache's `layers` layers holds `batch` rows of the same length, in
    the DynamicCache layout that `decode_slot` extends in place."""
    if cache is None or len(cache.layers) != layers:
        return False
    lengths = set()
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        if type(layer) is not DynamicLayer or keys is None or keys.dim() != 4 or keys.shape[0] != batch:
            return False
        lengths.add(keys.shape[-2])
    return len(lengths) == 1


def rows_of(cache: Any) -> int:
    """How many sequences (batch rows) the cache holds."""
    return cache.layers[0].keys.shape[0]


def next_slot(cache: Any, i: int, new: int = 1) -> tuple[torch.Tensor, torch.Tensor, int]:
    """`decode_slot` of the cache's layer `i`."""
    return decode_slot(cache.layers[i], new)


def layer_kv(cache: Any, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer `i`'s keys and values, each (batch, kv_heads, seq_len, head_dim)."""
    layer = cache.layers[i]
    return layer.keys, layer.values


def decode_slot(layer: Any, new: int = 1) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Room for `new` more positions (a decode step: one) in a DynamicCache layer (see
    `decodable_in_place`): (K buffer, V buffer, the first new position).

    The layer's keys/values become views of preallocated buffers (grown by half when full), so a
    step writes one position in place instead of concatenating the whole cache again; they stay
    ordinary (batch, kv_heads, seq_len, head_dim) tensors that the rest of transformers and
    kv_cache_bytes read as before."""
    keys = layer.keys
    n = keys.shape[-2]
    k_buf, v_buf = getattr(layer, "_phasescope_buffers", (None, None))
    if k_buf is None or k_buf.data_ptr() != keys.data_ptr() or k_buf.shape[-2] < n + new or \
            k_buf.shape[:2] != keys.shape[:2]:
        capacity = n + new + max(256, n // 2)
        k_buf = keys.new_empty((*keys.shape[:2], capacity, keys.shape[-1]))
        v_buf = layer.values.new_empty((*keys.shape[:2], capacity, keys.shape[-1]))
        k_buf[:, :, :n].copy_(keys)
        v_buf[:, :, :n].copy_(layer.values)
        layer._phasescope_buffers = (k_buf, v_buf)
    layer.keys, layer.values = k_buf.narrow(2, 0, n + new), v_buf.narrow(2, 0, n + new)
    return k_buf, v_buf, n
