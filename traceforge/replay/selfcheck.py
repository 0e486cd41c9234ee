"""The generator's self-check: did requests leave when the trace said, and who limited the run?

Send lag is measured against the time a request was *ready* to go: its scheduled time, or — when
it had to wait for an in-flight slot (``--max-inflight`` / ``--concurrency``) — the moment a slot
freed. Waiting for a slot is the target's doing (it counts in latency, not in send lag); only what
is left is the generator's own delay.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

LAG_P99_LIMIT_US = 1000.0  # a generator later than this at p99 distorts ms-scale latencies
ACHIEVED_RATIO_LIMIT = 0.99


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
    if n >= 2:
        sent_span = float(sent.max() - sent.min())
        if sent_span > 0:
            out["achieved_rate_rps"] = round((n - 1) / sent_span * 1e9, 3)
        if not closed_loop:
            sched = scheduled_ns[sent_mask]
            sched_span = float(sched.max() - sched.min())
            if sched_span > 0:
                out["target_rate_rps"] = round((n - 1) / sched_span * 1e9, 3)
            if sent_span > 0 and sched_span > 0:
                out["achieved_rate_ratio"] = round(sched_span / sent_span, 5)
    problems = []
    if p99 > LAG_P99_LIMIT_US:
        problems.append(f"send lag p99 {p99:.0f} µs > {LAG_P99_LIMIT_US:.0f} µs")
    ratio = out["achieved_rate_ratio"]
    if ratio is not None and ratio < ACHIEVED_RATIO_LIMIT:
        if slot_waits:
            # The in-flight cap held requests back: that is the target saturating, not us.
            out["target_limited"] = True
        else:
            problems.append(f"achieved {ratio:.1%} of the target rate")
    if problems:
        out["generator_limited"] = True
        out["problems"] = problems
        out["cause"] = limiting_cause()
        out["warning"] = ("the load generator, not the target, limited this run ("
                          + "; ".join(problems) + "): " + out["cause"] + "; latencies include "
                          "generator delay; lower the rate (--rate, --time-scale), free CPU, or "
                          "try --pacer")
    return out


def limiting_cause() -> str:
    """What most likely held the pacer back, from the machine's state at the end of the run:
    an oversubscribed CPU (the pacer waited for a core) or, failing that, the generator's own
    per-request work."""
    try:
        load = os.getloadavg()[0]
        cpus = len(os.sched_getaffinity(0))
    except (OSError, AttributeError):
        return "cause unknown (no load average on this platform)"
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
        line += f"\nWARNING: {check['warning']}"
    return line
