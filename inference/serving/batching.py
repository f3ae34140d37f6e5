"""Continuous batching: every run on the server decodes in one shared batch (a class on one machine).

A run joins when it is admitted: its prefill runs alone (the whole pause, as the page teaches).
Then each engine step decodes one token for every active run at once: the fused kernel reads each
weight once for all their rows, while each row attends over its own run's cache (different
lengths, no padding). A run leaves when it ends (EOS, its length, Stop, the time limit) and frees
its blocks. The runs' KV caches live in one pool of fixed-size blocks (paged.py): a run's prefill
starts after the blocks of the class's shared context that are already cached (prefix caching),
and its decode steps read K/V through each row's block table. Each run's Steps record what that
run experienced: the step's time, how many sequences shared it (`batch_rows`, its own when alone), and the other runs' prompt tokens prefilled before it
in the same engine step (`foreign_prefill_tokens`) with the time they took (`waited_ms`, part of
its time). A run alone on the server is recorded as it would be alone.

`inference/serving/scheduler.py` decides (whom to admit, how a prompt is cut into pieces), `BatchServer`
carries it out on the engine thread, and `FusedStack.decode` executes a shared step; where the
kernel did not build (no compiler, not x86), `PlainStack.decode` does in PyTorch (plain_batch.py).
Runs that cannot share a step (no KV cache, the eager kernel chosen, recording attention, a model
neither stack takes, a GPU) run alone through GenerationRun, as before.
"""
from __future__ import annotations

import collections
import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import torch

from inference.cost_model import shared_decode_cost, step_cost
from inference.engine import Engine, per_engine
from inference.hardware.cpu_quota import memory_room
from inference.kernels.build import MAX_ROWS
from inference.kernels.fast_path import FusedStack, stack_fusable
from inference.model.kv_cache import cache_from, cache_of, forward, layer_kv, shared_prefix
from inference.rows import RowState
from inference.serving.background import ENGINE_THREAD, EngineThread, WatchedRun
from inference.serving.paged import BlockPool, PagedCache, PagedRow, PoolSnapshot, gather, prefix_hashes, scatter
from inference.serving.plain_batch import PlainStack, plain_stackable
from inference.serving.scheduler import Ask, Limits, admissible, piece_end, refusal
from inference.settings import GenerationSettings
from inference.timing import LayerTimer, RunCancelled, StepTimes
from inference.trace import ClassSnapshot, RunSpan, StopReason, Step, Trace


class BatchRun(WatchedRun):
    """One run in the shared batch, as its caller sees it (steps as they come, `wait_for_steps`,
    `stop`, `trace`: the same surface as BackgroundRun). The server's thread fills it."""

    def __init__(self, server: BatchServer, prompt_ids: list[int], settings: GenerationSettings, cancel: Any,
                 prompt: str, max_seconds: float):
        super().__init__(max_seconds)
        self.server, self.prompt_ids, self.settings, self.cancel, self.prompt = server, prompt_ids, settings, cancel, prompt
        self.steps: list[Step] = []
        self.stop_reason: StopReason | None = None
        self.why = ""                             # why it runs in the shared batch (serving/door.py)
        self.prefill_start: float | None = None
        self.prefill_end: float | None = None
        self.ended: float | None = None
        self.timer: LayerTimer | None = None      # while this run's prefill runs: its layer progress
        # The server's state for this run (touched only on the server's thread).
        self.cache: Any = None
        self.prefilled = 0                        # prompt tokens prefilled so far
        self.piece_times: list[StepTimes] = []    # one per prefill piece
        self.row_state: RowState | None = None    # its rows as they decode (set when its prefill starts)
        self.names: list[bytes] = []              # its shareable full prompt blocks' prefix names
        self.hit_blocks: list[int] = []           # the cached blocks its prefill starts after
        self.reserved = 0                         # blocks it may still take from the pool, at its full length
        self.holds_hits = False                   # it references its hit blocks, not yet through a PagedCache
        self.label = ""                           # how the class view names it
        self.source = "page"                      # where it came from: "page" or "api" (the OpenAI-compatible API)
        self.cold_ttft_ms = 0.0                   # its prefill with nothing cached, estimated (when it had hits)

    @property
    def queue_position(self) -> int:
        """Runs ahead of this one waiting for room in the batch, itself included (0 once admitted)."""
        return self.server.position(self)

    @property
    def layers_done(self) -> int:
        timer = self.timer
        return timer.layers_done if timer is not None else 0

    @property
    def rows(self) -> int:
        return self.settings.batch_size

    def trace(self) -> Trace:
        trace = self.server.engine.trace_of(self.prompt_ids, self.settings, list(self.steps), self.stop_reason,
                                            self.prompt, serving="batched", why=self.why, reused_tokens=self.hit_tokens)
        return dataclasses.replace(trace, cold_ttft_ms=self.cold_ttft_ms)

    @property
    def hit_tokens(self) -> int:
        """Prompt tokens its prefill found in the shared blocks (not computed again)."""
        return len(self.hit_blocks) * self.server.block_tokens

    def span(self) -> RunSpan:
        return RunSpan(self.started, self.prefill_start, self.prefill_end, self.ended, len(self.steps), self.source)

    def _add(self, step: Step) -> None:
        self.steps.append(step)
        self._notify()

    def _finish(self, reason: StopReason, error: BaseException | None = None) -> None:
        if isinstance(self.cache, PagedCache):        # its blocks go back to the pool (named ones stay cached)
            self.cache.free()
        elif self.holds_hits:                         # it ended before its prefill was paged
            for block in self.hit_blocks * self.rows:
                self.server.pool.release(block)
        self.holds_hits, self.reserved = False, 0
        self.stop_reason, self.error, self.cache, self.ended = reason, error, None, time.perf_counter()
        self._end()


