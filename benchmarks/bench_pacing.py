"""How precisely does the dispatcher send on time? traceforge vs a plain asyncio.sleep loop.

For Poisson schedules at several rates, against the ``null`` backend and against a local HTTP
server (aiohttp, started here in a subprocess on other cores), we measure per request the send lag
``sent_ns - scheduled_ns`` (p50/p99, µs) and the achieved/target rate, for

- ``baseline``: the loop most generators use — stock asyncio, ``await asyncio.sleep(target -
  now)`` to each absolute time, one Task per request, ``sent`` stamped inside the task just as
  traceforge does;
- traceforge variants: ``precise+spin`` (the default: timerfd-backed loop, yield-spin pacer
  with a 1.5 ms margin), ``precise+spin/0.3`` (0.3 ms margin), ``precise+sleep``,
  ``asyncio+spin``, ``precise+thread``, and ``uvloop+spin`` when uvloop is installed.

All cells run in this one process, one after the other, so every ratio is measured under the same
conditions. The dispatcher (main thread) is pinned to one core -- by default the one a bare
spin loop is interrupted least often on (``--dispatcher-core auto``; probed at start, printed);
the timeline flusher and the HTTP server get the others (``ReplayOptions.flusher_cpus``) — as on an unpinned host, where
the OS puts the flusher on an idle core. The whole set is repeated ``--runs`` times (default 5)
and the spread of each cell's p99 over the runs is printed, with the load average at each run
(the p99 of a 1 s cell on a shared machine measures the machine as much as the pacer). Usage:

    python benchmarks/bench_pacing.py [--runs 5] [--seconds 1.0] [--rates 1000,5000,20000]
                                      [--no-http]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from traceforge.clock import RunClock  # noqa: E402
from traceforge.replay import ModelInfo, ReplayOptions, Request, run_replay  # noqa: E402
from traceforge.schema import Trace, conform_trace_table  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from http_stub import start_stub_server  # noqa: E402


def poisson_trace(rate: float, seconds: float, seed: int = 1) -> Trace:
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    n = max(2, int(rate * seconds))
    arrival = np.cumsum(rng.exponential(1e9 / rate, n)).astype(np.int64)
    arrival -= arrival[0]
    table = conform_trace_table(pa.table({
        "request_id": np.arange(n), "arrival_ns": arrival, "model": pa.array(["m"] * n),
        "batch_size": np.ones(n, np.int32), "seq_len": np.full(n, 8, np.int32),
        "max_new_tokens": np.zeros(n, np.int32)}))
    return Trace(table=table, meta={}, path=None)


def make_backend(target: str, url: str | None):
    if target == "null":
        from traceforge.backends.null import NullBackend

        # 64 servers of 0.2 ms: the target is never the bottleneck, the generator is measured.
        return NullBackend(servers=64, service_ms=0.2, service_dist="const", seed=0)
    from traceforge.backends.http import HttpBackend

    return HttpBackend(url, "openai-completions", stream=False, pool_size=256)


FLUSHER_CPUS: set[int] | None = None  # set by main(): the cores the dispatcher is not pinned to


def run_traceforge(trace: Trace, target: str, url: str | None, pacer: str, loop: str,
                   margin_ms: float = 1.5) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        opts = ReplayOptions(pacer=pacer, event_loop=loop, spin_margin_ms=margin_ms,
                             flusher_cpus=FLUSHER_CPUS)
        summary = run_replay(trace, Path(tmp) / "run", make_backend(target, url), opts)
    check = summary.self_check
    return {"p50_us": check["send_lag_us"]["p50"], "p99_us": check["send_lag_us"]["p99"],
            "achieved": check["achieved_rate_ratio"],
            "errors": sum(v for k, v in summary.counts.items() if k != "ok")}


def run_baseline(trace: Trace, target: str, url: str | None) -> dict:
    """The naive generator: stock asyncio.sleep to absolute targets, a Task per request."""
    offsets = trace.table.column("arrival_ns").to_numpy()
    n = len(offsets)
    sent = np.zeros(n, np.int64)
    errors = 0

    async def main() -> int:
        nonlocal errors
        clock = RunClock()
        backend = make_backend(target, url)
        await backend.start([ModelInfo("m")], clock)
        origin = clock.now() + 10_000_000
        tasks: set[asyncio.Task] = set()

        async def one(i: int) -> None:
            nonlocal errors
            req = Request(i, "m", 1, 8, 0, origin + int(offsets[i]))
            sent[i] = clock.now()
            try:
                out = await backend.submit(req)
                errors += out.status != "ok"
            except Exception:
                errors += 1

        for i, off in enumerate(offsets.tolist()):
            delay = origin + off - clock.now()
            if delay > 0:
                await asyncio.sleep(delay / 1e9)
            task = asyncio.get_running_loop().create_task(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.gather(*tasks)
        await backend.stop()
        return origin

    origin = asyncio.run(main())
    lag_us = (sent - (origin + offsets)) / 1e3
    return {"p50_us": round(float(np.percentile(lag_us, 50)), 2),
            "p99_us": round(float(np.percentile(lag_us, 99)), 2),
            "achieved": round(float((offsets[-1] - offsets[0]) / (sent.max() - sent.min())), 5),
            "errors": errors}


def dispatch_cost(n: int = 50_000) -> dict:
    """CPU per request of the whole pipeline (dispatcher, Task, null backend, recorder), all n
    requests due at once so no time is spent waiting; the baseline loop does the same work minus
    recording."""
    import pyarrow as pa

    table = poisson_trace(1000, n / 1000).table
    burst = Trace(table=table.set_column(1, "arrival_ns", pa.array(np.zeros(n, np.int64))),
                  meta={}, path=None)
    t = time.process_time()
    run_traceforge(burst, "null", None, "spin", "precise")
    ours = (time.process_time() - t) / n * 1e6
    t = time.process_time()
    run_baseline(burst, "null", None)
    base = (time.process_time() - t) / n * 1e6
    return {"traceforge_cpu_us_per_request": round(ours, 2),
            "baseline_cpu_us_per_request": round(base, 2)}


def start_server(cores: set[int]) -> tuple[subprocess.Popen, str]:
    proc, url = start_stub_server(backlog=4096)
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(proc.pid, cores)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # wait until it answers
        try:
            import urllib.request

            urllib.request.urlopen(urllib.request.Request(url + "/v1/completions", data=b"{}"),
                                   timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("bench HTTP server did not start")


def spin_gaps(seconds: float, over_ns: int) -> list[int]:
    """A bare spin loop on this thread's core for ``seconds``: every gap between two clock
    reads longer than ``over_ns`` (the core was taken from us)."""
    end = time.monotonic_ns() + int(seconds * 1e9)
    last = time.monotonic_ns()
    gaps = []
    while (now := time.monotonic_ns()) < end:
        if now - last > over_ns:
            gaps.append(now - last)
        last = now
    return gaps


def stall_probe(seconds: float = 1.0) -> dict:
    """How often is this core taken from us? A bare spin loop's gaps > 200 µs (the floor under
    any pacer's tail on a shared machine)."""
    gaps = spin_gaps(seconds, 200_000)
    return {"stalls_over_200us_per_s": round(len(gaps) / seconds, 1),
            "max_stall_us": round(max(gaps, default=0) / 1e3, 1)}


