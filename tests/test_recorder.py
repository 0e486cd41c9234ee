"""The columnar recorder: exact round trip through Parquet parts, nulls, periodic flushing."""

from __future__ import annotations

import time

import numpy as np
import pyarrow.parquet as pq

from traceforge.record import read_timeline
from traceforge.record.recorder import CANCELLED, ERROR, OK, TIMEOUT, TimelineRecorder
from traceforge.replay import Outcome
from traceforge.schema import TIMELINE_SCHEMA


def make_recorder(run_dir, n=5, **kw):
    return TimelineRecorder(
        run_dir, request_id=np.arange(n) + 100, model_codes=np.array([0, 1] * n)[:n],
        model_names=["bert", "gpt"], batch_size=np.arange(n) + 1, seq_len=np.full(n, 32),
        max_new_tokens=np.full(n, 4), scheduled_ns=np.arange(n, dtype=np.int64) * 1000, **kw)


def test_rows_round_trip_with_nulls_and_lists(tmp_path):
    rec = make_recorder(tmp_path, warmup_end_ns=1500, background=False)
    rec.sent_ns[:] = rec.scheduled_ns + 7
    rec.complete(3, OK, 9_000, Outcome(service_start_ns=3_100, first_token_ns=3_200,
                                       service_end_ns=3_900, tokens_out=4, worker="w1",
                                       itl_ns=[10, 20, 30]))
    rec.complete(0, ERROR, 50, None, "ValueError: x")
    assert rec.flush() == 2
    rec.complete(1, TIMEOUT, None, None, "no response")
    rec.complete(4, OK, 4_500, Outcome(gpu_ns=77, batch_id=5, batched_with=2))
    rec.close()
    assert len(list((tmp_path / "timeline").glob("part-*.parquet"))) == 2
    tl = read_timeline(tmp_path)
    assert tl.schema.equals(TIMELINE_SCHEMA, check_metadata=False)
    rows = tl.to_pydict()
    assert rows["request_id"] == [100, 101, 103, 104]  # row 2 never finished: not written
    assert rows["model"] == ["bert", "gpt", "gpt", "bert"]
    assert rows["status"] == ["error", "timeout", "ok", "ok"]
    assert rows["error"] == ["ValueError: x", "no response", None, None]
    assert rows["done_ns"] == [50, None, 9_000, 4_500]
    assert rows["sent_ns"] == [7, 1_007, 3_007, 4_007]
    assert rows["service_start_ns"] == [None, None, 3_100, None]
    assert rows["first_token_ns"] == [None, None, 3_200, None]
    assert rows["itl_ns"] == [None, None, [10, 20, 30], None]
    assert rows["tokens_out"] == [None, None, 4, None]
    assert rows["worker"] == [None, None, "w1", None]
    assert rows["gpu_ns"] == [None, None, None, 77]
    assert rows["batched_with"] == [None, None, None, 2]
    assert rows["warmup"] == [True, True, False, False]
    assert rec.counts() == {"ok": 2, "error": 1, "timeout": 1}


def test_part_files_carry_schema_metadata(tmp_path):
    rec = make_recorder(tmp_path, background=False)
    rec.complete(0, OK, 1, None)
    rec.close()
    part = next((tmp_path / "timeline").glob("part-*.parquet"))
    schema = pq.read_schema(part)
    assert schema.metadata[b"schema"] == b"traceforge.timeline/1"
    assert schema.field("done_ns").metadata[b"unit"].startswith(b"ns since run start")


def test_finalize_pending_marks_sent_cancelled_and_unsent_dropped(tmp_path):
    rec = make_recorder(tmp_path, background=False)
    rec.complete(0, OK, 1, None)
    rec.sent_ns[1] = 5  # in flight when the run stopped
    due = np.array([True, True, True, False, False])
    assert rec.finalize_pending(due, cancelled_msg="c", dropped_msg="d") == {
        "cancelled": 1, "dropped": 1}
    rec.close()
    rows = read_timeline(tmp_path).to_pydict()
    assert rows["status"] == ["ok", "cancelled", "dropped"]
    assert rows["error"] == [None, "c", "d"]
    assert rec.status[1] == CANCELLED


def test_background_thread_closes_parts_while_running(tmp_path):
    # kill -9 safety: rows reach disk without close(), within the flush interval.
    rec = make_recorder(tmp_path, flush_interval_s=0.05)
    rec.complete(2, OK, 10, None)
    deadline = time.monotonic() + 60  # a bound on a hang: it returns as soon as a part is there
    while time.monotonic() < deadline and not list((tmp_path / "timeline").glob("part-*")):
        time.sleep(0.02)
    assert read_timeline(tmp_path).column("request_id").to_pylist() == [102]
    rec.close()


def test_a_failed_part_write_keeps_its_rows_for_the_next_flush(tmp_path):
    """Disk full or no descriptors for one part: the rows stay queued (with their error text
    and inter-token gaps), and the next flush — close()'s, after a recorder failure — writes
    them. Before, the rows were dequeued before the write and lost with it."""
    import pytest

    rec = make_recorder(tmp_path, background=False)
    rec.complete(1, ERROR, 50, None, "ValueError: x")
    rec.complete(2, OK, 60, Outcome(itl_ns=[5, 6]))
    real = rec.writer.write_part
    calls = []

    def fail_once(table):
        calls.append(table.num_rows)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real(table)

    rec.writer.write_part = fail_once
    with pytest.raises(OSError):
        rec.flush()
    assert rec.flush() == 2
    rec.close()
    rows = read_timeline(tmp_path).to_pydict()
    assert calls == [2, 2]
    assert rows["request_id"] == [101, 102]
    assert rows["error"] == ["ValueError: x", None]
    assert rows["itl_ns"] == [None, [5, 6]]


def test_run_manifest_open_amends_and_keeps_every_key(tmp_path):
    from traceforge.record import RunManifest

    m = RunManifest(tmp_path, backend="null", trace={"path": "/x/t.parquet", "rows": 3})
    m.finish("complete", counts={"ok": 3})
    amended = RunManifest.open(tmp_path)
    amended.data["trace"]["path"] = "trace.parquet"
    amended.write()
    back = RunManifest.load(tmp_path)
    assert back["trace"] == {"path": "trace.parquet", "rows": 3}
    assert {k: v for k, v in back.items() if k != "trace"} == \
        {k: v for k, v in m.data.items() if k != "trace"}