def kv_budget_bytes(device: torch.device, meminfo: Path = Path("/proc/meminfo"),
                    proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")) -> int:
    """What the class's KV caches may hold: half the memory free when the server starts (the other
    half for activations, the page, and everything else on the machine). In a container or on a
    Space, free means under the cgroup's memory limit, where that is tighter than the host's."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    try:
        with open(meminfo) as lines:
            available = next(int(line.split()[1]) * 1024 for line in lines if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        available = 2 << 30                       # unknown: assume a small machine
    room = memory_room(proc_cgroup, root)
    return (available if room is None else min(available, room)) // 2


class BatchServer:
    """Admits runs into one decode batch and steps it on the engine thread while any run is active.
    A run waits (its position shown) until its rows fit the batch and its KV cache, at its full
    length, fits what the runs already admitted leave of the budget: never an out-of-memory."""

    def __init__(self, engine: Engine, engine_thread: EngineThread = ENGINE_THREAD, prefill_chunk: int = 0):
        self.engine, self.engine_thread = engine, engine_thread
        # Prompt tokens per prefill piece (0: a whole prompt at once). With chunks, a long prompt's
        # prefill alternates with the batch's decode steps instead of freezing every stream.
        self.prefill_chunk = prefill_chunk
        self.max_rows = MAX_ROWS if self.shared_step(engine) else 0
        self.kv_budget = kv_budget_bytes(engine.loaded.device)
        # Prefix caching: a prompt's full blocks within the class's shared context (the operator's
        # `shared_context` ids, else the chat template's own opening, its system prompt) are named,
        # kept and shared; a student's own text is never shared across runs.
        self.prefix_caching = True
        self.shared_context: tuple[int, ...] | None = None
        self._context_text = ""
        self._template_opening: tuple[int, ...] | None = None
        self._pool: BlockPool | None = None
        self._runs_admitted = 0
        self._cold: tuple[int, float] | None = None       # the last prefill with nothing cached: (tokens, ms)
        self._waiting: collections.deque[BatchRun] = collections.deque()
        self._lock = threading.Lock()
        self._serving = False
        self.active: list[BatchRun] = []          # replaced, never mutated in place
        self._recent: collections.deque[BatchRun] = collections.deque(maxlen=200)     # for the class view
        self._step_log: collections.deque[tuple[float, int]] = collections.deque(maxlen=5000)

    @property
    def limits(self) -> Limits:
        return Limits(self.max_rows, self.pool.capacity * self.pool.block_bytes)

    @property
    def block_tokens(self) -> int:
        return self.pool.block_tokens

    @property
    def pool(self) -> BlockPool:
        """The block pool the KV budget holds (its tensors are made when the first run is paged)."""
        if self._pool is None or (self._pool.budget_bytes != self.kv_budget and self._pool.in_use == 0):
            info = self.engine.loaded.info
            self._pool = BlockPool(info.layers, info.kv_heads, info.head_dim, info.kv_bytes_per_token, self.kv_budget)
        return self._pool

    def ask(self, run: BatchRun) -> Ask:
        """What the run could ever need: its rows, and its blocks with every row at full length."""
        return Ask(run.rows, run.rows * self._row_blocks(run) * self.pool.block_bytes)

    def _row_blocks(self, run: BatchRun) -> int:
        """Blocks one of the run's rows holds at its full length (prompt and every new token)."""
        return -(-(len(run.prompt_ids) + run.settings.max_new_tokens) // self.block_tokens)

    def shareable(self, prompt_ids: list[int]) -> int:
        """How many leading prompt tokens may come from, and go into, the class's shared blocks (at
        least the last prompt token is always computed: its logits give the first token)."""
        if not self.prefix_caching:
            return 0
        context = self.shared_context
        if context is None:
            if self._template_opening is None:
                from inference.prompts import context_prefix_ids
                self._template_opening = tuple(context_prefix_ids(self.engine.loaded.tokenizer))
            context = self._template_opening
        return min(shared_prefix(context, prompt_ids), len(prompt_ids) - 1)

    def use_context(self, text: str) -> None:
        """The class's shared context (the operator's text, a system message before every question;
        "" for the chat template's own opening) as the tokens whose blocks are shared."""
        if text != self._context_text:
            from inference.prompts import context_prefix_ids
            self.shared_context = tuple(context_prefix_ids(self.engine.loaded.tokenizer, text)) if text.strip() else None
            self._context_text = text

    def _blocks_needed(self, run: BatchRun) -> int:
        """Blocks the run takes out of what the pool has available, at its full length, given the
        shared blocks already cached (its names and hits are set here)."""
        pool = self.pool
        run.names = prefix_hashes(run.prompt_ids, self.shareable(run.prompt_ids), pool.block_tokens)
        run.hit_blocks = pool.lookup(run.names)
        run.reserved = run.rows * (self._row_blocks(run) - len(run.hit_blocks))     # its own, from admission on
        return run.reserved + pool.idle_among(run.hit_blocks)

    def position(self, run: BatchRun) -> int:
        """1 for the next run to be admitted, 2 for the one after...; 0 once admitted."""
        with self._lock:
            return next((i + 1 for i, waiting in enumerate(self._waiting) if waiting is run), 0)

    @property
    def stack(self) -> str | None:
        return self.shared_step(self.engine)

    @staticmethod
    def shared_step(engine: Engine) -> str | None:
        """What executes a shared decode step on this engine: "fused" (the kernel, every layer in one
        call), "plain" (PyTorch, where the kernel did not build), or None (runs go alone). On a GPU
        runs go alone: the shared batch has not run on one yet (and a ZeroGPU call is a worker of its own)."""
        model = engine.loaded.model
        if engine.loaded.device.type != "cpu":
            return None
        if engine.kernel is not None and stack_fusable(model):
            return "fused"
        return "plain" if plain_stackable(model) else None

    def why_alone(self, settings: GenerationSettings) -> str:
        """Why a run with these settings cannot share decode steps here, in one line ("" if it can)."""
        if self.stack is None:
            device = self.engine.loaded.device
            return ("the shared batch runs on the CPU only so far" if device.type != "cpu" else
                    f"{self.engine.loaded.info.name} is not a Llama, which the shared step computes")
        if not settings.kv_cache:
            return "without the KV cache every step recomputes its whole sequence, alone"
        if settings.kernel != "fast":
            return "the eager kernel (plain PyTorch, the reference) runs alone"
        if settings.attention_map:
            return "recording attention runs PyTorch's eager attention, alone"
        if settings.speculate:
            return ("speculative decoding runs alone: a shared step gives each row one new token, a check "
                    "step gives its row several")
        if settings.batch_size > self.max_rows:
            return f"{settings.batch_size} rows are more than the {self.max_rows} a shared step holds"
        return ""

    def can_batch(self, settings: GenerationSettings) -> bool:
        """Whether a run with these settings can share decode steps here."""
        return not self.why_alone(settings)

    def submit(self, prompt_ids: list[int], settings: GenerationSettings, cancel: Any, prompt: str = "",
               max_seconds: float = float("inf"), why: str = "", source: str = "page") -> BatchRun:
        """Queue a run for the batch (ValueError if it does not fit the model's context or could
        never fit the KV budget); `why`: the front door's reason, for its trace; `source`: where it
        came from ("page", "api"), for the class view."""
        self.engine.check_fits(len(prompt_ids), settings.max_new_tokens)
        run = BatchRun(self, list(prompt_ids), self.engine.as_run(settings), cancel, prompt, max_seconds)
        run.why, run.source = why, source
        refused = refusal(self.ask(run), self.limits)
        if refused:
            raise ValueError(refused)
        with self._lock:
            self._waiting.append(run)
            self._recent.append(run)
            if not self._serving:
                self._serving = True
                self.engine_thread.submit(self._serve)
        return run

    def _serve(self) -> None:
        engine = self.engine
        model = engine.loaded.model
        active: list[BatchRun] = []         # decoding
        filling: list[BatchRun] = []        # admitted, prefill in chunks not finished yet
        gone: list[BatchRun] = []           # ended, released once the server holds nothing of them
        try:
            with engine.lock, torch.inference_mode(), \
                    LayerTimer(model, engine.loaded.info.layers, engine.loaded.device) as timer, \
                    engine.fast_path(GenerationSettings(kernel="fast"), timer) as fused:   # every run here is "fast"
                stack = fused if self.stack == "fused" else PlainStack(model, timer)
                while True:
                    gone += [run for run in [*active, *filling] if self._leaves(run)]
                    active = [run for run in active if not run.done]
                    filling = [run for run in filling if not run.done]
                    waited: dict[int, tuple[int, float]] = collections.defaultdict(lambda: (0, 0.0))
                    if filling:                 # one chunk of the oldest unfinished prefill per step
                        self._prefill_alone(filling[0], timer, active, waited)
                    else:
                        filling += self._admit(active, timer, waited, gone)
                    active += [run for run in filling if run.prefill_end is not None and not run.done]
                    gone += [run for run in filling if run.done]
                    filling = [run for run in filling if run.prefill_end is None and not run.done]
                    self.active = list(active)
                    if not active:
                        with self._lock:
                            if not self._waiting and not filling:
                                self._serving = False
                                return          # `gone` is released below, after the lock is
                    # The server goes on without the runs that left: it holds nothing of theirs.
                    for run in gone:
                        run._release()
                    gone = []
                    if active:
                        self._decode(active, timer, stack, waited)
        except BaseException as exc:              # every run still here ends with the message
            with self._lock:
                stranded, self._waiting = [*active, *filling, *self._waiting], collections.deque()
                self._serving = False
            for run in stranded:
                if not run.done:
                    run._finish("cancelled", exc)
            gone += stranded
        finally:
            self.active = []
            for run in gone:
                run._release()

    def _leaves(self, run: BatchRun) -> bool:
        if run.done:
            return True
        if run.cancel.is_set():
            run._finish("cancelled")
            return True
        return False

    def _admit(self, active: list[BatchRun], timer: LayerTimer, waited: dict[int, tuple[int, float]],
               gone: list[BatchRun]) -> list[BatchRun]:
        """Admit waiting runs, one at a time, while their rows and KV caches fit, and prefill each
        (or its first chunk). Returns them; `waited` gathers, for every run, the other runs' prompt
        tokens prefilled before its next decode step and the time that took; runs that end on the
        way (Stop while waiting, EOS as the first token) go to `gone`."""
        admitted: list[BatchRun] = []
        pool = self.pool
        while True:
            with self._lock:
                if not self._waiting:
                    return admitted
                inside = [*active, *admitted]
                committed = Ask(sum(r.rows for r in inside), (pool.in_use + sum(r.reserved for r in inside)) * pool.block_bytes)
                head = self._waiting[0]
                need = Ask(head.rows, self._blocks_needed(head) * pool.block_bytes)
                if not admissible([committed], [need], self.limits):
                    return admitted
                run = self._waiting.popleft()
            if run.cancel.is_set():
                run._finish("cancelled")
                gone.append(run)
                continue
            for block in run.hit_blocks * run.rows:
                pool.share(block)
            run.holds_hits = True
            self._runs_admitted += 1
            run.label = f"{'API ' if run.source == 'api' else ''}run {self._runs_admitted}"
            self._prefill_alone(run, timer, [*active, *admitted], waited)
            (gone if run.done else admitted).append(run)
            if run.prefill_end is None:     # prefilling in chunks: the batch decodes before the next one
                return admitted

    def _prefill_alone(self, run: BatchRun, timer: LayerTimer, others: list[BatchRun],
                       waited: dict[int, tuple[int, float]]) -> None:
        """`_prefill_piece`, where a fault ends this run only (with its message; its blocks go
        back) and the batch goes on."""
        try:
            self._prefill_piece(run, timer, others, waited)
        except Exception as exc:
            timer.cancel, run.timer = None, None
            run._finish("cancelled", exc)

    def _prefill_piece(self, run: BatchRun, timer: LayerTimer, others: list[BatchRun],
                       waited: dict[int, tuple[int, float]]) -> None:
        """The run's whole prefill, or its next `prefill_chunk` prompt tokens; the last piece
        samples its first token and records its prefill step, whose time runs from the first
        piece's start to the first token (the decode steps between pieces included)."""
        engine = self.engine
        device = engine.loaded.device
        if run.prefill_start is None:
            run.row_state = RowState(engine.loaded.model, engine.loaded.tokenizer, run.settings, device)
            run.prefilled, run.piece_times = run.hit_tokens, []
            run.cache = self._cached_prefix(run)
            self.pool.queried_tokens += len(run.prompt_ids)
            self.pool.hit_tokens += run.hit_tokens
            run.prefill_start = time.perf_counter()
        end = piece_end(run.prefilled, len(run.prompt_ids), self.prefill_chunk)
        ids = torch.tensor([run.prompt_ids[run.prefilled:end]] * run.rows, device=device)
        timer.cancel, run.timer = run.cancel, timer
        timer.start_step()
        try:
            out = forward(engine.loaded.model, ids, run.cache, use_cache=True, logits_to_keep=1)
        except RunCancelled:
            timer.finish_step()
            run._finish("cancelled")
            return
        finally:
            timer.cancel, run.timer = None, None
        run.cache, logits = cache_of(out), out.logits[:, -1, :]
        complete = end == len(run.prompt_ids)
        tokens = run.row_state.sample(logits) if complete else None
        times = timer.finish_step()
        run.piece_times.append(times)
        for other in others:
            before_tokens, before_ms = waited[id(other)]
            waited[id(other)] = (before_tokens + (end - run.prefilled) * run.rows, before_ms + times.ms)
        run.prefilled = end
        if complete:
            run.cache = self._page(run)
            run.prefill_end = time.perf_counter()
            pieces = run.piece_times
            total = StepTimes(ms=(run.prefill_end - run.prefill_start) * 1e3,
                              layer_ms=tuple(map(sum, zip(*(t.layer_ms for t in pieces)))),
                              attn_ms=tuple(map(sum, zip(*(t.attn_ms for t in pieces)))),
                              mlp_ms=tuple(map(sum, zip(*(t.mlp_ms for t in pieces)))),
                              cpu_wait_ms=sum(t.cpu_wait_ms or 0.0 for t in pieces))
            computed = len(run.prompt_ids) - run.hit_tokens
            cost = step_cost(engine.loaded.info, run.rows, computed, run.hit_tokens,
                             blocks=engine.reads_blocks(run.rows * computed))
            if not run.hit_tokens:
                self._cold = (len(run.prompt_ids), total.ms)
            elif self._cold is not None:      # the last cold prefill here, scaled to this prompt's length
                run.cold_ttft_ms = self._cold[1] * len(run.prompt_ids) / self._cold[0]
            self._accept(run, tokens, total, cost, run.rows)

    def _cached_prefix(self, run: BatchRun) -> Any:
        """The cache a run's prefill starts from: its shared blocks as contiguous K/V, or None."""
        if not run.hit_blocks:
            return None
        layers = gather(self.pool, run.hit_blocks, run.hit_tokens)
        return cache_from([(k.expand(run.rows, -1, -1, -1), v.expand(run.rows, -1, -1, -1)) for k, v in layers])

    def _page(self, run: BatchRun) -> PagedCache:
        """Move a run's prefilled cache into the pool: the shared blocks it started after, then blocks
        of its own for the rest of the prompt; its full shareable blocks are named for later runs."""
        pool, prompt = self.pool, len(run.prompt_ids)
        first = len(run.hit_blocks)
        per_row = -(-prompt // pool.block_tokens) - first
        rows = [PagedRow(run.hit_blocks + [pool.allocate() for _ in range(per_row)], prompt) for _ in range(run.rows)]
        paged = PagedCache(pool, rows, self.engine.loaded.info.kv_bytes_per_token)     # holds every block now
        run.reserved -= per_row * run.rows
        run.holds_hits = False
        try:
            tensors = [layer_kv(run.cache, i) for i in range(self.engine.loaded.info.layers)]
            pool.tensors(tensors[0][0].dtype, tensors[0][0].device, max(b for row in rows for b in row.blocks))
            start = first * pool.block_tokens
            for r, row in enumerate(rows):
                scatter(pool, row.blocks[first:], [(k[r, :, start:prompt], v[r, :, start:prompt]) for k, v in tensors])
        except BaseException:
            paged.free()
            raise
        for block, name in list(zip(rows[0].blocks, run.names))[first:]:
            pool.name(block, name)
        return paged

    def _decode(self, active: list[BatchRun], timer: LayerTimer, stack: FusedStack | PlainStack,
                waited: dict[int, tuple[int, float]]) -> None:
        """One decode step for every active run's rows at once, through their block tables."""
        model = self.engine.loaded.model
        timer.start_step()
        tokens = torch.cat([run.row_state.tokens for run in active])[:, None]        # (M, 1)
        for run in active:
            run.reserved -= run.cache.grow()
        rows = [row for run in active for row in run.cache.rows]
        hidden = stack.decode_paged(tokens, self.pool, rows)                         # (M, 1, hidden)
        for row in rows:
            row.length += 1
        logits = model.lm_head(hidden[:, -1, :])                                     # (M, V)
        # Greedy rows (a class's usual case) in one argmax rather than one per run.
        greedy = logits.argmax(dim=-1) if any(run.settings.greedy for run in active) else None
        chosen, start = [], 0
        for run in active:
            end = start + run.rows
            chosen.append(greedy[start:end] if run.settings.greedy else run.row_state.sample(logits[start:end]))
            start = end
        times = timer.finish_step()
        self._step_log.append((time.perf_counter(), start))
        cost = shared_decode_cost(self.engine.loaded.info,
                                  [(run.rows, len(run.prompt_ids) + run.row_state.steps_taken - 1) for run in active])
        for run, run_tokens in zip(active, chosen):
            self._accept(run, run_tokens, times, cost, start, *waited.get(id(run), (0, 0.0)))

    def _accept(self, run: BatchRun, tokens: torch.Tensor, times: StepTimes, cost: Any, batch_rows: int,
                foreign_tokens: int = 0, waited_ms: float = 0.0) -> None:
        """Record the run's next step, which produced `tokens` (B,); end the run if it is done."""
        rows = run.row_state
        index = rows.steps_taken
        tokens_in = len(run.prompt_ids) - run.hit_tokens if index == 0 else 1
        run._add(rows.take(tokens, times, cost, run.cache, tokens_in, len(run.prompt_ids) + index, batch_rows,
                           foreign_tokens, waited_ms))
        if rows.stop:
            run._finish(rows.stop)

    def snapshot(self, window_s: float = 60.0) -> ClassSnapshot:
        """The class view's data: runs that were alive in the last `window_s` seconds."""
        now = time.perf_counter()
        with self._lock:
            runs = [run.span() for run in self._recent]
            steps = [step for step in self._step_log if step[0] >= now - window_s]
        runs = [r for r in runs if r.end is None or r.end >= now - window_s]
        return ClassSnapshot(now, window_s, tuple(runs), tuple(steps), self.pool_snapshot())

    def pool_snapshot(self) -> PoolSnapshot | None:
        """The block pool as the class view shows it (None where runs do not share a batch)."""
        if self.stack is None:
            return None
        active = list(self.active)
        info = self.engine.loaded.info
        caches = [(run.label, run.cache) for run in active]
        tables = [(label, tuple(cache.rows[0].blocks)) for label, cache in caches
                  if isinstance(cache, PagedCache) and cache.rows]
        reserved = sum(run.rows * (len(run.prompt_ids) + run.settings.max_new_tokens) for run in active)
        return self.pool.snapshot(tables, reserved * info.kv_bytes_per_token)


batch_server = per_engine(BatchServer)     # the one batch server of an engine
