"""The one folder PhaseScope keeps between starts: the default model as safetensors, the built kernel,
the measured roofs and dtype trials (PHASESCOPE_CACHE, else ~/.cache/phasescope)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, TypeVar

Record = TypeVar("Record")


def cache_dir() -> Path:
    root = os.environ.get("PHASESCOPE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "phasescope")
    return Path(root)


def cached_per_key(kind: str, key: str, record: type[Record], compute: Callable[[], Record],
                   keep: Callable[[Record], bool] = lambda value: True) -> Record:
    """A frozen dataclass whose first field is `key`, computed once per key and kept as JSON in the
    cache folder (written beside and moved into place, so a reader never sees half a file), unless
    `keep` says the value is not one to keep (it is computed again next time). A read-only home
    still works: it computes again next time."""
    found = cached(kind, key, record)
    if found is not None:
        return found
    value = compute()
    if not keep(value):
        return value
    path = _path(kind, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(value), indent=1))
        os.replace(tmp, path)
    except OSError:
        pass
    return value


def cached(kind: str, key: str, record: type[Record]) -> Record | None:
    """What `cached_per_key` kept for `key`, or None where nothing was."""
    try:
        value = record(**json.loads(_path(kind, key).read_text()))
        return value if value.key == key else None
    except (OSError, ValueError, TypeError):
        return None


def _path(kind: str, key: str) -> Path:
    return cache_dir() / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
