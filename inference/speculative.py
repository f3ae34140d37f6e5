"""Speculative decoding: draft a few tokens cheaply, check them all in one forward pass.

A decode step reads every weight for one token; a pass over k + 1 tokens reads them once too, so
checking k guesses costs about one step while it is bandwidth-bound. What the model keeps is what
it would have produced itself:

- greedy: the longest run of drafts equal to the model's own argmax, then the model's token after it;
- sampling: the accept/reject rule of Leviathan et al. 2023 and Chen et al. 2023 (draft token x,
  drafted with probability q(x), kept with probability min(1, p(x) / q(x)); at the first rejection
  the token is drawn from max(0, p - q) renormalised; all kept: one more from p), which leaves the
  output's distribution that of plain sampling.

Drafts come from prompt lookup (the tokens that followed the last earlier occurrence of the
sequence's last n tokens: free, and right where the answer repeats its input) or from a small
model that shares the main one's tokenizer (`DraftModel`, its own KV cache cut back with the main one's).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from inference.model.kv_cache import cache_of, forward, keep_first, shared_prefix
from inference.rows import logits_to_probs
from inference.settings import GenerationSettings


@dataclass(frozen=True)
class Draft:
    """Drafted tokens, and (from a draft model that samples) each one's (V,) draft distribution q;
    None where the draft is a point mass (lookup, or a greedy draft model)."""
    tokens: list[int]
    probs: torch.Tensor | None = None         # (k, V)


def lookup_draft(ids: list[int], ngram: int, k: int) -> list[int]:
    """Prompt lookup: the k tokens that followed the latest earlier occurrence of the sequence's
    last n tokens, for n from `ngram` down to 1 (a longer match first); [] where nothing matches."""
    for n in range(min(ngram, len(ids) - 1), 0, -1):
        tail = ids[-n:]
        for start in range(len(ids) - n - 1, -1, -1):
            if ids[start:start + n] == tail:
                return ids[start + n:start + n + k]
    return []


class DraftModel:
    """A smaller causal LM that drafts for the main one: same tokenizer (checked), its own cache,
    which it keeps in step with the tokens the main model has kept."""

    def __init__(self, model: nn.Module, tokenizer: Any, name: str = "draft model"):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.device = next(model.parameters()).device
        self._cache: Any = None
        self._ids: list[int] = []              # the tokens its cache holds

    def check_tokenizer(self, tokenizer: Any) -> None:
        """ValueError unless this model reads the same tokens as the main model's `tokenizer`."""
        if self.tokenizer is tokenizer:
            return
        vocab = lambda t: t.get_vocab() if hasattr(t, "get_vocab") else None       # noqa: E731
        if vocab(self.tokenizer) is None or vocab(self.tokenizer) != vocab(tokenizer):
            raise ValueError(f"the {self.name} has another tokenizer than the main model: its drafts would be "
                             f"other tokens; give it a model with the same vocabulary")

    def reset(self) -> None:
        self._cache, self._ids = None, []

    def propose(self, ids: list[int], k: int, settings: GenerationSettings, generator: torch.Generator) -> Draft:
        """k tokens to follow `ids`, drafted one by one on its own cache (greedy, or sampled with the
        run's temperature and top-p, their distributions returned for the check)."""
        keep = min(shared_prefix(self._ids, ids), len(ids) - 1)       # at least one token to feed
        if self._cache is not None and keep > 0:
            keep_first(self._cache, keep)
        else:
            self._cache, keep = None, 0
        feed, tokens, probs = ids[keep:], [], []
        with torch.inference_mode():
            for _ in range(k):
                out = forward(self.model, torch.tensor([feed], device=self.device), self._cache, use_cache=True,
                              logits_to_keep=1)
                self._cache = cache_of(out)
                logits = out.logits[0, -1:].float()
                if settings.greedy:
                    token = int(logits.argmax())
                else:
                    p = logits_to_probs(logits, settings.temperature, settings.top_p)
                    token = int(torch.multinomial(p, 1, generator=generator))
                    probs.append(p[0])
                tokens.append(token)
                feed = [token]
        self._ids = ids + tokens[:-1]                 # the last draft is not in its cache yet
        return Draft(tokens, torch.stack(probs) if probs else None)


def verify(logits: torch.Tensor, draft: Draft, settings: GenerationSettings, generator: torch.Generator
           ) -> tuple[int, int]:
    """(d + 1, V) logits of the main model at the newest token and each of the d drafts -> (how many
    drafts it keeps, the token it adds after them)."""
    d = len(draft.tokens)
    if settings.greedy:
        own = logits.argmax(dim=-1).tolist()
        kept = 0
        while kept < d and draft.tokens[kept] == own[kept]:
            kept += 1
        return kept, own[kept]
    p = logits_to_probs(logits.float(), settings.temperature, settings.top_p)        # (d + 1, V)
    for i, token in enumerate(draft.tokens):
        q = draft.probs[i] if draft.probs is not None else None
        q_token = float(q[token]) if q is not None else 1.0
        u = float(torch.rand((), generator=generator, device=generator.device))
        if u * q_token < float(p[i, token]):           # kept with probability min(1, p / q)
            continue
        residual = (p[i] - q).clamp(min=0) if q is not None else p[i].clone()
        if q is None:
            residual[token] = 0.0                      # max(0, p - one-hot)
        total = float(residual.sum())
        if total <= 0:                                 # p == q: rejection had probability 0
            residual, total = p[i], 1.0
        return i, int(torch.multinomial(residual / total, 1, generator=generator))
    return d, int(torch.multinomial(p[d], 1, generator=generator))
