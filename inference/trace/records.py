"""The records a run produces: one Step per forward pass, and the Trace that holds them.

Every record is a frozen dataclass; `Trace.to_json` writes one, and `files.read_trace` reads it back
checked. A Trace survives the round trip exactly (floats are written with Python's shortest
round-tripping repr).
"""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Literal

from inference.settings import GenerationSettings

TRACE_SCHEMA = "phasescope.trace/1"

Phase = Literal["prefill", "decode"]
StopReason = Literal["eos", "length", "cancelled"]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    params: int
    weight_bytes: int          # bytes of all weights as stored (what one decode step must read)
    dtype: str
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int = 0
    intermediate: int = 0
    vocab: int = 0
    max_context: int = 0
    matmul_params: int = 0     # weights used in matrix products per token (LM head included)
    # Where decode reads the matrices as llama.cpp blocks (inference/kernels/quantize.py): "int8" or "q4_1",
    # and their bytes; "" and 0 when they are in `dtype` like everything else.
    weights: str = ""
    matmul_bytes: int = 0

    @property
    def precision(self) -> str:
        """What a student compares: float32, bfloat16, int8 or q4_1."""
        return self.weights or self.dtype

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V, every layer, one sequence: 2 * layers * kv_heads * head_dim * itemsize (0 for a
        remote model, whose shape the page does not know)."""
        if not self.layers:
            return 0
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_itemsize(self.dtype)


@dataclass(frozen=True)
class DeviceInfo:
    type: str                  # "cpu" or "cuda"
    name: str
    peak_flops: float          # FLOP/s the roofline uses as its compute roof
    peak_bytes_per_s: float    # bytes/s the roofline uses as its bandwidth roof
    source: str = ""           # how the peaks were obtained ("measured ...", "table ...")
    arithmetic: str = ""       # how the products were computed ("native bfloat16 arithmetic", ...)
    dtype_choice: str = ""     # why the run's dtype was chosen (with --dtype auto), in words
    # The CPU decode kernel's variant the run's decode steps ran, as this machine's trial chose it
    # (inference/kernels/tuning.py), in words; "" where no kernel ran (eager, CUDA, a remote engine).
    kernel_variant: str = ""

    @property
    def ridge_intensity(self) -> float:
        """FLOPs per byte above which a kernel is compute-bound on this device."""
        return self.peak_flops / self.peak_bytes_per_s


@dataclass(frozen=True)
class Step:
    phase: Phase
    index: int                 # 0 for prefill, then 1, 2, ... for decode steps
    tokens_in: int             # tokens fed to the model per sequence in this forward pass
    context_len: int           # tokens in the sequence (cache included) after this step
    ms: float                  # the whole step: forward pass + sampling
    layer_ms: tuple[float, ...]
    attn_ms: tuple[float, ...]
    mlp_ms: tuple[float, ...]
    other_ms: float            # ms minus the layers: embeddings, final norm, LM head, sampling
    kv_bytes: int              # bytes held in the KV cache after this step (0 without a cache)
    flops: float               # cost model: FLOPs this step performed
    bytes: float               # cost model: bytes this step moved to or from memory
    token_id: int              # the token this step produced (row 0 of the batch)
    text: str                  # the new suffix of the decoded text that token added
    # What this step shared with other runs on a server that batches them (inference/serving/batching.py);
    # traces recorded before these fields existed read 0.
    batch_rows: int = 0                # sequences decoded in this engine step, this run's included
    foreign_prefill_tokens: int = 0    # other runs' prompt tokens prefilled in this engine step, before it
    waited_ms: float = 0.0             # the time those prefills took (part of ms)
    # Tokens this step produced per sequence: 1 in the embedded engine; a remote engine's streamed
    # chunk (inference/remote/), one step as a client sees it, may carry several.
    tokens_out: int = 1
    # Time the engine's threads waited for a core during the step (averaged over them), on a CPU
    # that counts it (inference/hardware/cpu_wait.py): what other programs took from it. 0 where unknown.
    cpu_wait_ms: float = 0.0
    # With the attention-map switch: the weights this step's newest token put on each position of
    # the sequence (mean over heads and layers; they sum to 1). Empty otherwise.
    attention: tuple[float, ...] = ()
    # Speculative decoding (inference/speculative.py): tokens drafted and checked in this step, and
    # how many of them the model kept; every token the step produced when it is more than one
    # (the kept drafts and the model's own next token; token_id is the last of them).
    drafted: int = 0
    accepted: int = 0
    token_ids: tuple[int, ...] = ()
    draft_ids: tuple[int, ...] = ()    # the drafted tokens, kept ones first (the first `accepted`)

    @property
    def output_ids(self) -> tuple[int, ...]:
        """Every token this step produced (row 0), in order."""
        return self.token_ids or (self.token_id,)

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes if self.bytes else 0.0

    @property
    def achieved_flops(self) -> float:
        return self.flops / (self.ms / 1e3) if self.ms > 0 else 0.0

    @property
    def achieved_bytes_per_s(self) -> float:
        return self.bytes / (self.ms / 1e3) if self.ms > 0 else 0.0


@dataclass(frozen=True)
class Summary:
    ttft_ms: float
    decode_ms_median: float
    decode_ms_p90: float
    decode_tokens_per_s: float
    kv_bytes_final: int
    stop_reason: StopReason

    @staticmethod
    def of(steps: list[Step] | tuple[Step, ...], batch_size: int, stop_reason: StopReason) -> Summary:
        decode_ms = [s.ms for s in steps if s.phase == "decode"]
        decode_tokens = sum(s.tokens_out for s in steps if s.phase == "decode")
        total_decode_s = sum(decode_ms) / 1e3
        return Summary(
            ttft_ms=steps[0].ms if steps else 0.0,
            decode_ms_median=statistics.median(decode_ms) if decode_ms else 0.0,
            decode_ms_p90=percentile(decode_ms, 90) if decode_ms else 0.0,
            decode_tokens_per_s=batch_size * decode_tokens / total_decode_s if total_decode_s else 0.0,
            kv_bytes_final=steps[-1].kv_bytes if steps else 0,
            stop_reason=stop_reason,
        )


@dataclass(frozen=True)
class Trace:
    model: ModelInfo
    device: DeviceInfo
    settings: GenerationSettings
    prompt_tokens: int
    steps: tuple[Step, ...]
    summary: Summary
    prompt: str = ""
    schema: str = field(default=TRACE_SCHEMA)
    serving: str = "solo"      # "solo": one run at a time; "batched": decode steps shared with other runs
    serving_why: str = ""      # why it was served so, in one line (inference/serving/door.py); "" in older traces
    cpu_wait_measured: bool = False    # its steps' cpu_wait_ms were measured (else unknown, 0)
    reused_tokens: int = 0     # prompt tokens served from a KV cache (the last turn's, or the class's shared blocks)
    cold_ttft_ms: float = 0.0  # an estimate of this prompt's TTFT with nothing cached (0: none was made)
    # A run on a remote serving engine (inference/remote/): which one, what it reported about the
    # run from inside (its own timings and counts, by name), and where its counts disagreed.
    engine: str = ""           # "" for the embedded engine
    reported: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def remote(self) -> bool:
        return bool(self.engine)

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.steps)

    @property
    def output_ids(self) -> list[int]:
        """Row 0's new tokens, in order (a check step of speculative decoding gives several)."""
        return [t for s in self.steps for t in s.output_ids]

    @property
    def decode_steps(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.phase == "decode")

    @property
    def decode_cpu_wait_share(self) -> float | None:
        """The share of decode's time its threads spent waiting for a core (None: not measured)."""
        decode = self.decode_steps
        if not self.cpu_wait_measured or not sum(s.ms for s in decode):
            return None
        return cpu_wait_share(decode)

    @property
    def decode_bytes_per_s(self) -> float:
        """Bytes the decode steps moved (cost model) over the time they took (measured)."""
        decode = self.decode_steps
        seconds = sum(s.ms for s in decode) / 1e3
        return sum(s.bytes for s in decode) / seconds if seconds else 0.0

    def prefix(self, n: int) -> Trace:
        """The trace as it stood after its first n steps (for replays and live views)."""
        steps = self.steps[:n]
        reason = self.summary.stop_reason if n >= len(self.steps) else "cancelled"
        return dataclasses.replace(self, steps=steps, summary=Summary.of(steps, self.settings.batch_size, reason))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


