"""The bundled GGUF file (llama.cpp's format) read in one pass: its metadata, its tensors
dequantized with numpy, its Llama config, and a tokenizer built by transformers from its vocabulary.

transformers' own GGUF loading parsed the file three times (config, weights, tokenizer: about 10 s
each on the 2-core machines measured, most of it building the 49,152-token vocabulary element by
element) and built a name map per tensor (12 s): 35-40 s in all. Here the metadata is read once,
each tensor is a view into the mapped file, and the Q4_1 / Q8_0 blocks are expanded by the same
numpy code the int8 / q4_1 formats use (inference/kernels/quantize.py), about a second in all. The
result is the same model, bit for bit (tests/test_gguf_file.py holds it to transformers' loader).
Only what the bundled model needs is read: a Llama in F32, F16, Q8_0 and Q4_1 tensors; another file
gets a ValueError, and loading.py falls back to transformers' loader.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

# GGUF metadata value types: the fixed-size ones by numpy dtype; 8 is a string and 9 an array.
_SCALARS = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
            7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9
# ggml tensor types this reader expands, by the kernel's format codes where they are blocks.
_F32, _F16, _Q4_1, _Q8_0 = 0, 1, 3, 8


class GgufFile:
    """A GGUF file's metadata (values as Python or numpy values) and tensors (by GGUF name: shape
    in torch order, ggml type, raw bytes as a view of the mapped file)."""

    def __init__(self, path: Path):
        self.blob = np.memmap(path, dtype=np.uint8, mode="r")
        if bytes(self.blob[:4]) != b"GGUF":
            raise ValueError(f"{path.name} is not a GGUF file")
        version, tensors, entries = struct.unpack_from("<IQQ", self.blob, 4)
        if version not in (2, 3):
            raise ValueError(f"{path.name}: GGUF version {version} is not supported")
        self.pos = 24
        self.metadata: dict[str, Any] = {}
        for _ in range(entries):
            key = self._string()
            self.metadata[key] = self._value(self._unpack("<I"))
        table = []
        for _ in range(tensors):
            name = self._string()
            dims = [self._unpack("<Q") for _ in range(self._unpack("<I"))]
            kind, offset = self._unpack("<I"), self._unpack("<Q")
            table.append((name, tuple(reversed(dims)), kind, offset))
        alignment = int(self.metadata.get("general.alignment", 32))
        start = (self.pos + alignment - 1) // alignment * alignment
        self.tensors = {name: (shape, kind, start + offset) for name, shape, kind, offset in table}

    def _unpack(self, fmt: str) -> Any:
        value, = struct.unpack_from(fmt, self.blob, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def _string(self) -> str:
        n = self._unpack("<Q")
        text = bytes(self.blob[self.pos:self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return text

    def _value(self, kind: int) -> Any:
        if kind == _STRING:
            return self._string()
        if kind == _ARRAY:
            inner, n = self._unpack("<I"), self._unpack("<Q")
            if inner == _STRING:
                return [self._string() for _ in range(n)]
            if inner not in _SCALARS:
                raise ValueError(f"GGUF: an array of type {inner} is not supported")
            dtype = np.dtype(_SCALARS[inner]).newbyteorder("<")
            values = np.frombuffer(self.blob, dtype, count=n, offset=self.pos).copy()
            self.pos += n * dtype.itemsize
            return values.tolist()
        if kind not in _SCALARS:
            raise ValueError(f"GGUF: a value of type {kind} is not supported")
        dtype = np.dtype(_SCALARS[kind]).newbyteorder("<")
        value = np.frombuffer(self.blob, dtype, count=1, offset=self.pos)[0]
        self.pos += dtype.itemsize
        return value.item()

    def tensor(self, name: str) -> np.ndarray:
        """A tensor as float32 values, in torch's shape (what llama.cpp's dequantize_row_* gives)."""
        from inference.kernels.quantize import Q4_1, Q8_0, dequantize
        from inference.kernels.build import BLOCK, BLOCK_BYTES

        shape, kind, start = self.tensors[name]
        count = int(np.prod(shape))
        if kind == _F32:
            return np.frombuffer(self.blob, "<f4", count, start).reshape(shape).copy()
        if kind == _F16:
            return np.frombuffer(self.blob, "<f2", count, start).astype(np.float32).reshape(shape)
        fmt = {_Q4_1: Q4_1, _Q8_0: Q8_0}.get(kind)
        if fmt is None:
            raise ValueError(f"GGUF tensor {name}: ggml type {kind} is not supported here")
        rows = count // shape[-1]
        raw = self.blob[start:start + count // BLOCK * BLOCK_BYTES[fmt]].reshape(rows, -1)
        return dequantize(raw, fmt).reshape(shape)


# llama.cpp's tensor names -> transformers' Llama parameter names.
_LAYER_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj"}


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's converter, which reorders each head's rows of q and k for its rotary layout."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_llama(path: Path, name: str) -> tuple[torch.nn.Module, Any]:
    """(LlamaForCausalLM in float32, its tokenizer) from a Llama GGUF (ValueError for another)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    gguf = GgufFile(path)
    md = gguf.metadata
    if md.get("general.architecture") != "llama" or md.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"{path.name}: only a Llama with a GPT-2 style vocabulary is read here")
    heads, kv_heads = md["llama.attention.head_count"], md["llama.attention.head_count_kv"]
    hidden = md["llama.embedding_length"]
    tokens = md["tokenizer.ggml.tokens"]
    config = LlamaConfig(
        vocab_size=md.get("llama.vocab_size", len(tokens)), hidden_size=hidden,
        intermediate_size=md["llama.feed_forward_length"], num_hidden_layers=md["llama.block_count"],
        num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=md.get("llama.rope.dimension_count", hidden // heads),
        max_position_embeddings=md["llama.context_length"], rms_norm_eps=md["llama.attention.layer_norm_rms_epsilon"],
        rope_parameters={"rope_type": "default", "rope_theta": md.get("llama.rope.freq_base", 10000.0)},
        tie_word_embeddings="output.weight" not in gguf.tensors,
        bos_token_id=md.get("tokenizer.ggml.bos_token_id"), eos_token_id=md.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=md.get("tokenizer.ggml.padding_token_id"), unk_token_id=md.get("tokenizer.ggml.unknown_token_id"),
        dtype="float32")
    config._name_or_path = name
    state = {"model.embed_tokens.weight": gguf.tensor("token_embd.weight"), "model.norm.weight": gguf.tensor("output_norm.weight")}
    if "output.weight" in gguf.tensors:
        state["lm_head.weight"] = gguf.tensor("output.weight")
    for layer in range(config.num_hidden_layers):
        for short, long in _LAYER_NAMES.items():
            w = gguf.tensor(f"blk.{layer}.{short}.weight")
            if short in ("attn_q", "attn_k"):
                w = _unpermute(w, heads if short == "attn_q" else kv_heads)
            state[f"model.layers.{layer}.{long}.weight"] = w
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    missing = {n for n, p in model.named_parameters() if p.is_meta}
    if missing:
        raise ValueError(f"{path.name}: no tensors for {sorted(missing)[:3]}")
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)     # its buffers were on meta
    return model.eval(), tokenizer(md)


def tokenizer(md: dict[str, Any]) -> Any:
    """The tokenizer the file describes, built by transformers' own GGUF conversion from the
    metadata already read (transformers 5.24's helpers; ValueError where they are missing)."""
    try:
        from transformers import TokenizersBackend
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer
    except ImportError as exc:
        raise ValueError(f"this transformers cannot build a GGUF tokenizer from metadata ({exc})") from None
    grouped = {group: {name: md[f"tokenizer.{key}"] for key, name in renames.items() if f"tokenizer.{key}" in md}
               for group, renames in GGUF_TOKENIZER_MAPPING.items()}
    tokens, settings = grouped["tokenizer"], grouped["tokenizer_config"]
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("unk_token", "unknown_token_id"),
                      ("pad_token", "padding_token_id")):
        token_id = md.get(f"tokenizer.ggml.{key}")
        settings[name] = tokens["tokens"][token_id] if token_id is not None else None
    backend, extra = convert_gguf_tokenizer(md["general.architecture"], tokens)
    return TokenizersBackend(tokenizer_object=backend, **settings, **extra)