def quietest_core(cpus: list[int], seconds: float = 0.5) -> tuple[int, dict[int, float]]:
    """The core that a bare spin loop loses least often (gaps > 50 µs per second), each probed
    for ``seconds``; this thread is left pinned to it. On the 2-vCPU VM these runs use, ad-hoc
    probes once found core 0 lost 50-238 times/s and core 1 17-50 (interrupts are routed
    unevenly), and this probe later found them alike (14 vs 16): a 1 s cell at 5k/s allows 50
    late sends, so the core decides the p99 as much as the pacer does (docs/scale.md)."""
    rates: dict[int, float] = {}
    for cpu in cpus:
        os.sched_setaffinity(0, {cpu})
        time.sleep(0.01)  # let the migration settle
        rates[cpu] = round(len(spin_gaps(seconds, 50_000)) / seconds, 1)
    best = min(cpus, key=lambda c: (rates[c], c))
    os.sched_setaffinity(0, {best})
    return best, rates


def variants() -> list[tuple[str, str, str, float]]:
    """(name, pacer, event loop, spin margin ms); the first is the default configuration."""
    out = [("precise+spin", "spin", "precise", 1.5), ("precise+spin/0.3", "spin", "precise", 0.3),
           ("precise+sleep", "sleep", "precise", 1.5), ("asyncio+spin", "spin", "asyncio", 1.5),
           ("precise+thread", "thread", "precise", 1.5)]
    try:
        import uvloop  # noqa: F401

        out.append(("uvloop+spin", "spin", "uvloop", 1.5))
    except ImportError:
        pass
    return out


