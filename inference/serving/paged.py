"""The shared server's KV cache as pages: a pool of fixed-size blocks, a block table per sequence,
and prefix caching (blocks of an identical token prefix held once and shared).

A block holds `BLOCK_TOKENS` positions of every layer's K and V. A sequence's table lists its
blocks in order; position t lives in block table[t // B] at t % B, which is how the fused kernel
reads it (`layers_paged`). A full block of a prompt is named by a hash chained block by block
(the block's tokens and the hash of every block before it, so equal names mean equal prefixes at
the same positions) and a scope: only blocks of the class's shared context are named, so one
student's own text is never served to another (a shared block's faster first token would tell
them what was sent). A named block whose last run ended stays cached, unreferenced, until the
pool needs room: then the least recently used goes. Only the shared server's thread touches a pool.
"""
from __future__ import annotations

import collections
import hashlib
import heapq
from array import array
from typing import Any, Sequence

import torch

from inference.trace import PoolSnapshot

BLOCK_TOKENS = 16          # positions per block (vLLM's default)
_FIRST_BLOCKS = 64         # the pool's tensors start this big and double when a block past them is handed out


def prefix_hashes(ids: Sequence[int], shareable: int, block_tokens: int = BLOCK_TOKENS,
                  scope: bytes = b"class") -> list[bytes]:
    """The names of the full blocks among the first `shareable` tokens of `ids`, each hashing its
    tokens, its scope and the name of the block before it."""
    names, parent = [], scope
    for start in range(0, min(shareable, len(ids)) // block_tokens * block_tokens, block_tokens):
        parent = hashlib.blake2b(parent + array("q", ids[start:start + block_tokens]).tobytes(), digest_size=16).digest()
        names.append(parent)
    return names


class BlockPool:
    """Blocks of K/V for every layer, handed out and taken back by reference count."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, bytes_per_token: int, budget_bytes: int,
                 block_tokens: int = BLOCK_TOKENS):
        self.layers, self.kv_heads, self.head_dim, self.block_tokens = layers, kv_heads, head_dim, block_tokens
        self.block_bytes = max(1, bytes_per_token * block_tokens)
        self.budget_bytes = budget_bytes
        self.capacity = max(0, -(-budget_bytes // self.block_bytes))      # the budget rounded up to whole blocks
        self.refs = [0] * self.capacity
        self._free = list(range(self.capacity))           # a heap: the lowest id first, so the memory touched stays compact
        self._name_of: dict[int, bytes] = {}
        self._block_of: dict[bytes, int] = {}
        self._idle: collections.OrderedDict[int, None] = collections.OrderedDict()   # named, unreferenced, oldest first
        self.keys: list[torch.Tensor] = []                # per layer (blocks, kv_heads, block_tokens, head_dim)
        self.values: list[torch.Tensor] = []
        self.queried_tokens = self.hit_tokens = 0
        self.evicted = 0
        self.peak_in_use = 0                              # the most blocks referenced at once

    @property
    def available(self) -> int:
        """Blocks that can be handed out now (free, or cached and unreferenced)."""
        return len(self._free) + len(self._idle)

    @property
    def in_use(self) -> int:
        return self.capacity - self.available

    def lookup(self, names: list[bytes]) -> list[int]:
        """The cached blocks of the longest prefix of `names` (nothing is referenced yet)."""
        found = []
        for name in names:
            block = self._block_of.get(name)
            if block is None:
                break
            found.append(block)
        return found

    def idle_among(self, blocks: list[int]) -> int:
        """How many of `blocks` are cached and unreferenced (taking them uses up available blocks)."""
        return sum(1 for b in set(blocks) if self.refs[b] == 0)

    def share(self, block: int) -> None:
        """One more sequence uses a cached block."""
        self.refs[block] += 1
        self._idle.pop(block, None)

    def allocate(self) -> int:
        """A block for one sequence: a free one, else the least recently used cached one (forgotten)."""
        if self._free:
            block = heapq.heappop(self._free)
        elif self._idle:
            block, _ = self._idle.popitem(last=False)
            del self._block_of[self._name_of.pop(block)]
            self.evicted += 1
        else:
            raise RuntimeError("the KV block pool is full (admission should have kept room)")
        self.refs[block] = 1
        self.peak_in_use = max(self.peak_in_use, self.in_use)
        return block

    def release(self, block: int) -> None:
        """A sequence is done with a block: named ones stay cached once unreferenced, others go free."""
        self.refs[block] -= 1
        if self.refs[block] == 0:
            if block in self._name_of:
                self._idle[block] = None
            else:
                heapq.heappush(self._free, block)

    def name(self, block: int, name: bytes) -> None:
        """Register a full block's prefix name, unless another block already holds that prefix."""
        if name not in self._block_of and block not in self._name_of:
            self._block_of[name], self._name_of[block] = block, name

    def tensors(self, dtype: torch.dtype, device: torch.device, upto: int) -> None:
        """Make sure the pool's tensors reach block `upto` (grown by doubling, the content kept)."""
        have = self.keys[0].shape[0] if self.keys else 0
        if self.keys and self.keys[0].dtype != dtype:
            raise RuntimeError(f"the KV pool holds {self.keys[0].dtype}, this cache is {dtype}")
        if upto < have:
            return
        size = min(self.capacity, max(_FIRST_BLOCKS, 2 * have, upto + 1))
        shape = (size, self.kv_heads, self.block_tokens, self.head_dim)
        for group in (self.keys, self.values):
            for i in range(self.layers):
                grown = torch.empty(shape, dtype=dtype, device=device)
                if have:
                    grown[:have].copy_(group[i])
                if i < len(group):
                    group[i] = grown
                else:
                    group.append(grown)

    def snapshot(self, tables: list[tuple[str, tuple[int, ...]]], reserved_bytes: int) -> PoolSnapshot:
        touched = self.keys[0].shape[0] if self.keys else 0
        states = tuple(-1 if b in self._idle else self.refs[b] for b in range(touched))
        return PoolSnapshot(self.block_tokens, self.block_bytes, self.capacity, states, tuple(tables),
                            self.queried_tokens, self.hit_tokens, reserved_bytes)


class PagedRow:
    """One sequence's block table and length."""

    def __init__(self, blocks: list[int], length: int):
        self.blocks, self.length = blocks, length
        self._table: torch.Tensor | None = None

    @property
    def table(self) -> torch.Tensor:
        """The block ids as the kernel takes them (int64), rebuilt only when a block is added."""
        if self._table is None or self._table.numel() != len(self.blocks):
            self._table = torch.tensor(self.blocks, dtype=torch.int64)
        return self._table


class PagedCache:
    """A run's rows in the pool: what the shared server keeps of a run once its prefill is done."""

    def __init__(self, pool: BlockPool, rows: list[PagedRow], bytes_per_token: int):
        self.pool, self.rows, self.bytes_per_token = pool, rows, bytes_per_token

    @property
    def kv_bytes(self) -> int:
        """The bytes its tokens hold (every row's positions), as a contiguous cache of them would."""
        return sum(row.length for row in self.rows) * self.bytes_per_token

    def get_seq_length(self) -> int:
        return self.rows[0].length

    def grow(self) -> int:
        """Room for one more position in every row (a block from the pool where a row's last is
        full); returns how many blocks that took."""
        taken = 0
        for row in self.rows:
            if row.length == len(row.blocks) * self.pool.block_tokens:
                row.blocks.append(self.pool.allocate())
                taken += 1
        if taken:
            self.pool.tensors(self.pool.keys[0].dtype, self.pool.keys[0].device,
                              max(b for row in self.rows for b in row.blocks[-1:]))
        return taken

    def free(self) -> None:
        for row in self.rows:
            for block in row.blocks:
                self.pool.release(block)
            row.blocks = []
        self.rows = []


def gather(pool: BlockPool, blocks: list[int], length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first `length` positions of a sequence's blocks, per layer, as contiguous K and V
    (1, kv_heads, length, head_dim) (a prefill that starts after a cached prefix)."""
    return [gather_layer(pool, i, blocks, length) for i in range(pool.layers)]


def gather_layer(pool: BlockPool, layer: int, blocks: list[int], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`gather` of one layer (PyTorch's decode step: attention over contiguous K and V)."""
    index = torch.tensor(blocks[:-(-length // pool.block_tokens)], dtype=torch.int64, device=pool.keys[layer].device)

    def contiguous(t: torch.Tensor) -> torch.Tensor:     # (n, Hk, B, D) -> (1, Hk, n * B, D)[..., :length, :]
        picked = t.index_select(0, index).transpose(0, 1)
        return picked.reshape(1, pool.kv_heads, -1, pool.head_dim)[:, :, :length]

    return contiguous(pool.keys[layer]), contiguous(pool.values[layer])


def scatter(pool: BlockPool, blocks: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Write n positions of one sequence (per layer K, V (kv_heads, n, head_dim)), which start at a
    block boundary, into `blocks` (the sequence's blocks from there on)."""
    B = pool.block_tokens
    for i, (k, v) in enumerate(layers):
        n = k.shape[1]
        padded = -(-n // B) * B
        index = torch.tensor(blocks[:padded // B], dtype=torch.int64, device=k.device)
        for target, source in ((pool.keys[i], k), (pool.values[i], v)):
            if padded != n:
                source = torch.cat([source, source.new_zeros((source.shape[0], padded - n, source.shape[2]))], dim=1)
            target.index_copy_(0, index, source.reshape(pool.kv_heads, -1, B, pool.head_dim).transpose(0, 1))


def write_position(pool: BlockPool, row: PagedRow, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
    """A decode step's K and V (kv_heads, head_dim) at the row's newest position (PyTorch's path)."""
    block, offset = row.blocks[row.length // pool.block_tokens], row.length % pool.block_tokens
    pool.keys[layer][block, :, offset].copy_(k)
    pool.values[layer][block, :, offset].copy_(v)

