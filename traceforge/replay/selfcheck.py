"""The generator's self-check: did requests leave when the trace said, and who limited the run?

Send lag is measured against the time a request was *ready* to go: its scheduled time, or — when
it had to wait for an in-flight slot (``--max-inflight`` / ``--concurrency``) — the moment a slot
freed. Waiting for a slot is the target's doing (it counts in latency, not in send lag); only what
is left is the generator's own delay.

A sleeping dispatcher can also be woken late by the machine itself: time a timed wait spent past its
timer while blocked in the kernel (replay/loop.py records those wake-ups) is the OS's or the
hypervisor's, not the generator's. :func:`os_delay_ns` finds, per request, how much of its send lag
fell inside such late wake-ups; when that alone takes send lag p99 over the limit, the check says
so (``late_wakeup_limited``) with the numbers, instead of blaming the generator.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

LAG_P99_LIMIT_US = 1000.0  # a generator later than this at p99 distorts ms-scale latencies
ACHIEVED_RATIO_LIMIT = 0.99


def os_delay_ns(ready_ns: np.ndarray, sent_ns: np.ndarray, sent_mask: np.ndarray,
                late_wakeups: np.ndarray, busy: np.ndarray | None = None) -> np.ndarray:
    """Per row, the nanoseconds of ``[ready, sent]`` that fell inside a late wake-up: after a
    timer was due and before the blocked dispatcher got back (``late_wakeups``: (due, back)
    pairs on the run clock). Wake-ups that overlap a ``busy`` window (the timeline flusher
    writing a part: the GIL may have been the wait) are not counted. Rows not sent: 0."""
    out = np.zeros(len(sent_ns), np.int64)
    if late_wakeups is None or len(late_wakeups) == 0:
        return out
    w = np.asarray(late_wakeups, np.int64)[:, :2]
    w = w[np.argsort(w[:, 0], kind="stable")]
    if busy is not None and len(busy):
        b = np.asarray(busy, np.int64).reshape(-1, 2)
        b = b[np.argsort(b[:, 0], kind="stable")]
        # a wake-up overlaps a busy window if some window starts before it ends and ends after
        # it starts; busy windows do not overlap each other (one flusher), so ends are sorted too
        first_end_after = np.searchsorted(b[:, 1], w[:, 0], side="right")
        hit = (first_end_after < len(b)) & (
            b[np.minimum(first_end_after, len(b) - 1), 0] < w[:, 1])
        w = w[~hit]
        if not len(w):
            return out
    # The windows come from one thread's successive waits, so they do not overlap: the time
    # inside them before t is a cumulative measure F(t), and a row's share is F(sent) - F(ready).
    starts, lengths = w[:, 0], np.maximum(w[:, 1] - w[:, 0], 0)
    before = np.concatenate([[0], np.cumsum(lengths)])

    def measure(t: np.ndarray) -> np.ndarray:
        k = np.searchsorted(starts, t, side="right") - 1
        inside = np.where(k >= 0, np.clip(t - starts[np.maximum(k, 0)], 0,
                                          lengths[np.maximum(k, 0)]), 0)
        return before[k + 1] - np.where(k >= 0, lengths[np.maximum(k, 0)], 0) + inside

    rows = np.flatnonzero(sent_mask & (sent_ns > ready_ns))
    out[rows] = measure(sent_ns[rows]) - measure(ready_ns[rows])
    return out


def cpu_wait_share_ns(ready_ns: np.ndarray, sent_ns: np.ndarray, sent_mask: np.ndarray,
                      cpu_waits: np.ndarray) -> np.ndarray:
    """Per row, the CPU wait (schedstat: runnable, not running) the pacer measured in the wait
    that released it: the last recorded wait ending at or before the send and after the row
    was ready (``cpu_waits``: (start, end, waited) on the run clock, from successive waits of
    one pacer, so sorted and disjoint), capped by the part of that wait inside the row's lag."""
    out = np.zeros(len(sent_ns), np.int64)
    if cpu_waits is None or len(cpu_waits) == 0:
        return out
    w = np.asarray(cpu_waits, np.int64).reshape(-1, 3)
    w = w[np.argsort(w[:, 1], kind="stable")]
    rows = np.flatnonzero(sent_mask & (sent_ns > ready_ns))
    k = np.searchsorted(w[:, 1], sent_ns[rows], side="right") - 1
    hit = k >= 0
    rows, k = rows[hit], k[hit]
    start, end, waited = w[k, 0], w[k, 1], w[k, 2]
    inside = end - np.maximum(start, ready_ns[rows])
    ok = inside > 0
    out[rows[ok]] = np.minimum(waited[ok], inside[ok])
    return out


