"""prefix_blocks: the optional trace column, its validation, and the Mooncake FAST'25 importer
(block ids from ``hash_ids``) checked against the facts in ../shared/data/README.md."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from trace_cli_helpers import FIXTURES, assert_one_line_error, run_cli, shared_file

from traceforge.errors import BadInput
from traceforge.generate import trace_stats
from traceforge.importers import import_trace
from traceforge.schema import (
    TRACE_SCHEMA,
    conform_trace_table,
    read_trace,
    trace_table,
    write_trace,
)

MOONCAKE = FIXTURES / "mooncake_fixture.jsonl"


def _table(blocks, seq_len):
    n = len(seq_len)
    return trace_table(np.arange(n), np.zeros(n, np.int32), ["m"], np.ones(n), seq_len,
                       np.zeros(n), prefix_blocks=pa.array(blocks, pa.list_(pa.int64())))


def test_prefix_blocks_round_trip_through_parquet(tmp_path):
    blocks = [[0, 1, 2], None, [], [0, 1, 2**40]]
    path = tmp_path / "t.parquet"
    write_trace(_table(blocks, [1536, 7, 5, 1025]), path, {"prefix_block_tokens": 512})
    trace = read_trace(path)
    assert trace.table.column("prefix_blocks").to_pylist() == blocks
    assert trace.meta["prefix_block_tokens"] == 512
    assert trace.table.schema.equals(TRACE_SCHEMA, check_metadata=False)


def test_a_file_without_the_optional_column_reads_as_nulls(tmp_path):
    table = _table([[1]], [3]).drop_columns(["prefix_blocks"])
    path = tmp_path / "old.parquet"
    pq.write_table(table, path)
    trace = read_trace(path)
    assert trace.table.column("prefix_blocks").to_pylist() == [None]
    assert conform_trace_table(table).column_names == TRACE_SCHEMA.names


@pytest.mark.parametrize(("blocks", "seq_len", "meta", "fragment"), [
    ([[0, 1, 2]], [1024], {"prefix_block_tokens": 512},
     "3 blocks of 512 tokens exceed seq_len 1024"),
    ([[0, None]], [1024], {"prefix_block_tokens": 512}, "null block id (row 0)"),
    ([[0]], [1024], {}, "prefix_block_tokens"),
    ([[0]], [1024], {"prefix_block_tokens": 0}, "prefix_block_tokens"),
])
def test_read_trace_rejects_bad_prefix_blocks(tmp_path, blocks, seq_len, meta, fragment):
    path = tmp_path / "bad.parquet"
    write_trace(_table(blocks, seq_len), path, meta)
    with pytest.raises(BadInput, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        read_trace(path)


def test_mooncake_hash_ids_become_prefix_blocks():
    lines = [json.loads(x) for x in MOONCAKE.read_text().splitlines()]
    trace = import_trace("mooncake", [MOONCAKE])
    assert trace.table.column("prefix_blocks").to_pylist() == [x["hash_ids"] for x in lines]
    assert trace.meta["prefix_block_tokens"] == 512
    # the window keeps each row's own blocks
    cut = import_trace("mooncake", [MOONCAKE], start_s=10.0, duration_s=20.0)
    ms = np.array([x["timestamp"] for x in lines]) - lines[0]["timestamp"]
    keep = (ms >= 10_000) & (ms < 30_000)
    assert cut.table.column("prefix_blocks").to_pylist() == [
        x["hash_ids"] for x, k in zip(lines, keep, strict=True) if k]


def test_mooncake_old_lines_without_hash_ids_have_null_blocks(tmp_path):
    src = tmp_path / "old.jsonl"
    src.write_text('{"timestamp": 0, "input_length": 9, "output_length": 2}\n'
                   '{"timestamp": 5, "input_length": 4, "output_length": 1}\n')
    trace = import_trace("mooncake", [src])
    assert trace.table.column("prefix_blocks").to_pylist() == [None, None]
    assert "prefix_block_tokens" not in trace.meta


@pytest.mark.parametrize(("line", "needle"), [
    ('{"timestamp": 0, "input_length": 600, "output_length": 1, "hash_ids": [1, 2, 3]}',
     "hash_ids has 3 blocks"),
    ('{"timestamp": 0, "input_length": 600, "output_length": 1, "hash_ids": [1, "x"]}',
     "hash_ids"),
    ('{"timestamp": 0, "input_length": 600, "output_length": 1, "hash_ids": 7}', "hash_ids"),
])
def test_mooncake_bad_hash_ids_name_the_line(tmp_path, capsys, line, needle):
    src = tmp_path / "m.jsonl"
    src.write_text('{"timestamp": 0, "input_length": 9, "output_length": 2, "hash_ids": [0]}\n'
                   + line + "\n")
    out = tmp_path / "t.parquet"
    code, _, err = run_cli(["trace", "import", "mooncake", src, "-o", out], capsys)
    assert_one_line_error(code, err, f"{src}:2", needle)
    assert not out.exists()


MOONCAKE_FACTS = {  # ../shared/data/README.md
    "conversation_trace": {"rows": 12031, "span": 3537.0, "rate": 3.401, "cv": 3.03,
                           "medians": (6909, 350)},
    "synthetic_trace": {"rows": 3993, "span": 1022.0, "rate": 3.907, "cv": 1.01,
                        "medians": (11587, 69)},
}


@pytest.mark.parametrize("name", sorted(MOONCAKE_FACTS))
def test_real_mooncake_fast25_matches_the_readme(name, tmp_path):
    path = shared_file("mooncake-fast25", f"{name}.jsonl")
    facts = MOONCAKE_FACTS[name]
    trace = import_trace("mooncake", [path])
    assert trace.table.num_rows == facts["rows"]
    assert trace.meta["duration_s"] == pytest.approx(facts["span"], abs=0.05)
    report = trace_stats(trace)["models"][name]
    # README: rate = rows / span to 4 digits; CV to 3 digits
    assert report["count"] / trace.meta["duration_s"] == pytest.approx(facts["rate"], abs=6e-4)
    assert report["cv"] == pytest.approx(facts["cv"], abs=6e-3)
    assert np.median(trace.table.column("seq_len").to_numpy()) == facts["medians"][0]
    assert np.median(trace.table.column("max_new_tokens").to_numpy()) == facts["medians"][1]
    # every block id survives the Parquet round trip, in order
    out = tmp_path / "t.parquet"
    write_trace(trace.table, out, trace.meta)
    back = read_trace(out)
    src = [json.loads(x)["hash_ids"] for x in path.read_text().splitlines() if x.strip()]
    assert back.table.column("prefix_blocks").to_pylist() == src
    assert back.meta["prefix_block_tokens"] == 512


def test_prefix_reuse_counts_leading_blocks_sent_before():
    from traceforge.generate.stats import prefix_reuse

    blocks = [[0, 1], [0, 2], [0, 1, 3], None, [4], [0, 2, 5]]
    seq = [20, 20, 24, 5, 8, 18]
    # reusable: row1 block 0 (8); row2 blocks 0,1 (16); row5 blocks 0,2 (16); others 0
    reuse = prefix_reuse(_table(blocks, seq), 8)
    assert reuse["reusable_tokens"] == 8 + 16 + 16
    assert reuse["token_fraction"] == pytest.approx(40 / sum(seq))
    assert reuse["unique_blocks"] == 6 and reuse["rows_with_blocks"] == 5
    # a partial last block caps the reuse at seq_len
    assert prefix_reuse(_table([[0, 1], [0, 1]], [16, 12]), 8)["reusable_tokens"] == 12


def test_all_null_optional_columns_stay_out_of_the_file(tmp_path):
    path = tmp_path / "t.parquet"
    write_trace(_table([None, None], [3, 4]), path, {})
    assert "prefix_blocks" not in pq.read_schema(path).names
    assert read_trace(path).table.column("prefix_blocks").to_pylist() == [None, None]


def test_mooncake_block_size_option(tmp_path, capsys):
    src = tmp_path / "m.jsonl"
    src.write_text('{"timestamp": 0, "input_length": 100, "output_length": 1, '
                   '"hash_ids": [0, 1, 2, 3]}\n')
    trace = import_trace("mooncake", [src], block_tokens=32)
    assert trace.meta["prefix_block_tokens"] == 32
    assert trace.table.column("prefix_blocks").to_pylist() == [[0, 1, 2, 3]]
    out = tmp_path / "t.parquet"
    code, _, err = run_cli(["trace", "import", "mooncake", src, "-o", out], capsys)
    assert_one_line_error(code, err, "hash_ids has 4 blocks of 512 tokens", "--block-tokens")
    code, _, err = run_cli(["trace", "import", "csv", src, "--block-tokens", "8", "-o", out],
                           capsys)
    assert_one_line_error(code, err, "--block-tokens", "mooncake")
