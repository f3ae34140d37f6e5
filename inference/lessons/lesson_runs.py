"""The runs behind the guided lesson's steps (inference/lessons/lesson.py), on the student's own prompt.

Every run goes in through the front door (`launch`: inference/serving/door.py's prepare and start,
with the server's settings), so the lesson's runs share the class's batch where they can and show on
the Class tab like any other; each function waits for its runs and returns the typed result its
step's sentence reads.
"""
from __future__ import annotations

from typing import Any, Callable

from inference.lessons.verdicts import BatchResult, CacheRace, SweepResult
from inference.prompts import chat_prompt_ids
from inference.serving.background import WatchedRun
from inference.settings import GenerationSettings
from inference.trace import Trace

Launch = Callable[[list[int], GenerationSettings], WatchedRun]
Progress = Callable[[float, str], None]

# Step 2: the student's prompt, then pasted over and over until it is about this long (at which
# lengths prefill's fixed costs no longer hide its growth, even on a small CPU).
SWEEP_PROMPT_TOKENS = (256, 1024)
SWEEP_NEW_TOKENS = 16
RACE_NEW_TOKENS = 48                 # step 4: enough tokens for recomputing to show its cost
BATCH_ROWS, BATCH_NEW_TOKENS = (1, 2, 8), 16


def _quiet(_: float, __: str) -> None:
    pass


def finished(run: WatchedRun) -> Trace:
    """The run's whole trace once it has ended (within its time limit), or its error."""
    try:
        for _ in run.follow(0.25):
            pass
    finally:
        run.stop()
    if run.error is not None:
        raise run.error if isinstance(run.error, ValueError) else ValueError(
            f"The run failed: {type(run.error).__name__}: {run.error}")
    return run.trace()


def repeated_prompts(tokenizer: Any, prompt: str, lengths: tuple[int, ...] = SWEEP_PROMPT_TOKENS
                     ) -> list[tuple[int, list[int]]]:
    """(times pasted, prompt ids): the student's prompt once, then pasted over and over to at least
    each of `lengths` tokens (a prompt already that long is skipped)."""
    pasted = lambda k: chat_prompt_ids(tokenizer, " ".join([prompt.strip()] * k))
    once = pasted(1)
    per_paste = max(1, len(pasted(2)) - len(once))
    prompts = [(1, once)]
    for n in lengths:
        if n > len(prompts[-1][1]):
            k = 1 + -(-(n - len(once)) // per_paste)          # ceiling division: at least n tokens
            prompts.append((k, pasted(k)))
    return prompts


def prompt_sweep(launch: Launch, tokenizer: Any, prompt: str, progress: Progress = _quiet,
                 lengths: tuple[int, ...] = SWEEP_PROMPT_TOKENS) -> SweepResult:
    """Step 2: the same question, longer and longer, a few tokens each (enough for a decode median)."""
    prompts = repeated_prompts(tokenizer, prompt, lengths)
    if len(prompts) < 2:
        raise ValueError(f"your prompt is already {len(prompts[0][1]):,} tokens long: shorten it for this step, which "
                         f"runs it again pasted over and over")
    traces = []
    for _, ids in prompts:
        traces.append(finished(launch(ids, GenerationSettings(max_new_tokens=SWEEP_NEW_TOKENS))))
        progress(len(traces) / len(prompts), f"{len(ids)} prompt tokens done")
    return SweepResult(tuple(traces))


def cache_race(launch: Launch, ids: list[int], progress: Progress = _quiet) -> CacheRace:
    """Step 4: the same prompt with the KV cache and recomputing the whole sequence each step
    (greedy: both write the same answer, to its end or RACE_NEW_TOKENS)."""
    cached = finished(launch(ids, GenerationSettings(max_new_tokens=RACE_NEW_TOKENS)))
    progress(0.5, "with the cache done")
    recomputed = finished(launch(ids, GenerationSettings(max_new_tokens=RACE_NEW_TOKENS, kv_cache=False)))
    progress(1.0, "without the cache done")
    return CacheRace(cached, recomputed)


def batch_rows(launch: Launch, ids: list[int], progress: Progress = _quiet) -> BatchResult:
    """Step 5: BATCH_ROWS copies of the prompt decoding together."""
    traces = []
    for rows in BATCH_ROWS:
        settings = GenerationSettings(max_new_tokens=BATCH_NEW_TOKENS, batch_size=rows)
        traces.append(finished(launch(ids, settings)))
        progress(len(traces) / len(BATCH_ROWS), f"{rows} rows done")
    return BatchResult(tuple(traces))
