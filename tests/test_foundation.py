"""The skeleton shared by every stage: errors, schemas, atomic trace I/O, the timeline writer."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from traceforge.errors import BadInput
from traceforge.record import RunManifest, TimelineWriter, read_timeline
from traceforge.schema import (
    TIMELINE_SCHEMA,
    TRACE_SCHEMA,
    read_trace,
    write_trace,
)


def _trace(n: int = 5) -> pa.Table:
    return pa.table(
        {
            "request_id": np.arange(n, dtype=np.int64),
            "arrival_ns": np.arange(n, dtype=np.int64) * 1000,
            "model": ["a"] * n,
            "batch_size": np.ones(n, np.int32),
            "seq_len": np.full(n, 8, np.int32),
            "max_new_tokens": np.zeros(n, np.int32),
        }
    )


def test_bad_input_line_names_file_key_value():
    err = BadInput("must be > 0", source="w.toml", key="models.a.arrival.rate", value=-1.0,
                   allowed="a positive number")
    assert str(err) == "w.toml: models.a.arrival.rate = -1.0: must be > 0 (allowed: a positive number)"
    assert err.exit_code == 2


def test_trace_roundtrip_keeps_schema_and_metadata(tmp_path):
    path = tmp_path / "t.parquet"
    write_trace(_trace(), path, {"seed": 3})
    trace = read_trace(path)
    assert trace.table.schema.equals(TRACE_SCHEMA, check_metadata=False)
    assert trace.meta == {"seed": 3, "schema": "traceforge.trace/1"}
    assert trace.models == ["a"]
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed away


@pytest.mark.parametrize(
    ("column", "values", "fragment"),
    [
        ("arrival_ns", [0, 5, 3, 6, 7], "arrival_ns decreases at row 2"),
        ("batch_size", [1, 1, 0, 1, 1], "batch_size = 0: must be >= 1"),
        ("max_new_tokens", [0, -1, 0, 0, 0], "max_new_tokens = -1"),
    ],
)
def test_read_trace_rejects_bad_rows(tmp_path, column, values, fragment):
    table = _trace()
    idx = table.column_names.index(column)
    table = table.set_column(idx, column, pa.array(values, TRACE_SCHEMA.field(column).type))
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path)
    with pytest.raises(BadInput, match=fragment):
        read_trace(path)


def test_read_trace_missing_column_and_not_parquet(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(_trace().drop(["seq_len"]), path)
    with pytest.raises(BadInput, match="seq_len: missing column"):
        read_trace(path)
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(BadInput, match="not a readable Parquet file"):
        read_trace(junk)
    with pytest.raises(BadInput, match="no such file"):
        read_trace(tmp_path / "absent.parquet")


def test_timeline_writer_parts_conform_and_read_back_sorted(tmp_path, monkeypatch):
    import traceforge.record.writer as writer_mod

    monkeypatch.setattr(writer_mod, "PART_ROWS", 2)  # force several parts from one table
    table = pa.table({
        "request_id": [2, 1, 0, 3], "model": ["a"] * 4, "batch_size": [1] * 4,
        "seq_len": [1] * 4, "max_new_tokens": [0] * 4, "scheduled_ns": [0, 1, 2, 9],
        "sent_ns": [0, 1, 2, None], "done_ns": [5, 6, 7, None],
        "status": ["ok", "ok", "ok", "cancelled"],
    })
    writer = TimelineWriter(tmp_path)
    writer.write_table(table)
    writer.write_part(TIMELINE_SCHEMA.empty_table())  # an empty part is not written
    parts = sorted((tmp_path / "timeline").glob("part-*.parquet"))
    assert [p.name for p in parts] == ["part-000001.parquet", "part-000002.parquet"]
    back = read_timeline(tmp_path)
    assert back.schema.equals(TIMELINE_SCHEMA, check_metadata=False)
    assert back.column("request_id").to_pylist() == [0, 1, 2, 3]
    assert back.column("sent_ns").to_pylist()[3] is None
    assert back.column("warmup").to_pylist() == [False] * 4  # missing column filled, not null
    assert back.column("gpu_ns").null_count == 4
    assert writer.rows_written == 4


def test_read_timeline_ignores_half_written_dot_files(tmp_path):
    TimelineWriter(tmp_path).write_table(pa.table({
        "request_id": [0], "model": ["a"], "batch_size": [1], "seq_len": [1],
        "max_new_tokens": [0], "scheduled_ns": [0], "status": ["ok"]}))
    (tmp_path / "timeline" / ".part-000002.parquet.x.tmp").write_bytes(b"PAR1 truncated")
    assert read_timeline(tmp_path).num_rows == 1
    assert read_timeline(tmp_path / "absent").num_rows == 0


def test_manifest_written_running_then_finished(tmp_path):
    manifest = RunManifest(tmp_path, backend="null")
    manifest.write()
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "running"
    manifest.finish("complete", counts={"ok": 1})
    data = RunManifest.load(tmp_path)
    assert data["status"] == "complete"
    assert data["schema"] == "traceforge.run/1"
    assert data["counts"] == {"ok": 1}
    assert "finished_at" in data
    with pytest.raises(ValueError):
        manifest.finish("weird")


@pytest.mark.parametrize(
    ("meta", "fragment"),
    [
        (b"[1, 2]", "metadata key 'traceforge' is not a JSON object (an array)"),
        (b'{"spec": 5}', "traceforge.spec: must be a JSON object, not a number"),
        (b'{"spec": {"models": ["a"]}}', "traceforge.spec.models: must be a JSON object"),
        (b'{"source": "x"}', "traceforge.source: must be a JSON object, not a string"),
        (b'{"duration_s": "abc"}', "traceforge.duration_s = 'abc': must be a number"),
        (b'{"duration_s": -1}', "traceforge.duration_s = -1: must be a number"),
    ],
)
def test_read_trace_refuses_metadata_of_the_wrong_shape(tmp_path, meta, fragment):
    # replay, stats and --rate read these keys: a wrong shape was a traceback (exit 1)
    path = tmp_path / "t.parquet"
    pq.write_table(_trace().replace_schema_metadata({b"traceforge": meta}), path)
    with pytest.raises(BadInput, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        read_trace(path)


def test_read_trace_refuses_a_directory_of_parquet_files(tmp_path):
    # pyarrow reads a directory as one dataset: the trace path must be a file
    folder = tmp_path / "t.parquet"
    folder.mkdir()
    write_trace(_trace(), folder / "part-0.parquet", {})
    with pytest.raises(BadInput, match=r"t\.parquet: is a directory, not a file"):
        read_trace(folder)
