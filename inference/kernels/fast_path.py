"""The fast path on CPU, switched on for one run by `fast_forwards(...)`:

- every nn.Linear: a decode step's few rows go to the multi-core kernel (gemv.cpp); prefill's many
  rows go to `roofs.prefill_linear` (float32 arithmetic for bfloat16 weights on a CPU without
  bfloat16 arithmetic, PyTorch's product otherwise);
- a LlamaModel's decode step: every decoder layer in one C++ call (norms, projections, rotary,
  cache write, attention, MLP), because at this model's size a step's ~2000 small PyTorch
  operations, or even just calling 30 layer modules from Python, cost a large share of the time
  spent reading the weights; the layers' stamps go to the run's LayerTimer, which checks Stop first;
- Llama's RMSNorm (the final norm) for a few rows.

The model itself is not changed: the modules' forwards are replaced on the instances when the
context is entered and put back when it exits (error or not), so outside a run the model is plain
PyTorch, with the same modules and state_dict. Prefill still calls every layer as a module (the
timing hooks and Stop work inside it). Whatever the fast path does not cover falls back to the
module's own forward.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPast

from inference.hardware.roofs import prefill_linear
from inference.kernels.quantize import blocks_of
from inference.model.kv_cache import CACHE_FIELD, decodable_in_place, next_slot, rows_of
from inference.timing import LayerTimer

_KERNEL_DTYPES = (torch.float32, torch.bfloat16)
# The projections the fused layer computes itself; it needs every one, without a bias.
_PROJECTIONS = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}


@contextlib.contextmanager
def fast_forwards(model: nn.Module, kernel: Any, timer: LayerTimer, native_bf16: bool) -> Iterator[FusedStack | None]:
    """The fast path for one run of `model` (kernel: the built extension); plain PyTorch afterwards.
    Yields the model's FusedStack where its decoder layers can be fused (else None)."""
    patched: list[nn.Module] = []
    try:
        for module in model.modules():
            forward = _fast_forward(module, kernel, timer, native_bf16)
            if forward is not None:
                module.forward = forward
                patched.append(module)
        yield next((m.forward.__self__ for m in patched if isinstance(getattr(m.forward, "__self__", None), FusedStack)),
                   None)
    finally:
        for module in patched:
            del module.forward           # the class's own forward again


def _fast_forward(module: nn.Module, kernel: Any, timer: LayerTimer, native_bf16: bool) -> Callable[..., Any] | None:
    from transformers.models.llama.modeling_llama import LlamaModel, LlamaRMSNorm

    if isinstance(module, nn.Linear):
        return _linear(module, kernel, native_bf16)
    if type(module) is LlamaRMSNorm:
        return _rmsnorm(module, kernel)
    if type(module) is LlamaModel and len(module.layers) > 0 and all(map(_fusable, module.layers)):
        return FusedStack(module, kernel, timer).forward
    return None


def _few_rows(x: torch.Tensor, weight: torch.Tensor, limit: int) -> bool:
    """A few rows on CPU in the weight's dtype, which the kernels take (called ~200 times a step)."""
    return x.is_cpu and x.dtype == weight.dtype and x.dtype in _KERNEL_DTYPES and x.numel() <= limit * x.shape[-1]


# The fast forwards hold their weights (the same Parameter objects) instead of looking them up
# through the module tree on every call: at ~200 calls per step, those lookups add up.

