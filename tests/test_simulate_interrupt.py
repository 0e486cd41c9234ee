"""Ctrl-C / SIGTERM while ``simulate`` writes its timeline parts: the run directory says so.

An interrupted simulate keeps what it wrote, as an interrupted replay does: ``run.json`` status
``interrupted`` with the counts and ``rows_written`` of the parts on disk and ``rows_lost`` for
the rest, so ``traceforge report`` shows an interrupted run with lost rows — never a run that
reads as complete (it used to say ``failed`` / ``KeyboardInterrupt:`` with no counts, which
``report`` read without a word about what was missing beyond the status).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from traceforge.analyze.report import build_report
from traceforge.record import RunManifest, read_timeline
from traceforge.record import writer as writer_mod
from traceforge.schema import conform_trace_table, write_trace
from traceforge.simulate import simulate

PART = 1_000  # rows per timeline part in these tests (the writer's PART_ROWS, patched)


def _trace(path, n: int):
    arrival = np.arange(n, dtype=np.int64) * 1_000_000  # one request a millisecond
    table = conform_trace_table(pa.table({
        "request_id": np.arange(n, dtype=np.int64),
        "arrival_ns": arrival,
        "model": ["a" if i % 3 else "b" for i in range(n)],
        "batch_size": np.ones(n, np.int32),
        "seq_len": np.full(n, 16, np.int32),
        "max_new_tokens": np.zeros(n, np.int32),
    }))
    write_trace(table, path, {"spec": {"models": {"a": {}, "b": {}}}, "seed": 0})
    return path


@pytest.fixture
def interrupt_after_first_part(monkeypatch):
    """Parts of PART rows; the second part's write raises KeyboardInterrupt (what SIGINT, and
    SIGTERM through cli.main, raise in the main thread)."""
    monkeypatch.setattr(writer_mod, "PART_ROWS", PART)
    real = writer_mod.TimelineWriter.write_part
    calls = []

    def write_part(self, table):
        calls.append(table.num_rows)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, table)

    monkeypatch.setattr(writer_mod.TimelineWriter, "write_part", write_part)
    return calls


def test_interrupt_while_writing_parts_is_recorded(tmp_path, interrupt_after_first_part):
    n = 3 * PART + 500  # four parts
    trace = _trace(tmp_path / "t.parquet", n)
    run = tmp_path / "sim"
    with pytest.raises(KeyboardInterrupt):
        simulate(trace, run, service_ms=0.1, service_dist="const")
    assert interrupt_after_first_part == [PART, PART]

    manifest = RunManifest.load(run)
    assert manifest["status"] == "interrupted", manifest.get("error")
    assert "error" not in manifest
    on_disk = read_timeline(run)
    assert on_disk.num_rows == PART
    assert manifest["rows_written"] == PART
    assert manifest["counts"] == {"ok": PART}
    assert manifest["not_due"] == 0
    assert manifest["rows_lost"] == n - PART
    assert manifest["trace"]["rows"] == n
    assert "finished_at" in manifest
    # the rows kept are the first part: trace order, nothing half-written
    assert on_disk.column("request_id").to_pylist() == list(range(PART))
    assert not [p for p in (run / "timeline").iterdir() if p.name.startswith(".")]

    report = build_report(run)
    assert report["status"] == "interrupted"
    assert any("interrupted" in note for note in report["notes"])
    assert any(f"ROWS LOST: {n - PART} of the trace's {n}" in note for note in report["notes"])


def test_interrupt_with_duration_counts_not_due_apart(tmp_path, interrupt_after_first_part):
    """Rows after --duration are not due (no row by design), not lost."""
    n = 3 * PART + 500
    trace = _trace(tmp_path / "t.parquet", n)
    run = tmp_path / "sim"
    keep = 2 * PART + 200  # rows scheduled before the cut: one a millisecond
    with pytest.raises(KeyboardInterrupt):
        simulate(trace, run, service_ms=0.1, service_dist="const",
                 duration_s=(keep - 0.5) / 1000)
    manifest = RunManifest.load(run)
    assert manifest["status"] == "interrupted"
    assert manifest["rows_written"] == PART
    assert manifest["not_due"] == n - keep
    assert manifest["rows_lost"] == keep - PART


def test_interrupt_before_anything_is_written_leaves_nothing(tmp_path, monkeypatch):
    """Ctrl-C while simulating (before the run directory is claimed): nothing at -o."""
    from traceforge.simulate import simulator

    trace = _trace(tmp_path / "t.parquet", 100)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(simulator, "_simulate_null", boom)
    with pytest.raises(KeyboardInterrupt):
        simulate(trace, tmp_path / "sim", service_ms=0.1)
    assert not (tmp_path / "sim").exists()


def test_complete_run_unchanged(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_mod, "PART_ROWS", PART)
    n = 2 * PART + 1
    trace = _trace(tmp_path / "t.parquet", n)
    summary = simulate(trace, tmp_path / "sim", service_ms=0.1, service_dist="const")
    manifest = RunManifest.load(tmp_path / "sim")
    assert summary.status == manifest["status"] == "complete"
    assert manifest["rows_written"] == n and manifest["rows_lost"] == 0
    assert len(list((tmp_path / "sim" / "timeline").glob("part-*.parquet"))) == 3
