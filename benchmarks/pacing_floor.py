"""The floor of any pacer on this machine: a bare busy-wait loop that reaches Poisson send times
and does nothing else (no event loop, no recording), pinned to the first CPU. Its lateness is the
machine's own (VM stalls, interrupts); a pacer cannot be more exact than this here. Usage:

    python benchmarks/pacing_floor.py [--rate 5000] [--seconds 2] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def one(rate: float, seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    offsets = np.cumsum(rng.exponential(1e9 / rate, int(rate * seconds))).astype(np.int64)
    now = time.monotonic_ns
    t0 = now() + 10_000_000
    late = []
    for off in offsets.tolist():
        target = t0 + off
        while now() < target:
            pass
        late.append(now() - target)
    return np.asarray(late) / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    for k in range(args.runs):
        us = one(args.rate, args.seconds, k + 1)
        print(f"rate {args.rate:.0f} run {k + 1}: lateness p50 {np.percentile(us, 50):.1f} "
              f"p99 {np.percentile(us, 99):.1f} max {us.max():.0f} µs "
              f"(load average {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
