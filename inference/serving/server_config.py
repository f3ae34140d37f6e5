"""What one PhaseScope server offers: its model, device and dtype, and the models a visitor may load.

Read once from the environment (PHASESCOPE_MODEL, PHASESCOPE_DEVICE, PHASESCOPE_DTYPE,
PHASESCOPE_ALLOWED_MODELS, PHASESCOPE_ALLOW_ANY_MODEL=1, PHASESCOPE_MAX_RUN_SECONDS,
PHASESCOPE_QUEUE_SIZE, PHASESCOPE_SOLO=1, PHASESCOPE_PREFILL_CHUNK, PHASESCOPE_CLASS_CONTEXT (the class's
shared context), PHASESCOPE_PREFIX_CACHE=0, PHASESCOPE_REMOTE=name=url,... (remote
serving engines the page may send runs to), the OpenAI-compatible API's (PHASESCOPE_API=1/0: on by
default except on a Hugging Face Space, PHASESCOPE_API_KEY, PHASESCOPE_API_MAX_CONCURRENT,
PHASESCOPE_API_MAX_TOKENS), SPACE_ID and SPACES_ZERO_GPU, which a Space sets);
`python app.py`'s flags override it. A frozen record: a change (a model
switch, a flag) makes a new one.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

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
    api: bool = True                        # the OpenAI-compatible API and /metrics beside the page
    api_key: str = field(default="", repr=False)   # if set, API clients send it as a bearer token
    api_max_concurrent: int = 8             # API requests under way at once (more are refused: 429)
    api_max_tokens: int = 512               # the most tokens one API request may ask for

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ServerConfig:
        listed = tuple(m.strip() for m in env.get("PHASESCOPE_ALLOWED_MODELS", "").split(",") if m.strip())
        max_run_seconds = _number(env, "PHASESCOPE_MAX_RUN_SECONDS", 120.0, float, 0)
        queue_size = _number(env, "PHASESCOPE_QUEUE_SIZE", 64, int, 1)
        prefill_chunk = _number(env, "PHASESCOPE_PREFILL_CHUNK", 0, int, 0)      # 0: off
        api_max_concurrent = _number(env, "PHASESCOPE_API_MAX_CONCURRENT", 8, int, 1)
        api_max_tokens = _number(env, "PHASESCOPE_API_MAX_TOKENS", 512, int, 1)
        on_space = bool(env.get("SPACE_ID"))        # a public Space: the API only where its operator asks
        return cls(model=env.get("PHASESCOPE_MODEL", DEFAULT_MODEL), device=env.get("PHASESCOPE_DEVICE", "auto"),
                   dtype=env.get("PHASESCOPE_DTYPE", "auto"), listed_models=listed,
                   allow_any_model=env.get("PHASESCOPE_ALLOW_ANY_MODEL") == "1", max_run_seconds=max_run_seconds,
                   queue_size=queue_size, prefill_chunk=prefill_chunk, solo=env.get("PHASESCOPE_SOLO") == "1",
                   zero_gpu=env.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true"),
                   remotes=parse_remotes(env.get("PHASESCOPE_REMOTE", "")),
                   class_context=env.get("PHASESCOPE_CLASS_CONTEXT", ""),
                   prefix_cache=env.get("PHASESCOPE_PREFIX_CACHE", "1") != "0",
                   api=env.get("PHASESCOPE_API", "0" if on_space else "1") == "1",
                   api_key=env.get("PHASESCOPE_API_KEY", ""), api_max_concurrent=api_max_concurrent,
                   api_max_tokens=api_max_tokens)

    @property
    def why_alone(self) -> str:
        """Why every run here goes alone (the front door's `alone`), or "" where runs may share the batch."""
        return "this server runs one run at a time (solo mode)" if self.solo else ""

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


def _number(env: Mapping[str, str], name: str, default: float, kind: type, least: float) -> Any:
    """The setting `name` as a number of `kind`, at least `least`; ValueError naming it otherwise."""
    text = env.get(name)
    if text is None:
        return kind(default)
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{name} must be a {'whole ' if kind is int else ''}number, got {text!r}") from None
    if not value >= least:
        raise ValueError(f"{name} must be at least {least:g}, got {text!r}")
    return value
