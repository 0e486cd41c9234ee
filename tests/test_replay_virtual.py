"""Scheduling logic in virtual time: every timestamp is asserted exactly (to the nanosecond).

The virtual loop advances time only when nothing is ready, so the dispatcher's SleepPacer and the
null backend's sleeps land exactly on their targets; any deviation is a logic error, not noise.
"""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from replay_helpers import MS, ORIGIN, make_trace, replay_virtual

from traceforge.backends.null import NullBackend
from traceforge.errors import BadInput
from traceforge.record import read_timeline
from traceforge.replay import Outcome, ReplayOptions, replay_async
from traceforge.replay.virtual import VirtualClock, VirtualTimeLoop


def lindley(arrival, service):
    """FIFO single-server start times: start_k = max(arrival_k, end_{k-1})."""
    start, end, free = [], [], -(2**62)
    for a, s in zip(arrival, service, strict=True):
        st = max(a, free)
        start.append(st)
        end.append(st + s)
        free = st + s
    return start, end


def test_open_loop_sends_exactly_on_schedule_and_queues_fifo(tmp_path):
    arrival = [0, 1 * MS, 1 * MS, 5 * MS, 20 * MS, 20 * MS + 1]
    summary, tl = replay_virtual(make_trace(arrival), tmp_path / "run",
                                 NullBackend(servers=1, service_ms=2, service_dist="const"))
    scheduled = [ORIGIN + a for a in arrival]
    assert summary.status == "complete"
    assert tl["scheduled_ns"] == scheduled
    assert tl["sent_ns"] == scheduled
    start, end = lindley(scheduled, [2 * MS] * len(arrival))
    assert tl["service_start_ns"] == start
    assert tl["service_end_ns"] == end
    assert tl["done_ns"] == end
    assert tl["status"] == ["ok"] * len(arrival)
    assert summary.self_check["send_lag_us"] == {"p50": 0.0, "p99": 0.0, "max": 0.0}
    assert summary.self_check["achieved_rate_ratio"] == 1.0
    assert summary.self_check["generator_limited"] is False


def test_time_scale_stretches_the_schedule(tmp_path):
    arrival = [0, 3 * MS, 7 * MS]
    _, tl = replay_virtual(make_trace(arrival), tmp_path / "run",
                           NullBackend(service_ms=1, service_dist="const"), time_scale=2.5)
    assert tl["scheduled_ns"] == [ORIGIN + round(a * 2.5) for a in arrival]
    assert tl["sent_ns"] == tl["scheduled_ns"]


def test_two_servers_serve_in_parallel(tmp_path):
    arrival = [0, 0, 0, 0]
    _, tl = replay_virtual(make_trace(arrival), tmp_path / "run",
                           NullBackend(servers=2, service_ms=3, service_dist="const"))
    assert tl["service_start_ns"] == [ORIGIN, ORIGIN, ORIGIN + 3 * MS, ORIGIN + 3 * MS]
    assert sorted(tl["worker"]) == ["m/0", "m/0", "m/1", "m/1"]


def test_max_inflight_holds_requests_and_latency_counts_from_schedule(tmp_path):
    arrival = [0, 1 * MS, 2 * MS, 3 * MS]
    summary, tl = replay_virtual(make_trace(arrival), tmp_path / "run",
                                 NullBackend(servers=8, service_ms=3, service_dist="const"),
                                 max_inflight=1)
    # One slot: each request leaves when the previous one is done.
    assert tl["sent_ns"] == [ORIGIN + k * 3 * MS for k in range(4)]
    assert tl["scheduled_ns"] == [ORIGIN + a for a in arrival]
    latency = np.subtract(tl["done_ns"], tl["scheduled_ns"])
    assert latency.tolist() == [3 * MS, 5 * MS, 7 * MS, 9 * MS]
    check = summary.self_check
    assert check["slot_waits"] == 3
    # Slot waits are the target's doing: generator lag is zero and no warning is raised.
    assert check["send_lag_us"]["max"] == 0.0
    assert check["generator_limited"] is False
    assert check["target_limited"] is True


def test_closed_loop_keeps_n_outstanding_and_ignores_arrivals(tmp_path):
    arrival = [0, 500 * MS, 900 * MS, 950 * MS, 999 * MS]
    summary, tl = replay_virtual(make_trace(arrival), tmp_path / "run",
                                 NullBackend(servers=8, service_ms=4, service_dist="const"),
                                 concurrency=2)
    assert tl["sent_ns"] == [ORIGIN, ORIGIN, ORIGIN + 4 * MS, ORIGIN + 4 * MS, ORIGIN + 8 * MS]
    assert tl["scheduled_ns"] == tl["sent_ns"]
    assert summary.self_check["achieved_rate_ratio"] is None  # no target rate in closed loop


