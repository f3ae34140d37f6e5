"""The shared server's paged KV cache and prefix caching: the same tokens as a contiguous cache,
blocks shared only for the class's context, freed when runs end, evicted without changing answers."""
from __future__ import annotations

import pytest
import torch

from inference.engine import Engine
from inference.serving.background import CancelFlag, EngineThread
from inference.serving.batching import BatchServer
from inference.serving.paged import BlockPool, prefix_hashes
from inference.settings import GenerationSettings
from tests.test_batching import STEPS, alone, engine_with, finish_all
from inference.trace import read_trace
from tests.conftest import tiny_llama
from viz.summary import headline_html

CONTEXT = list(range(10, 60))                    # 50 tokens: three full blocks of 16 shared
QUESTIONS = [[70, 71, 72], [80, 81], [90, 91, 92, 93, 94]]
SETTINGS = GenerationSettings(max_new_tokens=10)


@pytest.fixture(scope="module", params=STEPS)
def engine(request: pytest.FixtureRequest) -> Engine:
    return engine_with(tiny_llama(), "tiny-llama", request.param)


def class_server(engine: Engine, sharing: bool = True) -> BatchServer:
    server = BatchServer(engine, EngineThread())
    server.shared_context, server.prefix_caching = tuple(CONTEXT), sharing
    return server


def one_by_one(server: BatchServer, prompts: list[list[int]], settings: GenerationSettings = SETTINGS) -> list:
    runs = []
    for prompt in prompts:
        runs.append(server.submit(prompt, settings, CancelFlag()))
        runs[-1].wait()
    return runs


def test_prefix_names_chain_block_by_block_and_only_full_blocks_get_one() -> None:
    names = prefix_hashes(list(range(40)), 40, 16)
    assert len(names) == 2, "40 tokens hold two full blocks of 16"
    assert prefix_hashes(list(range(40)), 40, 16) == names
    other_start = prefix_hashes([99] + list(range(1, 40)), 40, 16)
    assert other_start[0] != names[0] and other_start[1] != names[1], \
        "a block's name must depend on every block before it (the same tokens after another prefix differ)"
    assert prefix_hashes(list(range(40)), 20, 16) == names[:1]
    assert prefix_hashes(list(range(40)), 40, 16, scope=b"student-1") != names


def test_the_pool_frees_unnamed_blocks_keeps_named_ones_cached_and_evicts_the_least_recently_used() -> None:
    pool = BlockPool(layers=1, kv_heads=1, head_dim=2, bytes_per_token=1, budget_bytes=3 * 16)
    assert pool.capacity == 3
    a, b, c = pool.allocate(), pool.allocate(), pool.allocate()
    pool.name(a, b"A")
    pool.name(b, b"B")
    assert pool.available == 0
    pool.release(a)
    pool.release(b)
    pool.release(c)
    assert pool.available == 3 and pool.lookup([b"A", b"B"]) == [a, b], "named blocks stay cached once unreferenced"
    pool.share(b)                               # b used again: a is now the least recently used cached block
    pool.release(b)
    assert pool.allocate() == c, "a free block goes before any cached one"
    assert pool.allocate() == a and pool.lookup([b"A"]) == [], "the least recently used cached block goes first"
    assert pool.lookup([b"B"]) == [b] and pool.evicted == 1


def test_a_run_after_the_class_context_starts_after_its_cached_blocks_and_writes_what_it_writes_alone(
        engine: Engine) -> None:
    server = class_server(engine)
    runs = one_by_one(server, [CONTEXT + q for q in QUESTIONS])
    for question, run in zip(QUESTIONS, runs):
        assert run.error is None, run.error
        assert [s.token_id for s in run.steps] == alone(engine, CONTEXT + question, SETTINGS), \
            f"question {question}: a prefill after shared blocks changed the answer"
    assert [run.trace().reused_tokens for run in runs] == [0, 48, 48], \
        "the first run computes the context; the others take its three full blocks"
    assert runs[1].steps[0].tokens_in == len(CONTEXT) + len(QUESTIONS[1]) - 48
    assert runs[0].trace().cold_ttft_ms == 0 and runs[1].trace().cold_ttft_ms > 0, \
        "a run with hits carries the cold estimate from the run before, which had none"
    headline = headline_html(runs[1].trace())
    assert "48 from the class&#x27;s shared blocks" in headline and "estimate" in headline
    assert read_trace(runs[1].trace().to_json()).cold_ttft_ms == runs[1].trace().cold_ttft_ms
    pool = server.pool
    assert pool.in_use == 0, "every block goes back when the runs end"
    assert (pool.hit_tokens, pool.queried_tokens) == (96, sum(len(CONTEXT) + len(q) for q in QUESTIONS))


