"""Synthetic prompts (traceforge/prompts.py): exact lengths under a real tokenizer (the shipped
tiny byte-level BPE, traceforge/data/tokenizer), unique prompts, and prefix faithfulness — two
requests sharing k prefix blocks share exactly k × block tokens and not one more."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pyarrow as pa
import pytest
from test_http_backend import FakeServer
from trace_cli_helpers import FIXTURES, REPO

from traceforge.backends.http import from_options
from traceforge.errors import BadInput
from traceforge.importers import import_trace
from traceforge.prompts import PromptBuilder, PromptTexts, load_vocab
from traceforge.replay import ReplayOptions, replay_async
from traceforge.schema import Trace, trace_table

BLOCK = 16


@pytest.fixture(scope="module")
def vocab():
    return load_vocab("tiny-bpe")


def common_prefix(a, b) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


def expected_shared(row_a: dict, row_b: dict, block: int) -> int:
    k = common_prefix(row_a["prefix_blocks"] or [], row_b["prefix_blocks"] or [])
    return min(k * block, row_a["seq_len"], row_b["seq_len"])


def _trace(blocks, seq_len, block=BLOCK, batch=None) -> Trace:
    n = len(seq_len)
    table = trace_table(np.arange(n), np.zeros(n, np.int32), ["m"],
                        batch if batch is not None else np.ones(n), seq_len, np.zeros(n),
                        prefix_blocks=pa.array(blocks, pa.list_(pa.int64())))
    return Trace(table=table, meta={"prefix_block_tokens": block})


def test_the_shipped_tokenizer_vets_enough_words(vocab):
    assert vocab.size > 1000
    assert all(p[0] == " " and p[1:].isalpha() for p in vocab.pieces)
    # each vetted piece encodes to its own id, alone
    assert [e[0] for e in vocab.encoder(list(vocab.pieces[:50]))] == vocab.ids[:50].tolist()


@pytest.mark.parametrize("seq_len", [1, 2, 15, 16, 17, 511, 512, 513, 4000])
def test_prompts_are_exactly_seq_len_tokens(vocab, seq_len):
    texts = PromptTexts(vocab)
    prompts = [texts.text(rid, seq_len) for rid in range(5)]
    assert [len(ids) for ids in vocab.encoder(prompts)] == [seq_len] * 5
    assert vocab.count_tokens(prompts[0]) == seq_len


def test_unique_prompts_differ_from_their_first_token(vocab):
    n = 300  # fewer siblings than vetted words: planned first tokens are all distinct
    trace = _trace([None] * n, np.full(n, 64))
    texts = PromptTexts(vocab, block_tokens=BLOCK)
    texts.builder.plan_table(trace.table)
    ids = vocab.encoder([texts.text(r, 64) for r in range(n)])
    assert len({tuple(x) for x in ids}) == n
    assert len({x[0] for x in ids}) == n  # no two unique prompts share even one token


def test_same_request_same_prompt_across_builders(vocab):
    a = PromptTexts(vocab, block_tokens=BLOCK).text(7, 100, [3, 4])
    b = PromptTexts(vocab, block_tokens=BLOCK).text(7, 100, [3, 4])
    assert a == b


def test_shared_blocks_share_exactly_k_blocks_under_the_tokenizer(vocab):
    # a prefix tree: 0 is a common "system prompt"; 1/2 and 5/6 branch; tails after blocks
    blocks = [[0, 1, 2], [0, 1, 3], [0, 5], [0, 5, 6], [0, 5, 6], [0], [], None, [0, 1, 2],
              [7, 8], [7, 9]]
    seq_len = [48, 48, 40, 48, 45, 16, 30, 30, 60, 20, 32]
    trace = _trace(blocks, seq_len)
    texts = PromptTexts(vocab, block_tokens=BLOCK)
    texts.builder.plan_table(trace.table)
    rows = trace.table.to_pylist()
    prompts = [texts.text(r["request_id"], r["seq_len"], r["prefix_blocks"]) for r in rows]
    ids = vocab.encoder(prompts)
    assert [len(x) for x in ids] == seq_len
    for a, b in itertools.combinations(range(len(rows)), 2):
        want = expected_shared(rows[a], rows[b], BLOCK)
        assert common_prefix(ids[a], ids[b]) == want, (a, b)
    # equal block ids -> identical text for that block, wherever it appears
    assert prompts[0][: len(prompts[0]) // 3] == prompts[8][: len(prompts[0]) // 3]


def test_mooncake_fixture_prefixes_are_faithful(vocab):
    trace = import_trace("mooncake", [FIXTURES / "mooncake_fixture.jsonl"])
    block = trace.meta["prefix_block_tokens"]
    texts = PromptTexts(vocab, block_tokens=block)
    texts.builder.plan_table(trace.table)
    rows = trace.table.to_pylist()[:30]
    ids = vocab.encoder([texts.text(r["request_id"], r["seq_len"], r["prefix_blocks"])
                         for r in rows])
    assert [len(x) for x in ids] == [r["seq_len"] for r in rows]
    shared = 0
    for a, b in itertools.combinations(range(len(rows)), 2):
        want = expected_shared(rows[a], rows[b], block)
        assert common_prefix(ids[a], ids[b]) == want
        shared += want > 0
    assert shared > 50  # the fixture does share prefixes (a 4-block system prompt)


def test_more_siblings_than_words_differ_within_the_planned_digits():
    # vocabulary of 5: 40 tails under one prefix need 3 base-5 digits (5**2 = 25 < 40)
    builder = PromptBuilder(5, block_tokens=4)
    n = 40
    builder.plan(np.arange(n), np.full(n, 12), np.ones(n),
                 pa.array([[1]] * n, pa.list_(pa.int64())))
    assert builder.max_digits == 3
    toks = [builder.tokens(r, 12, [1]) for r in range(n)]
    for a, b in itertools.combinations(toks, 2):
        assert 4 <= common_prefix(a, b) < 4 + 3


def test_batch_items_get_their_own_tails(vocab):
    trace = _trace([[0]], [40], batch=np.array([3]))
    texts = PromptTexts(vocab, block_tokens=BLOCK)
    texts.builder.plan_table(trace.table)
    ids = vocab.encoder([texts.text(0, 40, [0], item=j) for j in range(3)])
    for a, b in itertools.combinations(ids, 2):
        assert common_prefix(a, b) == BLOCK


def test_word_fallback_counts_words():
    words = load_vocab(None)
    texts = PromptTexts(words)
    prompt = texts.text(3, 77)
    assert len(prompt.split()) == 77 and words.count_tokens(prompt) == 77
    assert words.describe()["unit"] == "words"


def test_bad_tokenizer_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="--tokenizer"):
        load_vocab(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(BadInput, match=r"not a tokenizer\.json"):
        load_vocab(str(bad))


def test_http_replay_sends_prefix_faithful_prompts(tmp_path, vocab):
    trace = import_trace("mooncake", [FIXTURES / "mooncake_fixture.jsonl"], duration_s=3.0)
    table = trace.table
    # squeeze time (the fixture spans seconds) and cut prompts to keep the test fast
    short = table.set_column(1, "arrival_ns", pa.array(np.arange(table.num_rows) * 1_000_000))
    trace = Trace(table=short, meta=trace.meta)

    async def main():
        async with FakeServer() as server:
            backend = from_options({
                "url": server.url + "/generate", "api": "json", "tokenizer": "tiny-bpe",
                "body_template": '{"prompt": "{{prompt}}", "rid": "{{request_id}}"}'})
            await replay_async(trace, tmp_path / "run", backend, ReplayOptions())
            return server.bodies, backend.describe()

    bodies, info = asyncio.run(main())
    rows = {r["request_id"]: r for r in table.to_pylist()}
    assert info["prompts"]["tokenizer"] == "tiny-bpe" and info["prompts"]["planned"]
    assert sorted(b["rid"] for b in bodies) == sorted(rows)
    order = [b["rid"] for b in bodies]
    ids = vocab.encoder([b["prompt"] for b in bodies])
    assert [len(x) for x in ids] == [rows[r]["seq_len"] for r in order]
    for a, b in itertools.combinations(range(len(order)), 2):
        assert common_prefix(ids[a], ids[b]) == expected_shared(rows[order[a]],
                                                                rows[order[b]], 512)


def test_model_token_ids_are_unique_per_request_and_share_blocks():
    from traceforge.prompts import model_token_ids

    ids = model_token_ids(1000, [4, 5, 6], 40, batch_sizes=[1, 2, 1],
                          prefix_blocks=[[1, 2], [1, 3], None], block_tokens=16)
    assert ids.shape == (4, 40) and ids.min() >= 0 and ids.max() < 1000
    assert (ids[0, :16] == ids[1, :16]).all() and (ids[1, :32] == ids[2, :32]).all()
    assert (ids[0, 16:32] != ids[1, 16:32]).any()  # blocks 2 vs 3 differ
    assert (ids[1, 32:] != ids[2, 32:]).any()  # batch items have their own tails
    again = model_token_ids(1000, [4], 40, prefix_blocks=[[1, 2]], block_tokens=16)
    assert (again[0] == ids[0]).all()  # seeded by request id, not by call order


def test_zoo_synthesise_uses_request_ids():
    pytest.importorskip("torch")
    from traceforge.prompts import model_token_ids
    from traceforge.zoo import build_model

    model = build_model("tiny-gpt2")
    x = model.synthesise(3, 12, request_ids=[7, 8])  # third row: padding
    want = model_token_ids(model.vocab_size, [7, 8], 12)
    assert (x[:2].numpy() == want).all() and x.shape == (3, 12)


def _cache_hits(rows, builder, block: int = 16) -> tuple[int, int]:
    """Prompt tokens a vLLM-style prefix cache (hash chains of full `block`-token blocks,
    unbounded) would serve from cache, and all prompt tokens."""
    seen: set[int] = set()
    hits = total = 0
    for r in rows:
        toks = builder.tokens(r["request_id"], r["seq_len"], r["prefix_blocks"])
        h, n_full = 0, len(toks) // block
        hit = True
        for i in range(n_full):
            h = hash((h, toks[i * block:(i + 1) * block].tobytes()))
            if hit and h in seen:
                hits += block
            else:
                hit = False
            seen.add(h)
        total += len(toks)
    return hits, total


def test_a_prefix_cache_sees_the_traces_shared_prefixes():
    """The shipped Mooncake slice through a simulated prefix cache: hits match the trace's own
    prefix reuse (trace stats), up to partial 16-token blocks; unique prompts never hit."""
    from traceforge.generate.stats import prefix_reuse
    from traceforge.schema import read_trace

    trace = read_trace(REPO / "traces" / "mooncake-conversation-10min.parquet")
    table = trace.table.slice(0, 250)
    builder = PromptBuilder(1606, block_tokens=512).plan_table(table)
    hits, total = _cache_hits(table.to_pylist(), builder)
    want = prefix_reuse(table, 512)
    assert want["token_fraction"] > 0.05  # 6.4 % in the first 250 rows
    # a reused partial block counts whole in prefix_reuse, but only its full 16-token blocks hit
    assert want["reusable_tokens"] - 16 * 250 <= hits <= want["reusable_tokens"]
    unique = PromptBuilder(1606).plan_table(table.drop_columns(["prefix_blocks"]))
    rows = [{**r, "prefix_blocks": None} for r in table.to_pylist()]
    assert _cache_hits(rows, unique) == (0, total)


def test_runs_without_a_prompt_seed_do_not_share_prompts_but_a_seed_reproduces_them(vocab):
    """Two runs against one server must not share prompts (its prefix cache would serve the
    second from the first); --prompt-seed gives a run's prompts back exactly."""
    opts = {"url": "http://127.0.0.1:9/v1", "tokenizer": "tiny-bpe"}
    a, b = from_options(opts), from_options(opts)
    assert a.prompt_seed != b.prompt_seed  # 31 random bits each: equal with p = 2^-31
    ids_a = vocab.encoder([a.prompts.text(0, 64)])[0]
    ids_b = vocab.encoder([b.prompts.text(0, 64)])[0]
    assert common_prefix(ids_a, ids_b) < 4
    c = from_options({**opts, "prompt_seed": a.prompt_seed})
    assert c.prompts.text(0, 64) == a.prompts.text(0, 64)
    assert a.describe()["prompts"]["seed"] == a.prompt_seed
    with pytest.raises(BadInput, match="--prompt-seed"):
        from_options({**opts, "prompt_seed": -1})