def test_timeout_becomes_a_timeout_row_and_frees_the_slot(tmp_path):
    arrival = [0, 1 * MS]
    summary, tl = replay_virtual(make_trace(arrival), tmp_path / "run",
                                 NullBackend(servers=2, service_ms=10, service_dist="const"),
                                 timeout_s=0.004, max_inflight=1)
    assert tl["status"] == ["timeout", "timeout"]
    assert tl["done_ns"] == [None, None]
    assert tl["sent_ns"] == [ORIGIN, ORIGIN + 4 * MS]  # second left when the first timed out
    assert tl["error"][0] == "no response within 0.004 s"
    assert summary.counts == {"timeout": 2}


class FlakyBackend(NullBackend):
    """Odd request ids raise, ids divisible by 4 report an error outcome."""

    async def submit(self, request):
        if request.request_id % 2:
            raise ValueError(f"boom {request.request_id}")
        if request.request_id % 4 == 0:
            return Outcome(status="error", error="server said no")
        return await super().submit(request)


def test_backend_failures_are_rows_and_the_run_goes_on(tmp_path):
    arrival = [k * MS for k in range(6)]
    summary, tl = replay_virtual(make_trace(arrival), tmp_path / "run",
                                 FlakyBackend(service_ms=1, service_dist="const"))
    assert tl["status"] == ["error", "error", "ok", "error", "error", "error"]
    assert tl["error"][1] == "ValueError: boom 1"
    assert tl["error"][0] == "server said no"
    assert tl["done_ns"][1] == ORIGIN + 1 * MS  # failed at once, at its send time
    assert summary.status == "complete"
    assert summary.counts == {"ok": 1, "error": 5}


def test_warmup_rows_are_kept_and_flagged(tmp_path):
    arrival = [0, 4 * MS, 5 * MS, 9 * MS]
    _, tl = replay_virtual(make_trace(arrival), tmp_path / "run",
                           NullBackend(service_ms=1, service_dist="const"), warmup_s=0.005)
    assert tl["warmup"] == [True, True, False, False]


def test_sigint_cancels_in_flight_drops_due_and_skips_future_rows(tmp_path):
    if os.name != "posix":
        pytest.skip("signals")
    arrival = [k * 10 * MS for k in range(100)]  # 1 s of trace
    run_dir = tmp_path / "run"

    def interrupt_at_205ms(loop):
        loop.call_at((ORIGIN + 205 * MS) / 1e9, os.kill, os.getpid(), signal.SIGINT)

    summary, tl = replay_virtual(make_trace(arrival), run_dir,
                                 NullBackend(servers=1, service_ms=25, service_dist="const"),
                                 before=interrupt_at_205ms, max_inflight=2)
    assert summary.status == "interrupted"
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["status"] == "interrupted"
    assert manifest["interrupted_by"] == "SIGINT"
    # Due by 205 ms: requests 0..20 (21 rows); later ones were never due and get no row.
    assert tl["request_id"] == list(range(21))
    assert manifest["not_due"] == 79
    statuses = dict(zip(tl["request_id"], tl["status"], strict=True))
    # 1 server, 25 ms each, 2 slots: 8 finished by 205 ms; two in flight are cancelled;
    # the rest were due but waiting for a slot: dropped, never sent.
    assert [statuses[k] for k in range(8)] == ["ok"] * 8
    assert [statuses[k] for k in (8, 9)] == ["cancelled", "cancelled"]
    assert {statuses[k] for k in range(10, 21)} == {"dropped"}
    assert all(tl["sent_ns"][k] is None for k in range(10, 21))
    assert summary.counts == {"ok": 8, "cancelled": 2, "dropped": 11}


def test_bad_options_raise_before_anything_is_written(tmp_path):
    run_dir = tmp_path / "run"
    for opts, key in [({"time_scale": 0}, "--time-scale"), ({"concurrency": -1}, "--concurrency"),
                      ({"max_inflight": 2.5}, "--max-inflight"), ({"warmup_s": -1}, "--warmup"),
                      ({"concurrency": 2, "max_inflight": 2}, "--max-inflight")]:
        with pytest.raises(BadInput) as err:
            replay_virtual(make_trace([0]), run_dir, NullBackend(), **opts)
        assert err.value.key == key
    assert not run_dir.exists()


def test_cancelling_replay_async_records_an_interrupted_run(tmp_path):
    import asyncio

    arrival = [k * 10 * MS for k in range(50)]
    run_dir = tmp_path / "run"
    loop = VirtualTimeLoop()

    async def main():
        task = asyncio.ensure_future(replay_async(
            make_trace(arrival), run_dir, NullBackend(service_ms=5, service_dist="const"),
            ReplayOptions(pacer="sleep"), clock=VirtualClock(loop)))
        loop.call_at((ORIGIN + 102 * MS) / 1e9, task.cancel)
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["status"] == "interrupted"
    assert manifest["interrupted_by"] == "cancelled"
    tl = read_timeline(run_dir).to_pydict()
    assert tl["status"] == ["ok"] * 10 + ["cancelled"]  # 100 ms sent at 100, cut at 102


class BrokenStopBackend(NullBackend):
    async def stop(self):
        raise RuntimeError("driver crashed on shutdown")