def _linear(linear: nn.Linear, kernel: Any, native_bf16: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    weight, bias, limit, blocks = linear.weight, linear.bias, kernel.MAX_ROWS, blocks_of(linear)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not _few_rows(x, weight, limit):
            return prefill_linear(x, weight, bias, native_bf16)
        rows = x.reshape(x.numel() // x.shape[-1], x.shape[-1])
        y = kernel.gemv(rows, weight) if blocks is None else kernel.gemv_blocks(rows, blocks.data, blocks.format)
        y = y.reshape(*x.shape[:-1], weight.shape[0])
        return y if bias is None else y + bias

    return forward


def _rmsnorm(module: nn.Module, kernel: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    original = module.forward
    weight, eps, limit = module.weight, module.variance_epsilon, kernel.MAX_ROWS

    def forward(x: torch.Tensor) -> torch.Tensor:
        return kernel.rmsnorm(x, weight, eps) if _few_rows(x, weight, limit) else original(x)

    return forward


def stack_fusable(model: nn.Module) -> bool:
    """Whether a causal LM's decode steps can run as one FusedStack (a Llama whose layers all fuse)."""
    from transformers.models.llama.modeling_llama import LlamaModel

    inner = getattr(model, "model", None)
    return (type(inner) is LlamaModel and len(inner.layers) > 0 and all(map(_fusable, inner.layers))
            and isinstance(getattr(model, "lm_head", None), nn.Linear))


def _fusable(layer: nn.Module) -> bool:
    """A Llama decoder layer the fused step computes exactly: Llama attention and SiLU MLP with
    every projection a bias-free nn.Linear, and Llama's RMSNorms."""
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP, LlamaRMSNorm

    parts = (layer.self_attn, layer.mlp, layer.input_layernorm, layer.post_attention_layernorm)
    if tuple(map(type, parts)) != (LlamaAttention, LlamaMLP, LlamaRMSNorm, LlamaRMSNorm):
        return False
    projections = [getattr(getattr(layer, part), name) for part, names in _PROJECTIONS.items() for name in names]
    return all(type(p) is nn.Linear and p.bias is None for p in projections) and layer.mlp.config.hidden_act == "silu"


class FusedStack:
    """A decode step of every decoder layer of a LlamaModel in one kernel call (embedding, rotary
    and final norm stay in PyTorch). The layers are not called as modules, so their hooks cannot
    fire: the kernel's stamps go to `timer`, and a Stop pressed during the step is seen before it.
    `forward` replaces the model's forward for one run's steps; the continuous-batching server calls
    `decode_paged` with the block tables of several runs."""

    def __init__(self, model: nn.Module, kernel: Any, timer: LayerTimer):
        self.model, self.kernel, self.timer = model, kernel, timer
        self.original = model.forward
        self.weights = [_layer_weights(layer, kernel) for layer in model.layers]
        self.limit, self.wq = kernel.MAX_ROWS, model.layers[0].self_attn.q_proj.weight

    def forward(self, input_ids: Any = None, attention_mask: Any = None, position_ids: Any = None,
                inputs_embeds: Any = None, use_cache: Any = None, **kwargs: Any) -> Any:
        cache = kwargs.pop(CACHE_FIELD, None)           # under this transformers' name (kv_cache.py)
        if not (cache is not None and attention_mask is None and position_ids is None and inputs_embeds is None
                and input_ids is not None and input_ids.dim() == 2 and input_ids.shape[1] == 1
                and self.fits(input_ids.shape[0]) and decodable_in_place(cache, len(self.weights), input_ids.shape[0])):
            return self.original(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                 inputs_embeds=inputs_embeds, use_cache=use_cache, **{CACHE_FIELD: cache}, **kwargs)
        return BaseModelOutputWithPast(last_hidden_state=self.decode(input_ids, [cache]), **{CACHE_FIELD: cache})

    def fits(self, rows: int) -> bool:
        return rows <= self.limit

    def decode(self, input_ids: torch.Tensor, caches: list[Any]) -> torch.Tensor:
        """(M, 1) newest tokens, the rows of `caches` in order (each a DynamicCache that
        `decodable_in_place` accepts, of any length) -> (M, 1, hidden) after the final norm; each
        cache grows by one position."""
        hidden = self.model.embed_tokens(input_ids)                          # (M, 1, hidden)
        if not _few_rows(hidden, self.wq, self.limit):
            raise RuntimeError(f"fused decode: embeddings in {hidden.dtype}, weights in {self.wq.dtype}")
        slots = [[next_slot(cache, i) for cache in caches] for i in range(len(self.weights))]
        positions = [position for _, _, position in slots[0]]
        rows = [rows_of(cache) for cache in caches]
        position_ids = torch.tensor([p for p, n in zip(positions, rows) for _ in range(n)], device=hidden.device)
        cos, sin = self.model.rotary_emb(hidden, position_ids=position_ids[:, None])
        self.timer.check_cancel()
        hidden, stamps = self.kernel.layers(hidden, self.weights, cos, sin,
                                            [[(k, v) for k, v, _ in layer] for layer in slots], positions)
        self.timer.record_layers(stamps)
        return self.model.norm(hidden)


    def decode_paged(self, input_ids: torch.Tensor, pool: Any, rows: list[Any]) -> torch.Tensor:
        """`decode` over the shared server's block pool (inference/serving/paged.py): (M, 1) newest
        tokens of `rows` (PagedRow, in order), each with a block for its new position, which goes at
        its `length` (advanced by the caller) -> (M, 1, hidden) after the final norm."""
        hidden = self.model.embed_tokens(input_ids)                          # (M, 1, hidden)
        if not _few_rows(hidden, self.wq, self.limit):
            raise RuntimeError(f"fused decode: embeddings in {hidden.dtype}, weights in {self.wq.dtype}")
        positions = [row.length for row in rows]
        position_ids = torch.tensor(positions, device=hidden.device)
        cos, sin = self.model.rotary_emb(hidden, position_ids=position_ids[:, None])
        self.timer.check_cancel()
        hidden, stamps = self.kernel.layers_paged(hidden, self.weights, cos, sin, list(zip(pool.keys, pool.values)),
                                                  [row.table for row in rows], positions)
        self.timer.record_layers(stamps)
        return self.model.norm(hidden)

    def check(self, input_ids: torch.Tensor, cache: Any) -> torch.Tensor:
        """(1, n) tokens that follow one sequence's cache (speculative decoding's newest token and its
        drafts) -> (1, n, hidden) after the final norm, the cache grown by n positions. The kernel
        takes them as n rows of one cache at consecutive positions: it writes every row's K and V
        before any row attends, each over the positions up to its own, so token j sees the tokens
        before it and not those after (causal), and each row computes what a decode step of that
        token alone would (row-invariance): the check costs one pass over the weights."""
        n = input_ids.shape[1]
        hidden = self.model.embed_tokens(input_ids)                          # (1, n, hidden)
        slots = [next_slot(cache, i, n) for i in range(len(self.weights))]
        first = slots[0][2]
        position_ids = torch.arange(first, first + n, device=hidden.device)
        cos, sin = self.model.rotary_emb(hidden, position_ids=position_ids[:, None])
        self.timer.check_cancel()
        hidden, stamps = self.kernel.layers(hidden.reshape(n, 1, -1), self.weights, cos, sin,
                                            [[(k, v)] * n for k, v, _ in slots], list(range(first, first + n)))
        self.timer.record_layers(stamps)
        return self.model.norm(hidden).reshape(1, n, -1)


def _layer_weights(layer: nn.Module, kernel: Any) -> Any:
    attn, mlp = layer.self_attn, layer.mlp
    weights = kernel.LayerWeights()
    weights.norm1, weights.eps1 = layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon
    weights.norm2, weights.eps2 = layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon
    linears = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    blocks = [blocks_of(linear) for linear in linears]
    if all(b is not None for b in blocks) and len({b.format for b in blocks}) == 1:     # int8 or q4_1 weights
        matrices, weights.format = [b.data for b in blocks], blocks[0].format
    else:
        matrices = [linear.weight for linear in linears]
    weights.wq, weights.wk, weights.wv, weights.wo, weights.wg, weights.wu, weights.wd = matrices
    weights.scaling = attn.scaling
    return weights
