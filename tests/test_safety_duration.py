"""Overload never costs data: --duration / --drain-timeout bound a run (exact, in virtual time),
not_due means only "its time had not come", and a failing timeline writer ends the run at once
as ``failed`` with every row written so far readable and the loss stated by ``report``."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import replay_helpers
from replay_helpers import MS, make_trace, manifest

from traceforge.backends.null import NullBackend
from traceforge.errors import BadInput, RunFailure
from traceforge.record import read_timeline
from traceforge.replay import ReplayOptions


def replay_virtual(trace, run_dir, backend, **opts):
    _summary, timeline = replay_helpers.replay_virtual(trace, run_dir, backend, **opts)
    return _summary, timeline, manifest(run_dir)


def test_duration_stops_sending_and_rows_after_it_are_not_due(tmp_path):
    arrival = [k * 10 * MS for k in range(100)]  # 1 s of schedule
    _summary, tl, man = replay_virtual(make_trace(arrival), tmp_path / "run",
                                      NullBackend(servers=4, service_ms=1, service_dist="const"),
                                      duration_s=0.25)
    assert tl["request_id"] == list(range(25))  # offsets 0..240 ms < 250 ms
    assert set(tl["status"]) == {"ok"}
    assert man["status"] == "complete"
    assert man["not_due"] == 75 and man["rows_lost"] == 0 and man["rows_written"] == 25


def test_drain_timeout_cancels_what_is_still_out(tmp_path):
    """A saturated server (1 server, 100 ms each, a request every 10 ms): sending ends at 0.1 s,
    the drain lasts 0.15 s, so exactly the requests finished by 0.25 s are ok."""
    arrival = [k * 10 * MS for k in range(100)]
    _summary, tl, man = replay_virtual(make_trace(arrival), tmp_path / "run",
                                      NullBackend(servers=1, service_ms=100,
                                                  service_dist="const"),
                                      duration_s=0.1, drain_timeout_s=0.15)
    assert tl["request_id"] == list(range(10))
    # FIFO: request k ends at (k+1)*100 ms; the drain ends at 250 ms -> 2 ok, 8 cancelled.
    assert tl["status"] == ["ok"] * 2 + ["cancelled"] * 8
    assert all("--drain-timeout" in e for e in tl["error"][2:])
    assert man["status"] == "complete" and man["drain_expired"] is True
    assert man["not_due"] == 90 and man["rows_lost"] == 0
    assert max(tl["done_ns"][:2]) < 260 * MS  # the run took the bound, not the 10 s of backlog


def test_duration_with_busy_slots_drops_the_late_ones(tmp_path):
    """--max-inflight 1 and 50 ms service: requests due before the end that never got the slot
    are dropped (their time had come), not silently missing."""
    arrival = [k * 10 * MS for k in range(20)]  # 0..190 ms
    _summary, tl, man = replay_virtual(make_trace(arrival), tmp_path / "run",
                                      NullBackend(servers=1, service_ms=50,
                                                  service_dist="const"),
                                      duration_s=0.12, max_inflight=1)
    statuses = dict(zip(tl["request_id"], tl["status"], strict=True))
    assert sorted(statuses) == list(range(12))  # offsets < 120 ms were due
    assert sum(s == "ok" for s in statuses.values()) == 3  # slot frees at 50, 100, then >= 120
    assert all(statuses[i] == "dropped" for i in range(3, 12))
    assert man["not_due"] == 8 and man["rows_lost"] == 0


def test_closed_loop_duration(tmp_path):
    arrival = [0] * 50
    _summary, tl, man = replay_virtual(make_trace(arrival), tmp_path / "run",
                                      NullBackend(servers=2, service_ms=10,
                                                  service_dist="const"),
                                      duration_s=0.05, concurrency=2)
    # two at a time, 10 ms each: slots free at 10, 20, 30, 40 ms; at 50 ms sending ends.
    assert len(tl["request_id"]) == 10 and set(tl["status"]) == {"ok"}
    assert man["not_due"] == 40


@pytest.mark.parametrize("loop", [{"max_inflight": 1}, {"concurrency": 2}])
def test_duration_and_drain_bound_a_run_whose_slots_never_free(tmp_path, loop):
    """Every slot busy with a 15 s request: sending ends at --duration (1 s) although no slot
    freed, the drain cancels what is out 0.5 s later. The slot wait had no deadline: the run
    took the 15 s of service (against a server that never answers: for ever)."""
    arrival = [k * 100 * MS for k in range(30)]  # 3 s of schedule
    _summary, tl, man = replay_virtual(make_trace(arrival), tmp_path / "run",
                                      NullBackend(servers=4, service_ms=15_000,
                                                  service_dist="const"),
                                      duration_s=1.0, drain_timeout_s=0.5, **loop)
    statuses = dict(zip(tl["request_id"], tl["status"], strict=True))
    assert "ok" not in statuses.values()
    assert list(statuses.values()).count("cancelled") == (loop.get("max_inflight")
                                                          or loop.get("concurrency"))
    assert man["drain_expired"] is True and man["status"] == "complete"
    assert all("--drain-timeout" in e for e, st in zip(tl["error"], tl["status"], strict=True)
               if st == "cancelled")
    if "max_inflight" in loop:  # the rows due before 1 s that never got the slot
        assert sorted(statuses) == list(range(10))
        assert all(statuses[i] == "dropped" for i in range(1, 10))


@pytest.mark.parametrize("opts", [{"duration_s": 0}, {"duration_s": float("nan")},
                                  {"drain_timeout_s": -1}])
def test_bad_duration_values(opts, tmp_path):
    with pytest.raises(BadInput, match="--d"):
        ReplayOptions(**opts).validate()


def test_cli_duration_flags(tmp_path):
    from trace_cli_helpers import run_cli  # noqa: F401  (CLI wiring checked below)

    from traceforge.cli import main

    trace = tmp_path / "t.parquet"
    make_trace([k * MS for k in range(200)], path=trace)  # 0.2 s
    with pytest.raises(SystemExit) as exc:
        main(["replay", str(trace), "-o", str(tmp_path / "run"), "--duration", "0.05",
              "--drain-timeout", "1", "--service-ms", "0.1", "--no-progress"])
    assert exc.value.code == 0
    man = json.loads((tmp_path / "run" / "run.json").read_text())
    assert man["options"]["duration_s"] == 0.05 and man["options"]["drain_timeout_s"] == 1
    assert man["rows_written"] + man["not_due"] == 200 and man["rows_lost"] == 0
    assert 40 <= man["rows_written"] <= 51  # offsets < 50 ms (the schedule itself: 50 rows)


# -- a failing timeline writer --------------------------------------------------------------

def test_writer_failure_aborts_the_run_cleanly(tmp_path, monkeypatch):
    from traceforge.analyze.report import build_report
    from traceforge.backends.null import from_options
    from traceforge.record.writer import TimelineWriter
    from traceforge.replay import run_replay

    real = TimelineWriter.write_part
    calls = {"n": 0}

    def flaky(self, table):
        calls["n"] += 1
        if calls["n"] >= 3:  # parts 1 and 2 land; then the disk is "full"
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, table)

    monkeypatch.setattr(TimelineWriter, "write_part", flaky)
    n = 3000
    trace = make_trace(np.arange(n, dtype=np.int64) * MS)  # 3 s of schedule
    run_dir = tmp_path / "run"
    backend = from_options({"servers": 4, "service_ms": 0.2, "service_dist": "const",
                            "seed": 0})
    with pytest.raises(RunFailure, match="No space left"):
        # The thread flusher: the patched writer runs in this process (the process flusher's
        # own failure path is tests/test_recorder_process.py).
        run_replay(trace, run_dir, backend, ReplayOptions(flush_interval_s=0.05,
                                                          flusher="thread"))
    man = json.loads((run_dir / "run.json").read_text())
    assert man["status"] == "failed" and "No space left" in man["error"]
    tl = read_timeline(run_dir)
    assert tl.num_rows == man["rows_written"] > 0  # what reached disk is readable
    assert man["duration_s"] < 2.0  # aborted at once, not after the 3 s schedule
    assert man["not_due"] > 0 and man["rows_lost"] > 0
    assert man["rows_written"] + man["rows_lost"] + man["not_due"] == n
    report = build_report(run_dir)
    assert any(note.startswith("ROWS LOST") and str(man["rows_lost"]) in note
               for note in report["notes"]), report["notes"]
