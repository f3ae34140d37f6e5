"""A run's rows as they decode, one piece for every runner: the run alone (inference/engine.py's
GenerationRun, a batch of one) and the class's shared batch (inference/serving/batching.py) both
sample, stream text, end rows and record each step's Step through a RowState, step by step."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from inference.cost_model import StepCost
from inference.model.kv_cache import kv_cache_bytes
from inference.settings import GenerationSettings
from inference.timing import StepTimes
from inference.trace import StopReason, Step


class TextStream:
    """Emits only the new suffix of the decoded text, holding back a half-decoded character."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):          # an incomplete UTF-8 sequence: wait for the rest
            return ""
        new, self.emitted = text[self.emitted:], len(text)
        return new


def logits_to_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """(B, V) logits -> (B, V) probabilities, tempered and cut to the top-p nucleus."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Drop a token when the tokens ranked above it already hold top_p of the mass.
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def sample(logits: torch.Tensor, settings: GenerationSettings, generator: torch.Generator) -> torch.Tensor:
    """(B, V) logits -> (B,) next token ids."""
    if settings.greedy:
        return logits.argmax(dim=-1)
    probs = logits_to_probs(logits, settings.temperature, settings.top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class RowState:
    """A run's rows as they decode: the seeded sampler, the text of row 0 as it streams, which rows
    have ended (they emit EOS as padding while the others go on), and the steps recorded so far."""

    def __init__(self, model: nn.Module, tokenizer: Any, settings: GenerationSettings, device: torch.device,
                 stop_at_eos: bool = True):
        self.settings = settings
        self.generator = torch.Generator(device=device).manual_seed(settings.seed)
        self.stream = TextStream(tokenizer)
        eos = sorted(eos_ids(model, tokenizer)) if stop_at_eos else []
        self.eos = torch.tensor(eos, dtype=torch.long, device=device)
        self.eos_ids = set(eos)
        self.pad = eos[0] if eos else 0
        self.finished = torch.zeros(settings.batch_size, dtype=torch.bool, device=device)
        self.tokens: torch.Tensor | None = None       # (B,) each row's newest token
        self.steps_taken = 0
        self.tokens_made = 0                          # per row: a check step of speculative decoding makes several

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, V) logits -> (B,) next tokens, by the run's own settings and seed."""
        return sample(logits, self.settings, self.generator)

    def take(self, tokens: torch.Tensor, times: StepTimes, cost: StepCost, cache: Any, tokens_in: int,
             context_len: int, batch_rows: int, foreign_prefill_tokens: int = 0, waited_ms: float = 0.0,
             attention: tuple[float, ...] = ()) -> Step:
        """Take the step's (B,) tokens (ended rows padded) and return its Step record: its times, the
        cache it left, its cost-model figures; `waited_ms` (other runs' prefills before it, on a
        shared server) is part of its time; `attention`, where the run records it."""
        self.tokens = torch.where(self.finished, self.pad, tokens)
        token = int(self.tokens[0])
        text = self.stream.push(token)
        self.finished |= torch.isin(self.tokens, self.eos)
        return self._record(1, times, cost, cache, tokens_in, context_len, token, text, batch_rows=batch_rows,
                            foreign_prefill_tokens=foreign_prefill_tokens, waited_ms=waited_ms, attention=attention)

    def take_several(self, ids: list[int], times: StepTimes, cost: StepCost, cache: Any, tokens_in: int,
                     context_len: int, draft: list[int], accepted: int) -> Step:
        """A check step of speculative decoding on one row: it made `ids` (the kept drafts and the
        model's next token), cut at the end of text and at the tokens asked for."""
        ids = ids[:self.settings.max_new_tokens - self.tokens_made]
        ends = next((n for n, token in enumerate(ids) if token in self.eos_ids), None)
        ids = ids if ends is None else ids[:ends + 1]
        text = "".join(self.stream.push(token) for token in ids)
        self.tokens = torch.tensor(ids[-1:], device=self.finished.device)
        self.finished |= torch.isin(self.tokens, self.eos)
        return self._record(len(ids), times, cost, cache, tokens_in, context_len, ids[-1], text, batch_rows=1,
                            tokens_out=len(ids), drafted=len(draft), accepted=min(accepted, len(ids)),
                            token_ids=tuple(ids) if len(ids) > 1 else (), draft_ids=tuple(draft))

    def _record(self, made: int, times: StepTimes, cost: StepCost, cache: Any, tokens_in: int, context_len: int,
                token: int, text: str, waited_ms: float = 0.0, **fields: Any) -> Step:
        """The next step's Step record, which made `made` tokens a row (row 0's newest `token`,
        adding `text`); `fields`: the rest of what the runner knows of the step."""
        index, self.steps_taken = self.steps_taken, self.steps_taken + 1
        self.tokens_made += made
        return Step(
            phase="prefill" if index == 0 else "decode", index=index, tokens_in=tokens_in,
            context_len=context_len, ms=times.ms + waited_ms, layer_ms=times.layer_ms, attn_ms=times.attn_ms,
            mlp_ms=times.mlp_ms, other_ms=max(0.0, times.ms - sum(times.layer_ms)),
            cpu_wait_ms=times.cpu_wait_ms or 0.0, kv_bytes=kv_cache_bytes(cache), flops=cost.flops, bytes=cost.bytes,
            token_id=token, text=text, waited_ms=waited_ms, **fields)

    @property
    def stop(self) -> StopReason | None:
        """Why the run ends after the steps taken: every row wrote its end of text ("eos"), or it has
        all the tokens asked for ("length"); None while it goes on."""
        if bool(self.finished.all()):
            return "eos"
        return "length" if self.tokens_made >= self.settings.max_new_tokens else None


def eos_ids(model: nn.Module, tokenizer: Any) -> set[int]:
    configured = getattr(model.generation_config, "eos_token_id", None)
    if configured is None:
        configured = getattr(tokenizer, "eos_token_id", None)
    if configured is None:
        return set()
    return set(configured) if isinstance(configured, (list, tuple)) else {int(configured)}