@dataclass(frozen=True)
class RunSpan:
    """One run as the class view draws it (anonymous): when it was asked for, prefilled and ended
    (perf_counter seconds; None while it has not happened), and the tokens it has so far."""
    submitted: float
    prefill_start: float | None
    prefill_end: float | None
    end: float | None
    tokens: int
    source: str = "page"        # "api": sent through the OpenAI-compatible API (inference/serving/api.py)


@dataclass(frozen=True)
class Goodput:
    """Goodput as DistServe and vLLM's benchmark define it: of the runs that finished, those within
    a time-to-first-token and a time-per-output-token objective, and how many a second that is."""
    finished: int
    met: int
    per_s: float

    @classmethod
    def of(cls, runs: tuple[RunSpan, ...] | list[RunSpan], seconds: float, ttft_s: float, tpot_s: float) -> Goodput:
        """Over `seconds` of wall time; a run's TTFT counts from when it was asked for (its wait included)."""
        finished = [r for r in runs if r.end is not None and r.prefill_end is not None]
        met = [r for r in finished if r.prefill_end - r.submitted <= ttft_s and
               (r.tokens <= 1 or (r.end - r.prefill_end) / (r.tokens - 1) <= tpot_s)]
        return cls(len(finished), len(met), len(met) / seconds if seconds > 0 else 0.0)


@dataclass(frozen=True)
class PoolSnapshot:
    """The pool as the class view shows it: each block's state, each run's tables, the hit rate."""
    block_tokens: int
    block_bytes: int
    capacity: int                       # blocks the KV budget holds
    states: tuple[int, ...]             # per block handed out so far: 0 free, -1 cached unreferenced, n >= 1 runs' rows using it
    tables: tuple[tuple[str, tuple[int, ...]], ...]     # (run label, its first row's block ids)
    queried_tokens: int                 # prompt tokens looked up in the prefix cache
    hit_tokens: int                     # of those, served from it
    reserved_bytes: int                 # what contiguous caches at each run's full length would hold

    @property
    def used_bytes(self) -> int:
        return sum(1 for s in self.states if s > 0) * self.block_bytes


@dataclass(frozen=True)
class ClassSnapshot:
    """Everything the class view shows: the runs of the last `window_s` seconds and the batch size
    (sequences) of every decode step in it, as (end time, rows)."""
    now: float
    window_s: float
    runs: tuple[RunSpan, ...]
    steps: tuple[tuple[float, int], ...]
    pool: PoolSnapshot | None = None        # the shared server's KV block pool (None: no shared batch)


def cpu_wait_share(steps: list[Step] | tuple[Step, ...]) -> float:
    """The share of these steps' time their threads spent waiting for a core (0 for no time)."""
    total = sum(s.ms for s in steps)
    return min(1.0, sum(s.cpu_wait_ms for s in steps) / total) if total else 0.0


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), without importing numpy."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1, "float64": 8}


def dtype_itemsize(dtype: str) -> int:
    try:
        return _ITEMSIZE[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_ITEMSIZE)}") from None