def test_a_failing_backend_stop_is_a_failed_run_with_the_timeline_kept(tmp_path):
    from traceforge.errors import RunFailure

    run_dir = tmp_path / "run"
    with pytest.raises(RunFailure, match="driver crashed"):
        replay_virtual(make_trace([0, MS]), run_dir,
                       BrokenStopBackend(service_ms=1, service_dist="const"))
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["status"] == "failed"
    assert manifest["error"] == "RuntimeError: driver crashed on shutdown"
    assert read_timeline(run_dir).column("status").to_pylist() == ["ok", "ok"]


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(gaps=st.lists(st.integers(0, 5 * MS), min_size=1, max_size=40),
       servers=st.integers(1, 3), service_ms=st.sampled_from([0.5, 2.0, 7.0]),
       cap=st.one_of(st.none(), st.integers(1, 4)))
def test_schedule_invariants_hold_for_any_trace(tmp_path_factory, gaps, servers, service_ms, cap):
    arrival = np.cumsum(gaps) - gaps[0]
    summary, tl = replay_virtual(make_trace(arrival), tmp_path_factory.mktemp("r") / "run",
                                 NullBackend(servers=servers, service_ms=service_ms,
                                             service_dist="const"), max_inflight=cap)
    n = len(arrival)
    assert tl["request_id"] == list(range(n)) and set(tl["status"]) == {"ok"}
    scheduled, sent = np.array(tl["scheduled_ns"]), np.array(tl["sent_ns"])
    start, done = np.array(tl["service_start_ns"]), np.array(tl["done_ns"])
    assert (scheduled == ORIGIN + arrival).all()
    assert (sent >= scheduled).all() and (start >= sent).all() and (done >= start).all()
    assert (np.diff(sent) >= 0).all()  # sends keep trace order
    assert (np.diff(start) >= 0).all()  # FIFO servers start in arrival order
    if cap is None:
        assert (sent == scheduled).all()  # open loop: exactly on time, whatever the backlog
    else:
        # never more than `cap` outstanding: count sends minus completions at every send
        outstanding = [(sent[:k + 1] <= sent[k]).sum() - (done[:k] <= sent[k]).sum()
                       for k in range(n)]
        assert max(outstanding) <= cap
    assert summary.self_check["send_lag_us"]["max"] == 0.0  # the generator itself is never late


def test_slot_waiters_cancel_in_constant_time_and_pass_a_handed_slot_on():
    """A cancelled slot waiter is skipped when a slot frees, never searched for in the deque
    (O(1) per cancellation); one cancelled right after it was handed a slot passes it on."""
    import asyncio
    from collections import deque

    from traceforge.replay.dispatcher import Dispatcher

    class NoSearch(deque):
        def __contains__(self, item):
            raise AssertionError("searched the waiter deque")

        def remove(self, item):
            raise AssertionError("searched the waiter deque")

    async def main():
        d = Dispatcher.__new__(Dispatcher)
        d._slot_waiters = NoSearch()
        tasks = [asyncio.create_task(d._wait_slot()) for _ in range(4)]
        await asyncio.sleep(0)
        tasks[0].cancel()  # waiting: cancelled, left in the deque
        await asyncio.sleep(0)
        d._wake_slot_waiter(7)  # skips #0, hands the slot to #1 ...
        tasks[1].cancel()  # ... which is cancelled before it resumes: #2 gets it
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert tasks[2].done() and tasks[2].result() == 7
        assert not tasks[3].done()
        d._wake_slot_waiter(9)
        assert await tasks[3] == 9
        for t in tasks[:2]:
            assert t.cancelled()

    asyncio.run(main())


class HugeTokensBackend(NullBackend):
    """Answers ok with a token count beyond int32 (a server's usage.completion_tokens)."""

    async def submit(self, request):
        outcome = await super().submit(request)
        outcome.tokens_out = 2**40 if request.request_id % 2 else 5
        return outcome


def test_an_outcome_the_timeline_cannot_hold_is_an_error_row(tmp_path):
    """OverflowError inside the recorder left the row pending: a "complete" run whose rows
    were all "cancelled: run interrupted", with asyncio tracebacks on stderr."""
    summary, tl = replay_virtual(make_trace([k * MS for k in range(6)]), tmp_path / "run",
                                 HugeTokensBackend(service_ms=1, service_dist="const"))
    assert summary.status == "complete"
    assert tl["status"] == ["ok", "error"] * 3
    assert all("cannot be recorded" in e and "OverflowError" in e for e in tl["error"][1::2])
    assert tl["tokens_out"][0::2] == [5, 5, 5]


def test_http_usage_counts_outside_int32_are_error_answers():
    from traceforge.backends.http import _token_count

    assert [_token_count(v) for v in (0, 7, 2**31 - 1)] == [0, 7, 2**31 - 1]
    assert [_token_count(v) for v in (-5, 2**31, 99999999999, True, "5", 1.0)] == [None] * 6
