"""Speculative decoding: drafts checked in one pass keep the output exactly what plain decode writes
(greedy) or distributed as plain sampling is (the accept/reject rule)."""
from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch

from inference.engine import Engine
from inference.model.loading import LoadedModel, model_info
from inference.prompts import chat_prompt_ids
from inference.settings import GenerationSettings
from inference.speculative import Draft, lookup_draft, verify
from inference.trace import read_trace, steps_csv
from tests.conftest import TEST_DEVICE, DigitTokenizer, engine_for, tiny_llama

CODE = "def add(a, b):\n    return a + b\n\ndef mul(a, b):\n    return a * b\n"
REPEAT = "Rename the function add to plus in this code and print the whole code:\n" + CODE


def test_prompt_lookup_proposes_what_followed_the_latest_match_of_the_longest_tail() -> None:
    ids = [5, 6, 7, 8, 1, 6, 7, 9, 4, 6, 7]
    assert lookup_draft(ids, 2, 3) == [9, 4, 6]            # "6 7" last seen before the tail at 5..6
    assert lookup_draft(ids, 3, 2) == [9, 4]               # no earlier "4 6 7": the two-token match
    assert lookup_draft([1, 2, 3], 3, 4) == []             # nothing repeats
    assert lookup_draft([3, 1, 2, 3], 1, 8) == [1, 2, 3]   # cut at the sequence's end


def other_tiny_llama(seed: int) -> torch.nn.Module:
    """A second tiny Llama (other weights, same vocabulary): a draft model that is often wrong."""
    torch.manual_seed(seed)
    model = tiny_llama()
    for p in model.parameters():
        p.data.normal_(0, 0.05, generator=torch.Generator().manual_seed(seed))
    return model


def plain_and_speculative(engine: Engine, prompt: list[int], **speculation: object) -> tuple:
    base = GenerationSettings(max_new_tokens=40, kernel=speculation.pop("kernel", "fast"))
    plain = engine.generate(prompt, base, stop_at_eos=False).run_to_end()
    spec = engine.generate(prompt, GenerationSettings(**{**base.__dict__, **speculation}), stop_at_eos=False).run_to_end()
    return plain, spec


LOOPING_PROMPT = [5, 9, 17, 33, 5, 9, 17, 33, 5, 9, 17]