def test_block_runs_are_built_once_and_texts_match_the_tokens(vocab):
    """Block texts are cached (a block's run is computed once per plan), and the cached path
    gives exactly the pieces of tokens(), partial last blocks and batch items included."""
    rng = np.random.default_rng(4)
    n = 200
    blocks = [list(rng.integers(0, 6, rng.integers(0, 5))) for _ in range(n)]
    seq = rng.integers(1, 5 * BLOCK, n)
    batch = rng.integers(1, 3, n)
    texts = PromptTexts(vocab, block_tokens=BLOCK, seed=2)
    texts.builder.plan_table(_trace(blocks, seq, batch=batch).table)
    for i in range(n):
        for item in range(int(batch[i])):
            tokens = texts.builder.tokens(i, int(seq[i]), blocks[i], item)
            assert len(tokens) == seq[i]
            assert texts.text(i, int(seq[i]), blocks[i], item) == \
                "".join(vocab.pieces[tokens].tolist())
    info = texts.builder._block_cached.cache_info()
    assert info.misses <= 6 and info.hits > 100  # six distinct block ids in the trace


def test_an_exported_plan_subset_builds_the_same_prompts(vocab):
    rng = np.random.default_rng(5)
    n = 120
    blocks = [list(rng.integers(0, 4, rng.integers(0, 4))) for _ in range(n)]
    seq = rng.integers(1, 4 * BLOCK, n)
    batch = rng.integers(1, 3, n)
    whole = PromptBuilder(vocab.size, block_tokens=BLOCK, seed=9)
    whole.plan_table(_trace(blocks, seq, batch=batch).table)
    mine = np.arange(1, n, 3)
    shard = PromptBuilder(vocab.size, block_tokens=BLOCK, seed=9).load_plan(
        whole.export_plan(mine))
    for i in mine.tolist():
        for item in range(int(batch[i])):
            assert np.array_equal(shard.tokens(i, int(seq[i]), blocks[i], item),
                                  whole.tokens(i, int(seq[i]), blocks[i], item))
    with pytest.raises(ValueError, match="seed"):
        PromptBuilder(vocab.size, block_tokens=BLOCK, seed=8).load_plan(whole.export_plan())
