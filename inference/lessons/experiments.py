"""Experiments made of several runs, each proving one claim about the two phases with measurements.

Each function returns a typed result (inference/lessons/verdicts.py) holding the traces it ran; the
verdict is a sentence computed from those numbers, never written in advance.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

from inference.defaults import (BATCH_NEW_TOKENS, BATCH_PROMPT_TOKENS, CHUNK_LONG_PROMPT, CHUNK_SIZE,
                                 CHUNK_STREAMS, DTYPE_NEW_TOKENS, DTYPE_PROMPT_TOKENS, GOODPUT_TPOT_S,
                                 GOODPUT_TTFT_S, PREFIX_CONTEXT_TOKENS, PREFIX_NEW_TOKENS, PREFIX_STUDENTS,
                                 RACE_NEW_TOKENS,
                                 RACE_PROMPT_TOKENS, SPECULATE_DRAFT_TOKENS, SPECULATE_NEW_TOKENS, SPECULATE_PROMPTS,
                                 SWEEP_NEW_TOKENS)
from inference.engine import Engine
from inference.lessons.verdicts import (BatchResult, CacheRace, ChunkResult, DtypeResult, PrefixResult, PrefixSide,
                                       SpeculationResult, SweepResult)
from inference.prompts import fixed_length_prompt_ids, fixed_length_prompt_text
from inference.remote import RemoteClient, remote_sweep
from inference.settings import GenerationSettings
from inference.trace import Goodput, Trace

Progress = Callable[[float, str], None]


def _quiet(_: float, __: str) -> None:
    pass


def _run(engine: Engine, prompt_tokens: int, settings: GenerationSettings) -> Trace:
    ids = fixed_length_prompt_ids(engine.loaded.tokenizer, prompt_tokens)
    return engine.generate(ids, settings, stop_at_eos=False).run_to_end()


def prompt_length_sweep(engine: Engine, prompt_tokens: list[int], settings: GenerationSettings) -> Iterator[Trace]:
    """One run per prompt length, on exactly that many tokens of the fixed text."""
    for n in prompt_tokens:
        engine.check_fits(n, settings.max_new_tokens)
    for n in prompt_tokens:
        yield _run(engine, n, settings)


def run_sweep(engine: Engine, prompt_tokens: list[int], new_tokens: int = SWEEP_NEW_TOKENS,
              progress: Progress = _quiet, kernel: str = "fast") -> SweepResult:
    settings = GenerationSettings(max_new_tokens=new_tokens, kernel=kernel)
    traces = []
    for i, trace in enumerate(prompt_length_sweep(engine, sorted(prompt_tokens), settings)):
        traces.append(trace)
        progress((i + 1) / len(prompt_tokens), f"prompt of {trace.prompt_tokens} tokens done")
    return SweepResult(tuple(traces))


def run_remote_sweep(client: RemoteClient, tokenizer: Any, prompt_tokens: list[int],
                     new_tokens: int = SWEEP_NEW_TOKENS, progress: Progress = _quiet) -> SweepResult:
    """The same sweep on a remote engine: texts of exactly T tokens in the local model's tokenizer (about
    T in the remote model's own); the x axis is the engine's own count of each prompt (its usage)."""
    settings = GenerationSettings(max_new_tokens=new_tokens)
    texts = [fixed_length_prompt_text(tokenizer, n) for n in sorted(prompt_tokens)]
    traces = []
    for i, trace in enumerate(remote_sweep(client, texts, settings)):
        if not trace.prompt_tokens:
            raise ValueError(f"{trace.engine} does not report how long a prompt was (no usage in its stream): the "
                             f"sweep needs that count")
        traces.append(trace)
        progress((i + 1) / len(texts), f"prompt of {trace.prompt_tokens} tokens done")
    return SweepResult(tuple(traces))


def run_chunked_prefill(engine: Engine, long_prompt: int = CHUNK_LONG_PROMPT, chunk: int = CHUNK_SIZE,
                        streams: int = CHUNK_STREAMS, progress: Progress = _quiet) -> ChunkResult:
    """`streams` runs decode together on a batch server of their own; when they have streamed a
    few tokens, a `long_prompt`-token prompt joins. Once with its prefill whole, once in chunks of
    `chunk` tokens between the batch's decode steps. Needs the shared batch (a Llama on the CPU)."""
    from inference.serving.background import CancelFlag
    from inference.serving.batching import BatchServer

    engine.check_fits(long_prompt, 4)
    if chunk < 1 or streams < 1:
        raise ValueError("the chunk and the number of streaming runs must be at least 1")
    sides = []
    for i, size in enumerate((0, chunk)):
        server = BatchServer(engine, prefill_chunk=size)     # on the engine thread, as the page's runs
        if not server.can_batch(GenerationSettings()):
            raise ValueError("chunked prefill needs the shared batch, which this model or device does not run")
        tokenizer = engine.loaded.tokenizer
        runs = [server.submit(fixed_length_prompt_ids(tokenizer, 32 + j), GenerationSettings(max_new_tokens=64),
                              CancelFlag()) for j in range(streams)]
        runs[-1].wait_for_steps(2, 120)                     # every stream admitted and decoding
        joined = len(runs[0].steps)                         # the first stream's steps before the long prompt
        late = server.submit(fixed_length_prompt_ids(tokenizer, long_prompt), GenerationSettings(max_new_tokens=4),
                             CancelFlag())
        for run in [*runs, late]:
            run.wait()
            if run.error is not None:
                raise run.error
        spans = [run.span() for run in [*runs, late]]
        seconds = max(s.end for s in spans) - min(s.submitted for s in spans)
        sides.append((runs[0].trace(), late.trace(), joined, Goodput.of(spans, seconds, GOODPUT_TTFT_S, GOODPUT_TPOT_S)))
        progress((i + 1) / 2, "prefill in chunks done" if size else "prefill whole done")
    return ChunkResult(chunk, sides[0][:2], sides[1][:2], (sides[0][2], sides[1][2]), (sides[0][3], sides[1][3]))


