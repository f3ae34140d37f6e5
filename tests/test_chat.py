"""A conversation reuses its cache: the next turn prefills only what the last one did not hold."""
from __future__ import annotations

from inference.settings import GenerationSettings
from tests.conftest import engine_for, tiny_llama

FIRST = [1, 5, 9, 14, 3, 7, 21, 30]


def test_the_next_turn_prefills_only_its_new_tokens_and_writes_what_a_fresh_run_writes() -> None:
    engine = engine_for(tiny_llama(), "tiny-llama")
    settings = GenerationSettings(max_new_tokens=6)
    first = engine.generate(FIRST, settings, stop_at_eos=False)
    first.run_to_end()
    answer = [s.token_id for s in first.steps]
    second_prompt = FIRST + answer + [40, 41, 42]
    fresh = engine.generate(second_prompt, settings, stop_at_eos=False).run_to_end()
    again = engine.generate(second_prompt, settings, stop_at_eos=False, reuse=first.cached_prefix)
    trace = again.run_to_end()
    assert trace.reused_tokens == len(FIRST) + len(answer) - 1, "the cache held the prompt and all but the newest token"
    assert trace.steps[0].tokens_in == len(second_prompt) - trace.reused_tokens == 4
    assert [s.token_id for s in trace.steps] == [s.token_id for s in fresh.steps]
    assert trace.steps[-1].kv_bytes == fresh.steps[-1].kv_bytes, "the reused cache must hold exactly the positions"


def test_a_prompt_that_parts_early_reuses_only_the_shared_part() -> None:
    engine = engine_for(tiny_llama(), "tiny-llama")
    settings = GenerationSettings(max_new_tokens=4)
    first = engine.generate(FIRST, settings, stop_at_eos=False)
    first.run_to_end()
    other = FIRST[:3] + [99, 98, 97]
    trace = engine.generate(other, settings, stop_at_eos=False, reuse=first.cached_prefix).run_to_end()
    fresh = engine.generate(other, settings, stop_at_eos=False).run_to_end()
    assert trace.reused_tokens == 3 and [s.token_id for s in trace.steps] == [s.token_id for s in fresh.steps]


def test_without_a_cache_there_is_nothing_to_reuse() -> None:
    engine = engine_for(tiny_llama(), "tiny-llama")
    first = engine.generate(FIRST, GenerationSettings(max_new_tokens=3))
    first.run_to_end()
    trace = engine.generate(FIRST + [4], GenerationSettings(max_new_tokens=3, kv_cache=False),
                            reuse=first.cached_prefix).run_to_end()
    assert trace.reused_tokens == 0 and trace.steps[0].tokens_in == len(FIRST) + 1


def test_a_conversation_is_one_object_in_gradio_state_and_a_pickled_copy_leaves_the_cache_behind() -> None:
    import copy
    import pickle

    from inference.conversation import Conversation

    engine = engine_for(tiny_llama(), "tiny-llama")
    run = engine.generate(FIRST, GenerationSettings(max_new_tokens=3))
    conversation = Conversation()
    conversation.add("hi", run.run_to_end(), run.cached_prefix, keep_cache=True)
    assert copy.deepcopy(conversation) is conversation and conversation.prefix is not None
    copied = pickle.loads(pickle.dumps(conversation))
    assert copied.prefix is None and copied.messages == conversation.messages
    assert "turn 1: 0 of 8 prompt tokens reused" in conversation.summary()
