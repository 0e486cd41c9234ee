"""How much more load do replay workers sustain? One process vs ``--workers N`` on the null backend.

For a ladder of Poisson rates, replay a ``--seconds`` trace through the null backend (64 servers
of 0.2 ms: the target never limits) once in one process (the default pacer and loop) and once
sharded across ``--workers`` local processes, and find for each the highest rate it *sustains*:
send-lag p99 ≤ 1 ms and achieved ≥ 99.5 % of the target rate (the self-check's own criteria, on
all rows of the run). The ratio of the two is the figure of merit; both come from the same run,
one cell after the other, with the load average printed beside them (on a shared machine the
ratio is what to read, and even it moves with the neighbours). Usage:

    python benchmarks/bench_scale.py [--workers 2] [--seconds 2] [--rates 2000,5000,...]
                                     [--worker-pacer spin|sleep|thread]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_pacing import loadavg, poisson_trace  # noqa: E402

from traceforge.backends import make_backend  # noqa: E402
from traceforge.replay import ReplayOptions, run_replay  # noqa: E402
from traceforge.replay.workers import run_sharded  # noqa: E402

NULL = {"servers": 64, "service_ms": 0.2, "service_dist": "const", "seed": 0}
RATES = (2000, 5000, 10000, 15000, 20000, 30000, 40000, 60000)


def sustained(check: dict) -> bool:
    lag = check.get("send_lag_us") or {}
    return (lag.get("p99", float("inf")) <= 1000
            and (check.get("achieved_rate_ratio") or 0) >= 0.995)


def cell(rate: int, seconds: float, workers: int, worker_pacer: str = "spin") -> dict:
    trace = poisson_trace(rate, seconds)
    with tempfile.TemporaryDirectory() as tmp:
        if workers == 1:
            summary = run_replay(trace, Path(tmp) / "run", make_backend("null", NULL),
                                 ReplayOptions())
        else:
            summary = run_sharded(trace, Path(tmp) / "run", "null", NULL,
                                  ReplayOptions(pacer=worker_pacer), workers=workers)
    check = summary.self_check
    return {"rate": rate, "workers": workers, "loadavg": loadavg(),
            "p50_us": (check.get("send_lag_us") or {}).get("p50"),
            "p99_us": (check.get("send_lag_us") or {}).get("p99"),
            "achieved": check.get("achieved_rate_ratio"), "sustained": sustained(check)}


def main(workers: int = 2, seconds: float = 2.0, rates: tuple[int, ...] = RATES,
         worker_pacer: str = "spin") -> dict:
    cells = []
    best = {1: None, workers: None}
    print(f"{'workers':>7} {'rate':>6} {'lag p50 µs':>10} {'lag p99 µs':>10} {'achieved':>9} "
          f"{'ok':>3}  load average")
    for rate in rates:
        for n in (1, workers):
            c = cell(rate, seconds, n, worker_pacer)
            cells.append(c)
            if c["sustained"]:
                best[n] = rate
            achieved = f"{c['achieved']:.2%}" if c["achieved"] else "-"
            print(f"{n:>7} {rate:>6} {c['p50_us']:>10.1f} {c['p99_us']:>10.1f} {achieved:>9} "
                  f"{'yes' if c['sustained'] else 'no':>3}  {c['loadavg']}", flush=True)
    ratio = (best[workers] / best[1]) if best[1] and best[workers] else None
    print(f"highest sustained rate (lag p99 <= 1 ms, achieved >= 99.5 %): one process "
          f"{best[1]}, {workers} workers {best[workers]}; ratio "
          + (f"{ratio:.2f}" if ratio else "n/a") + f" (load average now {loadavg()})")
    return {"workers": workers, "worker_pacer": worker_pacer, "seconds_per_cell": seconds,
            "cells": cells,
            "max_rate_one_process": best[1], "max_rate_workers": best[workers],
            "ratio": ratio}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rates", default=",".join(map(str, RATES)))
    parser.add_argument("--worker-pacer", default="spin", choices=("spin", "sleep", "thread"),
                        help="the sharded runs' pacer (one process always uses the default)")
    args = parser.parse_args()
    main(args.workers, args.seconds, tuple(int(r) for r in args.rates.split(",")),
         args.worker_pacer)