def one_run(seconds: float, rates: tuple[int, ...], url: str | None,
            ladder: tuple[int, ...], full: bool) -> dict:
    """One pass over every cell; ``full`` adds the slower variants and the HTTP target."""
    results: dict = {"loadavg": loadavg(), "stall_probe_before": stall_probe(), "cells": []}
    targets = ["null"] + (["http"] if url and full else [])
    for target in targets:
        for rate in rates:
            trace = poisson_trace(rate, seconds)
            cells = [("baseline", run_baseline(trace, target, url))]
            for name, pacer, loop, margin in variants():
                if not full and name not in ("precise+spin", "uvloop+spin", "precise+sleep"):
                    continue
                if target == "http" and name not in ("precise+spin", "uvloop+spin"):
                    continue  # keep the bench short: pacing variants are compared on null
                cells.append((name, run_traceforge(trace, target, url, pacer, loop, margin)))
            for name, cell in cells:
                results["cells"].append({"target": target, "rate": rate, "variant": name,
                                         **cell})
    # Highest rate where the default keeps send-lag p99 <= 1 ms (null target).
    best = None
    for rate in sorted(set(rates) | set(ladder)):
        cell = run_traceforge(poisson_trace(rate, seconds), "null", None, "spin", "precise")
        results["cells"].append({"target": "null", "rate": rate, "variant": "ladder", **cell})
        if cell["p99_us"] <= 1000 and (cell["achieved"] or 0) >= 0.995:
            best = rate
    results["max_rate_p99_le_1ms"] = best
    results["stall_probe_after"] = stall_probe()
    results["loadavg_after"] = loadavg()
    return results


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(seconds: float = 1.0, rates: tuple[int, ...] = (1000, 5000, 20000), http: bool = True,
         ladder: tuple[int, ...] = (10000, 40000), runs: int = 5,
         dispatcher_core: str = "auto") -> dict:
    global FLUSHER_CPUS
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    core, probe = (cpus[0] if cpus else None), {}
    if len(cpus) >= 2:
        # The dispatcher (this thread) gets one core -- by default the one a bare loop loses
        # least often (quietest_core) -- and what it starts (the flusher) the others.
        if dispatcher_core == "auto":
            core, probe = quietest_core(cpus)
        else:
            core = int(dispatcher_core)
            if core not in cpus:
                raise SystemExit(f"--dispatcher-core {core}: not one of this process's CPUs "
                                 f"{cpus}")
        os.sched_setaffinity(0, {core})
        FLUSHER_CPUS = set(cpus) - {core}
        print(f"dispatcher on core {core}"
              + (" (bare-loop gaps > 50 µs per s: "
                 + ", ".join(f"core {c} {r}" for c, r in probe.items()) + ")" if probe else ""),
              flush=True)
    server, url = (None, None)
    if http:
        server, url = start_server(FLUSHER_CPUS or set(cpus))
    results: dict = {"cpu_count": len(cpus), "generator_cores": 1, "seconds_per_cell": seconds,
                     "python": sys.version.split()[0], "dispatcher_core": core,
                     "core_probe_gaps_over_50us_per_s": probe, "runs": []}
    try:
        for k in range(runs):
            run = one_run(seconds, rates, url, ladder, full=k == 0)
            results["runs"].append(run)
            print_table(run, k + 1)
        results["dispatch_cost"] = dispatch_cost()
    finally:
        if server is not None:
            server.kill()
            server.wait()
    results["spread"] = spread(results["runs"])
    print_spread(results)
    return results