@pytest.mark.parametrize("kernel", ["fast", "eager"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_lookup_writes_exactly_what_plain_decode_writes_on_a_tiny_model(kernel: str, dtype: torch.dtype) -> None:
    engine = engine_for(tiny_llama().to(dtype), "tiny-llama")
    for k in (1, 3, 8):
        plain, spec = plain_and_speculative(engine, LOOPING_PROMPT, kernel=kernel, speculate="lookup", draft_tokens=k)
        assert spec.output_ids == plain.output_ids
        assert len(spec.output_ids) == 40 and spec.text == plain.text
        checks = [s for s in spec.steps if s.drafted]
        assert checks and all(s.drafted <= k and s.accepted <= s.drafted for s in checks)
        assert all(s.tokens_out == s.accepted + 1 for s in checks if s is not spec.steps[-1])


def test_a_draft_model_identical_to_the_main_one_has_every_draft_kept_and_another_has_some_cut() -> None:
    engine = engine_for(tiny_llama(), "tiny-llama")
    engine.set_draft_model(copy.deepcopy(engine.loaded.model), engine.loaded.tokenizer, "twin")
    plain, spec = plain_and_speculative(engine, LOOPING_PROMPT, speculate="draft", draft_tokens=4)
    assert spec.output_ids == plain.output_ids
    checks = [s for s in spec.steps if s.drafted]
    assert all(s.accepted == s.drafted for s in checks[:-1])
    assert len(spec.steps) < len(plain.steps) / 3           # 5 tokens a step

    engine.set_draft_model(other_tiny_llama(7), engine.loaded.tokenizer, "other")
    plain, spec = plain_and_speculative(engine, LOOPING_PROMPT, speculate="draft", draft_tokens=4)
    assert spec.output_ids == plain.output_ids                # rejected drafts were cut from the cache
    assert any(s.accepted < s.drafted for s in spec.steps)


def test_speculation_on_a_model_the_kernel_does_not_fuse_writes_the_same_tokens(tiny_engine: Engine) -> None:
    plain, spec = plain_and_speculative(tiny_engine, LOOPING_PROMPT, speculate="lookup", draft_tokens=4)
    assert spec.output_ids == plain.output_ids


@pytest.fixture(scope="module")
def real_bf16_engine(real_engine: Engine) -> Engine:
    model = copy.deepcopy(real_engine.loaded.model).to(torch.bfloat16)
    loaded = LoadedModel(model=model, tokenizer=real_engine.loaded.tokenizer,
                         info=model_info(model, real_engine.loaded.info.name), device=torch.device("cpu"))
    return Engine(loaded, TEST_DEVICE)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kernel", ["fast", "eager"])
def test_on_the_real_model_greedy_speculation_writes_plain_decodes_tokens(real_engine: Engine, real_bf16_engine: Engine,
                                                                           dtype: str, kernel: str) -> None:
    engine = real_engine if dtype == "float32" else real_bf16_engine
    ids = chat_prompt_ids(engine.loaded.tokenizer, REPEAT)
    plain, spec = plain_and_speculative(engine, ids, kernel=kernel, speculate="lookup", draft_tokens=4)
    assert spec.output_ids == plain.output_ids
    kept = sum(s.accepted for s in spec.steps)
    assert kept > 10 and len(spec.steps) < len(plain.steps)       # the code is copied: drafts are kept


def test_the_trace_carries_drafts_through_json_and_csv(tiny_engine: Engine) -> None:
    _, spec = plain_and_speculative(tiny_engine, LOOPING_PROMPT, speculate="lookup", draft_tokens=3)
    again = read_trace(spec.to_json())
    assert again == spec and again.output_ids == spec.output_ids
    header, *rows = steps_csv(spec).splitlines()
    assert "drafted" in header.split(",") and "accepted" in header.split(",")
    assert spec.settings.speculate == "lookup" and spec.summary.decode_tokens_per_s > 0


def test_bad_speculation_settings_get_a_clear_message() -> None:
    with pytest.raises(ValueError, match="draft_tokens must be between 1 and 16"):
        GenerationSettings(speculate="lookup", draft_tokens=0)
    with pytest.raises(ValueError, match="speculate must be one of"):
        GenerationSettings(speculate="guess")
    with pytest.raises(ValueError, match="needs the KV cache"):
        GenerationSettings(speculate="lookup", kv_cache=False)
    with pytest.raises(ValueError, match="one sequence"):
        GenerationSettings(speculate="lookup", batch_size=2)
    engine = engine_for(tiny_llama(), "tiny-llama")
    with pytest.raises(ValueError, match="needs a draft model"):
        engine.generate([1, 2, 3], GenerationSettings(speculate="draft"))

    class OtherTokens(DigitTokenizer):
        def get_vocab(self) -> dict[str, int]:
            return {"a": 0}

    with pytest.raises(ValueError, match="another tokenizer"):
        engine.set_draft_model(tiny_llama(), OtherTokens())


def test_the_accept_reject_rule_leaves_the_models_distribution() -> None:
    """Many checks of one draft position: the first token out is distributed as p, whatever q is."""
    generator = torch.Generator().manual_seed(0)
    p_logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5], [0.0, 0.0, 0.0, 0.0, 0.0]])
    q = torch.softmax(torch.tensor([-1.0, 0.0, 2.0, 1.0, 0.0]), dim=-1)
    p = torch.softmax(p_logits[0], dim=-1)
    settings = GenerationSettings(temperature=1.0)
    n = 20_000
    for point_mass in (False, True):          # a draft model's q, or prompt lookup's one guess (token 2)
        counts: Counter[int] = Counter()
        for _ in range(n):
            token = 2 if point_mass else int(torch.multinomial(q, 1, generator=generator))
            draft = Draft([token], None if point_mass else q[None])
            kept, bonus = verify(p_logits, draft, settings, generator)
            counts[token if kept else bonus] += 1
        seen = torch.tensor([counts[i] / n for i in range(5)])
        assert 0.5 * float((seen - p).abs().sum()) < 0.015
    assert 0.5 * float((q - p).abs().sum()) > 0.3              # the draft alone would be far off


def tiny_vocab_llama(vocab: int, seed: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                         intermediate_size=64, vocab_size=vocab, max_position_embeddings=64,
                         eos_token_id=vocab + 10, bos_token_id=1, pad_token_id=0)
    model = LlamaForCausalLM(config).eval()
    for param in model.parameters():
        param.data.mul_(8.0)                                  # sharper, unequal distributions
    return model


def test_sampled_speculation_on_a_tiny_model_samples_as_plain_decoding_does() -> None:
    """The second new token (the first a check step writes) over 1,200 seeds, against its exact
    distribution computed from the model: speculation with a draft model and with lookup."""
    vocab, prompt = 6, [0, 1, 2, 3, 4, 5, 3]
    engine = engine_for(tiny_vocab_llama(vocab, 0), "tiny-6")
    engine.set_draft_model(tiny_vocab_llama(vocab, 1), engine.loaded.tokenizer, "other")
    model = engine.loaded.model
    with torch.inference_mode():
        first = torch.softmax(model(torch.tensor([prompt])).logits[0, -1], -1)
        exact = sum(first[t] * torch.softmax(model(torch.tensor([prompt + [t]])).logits[0, -1], -1)
                    for t in range(vocab))
        draft_model = engine.draft_model.model
        draft_alone = sum(first[t] * torch.softmax(draft_model(torch.tensor([prompt + [t]])).logits[0, -1], -1)
                          for t in range(vocab))
    assert 0.5 * float((draft_alone - exact).abs().sum()) > 0.2
    for method in ("draft", "lookup"):
        counts: Counter[int] = Counter()
        seeds = 1200
        for seed in range(seeds):
            settings = GenerationSettings(max_new_tokens=3, temperature=1.0, seed=seed, speculate=method,
                                          draft_tokens=2, lookup_ngram=1)
            counts[engine.generate(prompt, settings, stop_at_eos=False).run_to_end().output_ids[1]] += 1
        seen = torch.tensor([counts[i] / seeds for i in range(vocab)])
        assert 0.5 * float((seen - exact).abs().sum()) < 0.06, method