def class_questions(students: int) -> list[str]:
    """Each student's own short question about the shared context (different, and fixed)."""
    topics = ("the main idea", "the first claim", "a word that stands out", "the tone", "what comes next",
              "who is speaking", "a question it raises", "its weakest point", "a title for it", "its setting")
    return [f"Student {i + 1}: in one sentence, {topics[i % len(topics)]} of the text above?" for i in range(students)]


def run_shared_context(engine: Engine, students: int = PREFIX_STUDENTS, context_tokens: int = PREFIX_CONTEXT_TOKENS,
                       new_tokens: int = PREFIX_NEW_TOKENS, progress: Progress = _quiet,
                       ttft_s: float = GOODPUT_TTFT_S, tpot_s: float = GOODPUT_TPOT_S) -> PrefixResult:
    """A class presses Run at once: `students` questions, each after the same `context_tokens`-token
    context (a system message), on a batch server of their own; once with prefix caching off (every
    prompt prefilled whole), once on (the context's blocks prefilled once, then shared). Greedy, so
    both sides must write the same answers. Needs the shared batch (a Llama on the CPU)."""
    from inference.prompts import chat_prompt_ids
    from inference.serving.background import CancelFlag
    from inference.serving.batching import BatchServer

    if students < 1 or context_tokens < 1:
        raise ValueError(f"the class needs at least one student and a context of at least one token, got "
                         f"{students} and {context_tokens}")
    tokenizer = engine.loaded.tokenizer
    context = fixed_length_prompt_text(tokenizer, context_tokens)
    prompts = [chat_prompt_ids(tokenizer, q, context) for q in class_questions(students)]
    engine.check_fits(max(map(len, prompts)), new_tokens)
    settings = GenerationSettings(max_new_tokens=new_tokens)
    sides = []
    for sharing in (False, True):
        server = BatchServer(engine)                      # on the engine thread, as the page's runs
        if not server.can_batch(settings):
            raise ValueError("prefix caching lives in the shared batch, which this model or device does not run")
        server.prefix_caching = sharing
        server.use_context(context)
        runs = [server.submit(ids, settings, CancelFlag()) for ids in prompts]
        for run in runs:
            run.wait()
            if run.error is not None:
                raise run.error
        spans = [run.span() for run in runs]
        seconds = max(s.end for s in spans) - min(s.submitted for s in spans)
        sides.append(PrefixSide(tuple(run.trace() for run in runs), tuple(s.prefill_end - s.submitted for s in spans),
                                seconds, server.pool.peak_in_use * server.pool.block_bytes,
                                Goodput.of(spans, seconds, ttft_s, tpot_s)))
        progress(len(sides) / 2, "prefix caching on done" if sharing else "prefix caching off done")
    return PrefixResult(context_tokens, sides[0], sides[1], ttft_s, tpot_s)


