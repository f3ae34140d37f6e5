"""The instrumented generation loop: prefill once, then decode one token per step.

The engine works on token ids; the tokenizer is only used to turn each new token into the new
suffix of the decoded text. Each step yields a typed `Step` record as soon as it is done, so a
caller can draw while the model runs. `reference_generate` is the slow, obvious loop (no cache,
no hooks) that the tests hold the fast one to.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import torch
from torch import nn

from inference.cost_model import StepCost, step_cost
from inference.hardware.cpu_wait import measurable
from inference.hardware.device import device_info
from inference.hardware.roofs import bf16_native
from inference.kernels.build import build_error, kernel_for_now, kernel_module
from inference.kernels.fast_path import FusedStack, fast_forwards
from inference.kernels.tuning import KernelTuning, tune
from inference.model.attention_map import AttentionRecorder, attention_modules, recording_attention
from inference.model.kv_cache import cache_of, decodable_in_place, forward, keep_first, shared_prefix
from inference.model.loading import LoadedModel
from inference.rows import RowState
from inference.settings import GenerationSettings
from inference.speculative import Draft, DraftModel, lookup_draft, verify
from inference.timing import LayerTimer, RunCancelled, StepTimes
from inference.trace import DeviceInfo, StopReason, Step, Summary, Trace

T = TypeVar("T")


def prefill(model: nn.Module, input_ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """(B, S) prompt ids, empty cache -> (B, V) logits of the last position, and the filled cache."""
    out = forward(model, input_ids, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1, :], cache_of(out)


def decode_step(model: nn.Module, tokens: torch.Tensor, cache: Any) -> torch.Tensor:
    """(B, 1) newest tokens + the cache (extended in place) -> (B, V) logits."""
    out = forward(model, tokens, cache, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1, :]


def recompute_step(model: nn.Module, sequence: torch.Tensor) -> torch.Tensor:
    """No cache: (B, S) the whole sequence again -> (B, V) logits of the last position."""
    out = model(input_ids=sequence, use_cache=False, logits_to_keep=1)
    return out.logits[:, -1, :]


@dataclass(frozen=True)
class CachedPrefix:
    """What a finished run leaves for the next turn of a conversation: the token ids its KV cache
    holds, and the cache."""
    ids: tuple[int, ...]
    cache: Any


# A speculative run's first decode steps are plain: the yardstick its checks' cost is told against.
YARDSTICK_STEPS = 2


class GenerationRun:
    """One generation: iterate it for Step records; afterwards `stop_reason` and `trace()`, and
    `cached_prefix` for a conversation's next turn."""

    def __init__(self, engine: Engine, prompt_ids: list[int], settings: GenerationSettings,
                 cancel: threading.Event | None, instrument: bool, prompt: str, stop_at_eos: bool = True,
                 reuse: CachedPrefix | None = None, why: str = ""):
        self.engine = engine
        self.prompt_ids = prompt_ids
        self.settings = settings
        self.cancel = cancel or threading.Event()
        self.instrument = instrument
        self.prompt = prompt
        self.stop_at_eos = stop_at_eos
        self.steps: list[Step] = []
        self.batch_tokens: list[list[int]] = []     # every row's token, step by step
        self.stop_reason: StopReason | None = None
        self.timer: LayerTimer | None = None       # set while running; its layers_done shows progress
        self.reuse = reuse
        self.why = why                             # why it runs alone (serving/door.py), for its trace
        self.prefill_start: float | None = None   # perf_counter when the engine took the run up
        # Prompt tokens served from the reused cache (prefix caching): the prefill computes the rest.
        self.reused_tokens = 0
        self._held: tuple[torch.Tensor, Any] | None = None     # (sequence, cache) after the latest step
        self._attention: AttentionRecorder | None = None        # with settings.attention_map
        self._stack: FusedStack | None = None                   # the fused decode kernel, on the fast path
        self._steps_iter = self._run()

    def __iter__(self) -> Iterator[Step]:
        return self._steps_iter

    def close(self) -> None:
        """Stop early from outside the loop (hooks and cache are released)."""
        if self.stop_reason is None:
            self.stop_reason = "cancelled"
        self._steps_iter.close()

    def run_to_end(self) -> Trace:
        for _ in self:
            pass
        return self.trace()

    def trace(self) -> Trace:
        return self.engine.trace_of(self.prompt_ids, self.settings, self.steps, self.stop_reason, self.prompt,
                                    reused_tokens=self.reused_tokens, why=self.why, instrumented=self.instrument)

    @property
    def cached_prefix(self) -> CachedPrefix | None:
        """What the run's cache holds now, for a conversation's next turn (one row with a cache only):
        every token but the newest, which is fed at the next step."""
        if self._held is None or self.settings.batch_size != 1:
            return None
        sequence, cache = self._held
        return CachedPrefix(tuple(sequence[0, :-1].tolist()), cache)

    def _run(self) -> Iterator[Step]:
        engine, settings = self.engine, self.settings
        model = engine.loaded.model
        with engine.lock, torch.inference_mode(), \
                LayerTimer(model, engine.loaded.info.layers, engine.loaded.device, self.instrument, self.cancel) as timer, \
                engine.fast_path(settings, timer) as stack, \
                (recording_attention(model) if settings.attention_map else contextlib.nullcontext()) as attention:
            self.timer = timer
            self._stack = stack
            self._attention = attention
            self.prefill_start = time.perf_counter()
            rows = RowState(model, engine.loaded.tokenizer, settings, engine.loaded.device, self.stop_at_eos)
            # (B, S): B identical copies of the prompt step together.
            sequence = torch.tensor([self.prompt_ids] * settings.batch_size, device=engine.loaded.device)
            cache = self._reused_cache()
            for index in itertools.count():
                if index > 0 and self.cancel.is_set():
                    self.stop_reason = "cancelled"
                    return
                timer.start_step()
                draft = self._draft(index, sequence, rows)
                try:
                    if draft is not None and draft.tokens:
                        step = self._check(index, draft, sequence, cache, rows, timer)
                    else:
                        logits, cache = self._forward(index, sequence, cache)
                        tokens = rows.sample(logits)                                     # (B,)
                        step = self._take(rows, index, tokens, timer.finish_step(), sequence.shape[1], cache)
                except RunCancelled:          # Stop pressed in the middle of a forward pass
                    self.stop_reason = "cancelled"
                    return
                new = torch.tensor([list(step.output_ids)], device=sequence.device) if step.token_ids \
                    else rows.tokens[:, None]
                sequence = torch.cat([sequence, new], dim=1)
                self.batch_tokens.extend([[t] for t in step.output_ids] if step.token_ids else [rows.tokens.tolist()])
                self.steps.append(step)
                self._held = (sequence, cache) if cache is not None else None
                yield step
                if rows.stop:
                    self.stop_reason = rows.stop
                    return

    def _draft(self, index: int, sequence: torch.Tensor, rows: RowState) -> Draft | None:
        """With speculative decoding, after the prefill: this step's drafts (maybe none); else None."""
        settings = self.settings
        if not settings.speculate or index == 0:
            return None
        if index <= YARDSTICK_STEPS:
            return Draft([])
        room = settings.max_new_tokens - rows.tokens_made - 1      # the model adds one token of its own
        k = min(settings.draft_tokens, room)
        if k < 1:
            return Draft([])
        ids = sequence[0].tolist()
        if settings.speculate == "lookup":
            return Draft(lookup_draft(ids, settings.lookup_ngram, k))
        return self.engine.draft_model_for(settings).propose(ids, k, settings, rows.generator)

    def _check(self, index: int, draft: Draft, sequence: torch.Tensor, cache: Any, rows: RowState,
               timer: LayerTimer) -> Step:
        """One forward pass over the newest token and the d drafts on top of the cache; the kept
        drafts stay in it, the rest are cut off."""
        d, held = len(draft.tokens), sequence.shape[1] - 1         # the cache holds all but the newest
        fed = torch.cat([sequence[:, -1:], torch.tensor([draft.tokens], device=sequence.device)], dim=1)
        model = self.engine.loaded.model
        stack = self._stack
        if stack is not None and stack.fits(d + 1) and decodable_in_place(cache, len(stack.weights), 1):
            logits = model.lm_head(stack.check(fed, cache))[0]
        else:
            logits = forward(model, fed, cache, use_cache=True, logits_to_keep=d + 1).logits[0]
        kept, bonus = verify(logits, draft, self.settings, rows.generator)
        keep_first(cache, held + 1 + kept)
        times = timer.finish_step()
        context_len = sequence.shape[1] + d
        cost = self._cost(d + 1, context_len)
        return rows.take_several(draft.tokens[:kept] + [bonus], times, cost, cache, d + 1, context_len, draft.tokens,
                                 kept)

    def _cost(self, tokens_in: int, context_len: int) -> StepCost:
        """The cost model's figures for a step that fed `tokens_in` tokens per row and leaves
        `context_len` in the sequence (int8 / q4_1 read as blocks where the kernel takes the rows)."""
        batch = self.settings.batch_size
        blocks = self.settings.kernel == "fast" and self.engine.reads_blocks(tokens_in * batch)
        return step_cost(self.engine.loaded.info, batch, tokens_in, context_len - tokens_in, blocks)

    def _reused_cache(self) -> Any:
        """The previous turn's cache, cut to the prefix this prompt shares with it (at least one
        prompt token is left to prefill: its logits give the first new token)."""
        reuse, settings = self.reuse, self.settings
        if reuse is None or not settings.kv_cache or settings.batch_size != 1:
            return None
        self.reused_tokens = min(shared_prefix(reuse.ids, self.prompt_ids), len(self.prompt_ids) - 1)
        if self.reused_tokens == 0:
            return None
        keep_first(reuse.cache, self.reused_tokens)
        return reuse.cache

    def _forward(self, index: int, sequence: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        """Step `index` on (B, S) `sequence`: prefill (of what the cache does not hold yet), a cached
        decode step, or a full recompute."""
        model = self.engine.loaded.model
        if index == 0:
            if cache is not None:
                out = forward(model, sequence[:, self.reused_tokens:], cache, use_cache=True, logits_to_keep=1)
                return out.logits[:, -1, :], cache_of(out)
            logits, cache = prefill(model, sequence)
            return logits, cache if self.settings.kv_cache else None
        if self.settings.kv_cache:
            return decode_step(model, sequence[:, -1:], cache), cache
        return recompute_step(model, sequence), None

    def _take(self, rows: RowState, index: int, tokens: torch.Tensor, times: StepTimes, context_len: int,
              cache: Any) -> Step:
        """Step `index`, which produced `tokens` (B,) and leaves `context_len` tokens in the sequence,
        as its rows record it, with the cost model's figures for what it fed the model."""
        prompt_len = len(self.prompt_ids)
        tokens_in = prompt_len - self.reused_tokens if index == 0 else (1 if self.settings.kv_cache else context_len)
        cost = self._cost(tokens_in, context_len)
        attention = self._attention.take() if self._attention is not None else ()
        return rows.take(tokens, times, cost, cache, tokens_in, context_len, self.settings.batch_size,
                         attention=attention)


class Engine:
    """A loaded model, its device's roofs, and a lock: one run at a time (hooks are global).
    The model stays plain PyTorch: the fast path is switched on inside a run only."""

    def __init__(self, loaded: LoadedModel, device: DeviceInfo | None = None, fast_kernels: bool = True,
                 wait_for_kernel: bool = True, dtype_choice: str = ""):
        self.loaded = loaded
        # The kernel first: a first start builds it beside the model's load, and the roofs must not
        # be measured while the compiler shares the CPU. Without `wait_for_kernel` an engine whose
        # kernel is still building runs plain PyTorch until `finish_kernel` switches it over (its
        # roofs are measured briefly meanwhile, and in full then). `device`: roofs given, not measured.
        self.kernel, self.kernel_pending = None, False
        if fast_kernels and loaded.device.type == "cpu":
            self.kernel, self.kernel_pending = (kernel_module(), False) if wait_for_kernel else kernel_for_now()
        self.native_bf16 = bf16_native()
        self.device_info = device or self._measured_device(dtype_choice)
        self.lock = threading.Lock()
        self._warm_in: int | None = None          # the process whose first forward pass warm_up paid for
        self._cpu_wait_measurable = measurable()
        self.draft_model: DraftModel | None = None   # the operator's small model for speculate="draft"
        self.kernel_tuning: KernelTuning | None = None   # the kernel's variant here, once `tune` chose it

    def set_draft_model(self, model: nn.Module, tokenizer: Any, name: str = "draft model") -> None:
        """Load a draft model beside the main one (ValueError unless it reads the same tokens)."""
        draft = DraftModel(model, tokenizer, name)
        draft.check_tokenizer(self.loaded.tokenizer)
        ours, theirs = self.loaded.model.get_output_embeddings(), model.get_output_embeddings()
        if ours.weight.shape[0] != theirs.weight.shape[0]:
            raise ValueError(f"the {name} scores {theirs.weight.shape[0]:,} tokens and the main model "
                             f"{ours.weight.shape[0]:,}: a draft model must share the vocabulary")
        self.draft_model = draft

    def draft_model_for(self, settings: GenerationSettings) -> DraftModel:
        """The draft model a run with speculate="draft" uses (ValueError where none was loaded)."""
        if self.draft_model is None:
            raise ValueError("speculate=draft needs a draft model, and none was loaded here "
                             "(the command line's --draft-model); speculate=lookup needs none")
        return self.draft_model

    @property
    def measures_cpu_wait(self) -> bool:
        """Whether an instrumented step here records the time its threads waited for a core."""
        return self.loaded.device.type == "cpu" and self._cpu_wait_measurable

    @property
    def fast_kernels(self) -> bool:
        return self.kernel is not None

    def reads_blocks(self, rows: int) -> bool:
        """Whether a fast-path pass of `rows` rows (tokens x sequences) goes through the decode
        kernel, which reads int8 / q4_1 matrices as blocks (decode, a short prompt); PyTorch runs
        longer passes on the same values as floats (fast_path._few_rows)."""
        return self.kernel is not None and rows <= self.kernel.MAX_ROWS

    @property
    def kernel_note(self) -> str:
        """One line for the page and the log: whether the fast decode kernel runs here, and if not why."""
        if self.loaded.device.type != "cpu":
            return ""
        if self.kernel_pending and self.kernel is None:
            return ("fast decode kernel building for this CPU (once, about a minute): runs use plain PyTorch "
                    "until it is ready, then switch to it by themselves")
        if self.kernel_pending:
            return ("fast decode kernel built for this CPU; timing its variants (once, a few seconds): runs use "
                    "it meanwhile, in its default variant")
        if self.kernel is not None:
            variant = f"; variant: {self.kernel_tuning.note}" if self.kernel_tuning else ""
            return f"fast decode kernels built for this CPU{variant}"
        return f"fast decode kernel unavailable ({build_error() or 'not built'}): runs use plain PyTorch"

    def finish_kernel(self, progress: Callable[[str], None] = lambda _: None) -> None:
        """For an engine that started before its kernel was built: wait for the build, then switch
        to it between runs, measure the roofs again (the compiler shared the CPU when they were
        first measured), warm its path and choose its variant. Runs meanwhile use plain PyTorch."""
        if not self.kernel_pending:
            return
        kernel = kernel_module()                     # waits for the build
        with self.lock:                              # between runs
            self.kernel = kernel
            if kernel is not None:
                self.device_info = self._measured_device(self.device_info.dtype_choice)
        try:
            if kernel is not None:
                progress("The fast decode kernel is built: warming it up and timing its variants (once)")
                self.warm_up()
                self.tune(progress)
        finally:
            self.kernel_pending = False
        progress(self.kernel_note)

    def _measured_device(self, dtype_choice: str) -> DeviceInfo:
        """This device's roofs for the model's dtype: with short probes while the kernel builds."""
        return device_info(self.loaded.device, next(self.loaded.model.parameters()).dtype, dtype_choice,
                           quick=self.kernel_pending and self.kernel is None)

    def tune(self, progress: Callable[[str], None] = lambda _: None) -> None:
        """Run the kernel in this machine's fastest variant for these weights (timed the first time
        on a CPU: inference/kernels/tuning.py); the traces name it."""
        self.kernel_tuning = tune(self, progress)
        if self.kernel_tuning is not None:
            self.device_info = dataclasses.replace(self.device_info, kernel_variant=self.kernel_tuning.variant.name)

    def fast_path(self, settings: GenerationSettings, timer: LayerTimer) -> contextlib.AbstractContextManager:
        """The fast path for a run with settings.kernel "fast" (see fast_path.py); else nothing.
        It yields the model's FusedStack where its layers fuse (else None)."""
        if settings.kernel != "fast" or self.kernel is None:
            return contextlib.nullcontext()
        return fast_forwards(self.loaded.model, self.kernel, timer, self.native_bf16)

    def as_run(self, settings: GenerationSettings) -> GenerationSettings:
        """The settings as they will really run, for the trace to say: the fast kernel where it
        built, PyTorch's eager path without it or to record attention."""
        if settings.kernel == "fast" and (not self.fast_kernels or settings.attention_map):
            return dataclasses.replace(settings, kernel="eager")
        return settings

    def generate(self, prompt_ids: list[int], settings: GenerationSettings,
                 cancel: threading.Event | None = None, instrument: bool = True, prompt: str = "",
                 stop_at_eos: bool = True, reuse: CachedPrefix | None = None, why: str = "") -> GenerationRun:
        """A run to iterate. `instrument=False` times whole steps only (the benchmark's baseline);
        `stop_at_eos=False` always generates max_new_tokens (for fair timing); `reuse`: the last
        turn's cache, whose shared prefix this prompt does not compute again; `why`: why it runs
        alone, for its trace (inference/serving/door.py)."""
        self.check_fits(len(prompt_ids), settings.max_new_tokens)
        if settings.attention_map:
            attention_modules(self.loaded.model)          # ValueError now, for a model it cannot record
        if settings.speculate == "draft":
            self.draft_model_for(settings)                # ValueError now, where none was loaded
        return GenerationRun(self, list(prompt_ids), self.as_run(settings), cancel, instrument, prompt, stop_at_eos,
                             reuse, why)

    def warm_up(self) -> None:
        """One short run, discarded: a process's first forward pass pays one-off costs (allocator,
        kernel selection) that are not prefill, and would otherwise inflate the first TTFT."""
        self.generate([1] * 16, GenerationSettings(max_new_tokens=3), instrument=False).run_to_end()
        self._warm_in = os.getpid()

    def ensure_warm(self) -> None:
        """Warm up once in this process (a ZeroGPU worker is a fresh process that may not touch
        the GPU before it holds one, so its engine is warmed there, not at start-up). There the
        roofs are named after the GPU the worker really holds: the main process saw a stand-in."""
        if self._warm_in != os.getpid():
            if self.loaded.device.type == "cuda":
                self.device_info = self._measured_device(self.device_info.dtype_choice)
            self.warm_up()

    def trace_of(self, prompt_ids: list[int], settings: GenerationSettings, steps: list[Step],
                 stop_reason: StopReason | None, prompt: str, serving: str = "solo", reused_tokens: int = 0,
                 why: str = "", instrumented: bool = True) -> Trace:
        """A run's trace so far (a run without a stop reason yet reads as cancelled). Its steps'
        waits for a core are measured where the run was `instrumented` on an engine that counts them."""
        device = self.device_info if settings.kernel == "fast" else dataclasses.replace(self.device_info, kernel_variant="")
        return Trace(model=self.loaded.info, device=device, settings=settings,
                     prompt_tokens=len(prompt_ids), steps=tuple(steps),
                     summary=Summary.of(steps, settings.batch_size, stop_reason or "cancelled"), prompt=prompt,
                     serving=serving, reused_tokens=reused_tokens, serving_why=why,
                     cpu_wait_measured=instrumented and self.measures_cpu_wait)

    def check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        limit = self.loaded.info.max_context
        if prompt_tokens < 1:
            raise ValueError("the prompt has no tokens")
        if limit and prompt_tokens + max_new_tokens > limit:
            raise ValueError(f"the prompt is {prompt_tokens:,} tokens and {max_new_tokens:,} new tokens were asked "
                             f"for, but {self.loaded.info.name} holds at most {limit:,} tokens of context")


def per_engine(make: Callable[[Engine], T]) -> Callable[[Engine], T]:
    """`make(engine)` made once for each engine and kept while the engine lives (its batch server,
    its metrics): a model switch makes a new engine, and with it new ones."""
    made: weakref.WeakKeyDictionary[Engine, T] = weakref.WeakKeyDictionary()
    lock = threading.Lock()

    def one(engine: Engine) -> T:
        with lock:
            if engine not in made:
                made[engine] = make(engine)
            return made[engine]

    return one


def reference_generate(model: nn.Module, prompt_ids: list[int], max_new_tokens: int, eos: set[int]) -> list[int]:
    """The slow, obvious greedy loop: whole sequence every step, no cache, no hooks."""
    sequence = list(prompt_ids)
    new: list[int] = []
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([sequence]), use_cache=False).logits[0, -1]
            token = int(logits.argmax())
            sequence.append(token)
            new.append(token)
            if token in eos:
                break
    return new
