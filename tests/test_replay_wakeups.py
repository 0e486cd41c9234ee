"""Telling the machine's delay from the generator's: late wake-ups of the precise loop, the part
of each request's send lag they explain, the self-check verdict that follows, the dispatcher's
measured wait for a CPU, and the PM QoS CPU latency request held for the schedule."""

from __future__ import annotations

import json
import os
import selectors
import struct
import time

import numpy as np
import pytest
from replay_helpers import make_trace

from traceforge.backends.null import NullBackend
from traceforge.replay import ReplayOptions, run_replay
from traceforge.replay import loop as loop_mod
from traceforge.replay.cpuqos import CpuLatencyRequest
from traceforge.replay.selfcheck import (
    LAG_P99_LIMIT_US,
    merge_wake_stats,
    os_delay_ns,
    self_check,
    wake_stats,
)

MS = 1_000_000
US = 1_000
PRECISE_LOOP = hasattr(selectors, "EpollSelector") and loop_mod._LIBC is not None


def test_os_delay_counts_only_the_overlap_after_the_timer():
    ready = np.array([10 * MS, 20 * MS, 30 * MS, 40 * MS], np.int64)
    sent = ready + np.array([3 * MS, 50 * US, 2 * MS, 0], np.int64)
    mask = np.array([True, True, True, False])
    # one late wake-up covering [9.5 ms, 12.5 ms], one [31 ms, 31.5 ms]
    late = np.array([[int(9.5 * MS), int(12.5 * MS), 0], [31 * MS, int(31.5 * MS), 0]])
    out = os_delay_ns(ready, sent, mask, late)
    assert out.tolist() == [int(2.5 * MS), 0, int(0.5 * MS), 0]


def test_merged_wake_stats_add_counts_and_keep_the_longest():
    a = wake_stats(100, np.array([[0, 2 * MS, 2 * MS], [0, 200 * US, 0]]))
    b = {**wake_stats(50, np.array([[0, 3 * MS, 0]])), "late_pacer_waits_cpu_busy": 4}
    merged = merge_wake_stats([a, b])
    assert merged == {"timed_waits": 150, "late_over_100us": 3, "late_over_1ms": 2,
                      "late_over_1ms_cpu_busy": 1, "late_pacer_waits_cpu_busy": 4,
                      "max_late_us": 3000.0}


def test_os_delay_ignores_wakeups_inside_a_flush():
    ready = np.array([10 * MS], np.int64)
    sent = np.array([13 * MS], np.int64)
    late = np.array([[10 * MS, 12 * MS, 0]])
    busy = np.array([[11 * MS, 11 * MS + 10]])  # the flusher held the GIL meanwhile, maybe
    assert os_delay_ns(ready, sent, np.array([True]), late, busy).tolist() == [0]
    far = np.array([[20 * MS, 21 * MS]])
    assert os_delay_ns(ready, sent, np.array([True]), late, far).tolist() == [2 * MS]


def _check(lag_us, os_us, late=None):
    n = len(lag_us)
    sched = np.arange(n, dtype=np.int64) * MS
    sent = sched + (np.asarray(lag_us) * US).astype(np.int64)
    late = late if late is not None else np.array([[0, 2 * MS, 0]] * 5)
    return self_check(scheduled_ns=sched, sent_ns=sent, ready_ns=sched,
                      sent_mask=np.ones(n, bool), slot_waits=0, closed_loop=False,
                      pacer="spin", event_loop="asyncio+timerfd",
                      os_delay=(np.asarray(os_us) * US).astype(np.int64),
                      wakeups=wake_stats(1000, late), cpu_qos="held: 0 µs")


def test_lag_explained_by_late_wakeups_is_not_blamed_on_the_generator():
    lag = np.full(1000, 50.0)
    lag[:30] = 3000.0  # 3 % of sends 3 ms late, p99 well over the limit ...
    os_part = np.zeros(1000)
    os_part[:30] = 2980.0  # ... and the kernel kept the sleeping dispatcher for all of it
    c = _check(lag, os_part)
    assert c["send_lag_us"]["p99"] > LAG_P99_LIMIT_US
    assert c["send_lag_own_us"]["p99"] < 100
    assert not c["generator_limited"] and c["late_wakeup_limited"]
    assert "from the machine" in c["warning"] and "5 of 1000 timed waits" in c["warning"]
    assert "held: 0 µs" in c["warning"]


def test_lag_the_wakeups_do_not_explain_still_flags_the_generator():
    lag = np.full(1000, 50.0)
    lag[:30] = 3000.0
    os_part = np.zeros(1000)
    os_part[:30] = 500.0  # only a sixth of it was the machine's
    c = _check(lag, os_part)
    assert c["generator_limited"] and not c.get("late_wakeup_limited")
    assert c["send_lag_own_us"]["p99"] > LAG_P99_LIMIT_US


def test_wake_stats_split_cpu_busy_from_late_delivery():
    late = np.array([[0, 2 * MS, 1_500_000],   # waited 1.5 of 2 ms for a CPU
                     [0, 3 * MS, 0],           # not runnable: the wake-up came late
                     [0, 200 * US, 0]])        # under 1 ms
    s = wake_stats(50, late)
    assert s == {"timed_waits": 50, "late_over_100us": 3, "late_over_1ms": 2,
                 "late_over_1ms_cpu_busy": 1, "max_late_us": 3000.0}


