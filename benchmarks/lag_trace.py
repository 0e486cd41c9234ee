"""What delays sends inside the replay process? A lag trace: every request's send lag next to the
windows in which the timeline flusher wrote a part and in which Python's GC ran.

For each rate, the same Poisson schedule (null backend) is replayed alternately with the
replay's runtime settings *off* (automatic GC, Python's 5 ms GIL switch interval, the flusher on
the dispatcher's core — what the replay did before) and *on* (the defaults: GC only at safe
points, a 100 µs switch interval, the flusher on the other cores), ``--reps`` times each. A
request is attributed to a window if its send was pending while the window was open
(scheduled ≤ window end and sent ≥ window start). The figure that isolates a cause from the
machine's own noise is the **enrichment**: (share of late requests inside that kind of window) /
(share of the schedule's time covered by it). 1 = late no more often than anywhere else; ≫ 1 =
that window delays sends. Usage:

    python benchmarks/lag_trace.py [--rates 5000,20000] [--seconds 3] [--reps 3] [--late-us 50]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_pacing import loadavg, poisson_trace  # noqa: E402

from traceforge.backends import make_backend  # noqa: E402
from traceforge.record import recorder as recorder_module  # noqa: E402
from traceforge.record.writer import read_timeline  # noqa: E402
from traceforge.replay import ReplayOptions, run_replay  # noqa: E402

NULL = {"servers": 64, "service_ms": 0.2, "service_dist": "const", "seed": 0}
EVENTS: list[tuple[str, int, int]] = []  # (kind, start, end) on CLOCK_MONOTONIC


def _instrument() -> None:
    flush = recorder_module.TimelineRecorder.flush

    def timed_flush(self):
        t = time.monotonic_ns()
        k = flush(self)
        EVENTS.append(("flush", t, time.monotonic_ns()))
        return k

    recorder_module.TimelineRecorder.flush = timed_flush
    started = {}

    def on_gc(phase, info) -> None:
        if phase == "start":
            started["t"] = time.monotonic_ns()
        else:
            EVENTS.append(("gc", started.get("t", 0), time.monotonic_ns()))

    gc.callbacks.append(on_gc)


def one(rate: int, seconds: float, fixed: bool, late_ns: int, other_cpus: set[int] | None):
    EVENTS.clear()
    opts = ReplayOptions(gc_safe_points=fixed, switch_interval_us=100.0 if fixed else None,
                         flusher_cpus=other_cpus if fixed else None)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        summary = run_replay(poisson_trace(rate, seconds), run, make_backend("null", NULL), opts)
        t0 = json.loads((run / "run.json").read_text())["run_clock"]["t0_monotonic_ns"]
        tl = read_timeline(run)
    sched = tl.column("scheduled_ns").to_numpy() + t0
    sent = tl.column("sent_ns").to_numpy() + t0
    lag = sent - sched
    span = float(sched.max() - sched.min())
    late = lag > late_ns
    out = {"rate": rate, "fixed": fixed, "loadavg": loadavg(),
           "p50_us": float(np.percentile(lag, 50) / 1e3),
           "p99_us": float(np.percentile(lag, 99) / 1e3), "late": int(late.sum()),
           "gc_passes_in_schedule": 0, "runtime": summary.self_check.get("runtime")}
    for kind in ("flush", "gc"):
        windows = [(a, b) for k, a, b in EVENTS if k == kind and b >= sched.min()
                   and a <= sched.max()]
        inside = np.zeros(len(lag), bool)
        for a, b in windows:
            inside |= (sched <= b) & (sent >= a)
        covered = sum(min(b, sched.max()) - max(a, sched.min()) for a, b in windows) / span
        share = inside[late].mean() if late.any() else 0.0
        out[kind] = {"windows": len(windows), "time_share": round(covered, 4),
                     "late_share": round(float(share), 4),
                     "enrichment": round(float(share / covered), 1) if covered > 0 else None,
                     "max_ms": round(max((b - a for a, b in windows), default=0) / 1e6, 2)}
    out["gc_passes_in_schedule"] = out["gc"]["windows"]
    return out


def main(rates=(5000, 20000), seconds: float = 3.0, reps: int = 3, late_us: float = 50.0):
    _instrument()
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    other = None
    if len(cpus) >= 2:
        os.sched_setaffinity(0, {cpus[0]})  # the dispatcher's core, as in bench_pacing
        other = set(cpus[1:])
    rows = []
    print(f"{'rate':>6} {'settings':8} {'p50 µs':>7} {'p99 µs':>8} {'late':>5} "
          f"{'flush: n time% late% enrich max ms':>34} {'gc: n late% enrich':>19}  load")
    for rate in rates:
        for _ in range(reps):
            for fixed in (False, True):
                r = one(rate, seconds, fixed, int(late_us * 1e3), other)
                rows.append(r)
                f, g = r["flush"], r["gc"]
                print(f"{rate:>6} {'on' if fixed else 'off':8} {r['p50_us']:>7.1f} "
                      f"{r['p99_us']:>8.1f} {r['late']:>5} "
                      f"{f['windows']:>6} {f['time_share']:>6.1%} {f['late_share']:>6.1%} "
                      f"{f['enrichment'] or 0:>6.1f} {f['max_ms']:>7.2f} "
                      f"{g['windows']:>5} {g['late_share']:>6.1%} {g['enrichment'] or 0:>6.1f}"
                      f"  {r['loadavg']}", flush=True)
    return {"late_us": late_us, "rows": rows}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="5000,20000")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--late-us", type=float, default=50.0)
    a = parser.parse_args()
    main(tuple(int(r) for r in a.rates.split(",")), a.seconds, a.reps, a.late_us)