def spread(runs: list[dict]) -> list[dict]:
    """Per (target, rate, variant): the p99 of every run, and how many runs met the targets."""
    goals = {5000: 50.0, 20000: 100.0}  # p99 µs the default should hold (issue 11)
    cells: dict[tuple, list] = {}
    for run in runs:
        for c in run["cells"]:
            cells.setdefault((c["target"], c["rate"], c["variant"]), []).append(c)
    out = []
    for (target, rate, variant), cs in cells.items():
        p99 = [c["p99_us"] for c in cs]
        row = {"target": target, "rate": rate, "variant": variant, "runs": len(cs),
               "p99_us": p99, "p99_min": min(p99), "p99_median": float(np.median(p99)),
               "p99_max": max(p99), "p50_median": float(np.median([c["p50_us"] for c in cs])),
               "achieved_min": min((c["achieved"] or 0) for c in cs)}
        if rate in goals:
            row["goal_p99_us"] = goals[rate]
            row["runs_meeting_goal"] = sum(v <= goals[rate] for v in p99)
        out.append(row)
    return out


def print_spread(results: dict) -> None:
    print(f"\nspread over {len(results['runs'])} runs (load average at each run: "
          + "; ".join(r["loadavg"] for r in results["runs"]) + ")")
    print(f"{'target':6} {'rate':>6} {'variant':16} {'p50 med':>8} {'p99 min':>8} "
          f"{'p99 med':>8} {'p99 max':>9} {'goal':>11}  p99 per run (µs)")
    for r in results["spread"]:
        goal = (f"{r['runs_meeting_goal']}/{r['runs']} ≤{r['goal_p99_us']:.0f}"
                if "goal_p99_us" in r else "")
        print(f"{r['target']:6} {r['rate']:>6} {r['variant']:16} {r['p50_median']:>8.1f} "
              f"{r['p99_min']:>8.1f} {r['p99_median']:>8.1f} {r['p99_max']:>9.1f} {goal:>11}  "
              + ", ".join(f"{v:.0f}" for v in r["p99_us"]))
    print(f"CPU per request, burst of 50k through null (incl. run setup): "
          f"{results['dispatch_cost']}")
    print("highest tested rate with lag p99 <= 1 ms and achieved >= 99.5 % (null, default), "
          "per run: " + ", ".join(str(r["max_rate_p99_le_1ms"]) for r in results["runs"]))


def print_table(results: dict, k: int) -> None:
    print(f"run {k}: load average {results['loadavg']} -> {results['loadavg_after']}")
    print(f"{'target':6} {'rate':>6} {'variant':16} {'lag p50 µs':>10} {'lag p99 µs':>10} "
          f"{'achieved':>9} {'errors':>6}")
    for c in results["cells"]:
        achieved = f"{c['achieved']:.2%}" if c["achieved"] else "-"
        print(f"{c['target']:6} {c['rate']:>6} {c['variant']:16} {c['p50_us']:>10.1f} "
              f"{c['p99_us']:>10.1f} {achieved:>9} {c['errors']:>6}")
    print(f"stall probe (bare spin loop on the generator core): before "
          f"{results['stall_probe_before']}, after {results['stall_probe_after']}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rates", default="1000,5000,20000")
    parser.add_argument("--ladder", default="10000,40000")
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dispatcher-core", default="auto",
                        help="auto (the core a bare loop loses least often) or a CPU number")
    args = parser.parse_args()
    main(args.seconds, tuple(int(r) for r in args.rates.split(",")), not args.no_http,
         tuple(int(r) for r in args.ladder.split(",") if r), args.runs, args.dispatcher_core)