@pytest.mark.skipif(not PRECISE_LOOP, reason="the precise loop needs Linux epoll + timerfd")
def test_selector_records_a_wait_that_returned_late(monkeypatch):
    sel = loop_mod.TimerfdEpollSelector()
    try:
        ticks = iter([1_000 * MS, 1_000 * MS + 5 * MS])  # due at +1 ms, back at +5 ms
        monkeypatch.setattr(loop_mod.time, "monotonic_ns", lambda: next(ticks))
        sel.select(0.001)
        assert sel.timed_waits == 1
        (due, back, queued), = sel.late_wakeups
        assert (due, back) == (1_001 * MS, 1_005 * MS) and queued >= 0
    finally:
        sel.close()


def test_cpu_qos_request_writes_zero_and_releases(tmp_path):
    dev = tmp_path / "cpu_dma_latency"
    dev.write_bytes(b"")
    req = CpuLatencyRequest(0, path=str(dev))
    assert req.held and req.state.startswith("held: 0 µs")
    assert dev.read_bytes() == struct.pack("i", 0)
    req.release()
    assert not req.held
    req.release()  # twice is harmless


def test_cpu_qos_request_says_why_it_was_not_held(tmp_path):
    req = CpuLatencyRequest(0, path=str(tmp_path / "missing" / "cpu_dma_latency"))
    assert not req.held and req.state.startswith("not held (")
    req.release()


def test_replay_records_qos_wait_and_wakeups(tmp_path):
    t0 = time.monotonic()
    summary = run_replay(make_trace(np.arange(40) * 2 * MS), tmp_path / "run",
                         NullBackend(servers=4, service_ms=0.5, service_dist="const"),
                         ReplayOptions())
    elapsed_ms = (time.monotonic() - t0) * 1e3
    check = json.loads((tmp_path / "run" / "run.json").read_text())["self_check"]
    assert check == json.loads(json.dumps(summary.self_check))
    assert check["runtime"]["cpu_qos"].startswith(("held", "not held"))
    if os.path.exists("/proc/thread-self/schedstat"):
        # a bound, not a speed claim: the thread cannot have waited longer than the run took
        # (a unit slip, µs or ns for ms, would break it)
        assert 0 <= check["runtime"]["dispatcher_cpu_wait_ms"] <= elapsed_ms
    # where the precise loop can run (Linux: epoll + timerfd through libc) it must be the one used
    assert (check["event_loop"] == "asyncio+timerfd") == PRECISE_LOOP, check["event_loop"]
    if PRECISE_LOOP:
        # it slept in the 2 ms gaps (margin 1.5 ms); a loaded machine may skip some sleeps
        assert check["late_wakeups"]["timed_waits"] >= 5
        assert check["send_lag_own_us"]["p99"] <= check["send_lag_us"]["p99"]


def test_no_cpu_qos_is_recorded_as_off(tmp_path):
    run_replay(make_trace(np.arange(5) * MS), tmp_path / "run", NullBackend(),
               ReplayOptions(cpu_qos=False))
    check = json.loads((tmp_path / "run" / "run.json").read_text())["self_check"]
    assert check["runtime"]["cpu_qos"] == "off (--no-cpu-qos)"


def test_os_delay_matches_a_brute_force_overlap():
    rng = np.random.default_rng(7)
    edges = np.sort(rng.choice(10**7, 400, replace=False)).reshape(-1, 2)  # 200 disjoint windows
    late = np.c_[edges, np.zeros(len(edges), np.int64)]
    ready = rng.integers(0, 10**7, 3000)
    sent = ready + rng.integers(0, 200_000, 3000)
    mask = rng.random(3000) < 0.9
    got = os_delay_ns(ready, sent, mask, late)
    want = [sum(max(0, min(b, e) - max(a, s)) for s, e in edges) if m and b > a else 0
            for a, b, m in zip(ready.tolist(), sent.tolist(), mask.tolist(), strict=True)]
    assert got.tolist() == want


def test_cpu_wait_share_takes_the_wait_that_released_the_row():
    from traceforge.replay.selfcheck import cpu_wait_share_ns

    # pacer waits (start, end, CPU wait): one ended late after 2 ms queued, one after 0.3 ms
    waits = np.array([[5 * MS, 10 * MS, 2 * MS], [20 * MS, 21 * MS, 300 * US]])
    ready = np.array([9 * MS, 4 * MS, 20 * MS + 900 * US, 30 * MS], np.int64)
    sent = np.array([10 * MS + 20 * US, 10 * MS + 30 * US, 21 * MS + 10 * US, 30 * MS + 10 * US])
    got = cpu_wait_share_ns(ready, sent, np.ones(4, bool), waits)
    # row 0: capped by its 1 ms inside the wait; row 1: the whole 2 ms; row 2: capped at
    # 0.1 ms inside; row 3: released by no late wait
    assert got.tolist() == [1 * MS, 2 * MS, 100 * US, 0]


def test_spin_pacer_records_a_late_wait_and_its_cpu_wait():
    import asyncio

    from traceforge.replay.pacing import SpinPacer

    class Clock:
        t = 0

        def now(self):
            Clock.t += 150 * US  # each look at the clock: 150 µs later (a stalled machine)
            return Clock.t

    delays = iter([1000, 1000 + 400 * US])  # run delay before / after: 0.4 ms queued
    pacer = SpinPacer(Clock(), margin_ns=10 * MS, probe=lambda: next(delays))
    asyncio.run(pacer.wait_until(500 * US))
    (start, end, waited), = pacer.cpu_waits
    assert waited == 400 * US and end - 500 * US > SpinPacer.LATE_NS and start < 500 * US