def wake_stats(timed_waits: int, late_wakeups: np.ndarray) -> dict[str, Any]:
    """run.json's summary of the dispatcher's late wake-ups (replay/loop.py)."""
    w = np.asarray(late_wakeups, np.int64).reshape(-1, 3)
    late_us = (w[:, 1] - w[:, 0]) / 1e3
    over = late_us > 1000
    return {"timed_waits": int(timed_waits), "late_over_100us": int(late_us.size),
            "late_over_1ms": int(np.count_nonzero(over)),
            # of those, the ones that spent most of the lateness runnable, waiting for a CPU
            # another task held (schedstat): this machine's load, not the wake-up path
            "late_over_1ms_cpu_busy": int(np.count_nonzero(over & (w[:, 2] * 2 > w[:, 1] - w[:, 0]))),
            "max_late_us": round(float(late_us.max()), 1) if late_us.size else 0.0}


def merge_wake_stats(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary of several dispatchers' :func:`wake_stats` (``--workers``): counts add up,
    the longest late wake-up is the longest of all."""
    out = {k: sum(x.get(k, 0) for x in stats) for k in (
        "timed_waits", "late_over_100us", "late_over_1ms", "late_over_1ms_cpu_busy",
        "late_pacer_waits_cpu_busy")}
    out["max_late_us"] = max((x["max_late_us"] for x in stats), default=0.0)
    return out


def self_check(
    *,
    scheduled_ns: np.ndarray,
    sent_ns: np.ndarray,
    ready_ns: np.ndarray,
    sent_mask: np.ndarray,
    slot_waits: int,
    closed_loop: bool,
    pacer: str,
    event_loop: str,
    os_delay: np.ndarray | None = None,
    wakeups: dict[str, Any] | None = None,
    cpu_qos: str | None = None,
    cpu_wait_ms: float | None = None,
) -> dict[str, Any]:
    sent = sent_ns[sent_mask]
    lag_us = (sent - ready_ns[sent_mask]) / 1e3
    n = int(sent.size)
    out: dict[str, Any] = {
        "pacer": pacer,
        "event_loop": event_loop,
        "requests_sent": n,
        "send_lag_us": None,
        "achieved_rate_rps": None,
        "target_rate_rps": None,
        "achieved_rate_ratio": None,
        "slot_waits": int(slot_waits),
        "generator_limited": False,
        "warning": None,
    }
    if n == 0:
        return out
    p50, p99 = np.percentile(lag_us, [50, 99])
    out["send_lag_us"] = {"p50": round(float(p50), 2), "p99": round(float(p99), 2),
                          "max": round(float(lag_us.max()), 2)}
    sched_span = 0.0
    schedule_s = None  # the sends' span (s): limiting_cause's denominator
    if n >= 2:
        sent_span = float(sent.max() - sent.min())
        schedule_s = sent_span / 1e9
        if sent_span > 0:
            out["achieved_rate_rps"] = round((n - 1) / sent_span * 1e9, 3)
        if not closed_loop:
            sched = scheduled_ns[sent_mask]
            sched_span = float(sched.max() - sched.min())
            if sched_span > 0:
                out["target_rate_rps"] = round((n - 1) / sched_span * 1e9, 3)
            if sent_span > 0 and sched_span > 0:
                out["achieved_rate_ratio"] = round(sched_span / sent_span, 5)
    if wakeups is not None:
        out["late_wakeups"] = wakeups
    own_p99 = p99
    if os_delay is not None:
        own_us = np.maximum(lag_us - os_delay[sent_mask] / 1e3, 0.0)
        o50, own_p99 = np.percentile(own_us, [50, 99])
        out["send_lag_own_us"] = {"p50": round(float(o50), 2), "p99": round(float(own_p99), 2),
                                  "max": round(float(own_us.max()), 2)}
    problems = []
    if p99 > LAG_P99_LIMIT_US and own_p99 > LAG_P99_LIMIT_US:
        problems.append(f"send lag p99 {p99:.0f} µs > {LAG_P99_LIMIT_US:.0f} µs")
    elif p99 > LAG_P99_LIMIT_US:
        # The machine, not the generator: the lag over the limit is time the dispatcher spent
        # blocked in the kernel past its timers. Said once, with the numbers; not a red flag.
        w = wakeups or {}
        n_late, n_busy = w.get("late_over_1ms", 0), w.get("late_over_1ms_cpu_busy", 0)
        n_paced = w.get("late_pacer_waits_cpu_busy", 0)
        parts = []
        if n_late:
            how = ("mostly runnable but not yet running (waiting for a CPU)" if n_busy * 2 > n_late
                   else "not runnable: the wake-up itself came late (idle exit; on a VM, the "
                        "hypervisor)")
            parts.append(f"{n_late} of {w.get('timed_waits', 0)} timed waits ended over 1 ms "
                         f"after their timer (longest {w.get('max_late_us', 0) / 1e3:.1f} ms), "
                         f"{how}")
        if n_paced:
            parts.append(f"{n_paced} paced waits ended late after the dispatcher had been "
                         "runnable but not running (schedstat)")
        out["late_wakeup_limited"] = True
        out["warning"] = (
            f"send lag p99 {p99:.0f} µs > {LAG_P99_LIMIT_US:.0f} µs from the machine, not "
            "from the generator's work: the dispatcher was ready but not running — "
            + "; ".join(parts or ["late wake-ups"])
            + f". Without that delay send lag p99 is {own_p99:.0f} µs. Latencies (done − "
            "scheduled) include it"
            + (f"; CPU latency QoS {cpu_qos}" if cpu_qos else ""))
    ratio = out["achieved_rate_ratio"]
    # Over a schedule shorter than this, falling 1 % short is less lateness than the send-lag
    # limit already allows (a 2-row trace 1 ns apart "achieved 0.0 %" of a 1e9 req/s target):
    # the lag check alone judges it.
    judged = sched_span * (1 - ACHIEVED_RATIO_LIMIT) > LAG_P99_LIMIT_US * 1e3
    if ratio is not None and ratio < ACHIEVED_RATIO_LIMIT:
        if slot_waits:
            # The in-flight cap held requests back: that is the target saturating, not us.
            out["target_limited"] = True
        elif judged:
            problems.append(f"achieved {ratio:.1%} of the target rate")
    if problems:
        out["generator_limited"] = True
        out["problems"] = problems
        out["cause"] = limiting_cause(cpu_wait_ms, schedule_s)
        out["warning"] = ("the load generator, not the target, limited this run ("
                          + "; ".join(problems) + "): " + out["cause"] + "; latencies include "
                          "generator delay; lower the rate (--rate, --time-scale), free CPU, or "
                          "try --pacer")
    return out


def limiting_cause(cpu_wait_ms: float | None = None, schedule_s: float | None = None) -> str:
    """What most likely held the pacer back: the dispatcher's measured wait for a CPU
    (schedstat run delay over the schedule) when it was ≥ 1 % of the schedule, else the
    machine's state at the end of the run: an oversubscribed CPU (the pacer waited for a core)
    or, failing that, the generator's own per-request work."""
    try:
        load = os.getloadavg()[0]
        cpus = len(os.sched_getaffinity(0))
    except (OSError, AttributeError):
        return "cause unknown (no load average on this platform)"
    if cpu_wait_ms is not None and schedule_s and cpu_wait_ms >= 10 * schedule_s:
        return (f"other tasks held the dispatcher's CPU: it spent {cpu_wait_ms:.0f} ms "
                f"({cpu_wait_ms / (10 * schedule_s):.1f} % of the schedule) runnable but "
                f"waiting for a core (load average {load:.1f} on {cpus} cores)")
    if load > cpus:
        return (f"the CPU was oversubscribed (load average {load:.1f} on {cpus} cores, any "
                "worker processes of this run included), so the pacer waited for a core")
    return (f"the CPU was not oversubscribed (load average {load:.1f} on {cpus} cores), so the "
            "generator's own work per request (event loop, backend client) was the limit")


def format_self_check(check: dict[str, Any]) -> str:
    lag = check.get("send_lag_us")
    if not lag:
        return "self-check: no request was sent"
    line = (f"self-check: send lag p50 {lag['p50']:.1f} µs, p99 {lag['p99']:.1f} µs, "
            f"max {lag['max']:.1f} µs")
    if check.get("achieved_rate_ratio") is not None:
        line += (f"; achieved {check['achieved_rate_rps']:.1f} of {check['target_rate_rps']:.1f}"
                 f" req/s ({check['achieved_rate_ratio']:.2%})")
    elif check.get("achieved_rate_rps") is not None:
        line += f"; achieved {check['achieved_rate_rps']:.1f} req/s (closed loop)"
    if check.get("slot_waits"):
        line += f"; {check['slot_waits']} requests waited for an in-flight slot"
    if check.get("warning"):
        # the machine's delay (late wake-ups) is a note; the generator's own limit a warning
        label = "NOTE" if check.get("late_wakeup_limited") and not check.get(
            "generator_limited") else "WARNING"
        line += f"\n{label}: {check['warning']}"
    return line
