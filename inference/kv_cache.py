"""The one module that reads the KV cache's internals (its layout changes between releases).

Tested against transformers 5.24: `DynamicCache.layers[i].keys` / `.values`, each
(batch, kv_heads, seq_len, head_dim).
"""
from __future__ import annotations

from typing import Any


def kv_cache_bytes(cache: Any) -> int:
    """Bytes held by every K and V tensor in the cache, read from the tensors themselves."""
    if cache is None:
        return 0
    total = 0
    for layer in cache.layers:
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if tensor is not None:
                total += tensor.numel() * tensor.element_size()
    return total


def kv_cache_seq_len(cache: Any) -> int:
    """Tokens held per sequence (layer 0's K has shape (B, kv_heads, seq_len, head_dim))."""
    if cache is None or not cache.layers or getattr(cache.layers[0], "keys", None) is None:
        return 0
    return int(cache.layers[0].keys.shape[-2])


def expected_kv_bytes(layers: int, batch: int, kv_heads: int, seq_len: int, head_dim: int,
                      itemsize: int) -> int:
    """The formula the page teaches: K and V for every layer, sequence, head and position."""
    return 2 * layers * batch * kv_heads * seq_len * head_dim * itemsize
