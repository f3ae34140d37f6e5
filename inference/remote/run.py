"""A run on a remote engine: its chunks become Steps as they arrive, its trace holds what was measured
from outside and what the engine reported from inside."""
from __future__ import annotations

import dataclasses
import math
import threading
import time
from typing import Any, Callable, Iterator

from inference.remote.client import RemoteClient
from inference.remote.endpoints import RemoteEndpoint
from inference.remote.metrics import inside_figures
from inference.remote.wire import Chunk, StreamEnd
from inference.serving.background import WatchedRun
from inference.settings import GenerationSettings
from inference.trace import DeviceInfo, ModelInfo, Step, Summary, Trace


class RemoteRun(WatchedRun):
    """One prompt sent to a remote engine, read on a thread of its own; its chunks become Steps as
    they arrive (see the module's docstring for what each step means)."""

    def __init__(self, client: RemoteClient, prompt: str, settings: GenerationSettings, cancel: Any,
                 max_seconds: float = math.inf):
        super().__init__(max_seconds)
        self.client, self.prompt, self.settings, self.cancel = client, prompt, settings, cancel
        self.steps: list[Step] = []
        self.model_name = client.endpoint.name
        self.end = StreamEnd()
        self.reported: dict[str, float] = {}
        self.notes: list[str] = []
        self._tokens = 0
        threading.Thread(target=self._work, name="phasescope-remote", daemon=True).start()

    def _work(self) -> None:
        try:
            self.model_name = self.client.model_id()
            before = self.client.metrics()
            sent = time.perf_counter()
            during: list[dict[str, float]] = []
            for item in self.client.stream_chat(self.model_name, [{"role": "user", "content": self.prompt}],
                                                self.settings, self.cancel):
                if isinstance(item, StreamEnd):
                    self.end = item
                    break
                if not self.steps and before:   # the engine's gauges (KV cache, requests) while this run decodes
                    threading.Thread(target=lambda: during.append(self.client.metrics()), daemon=True).start()
                self._add(item, sent)
                sent = item.arrived
            self.reported = inside_figures(before, self.client.metrics(), self.end, during[0] if during else None)
            self.notes = self._checks()
        except BaseException as exc:      # reported to the caller, who shows it as a message
            self.error = exc
        finally:
            self._release()      # nothing of an engine here is held for it

    def stop(self) -> None:
        """Cancel and wait a moment: the reading thread leaves at the next line it reads (it holds
        nothing another run needs, so a silent server keeps only its own thread, until the time
        limit between chunks)."""
        if not self.done:
            self.cancel.set()
        with self._changed:
            self._changed.wait_for(lambda: self.done, timeout=1.0)

    def _add(self, chunk: Chunk, previous: float) -> None:
        first = not self.steps
        self._tokens += chunk.tokens
        self.steps.append(Step(phase="prefill" if first else "decode", index=len(self.steps),
                               tokens_in=0 if first else chunk.tokens, context_len=self._tokens,
                               ms=(chunk.arrived - previous) * 1e3, layer_ms=(), attn_ms=(), mlp_ms=(), other_ms=0.0,
                               kv_bytes=0, flops=0.0, bytes=0.0, token_id=0, text=chunk.text,
                               batch_rows=1, tokens_out=chunk.tokens))
        self._notify()

    def _checks(self) -> list[str]:
        """Where the server's own counts disagree with what its stream carried, say so."""
        claimed = self.end.usage.get("completion_tokens")
        notes = []
        if isinstance(claimed, int) and claimed != self._tokens and not self.cancel.is_set():
            notes.append(f"the server says it generated {claimed} tokens; its stream carried {self._tokens} "
                         "(the charts show the stream's)")
        prompt = self.end.usage.get("prompt_tokens")
        if prompt is not None and not (isinstance(prompt, int) and prompt > 0):
            notes.append(f"the server reported a prompt of {prompt!r} tokens, which cannot be: ignored")
        return notes

    @property
    def prompt_tokens(self) -> int:
        """The prompt's length as the engine counted it (usage, or llama.cpp's timings); 0 if it did not say."""
        for value in (self.end.usage.get("prompt_tokens"), self.end.timings.get("prompt_n")):
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return 0

    def trace(self) -> Trace:
        steps = tuple(self.steps)
        prompt_tokens = self.prompt_tokens
        if prompt_tokens and steps:       # the prefill step fed the prompt; contexts count it too
            steps = tuple(dataclasses.replace(s, tokens_in=prompt_tokens if s.index == 0 else s.tokens_in,
                                              context_len=s.context_len + prompt_tokens) for s in steps)
        if self.cancel.is_set():
            reason = "cancelled"
        else:
            reason = "length" if self.end.finish_reason == "length" else "eos"
        endpoint = self.client.endpoint
        return Trace(model=remote_model(self.model_name), device=remote_device(endpoint), settings=self.settings,
                     prompt_tokens=prompt_tokens, steps=steps, summary=Summary.of(steps, 1, reason), prompt=self.prompt,
                     engine=f"remote {endpoint.name} ({endpoint.root})", reported=dict(self.reported),
                     notes=tuple(self.notes))


def remote_trace(client: RemoteClient, prompt: str, settings: GenerationSettings,
                 on_text: Callable[[str], None] = lambda text: None) -> Trace:
    """One remote run to its end (the command line's, the sweep's): its trace, or RemoteError."""
    run = RemoteRun(client, prompt, settings, threading.Event())
    shown = 0
    for have in run.follow(0.05):
        for step in run.steps[shown:have]:
            on_text(step.text)
        shown = have
    for step in run.steps[shown:]:                # what came with its end
        on_text(step.text)
    if run.error is not None:
        raise run.error
    return run.trace()


def remote_sweep(client: RemoteClient, prompts: list[str], settings: GenerationSettings) -> Iterator[Trace]:
    """The prompt-length sweep against a remote engine: one run per prompt (their lengths are the
    engine's own count, from its usage figures)."""
    for prompt in prompts:
        yield remote_trace(client, prompt, settings)


def remote_model(name: str) -> ModelInfo:
    """What the page knows of a remote model: its name. Its size and shape are the server's business."""
    return ModelInfo(name=name, params=0, weight_bytes=0, dtype="unknown", layers=0, heads=0, kv_heads=0, head_dim=0)


def remote_device(endpoint: RemoteEndpoint) -> DeviceInfo:
    return DeviceInfo(type="remote", name=endpoint.name, peak_flops=0.0, peak_bytes_per_s=0.0,
                      source="not published by a remote engine")
