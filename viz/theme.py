"""The page's one theme (assets/theme.json): the palette, for the charts here, the CSS (as --ps-*
variables) and the dashboard's JavaScript (as THEME), so a colour is named once; and the layout
every chart starts from."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

_THEME = json.loads((Path(__file__).resolve().parent.parent / "assets" / "theme.json").read_text())
PALETTE: dict[str, str] = _THEME["palette"]


def layout(**overrides: Any) -> dict[str, Any]:
    """The charts' shared layout (a fresh copy), with `overrides` on top."""
    return {**copy.deepcopy(_THEME["layout"]), **overrides}


def css_variables() -> str:
    """:root { --ps-prefill: ...; ... } for the page's styles."""
    return ":root { " + " ".join(f"--ps-{name.replace('_', '-')}: {colour};" for name, colour in PALETTE.items()) + " }\n"


def js_constant() -> str:
    """`const THEME = {...};` for the dashboard's script."""
    return f"const THEME = {json.dumps(PALETTE)};\n"
