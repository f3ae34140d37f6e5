"""What one PhaseScope server offers: its model, device and dtype, and the models a visitor may load.

Read once from the environment (PHASESCOPE_MODEL, PHASESCOPE_DEVICE, PHASESCOPE_DTYPE,
PHASESCOPE_ALLOWED_MODELS, PHASESCOPE_ALLOW_ANY_MODEL=1, PHASESCOPE_MAX_RUN_SECONDS,
PHASESCOPE_QUEUE_SIZE, PHASESCOPE_SOLO=1, PHASESCOPE_PREFILL_CHUNK, PHASESCOPE_CLASS_CONTEXT (the class's
shared context), PHASESCOPE_PREFIX_CACHE=0, PHASESCOPE_REMOTE=name=url,... (remote
serving engines the page may send runs to) and SPACES_ZERO_GPU, which a ZeroGPU Space sets);
`python app.py`'s flags override it. A frozen record: a change (a model
switch, a flag) makes a new one.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Mapping

from inference.remote import RemoteEndpoint, parse_remotes
from inference.settings import DEFAULT_MODEL


@dataclass(frozen=True)
class ServerConfig:
    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    listed_models: tuple[str, ...] = ()     # offered besides the server's model and the bundled default
    allow_any_model: bool = False           # any hub id or folder: local use only, never a public server
    max_run_seconds: float = 120.0          # one user cannot hold the shared model longer
    queue_size: int = 64
    prefill_chunk: int = 0                  # prompt tokens per prefill piece on a shared server (0: whole)
    solo: bool = False                      # one run at a time (clean single-run timings), no shared batch
    zero_gpu: bool = False                  # a ZeroGPU Space: runs happen in forked workers that hold a GPU
    remotes: tuple[RemoteEndpoint, ...] = ()   # serving engines elsewhere, named by the operator only
    class_context: str = ""                 # the teacher's context: every page run's system message, prefilled once
    prefix_cache: bool = True               # share the blocks of that context (or the chat template's opening)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ServerConfig:
        listed = tuple(m.strip() for m in env.get("PHASESCOPE_ALLOWED_MODELS", "").split(",") if m.strip())
        try:
            max_run_seconds = float(env.get("PHASESCOPE_MAX_RUN_SECONDS", "120"))
            queue_size = int(env.get("PHASESCOPE_QUEUE_SIZE", "64"))
            prefill_chunk = int(env.get("PHASESCOPE_PREFILL_CHUNK", "0"))
        except ValueError as exc:
            raise ValueError(f"PHASESCOPE_MAX_RUN_SECONDS, PHASESCOPE_QUEUE_SIZE or PHASESCOPE_PREFILL_CHUNK is not "
                             f"a number: {exc}") from None
        if prefill_chunk < 0:
            raise ValueError(f"PHASESCOPE_PREFILL_CHUNK must be 0 (off) or a number of tokens, got {prefill_chunk}")
        return cls(model=env.get("PHASESCOPE_MODEL", DEFAULT_MODEL), device=env.get("PHASESCOPE_DEVICE", "auto"),
                   dtype=env.get("PHASESCOPE_DTYPE", "auto"), listed_models=listed,
                   allow_any_model=env.get("PHASESCOPE_ALLOW_ANY_MODEL") == "1", max_run_seconds=max_run_seconds,
                   queue_size=queue_size, prefill_chunk=prefill_chunk, solo=env.get("PHASESCOPE_SOLO") == "1",
                   zero_gpu=env.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true"),
                   remotes=parse_remotes(env.get("PHASESCOPE_REMOTE", "")),
                   class_context=env.get("PHASESCOPE_CLASS_CONTEXT", ""),
                   prefix_cache=env.get("PHASESCOPE_PREFIX_CACHE", "1") != "0")

    @property
    def allowed_models(self) -> list[str]:
        """The server's model, the bundled default and the listed ones, in that order, once each."""
        return list(dict.fromkeys([self.model, DEFAULT_MODEL, *self.listed_models]))

    def remote(self, name: str) -> RemoteEndpoint:
        """The operator's endpoint called `name`; ValueError for any other name (a visitor never
        gives an address, only picks one of these)."""
        for endpoint in self.remotes:
            if endpoint.name == name:
                return endpoint
        raise ValueError(f"{name!r} is not one of this server's remote engines "
                         f"({', '.join(e.name for e in self.remotes) or 'it has none'})")

    def may_load(self, name: str) -> bool:
        return self.allow_any_model or name in self.allowed_models

    def replace(self, **changes: object) -> ServerConfig:
        return dataclasses.replace(self, **changes)
