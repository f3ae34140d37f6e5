"""The "What we just measured" panel: each claim ticked only from this session's measurements."""
from __future__ import annotations

import html

CLAIMS = {
    "sweep": "The pause grows with the prompt; the stream does not.",
    "race": "The KV cache is what keeps decode cheap.",
    "batch": "Decode is memory-bound, so batching is nearly free.",
    "roofline": "Prefill is compute-bound, decode is bandwidth-bound.",
    "dtype": "Bytes per weight set decode speed.",
    "chunks": "A long prefill in chunks keeps everyone else's stream smooth, at its own first token's cost.",
    "speculate": "Checking k guessed tokens costs about one decode step, so repeated text decodes faster.",
    "prefix": "A class's shared context, prefilled once and shared as KV blocks, gives everyone a first token sooner.",
}


def claims_html(results: dict[str, str]) -> str:
    """`results` maps a claim id to the verdict measured in this session (absent: not yet measured)."""
    rows = []
    for claim_id, claim in CLAIMS.items():
        verdict = results.get(claim_id)
        mark = "·" if verdict is None else ("✔" if verdict.startswith("✔") else ("✘" if verdict.startswith("✘") else "ℹ"))
        detail = html.escape(verdict.lstrip("✔✘ ")) if verdict else "not measured yet in this session"
        rows.append(f'<li class="ps-claim"><span class="ps-mark">{mark}</span> <b>{html.escape(claim)}</b>'
                    f'<br><span class="ps-claim-detail">{detail}</span></li>')
    return f'<div class="ps-claims"><h3>What we just measured</h3><ul>{"".join(rows)}</ul></div>'
