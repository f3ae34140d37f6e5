"""Generation settings: one frozen dataclass that validates itself.

Every bad value raises ValueError naming the field and the value, so the CLI and the page can show
the message as it is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

DEFAULT_MODEL = "SmolLM2-135M-Instruct"      # the bundled one (inference/model/loading.py)
MAX_NEW_TOKENS_LIMIT = 4096
MAX_BATCH_SIZE = 64
KERNELS = ("fast", "eager")
# What --device and --dtype take (the page's server and the CLI alike). int8 and q4_1 keep the
# matrices as llama.cpp's blocks for the CPU decode kernel (inference/kernels/quantize.py).
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "int8", "q4_1")
# Speculative decoding (inference/speculative.py): "" plain decode; "lookup" drafts from the text
# so far (prompt lookup); "draft" from a smaller model the operator loaded beside the main one.
SPECULATE = ("", "lookup", "draft")
MAX_DRAFT_TOKENS = 16
MAX_LOOKUP_NGRAM = 8


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 64
    kv_cache: bool = True
    batch_size: int = 1
    temperature: float = 0.0        # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    kernel: str = "fast"            # "fast": multi-core decode kernel where available; "eager": plain PyTorch
    attention_map: bool = False     # record each step's attention weights (runs eager attention: slower)
    speculate: str = ""             # "", "lookup" or "draft" (SPECULATE)
    draft_tokens: int = 4           # k: tokens drafted, then checked in one forward pass
    lookup_ngram: int = 3           # n: the longest run of last tokens that prompt lookup matches

    def __post_init__(self) -> None:
        _check_int("max_new_tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS_LIMIT)
        _check_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        if not isinstance(self.kv_cache, bool):
            raise ValueError(f"kv_cache must be true or false, got {self.kv_cache!r}")
        if not isinstance(self.attention_map, bool):
            raise ValueError(f"attention_map must be true or false, got {self.attention_map!r}")
        _check_float("temperature", self.temperature, 0.0, 10.0)
        _check_float("top_p", self.top_p, 0.0, 1.0)
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {self.kernel!r}")
        if self.top_p == 0.0:
            raise ValueError("top_p must be above 0 (it is the share of probability kept), got 0")
        if self.speculate not in SPECULATE:
            raise ValueError(f"speculate must be one of off, lookup, draft, got {self.speculate!r}")
        _check_int("draft_tokens", self.draft_tokens, 1, MAX_DRAFT_TOKENS)
        _check_int("lookup_ngram", self.lookup_ngram, 1, MAX_LOOKUP_NGRAM)
        if self.speculate:
            if not self.kv_cache:
                raise ValueError("speculative decoding needs the KV cache: rejected drafts are cut from it")
            if self.batch_size != 1:
                raise ValueError(f"speculative decoding runs one sequence, got batch_size {self.batch_size}")
            if self.attention_map:
                raise ValueError("speculative decoding and the attention map do not go together "
                                 "(a check step has several newest tokens)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def from_form(cls, max_new_tokens: Any, temperature: Any, top_p: Any, seed: Any, kv_cache: Any,
                  batch_size: Any, kernel: Any = "fast", attention_map: Any = False, speculate: Any = "",
                  draft_tokens: Any = 4) -> GenerationSettings:
        """Settings from a form or an API call, where numbers may come as floats or strings
        ("64", 64.0): whole numbers are accepted as such; anything else raises ValueError."""
        return cls(max_new_tokens=_whole("max_new_tokens", max_new_tokens), temperature=_real("temperature", temperature),
                   top_p=_real("top_p", top_p), seed=_whole("seed", seed), kv_cache=kv_cache,
                   batch_size=_whole("batch_size", batch_size), kernel=kernel, attention_map=attention_map,
                   speculate="" if speculate in (None, "off") else speculate,
                   draft_tokens=_whole("draft_tokens", draft_tokens))


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None


def _whole(name: str, value: Any) -> int:
    number = _real(name, value)
    if not number.is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(number)


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {value}")


def _check_float(name: str, value: object, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if math.isnan(value) or not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo:g} and {hi:g}, got {value}")
