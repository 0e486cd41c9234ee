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


def test_timeline_writer_parts_and_readback(tmp_path):
    writer = TimelineWriter(tmp_path, background=False)
    for i in range(3):
        writer.add({"request_id": 2 - i, "model": "a", "batch_size": 1, "seq_len": 1,
                    "max_new_tokens": 0, "scheduled_ns": i, "sent_ns": i, "done_ns": i + 5,
                    "status": "ok", "warmup": False})
    writer.flush()
    writer.add({"request_id": 3, "model": "a", "batch_size": 1, "seq_len": 1,
                "max_new_tokens": 0, "scheduled_ns": 9, "status": "cancelled", "warmup": False})
    writer.close()
    parts = sorted((tmp_path / "timeline").glob("part-*.parquet"))
    assert [p.name for p in parts] == ["part-000001.parquet", "part-000002.parquet"]
    table = read_timeline(tmp_path)
    assert table.schema.equals(TIMELINE_SCHEMA, check_metadata=False)
    assert table.column("request_id").to_pylist() == [0, 1, 2, 3]
    assert table.column("sent_ns").to_pylist()[3] is None
    assert writer.rows_written == 4


def test_timeline_writer_background_flush_closes_parts_while_running(tmp_path):
    import time

    writer = TimelineWriter(tmp_path, flush_interval_s=0.05)
    writer.add({"request_id": 0, "model": "a", "batch_size": 1, "seq_len": 1,
                "max_new_tokens": 0, "scheduled_ns": 0, "status": "ok", "warmup": False})
    deadline = time.monotonic() + 5
    while not list((tmp_path / "timeline").glob("part-*.parquet")):
        assert time.monotonic() < deadline, "background flush never wrote a part"
        time.sleep(0.01)
    writer.close()
    assert read_timeline(tmp_path).num_rows == 1


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
