"""The live dashboard's static parts: its HTML template, CSS and JavaScript.

The template has one cell per chart (title, a short explanation, the plot's div). It does not
depend on the component's value, so updates never re-render it; assets/dashboard.js applies
each message from viz/live.py to the plots.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

from viz.charts import CHARTS
from viz.theme import css_variables, js_constant

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def explanations() -> dict[str, str]:
    return json.loads((ASSETS / "explanations.json").read_text())


def theme_css() -> str:
    """The palette as CSS variables, so the page's styles use the charts' colours."""
    return css_variables()


def header_html() -> str:
    return ('<div class="ps-header"><h1>PhaseScope</h1><p>Watch a real language model answer: first '
            '<b class="ps-word-prefill">prefill</b> reads your whole prompt at once (the pause), then '
            '<b class="ps-word-decode">decode</b> writes one token per step, reading every weight again.</p></div>')


def dashboard_template() -> str:
    text = explanations()
    cells = "".join(
        f'<section class="ps-chart ps-chart-{c.id}"><h3>{html.escape(c.title)}</h3>'
        f'<p class="ps-explain">{html.escape(text.get(c.id, ""))}</p><div data-chart="{c.id}"></div></section>'
        for c in CHARTS)
    ttft = ('<section class="ps-ttft"><h3>Where the first token\'s time went</h3>'
            '<p class="ps-explain">From your click to the first token on this page: the server\'s parts, measured '
            'there, and the rest (Gradio\'s queue, the network and drawing), measured in your browser. Run a '
            'prompt to fill it.</p><div data-ttft-bar></div></section>')
    return f'<div class="ps-dashboard">{ttft}{cells}</div>'


DASHBOARD_CSS = """
.ps-dashboard { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
.ps-chart { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px 10px; min-width: 0; }
.ps-chart-timeline { grid-column: 1 / -1; }
.ps-ttft { grid-column: 1 / -1; border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px 10px; }
.ps-ttft h3 { margin: 0 0 2px; font-size: 1.05rem; }
.ps-ttft-bar { display: flex; height: 22px; border-radius: 4px; overflow: hidden; margin: 4px 0; }
.ps-ttft-bar > div { min-width: 2px; }
.ps-ttft-legend { font-size: 0.85rem; line-height: 1.4; }
.ps-ttft-legend span { display: inline-block; width: 0.8em; height: 0.8em; margin: 0 4px 0 10px; border-radius: 2px; }
.ps-chart h3 { margin: 0 0 2px; font-size: 1.05rem; }
.ps-stale { opacity: 0.35; }
.ps-explain { margin: 0 0 4px; font-size: 0.85rem; opacity: 0.8; line-height: 1.3; }
@media (max-width: 900px) { .ps-dashboard { grid-template-columns: 1fr; } }
"""


def dashboard_js() -> str:
    return js_constant() + (ASSETS / "dashboard.js").read_text()
