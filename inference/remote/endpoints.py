"""The remote engines a server may send runs to: named by its operator only, never by a visitor;
and what goes wrong with one, in words a page can show."""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlparse


CONNECT_TIMEOUT_S = 5.0
CHUNK_TIMEOUT_S = 30.0          # a server silent this long between chunks is given up on


class RemoteError(Exception):
    """What went wrong with a remote engine, in words a page can show as they are."""



@dataclass(frozen=True)
class RemoteEndpoint:
    name: str
    url: str                    # the server's base address, with or without /v1

    @property
    def api(self) -> str:
        base = self.url.rstrip("/")
        return base if base.endswith("/v1") else f"{base}/v1"

    @property
    def root(self) -> str:
        return self.api[: -len("/v1")]


def parse_remotes(text: str) -> tuple[RemoteEndpoint, ...]:
    """`name=url,name=url` (the operator's setting) as endpoints; ValueError says what is wrong."""
    endpoints: dict[str, RemoteEndpoint] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, url = (s.strip() for s in item.partition("="))
        parsed = urlparse(url)
        if not sep or not name or parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"a remote engine is name=http://host:port, got {item!r}")
        if not re.fullmatch(r"[\w.\-]+", name):
            raise ValueError(f"a remote engine's name is letters, digits, '.', '-' or '_', got {name!r}")
        if name in endpoints:
            raise ValueError(f"two remote engines are called {name!r}")
        endpoints[name] = RemoteEndpoint(name, url)
    return tuple(endpoints.values())