def test_runs_sharing_context_blocks_decode_together_and_each_writes_what_it_writes_alone(engine: Engine) -> None:
    server = class_server(engine)
    one_by_one(server, [CONTEXT + [5]])            # the context's blocks are now cached
    runs = [server.submit(CONTEXT + q, SETTINGS, CancelFlag()) for q in QUESTIONS]
    finish_all(runs)
    for question, run in zip(QUESTIONS, runs):
        assert run.error is None, run.error
        assert run.trace().reused_tokens == 48
        assert [s.token_id for s in run.steps] == alone(engine, CONTEXT + question, SETTINGS)
    assert any(s.batch_rows == 3 for s in runs[0].steps), "the three runs never shared a step"


def test_with_prefix_caching_off_nothing_is_reused_and_the_answers_are_the_same(engine: Engine) -> None:
    on = one_by_one(class_server(engine), [CONTEXT + q for q in QUESTIONS])
    off = one_by_one(class_server(engine, sharing=False), [CONTEXT + q for q in QUESTIONS])
    assert [r.trace().reused_tokens for r in off] == [0, 0, 0]
    assert [[s.token_id for s in r.steps] for r in on] == [[s.token_id for s in r.steps] for r in off]


def test_a_students_own_text_is_not_shared_with_another_run(engine: Engine) -> None:
    """Two runs with the same long question: only the class context's blocks are shared (a faster
    first token would tell the second student what the first one asked)."""
    server = class_server(engine)
    question = list(range(60, 100))               # 40 tokens of the student's own: two more full blocks
    runs = one_by_one(server, [CONTEXT + question, CONTEXT + question])
    assert runs[1].trace().reused_tokens == 48, "blocks past the class context were served to another run"


