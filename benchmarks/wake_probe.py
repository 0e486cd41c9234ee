"""How late does this machine wake a sleeping thread? Outside traceforge: no event loop, no replay.

Three probes, each without and then with a 0 µs PM QoS CPU latency request (``/dev/cpu_dma_latency``
held open, as a replay holds it during its schedule; skipped where the device is not writable),
alternating ``--reps`` times:

- ``sleep``: ``time.sleep`` of exponential length (mean ``--mean-ms``), lateness past the target;
- ``pingpong``: one thread sets an Event after a 0.5 ms sleep, another answers; the round trip;
- ``spin`` (once, no QoS): a busy loop reading the clock for ``--spin-s`` s; gaps over 50 µs are
  the machine taking the CPU away from a running thread.

The docs (replay.md "Late wake-ups", results/serving-h200.md) quote its output. Usage:

    python benchmarks/wake_probe.py [--n 2000] [--mean-ms 10] [--reps 2] [--spin-s 10]
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import threading
import time

import numpy as np


def pct(a: list[float]) -> dict:
    v = np.asarray(a)
    return {"p50_us": round(float(np.percentile(v, 50)), 1),
            "p99_us": round(float(np.percentile(v, 99)), 1),
            "p999_us": round(float(np.percentile(v, 99.9)), 1),
            "over_1ms_pct": round(float((v > 1000).mean() * 100), 2)}


def sleeps(n: int, mean_ms: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    late = []
    for d in rng.exponential(mean_ms / 1e3, n).tolist():
        target = time.monotonic_ns() + int(d * 1e9)
        time.sleep(d)
        late.append((time.monotonic_ns() - target) / 1e3)
    return pct(late)


def pingpong(n: int) -> dict:
    a, b = threading.Event(), threading.Event()
    rtt = []

    def other() -> None:
        for _ in range(n):
            a.wait()
            a.clear()
            b.set()

    t = threading.Thread(target=other)
    t.start()
    for _ in range(n):
        time.sleep(0.0005)  # the other thread goes idle, as between requests
        s = time.perf_counter_ns()
        a.set()
        b.wait()
        b.clear()
        rtt.append((time.perf_counter_ns() - s) / 1e3)
    t.join()
    return pct(rtt)


def spin(seconds: float) -> dict:
    end = time.monotonic_ns() + int(seconds * 1e9)
    prev, gaps = time.monotonic_ns(), []
    while prev < end:
        t = time.monotonic_ns()
        if t - prev > 50_000:
            gaps.append((t - prev) / 1e3)
        prev = t
    g = np.asarray(gaps)
    return {"seconds": seconds, "gaps_over_50us": int(g.size),
            "gaps_over_1ms": int((g > 1000).sum()), "max_gap_us": round(float(g.max()), 1)
            if g.size else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--mean-ms", type=float, default=10.0)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--spin-s", type=float, default=10.0)
    args = parser.parse_args()
    try:
        os.close(os.open("/dev/cpu_dma_latency", os.O_WRONLY))
        qos = True
    except OSError as exc:
        qos = False
        print(f"PM QoS not available here ({exc.strerror}): 'on' rows skipped")
    out: dict = {"loadavg": os.getloadavg()[0], "spin": spin(args.spin_s), "runs": []}
    for rep in range(args.reps):
        for on in ([False, True] if qos else [False]):
            fd = None
            if on:
                fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
                os.write(fd, struct.pack("i", 0))
            try:
                row = {"rep": rep, "qos": on, "sleep": sleeps(args.n, args.mean_ms, rep + 1),
                       "pingpong": pingpong(args.n // 2)}
            finally:
                if fd is not None:
                    os.close(fd)
            out["runs"].append(row)
            print(f"rep {rep} qos {'on ' if on else 'off'}  sleep late {row['sleep']}  "
                  f"pingpong rtt {row['pingpong']}", flush=True)
    print(f"spin {out['spin']}; load average at start {out['loadavg']:.2f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
