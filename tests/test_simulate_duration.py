"""``simulate --duration/--drain-timeout`` predicts exactly what ``replay`` does with them (null
backend, virtual time): the same rows, statuses, times and ``not_due``, sessions included."""

from __future__ import annotations

import json

import numpy as np
import pytest
from replay_helpers import MS, ORIGIN, make_trace, manifest, replay_virtual
from test_sessions import session_trace

from traceforge.backends.null import NullBackend
from traceforge.errors import BadInput
from traceforge.record import read_timeline
from traceforge.simulate import simulate


def both(trace, tmp_path, *, servers, service_ms, dist="const", **bound):
    _, replayed = replay_virtual(trace, tmp_path / "replay",
                                 NullBackend(servers=servers, service_ms=service_ms,
                                             service_dist=dist), **bound)
    summary = simulate(trace, tmp_path / "sim", servers=servers, service_ms=service_ms,
                       service_dist=dist, **bound)
    return replayed, read_timeline(tmp_path / "sim").to_pydict(), summary


def assert_same(replayed, simulated, tmp_path):
    order_r = np.argsort(replayed["request_id"])
    order_s = np.argsort(simulated["request_id"])
    for col in ("request_id", "status", "error", "scheduled_ns", "done_ns", "service_start_ns"):
        r = [replayed[col][i] for i in order_r]
        s = [simulated[col][i] for i in order_s]
        if col.endswith("_ns"):
            r = [None if v is None else v - ORIGIN for v in r]
        assert r == s, col
    rm, sm = manifest(tmp_path / "replay"), manifest(tmp_path / "sim")
    for key in ("not_due", "rows_written", "rows_lost", "drain_expired", "counts"):
        assert rm.get(key) == sm.get(key), key


@pytest.mark.parametrize(("servers", "service_ms", "bound", "expect"), [
    # 100 rows, one every 10 ms; the server takes 100 ms: saturated.
    (1, 100, {"duration_s": 0.1, "drain_timeout_s": 0.15}, {"ok": 2, "cancelled": 8}),
    (1, 100, {"duration_s": 0.25}, {"ok": 25}),  # no drain bound: every due row finishes
    # drain 0: the last request (sent at 240 ms) is still out when sending ends
    (4, 1, {"duration_s": 0.25, "drain_timeout_s": 0}, {"ok": 24, "cancelled": 1}),
    (1, 100, {"drain_timeout_s": 0.5}, {"ok": 14, "cancelled": 86}),  # drain after the last send
])
def test_simulate_duration_matches_replay(tmp_path, servers, service_ms, bound, expect):
    trace = make_trace([k * 10 * MS for k in range(100)])
    replayed, simulated, summary = both(trace, tmp_path, servers=servers,
                                        service_ms=service_ms, **bound)
    assert summary.counts == expect
    assert_same(replayed, simulated, tmp_path)
    man = manifest(tmp_path / "sim")
    assert man["not_due"] + man["rows_written"] == 100
    assert man["options"]["duration_s"] == bound.get("duration_s")
    if "cancelled" in expect:
        assert man["drain_expired"] is True
        cancelled = [i for i, s in enumerate(simulated["status"]) if s == "cancelled"]
        assert all(simulated["done_ns"][i] is None and simulated["worker"][i] is None
                   for i in cancelled)


@pytest.mark.parametrize("bound", [{"duration_s": 0.3, "drain_timeout_s": 0.1},
                                   {"duration_s": 0.2}])
def test_simulate_duration_with_sessions_matches_replay(tmp_path, bound):
    """Sessions: follow-up turns released after the cut are not due, and so are the session's
    later turns; a turn cancelled by the drain's end leaves its later turns not due (no
    `dropped` rows for a time that never came)."""
    n_sessions, turns = 12, 4
    arrival, session, turn = [], [], []
    for s in range(n_sessions):
        for k in range(turns):
            arrival.append(s * 15 * MS + k * 20 * MS)
            session.append(s)
            turn.append(k + 1)
    order = np.argsort(arrival, kind="stable")
    trace = session_trace([arrival[i] for i in order], [session[i] for i in order],
                          [turn[i] for i in order])
    replayed, simulated, summary = both(trace, tmp_path, servers=2, service_ms=40, **bound)
    assert_same(replayed, simulated, tmp_path)
    man = manifest(tmp_path / "sim")
    assert man["not_due"] > 0
    assert (summary.counts.get("cancelled", 0) > 0) == ("drain_timeout_s" in bound)
    assert "dropped" not in summary.counts
    assert man["not_due"] + man["rows_written"] == n_sessions * turns


def test_simulate_duration_profile_rows_after_the_cut_never_arrive(tmp_path):
    """Dynamic batching: a row after --duration never reaches the worker, so it cannot fill the
    batch of a row before it (test_simulate's exact batching case, cut after row 0)."""
    from test_simulate import make_profile, model_profile

    profile = make_profile({"m": model_profile([[1.0], [1.5]], batch_sizes=(1, 2))})
    trace = make_trace([0, int(0.2 * MS), int(0.3 * MS), 5 * MS])
    simulate(trace, tmp_path / "run", profile=profile, mode="timeslice", max_batch=2,
             max_wait_ms=0.5, duration_s=0.1e-3)
    t = read_timeline(tmp_path / "run").to_pydict()
    # Alone, #0 waits its 0.5 ms for a partner that never comes, then runs 1 ms.
    assert t["request_id"] == [0] and t["batched_with"] == [1]
    assert (t["service_start_ns"], t["service_end_ns"]) == ([MS // 2], [3 * MS // 2])
    assert manifest(tmp_path / "run")["not_due"] == 3


@pytest.mark.parametrize(("flag", "value"), [("--duration", "0"), ("--duration", "nan"),
                                             ("--duration", "-1"), ("--drain-timeout", "-1"),
                                             ("--duration", "1e300")])
def test_simulate_bad_duration_flags(tmp_path, flag, value):
    from test_simulate_cli import cli

    trace = tmp_path / "t.parquet"
    make_trace([k * MS for k in range(10)], path=trace)
    done = cli("simulate", str(trace), "-o", str(tmp_path / "run"), flag, value)
    assert done.returncode == 2, done.stderr
    assert flag in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_simulate_cli_duration(tmp_path):
    from test_simulate_cli import cli

    trace = tmp_path / "t.parquet"
    make_trace([k * MS for k in range(200)], path=trace)  # 0.2 s
    done = cli("simulate", str(trace), "-o", str(tmp_path / "run"), "--duration", "0.05",
               "--drain-timeout", "1", "--service-ms", "0.1")
    assert done.returncode == 0, done.stderr
    man = json.loads((tmp_path / "run" / "run.json").read_text())
    assert man["rows_written"] == 50 and man["not_due"] == 150
    assert "150 not due" in done.stdout
    with pytest.raises(BadInput, match="--drain-timeout"):
        simulate(trace, tmp_path / "run2", drain_timeout_s=float("inf"))