def run_cache_race(engine: Engine, prompt_tokens: int = RACE_PROMPT_TOKENS, new_tokens: int = RACE_NEW_TOKENS,
                   progress: Progress = _quiet, kernel: str = "fast") -> CacheRace:
    cached = _run(engine, prompt_tokens, GenerationSettings(max_new_tokens=new_tokens, kernel=kernel))
    progress(0.5, "cached run done")
    recomputed = _run(engine, prompt_tokens, GenerationSettings(max_new_tokens=new_tokens, kv_cache=False,
                                                                kernel=kernel))
    progress(1.0, "recomputing run done")
    return CacheRace(cached, recomputed)


def run_batch_sweep(engine: Engine, batch_sizes: list[int], prompt_tokens: int = BATCH_PROMPT_TOKENS,
                    new_tokens: int = BATCH_NEW_TOKENS,
                    progress: Progress = _quiet, kernel: str = "fast") -> BatchResult:
    traces = []
    for i, b in enumerate(sorted(batch_sizes)):
        settings = GenerationSettings(max_new_tokens=new_tokens, batch_size=b, kernel=kernel)
        traces.append(_run(engine, prompt_tokens, settings))
        progress((i + 1) / len(batch_sizes), f"batch {b} done")
    return BatchResult(tuple(traces))


def run_dtype_comparison(model: str, device: str, dtypes: list[str], prompt_tokens: int = DTYPE_PROMPT_TOKENS,
                         new_tokens: int = DTYPE_NEW_TOKENS, progress: Progress = _quiet,
                         kernel: str = "fast") -> DtypeResult:
    """The same prompt on a fresh copy of the model per dtype (loaded one at a time). The prompt is
    short so that weight bytes dominate decode; on these CPUs bfloat16 attention over a long context
    is slow, and a 256-token prompt measured only 1.03x (vs 1.7x at 32)."""
    from inference.model.factory import load_engine

    traces = []
    for i, dtype in enumerate(dtypes):
        engine = load_engine(model, device, dtype)
        traces.append(_run(engine, prompt_tokens, GenerationSettings(max_new_tokens=new_tokens, kernel=kernel)))
        del engine
        progress((i + 1) / len(dtypes), f"{dtype} done")
    return DtypeResult(tuple(traces))


def run_speculation(engine: Engine, draft_tokens: list[int] | tuple[int, ...] = SPECULATE_DRAFT_TOKENS,
                    new_tokens: int = SPECULATE_NEW_TOKENS, method: str = "lookup", progress: Progress = _quiet,
                    kernel: str = "fast", prompts: tuple[tuple[str, str], ...] = SPECULATE_PROMPTS) -> SpeculationResult:
    """Each prompt (kind, text) with speculation at each k, each right after a plain run of the same
    prompt (interleaved, so both meet the machine in the same state); greedy, so plain and speculative
    runs write the same tokens (up to the end of the answer, or `new_tokens`) and their times compare.
    (Past the end of its answer a model writes new text, which no draft matches.)"""
    from inference.prompts import chat_prompt_ids

    if method not in ("lookup", "draft"):
        raise ValueError(f"the speculation method is lookup or draft, got {method!r}")
    runs = []
    total = len(prompts) * len(draft_tokens)
    for kind, text in prompts:
        ids = chat_prompt_ids(engine.loaded.tokenizer, text)
        for k in draft_tokens:
            speculative = GenerationSettings(max_new_tokens=new_tokens, kernel=kernel, speculate=method, draft_tokens=k)
            plain = engine.generate(ids, GenerationSettings(max_new_tokens=new_tokens, kernel=kernel)).run_to_end()
            runs.append((kind, plain, engine.generate(ids, speculative).run_to_end()))
            progress(len(runs) / total, f"{kind}, k={k} done")
    return SpeculationResult(tuple(runs))
