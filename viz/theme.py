"""The page's one palette (assets/theme.json), for the charts here, the CSS (as --ps-* variables)
and the dashboard's JavaScript (as THEME): a colour is named once."""
from __future__ import annotations

import json
from pathlib import Path

PALETTE: dict[str, str] = {name: colour for name, colour in json.loads(
    (Path(__file__).resolve().parent.parent / "assets" / "theme.json").read_text()).items() if name != "_"}


def css_variables() -> str:
    """:root { --ps-prefill: ...; ... } for the page's styles."""
    return ":root { " + " ".join(f"--ps-{name.replace('_', '-')}: {colour};" for name, colour in PALETTE.items()) + " }\n"


def js_constant() -> str:
    """`const THEME = {...};` for the dashboard's script."""
    return f"const THEME = {json.dumps(PALETTE)};\n"