def test_an_evicted_block_never_changes_an_answer(engine: Engine) -> None:
    """A pool that holds one run: each run evicts the blocks the one before cached."""
    server = class_server(engine)
    length = len(CONTEXT) + 5 + SETTINGS.max_new_tokens
    server.kv_budget = -(-length // 16) * 16 * engine.loaded.info.kv_bytes_per_token
    contexts = [CONTEXT, [c + 1 for c in CONTEXT], CONTEXT]
    prompts = [ctx + q for ctx, q in zip(contexts, QUESTIONS)]
    runs = []
    for ctx, prompt in zip(contexts, prompts):
        server.shared_context = tuple(ctx)
        runs += one_by_one(server, [prompt])
    assert server.pool.evicted > 0, "the small pool never evicted a block: the test checks nothing"
    for prompt, run in zip(prompts, runs):
        assert run.error is None, run.error
        assert [s.token_id for s in run.steps] == alone(engine, prompt, SETTINGS)
    assert runs[2].trace().reused_tokens == 0, "the first context's blocks were evicted, yet the third run found them"


def test_a_run_stopped_mid_way_and_a_fault_give_their_blocks_back(engine: Engine) -> None:
    server = class_server(engine)
    long = GenerationSettings(max_new_tokens=190)
    cancel = CancelFlag()
    run = server.submit(CONTEXT + [7], long, cancel)
    run.wait_for_steps(3, timeout=60)
    cancel.set()
    run.wait()
    assert run.stop_reason == "cancelled" and server.pool.in_use == 0
    broken = server.submit(CONTEXT + [8], long, CancelFlag())
    broken.wait_for_steps(2, timeout=60)
    original = server._decode

    def fault(*args: object) -> None:
        raise RuntimeError("a fault in the middle of a step")

    server._decode = fault
    try:
        broken.wait()
    finally:
        server._decode = original
    assert broken.error is not None and server.pool.in_use == 0, "the fault left blocks referenced"
    after = one_by_one(server, [CONTEXT + [9]])[0]
    assert after.error is None and after.trace().reused_tokens == 48, "the next run after a fault went wrong"


def test_a_prompt_wholly_inside_the_context_still_computes_its_last_token(engine: Engine) -> None:
    server = class_server(engine)
    prompt = CONTEXT[:48]                          # exactly three blocks
    runs = one_by_one(server, [prompt, prompt])
    assert runs[1].trace().reused_tokens == 32, "the last block holds the token whose logits give the first token"
    assert [s.token_id for s in runs[1].steps] == alone(engine, prompt, SETTINGS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_kernel_reads_a_paged_cache_bit_for_bit_as_a_contiguous_one(dtype: torch.dtype) -> None:
    """Two rows of different lengths, their positions in blocks of 16 scattered over the pool in
    no order: the same output and the same K/V written as from contiguous caches."""
    from inference.kernels.build import kernel_module
    from inference.kernels.fast_path import FusedStack
    from inference.timing import LayerTimer

    kernel = kernel_module()
    if kernel is None:
        pytest.skip("the fused kernel could not be built here")
    model = tiny_llama().to(dtype)
    inner, config = model.model, model.config
    layers, hk, d = config.num_hidden_layers, config.num_key_value_heads, config.hidden_size // config.num_attention_heads
    stack = FusedStack(inner, kernel, LayerTimer(inner, layers, torch.device("cpu")))
    lengths, cap = [37, 5], 64
    generator = torch.Generator().manual_seed(0)
    contiguous = [[(torch.randn(1, hk, cap, d, generator=generator).to(dtype),
                    torch.randn(1, hk, cap, d, generator=generator).to(dtype)) for _ in lengths] for _ in range(layers)]
    order = torch.randperm(8, generator=generator).tolist()      # 8 blocks: 3 for row 0, 1 for row 1, the rest unused
    tables = [order[:3], order[3:4]]
    pool_k = [torch.zeros(8, hk, 16, d, dtype=dtype) for _ in range(layers)]
    pool_v = [torch.zeros(8, hk, 16, d, dtype=dtype) for _ in range(layers)]
    for i in range(layers):
        for r, (length, table) in enumerate(zip(lengths, tables)):
            for j, block in enumerate(table):
                n = min(16, length - 16 * j)
                if n > 0:
                    pool_k[i][block, :, :n] = contiguous[i][r][0][0, :, 16 * j:16 * j + n]
                    pool_v[i][block, :, :n] = contiguous[i][r][1][0, :, 16 * j:16 * j + n]
    x = torch.randn(2, 1, config.hidden_size, generator=generator).to(dtype)
    position_ids = torch.tensor(lengths)[:, None]
    cos, sin = inner.rotary_emb(x, position_ids=position_ids)
    with torch.inference_mode():
        plain, _ = kernel.layers(x, stack.weights, cos, sin, contiguous, lengths)
        paged, _ = kernel.layers_paged(x, stack.weights, cos, sin, list(zip(pool_k, pool_v)),
                                       [torch.tensor(t) for t in tables], lengths)
    assert torch.equal(plain, paged), "the block table changed the kernel's arithmetic"
    for i in range(layers):
        for r, (length, table) in enumerate(zip(lengths, tables)):
            block, at = table[length // 16], length % 16
            assert torch.equal(pool_k[i][block, :, at], contiguous[i][r][0][0, :, length]), "K written elsewhere"
            assert torch.equal(pool_v[i][block, :, at], contiguous[i][r][1][0, :, length]), "V written elsewhere"


def test_a_prefill_that_fails_ends_that_run_alone_and_the_batch_goes_on(engine: Engine) -> None:
    server = class_server(engine)
    going = server.submit(CONTEXT + [5], GenerationSettings(max_new_tokens=60), CancelFlag())
    bad = server.submit(CONTEXT + [500], SETTINGS, CancelFlag())       # beyond the tiny vocabulary: its prefill fails
    bad.wait()
    going.wait()
    assert bad.error is not None and bad.stop_reason == "cancelled"
    assert going.error is None and going.stop_reason == "length", "one run's failed prefill stopped another"
    assert server.pool.in_use == 0
