"""Simulator speed: 1M requests over 3 models, next to a SimPy model of the same queues.

Prints a table and returns a dict (benchmarks/run_all.py calls ``main()``). One trace: Poisson
arrivals, 3 models, 1M requests, 0.5 requests/ms per model. Cases:

* ``null`` (1 and 2 servers per model, exponential 1 ms service): the ``null`` backend's model;
* ``profile`` modes with a synthetic profile (0.6 ms alone service, gamma noise cv 0.1, co-run
  slowdowns 1.1-1.7): exclusive, timeslice with interference, timeslice with dynamic batching.

Each time is the whole ``simulate()`` call (trace in memory -> run directory with Parquet
timeline), best of 2. The SimPy model is the textbook one (a ``Resource`` per model, one process
per request) run on the same arrivals with the same service draws; the benchmark checks that its
service start times equal the simulated run's *exactly* before it reports the ratio.

    PYTHONPATH=. python benchmarks/bench_simulate.py
"""

from __future__ import annotations

import shutil
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from traceforge.record import read_timeline
from traceforge.schema import Trace, conform_trace_table
from traceforge.simulate import simulate
from traceforge.simulate.profile import PROFILE_SCHEMA_ID, profile_from_dict

N = 1_000_000
MODELS = ("bert", "gpt", "vit")
RATE_PER_MS = 0.5  # per model; with 1 ms service, rho = 0.5 alone
SEED = 0


def make_trace(n: int = N, seed: int = SEED, mixed_batch: bool = False) -> Trace:
    rng = np.random.default_rng(seed)
    # The superposition of three Poisson streams: one Poisson stream, models drawn uniformly.
    arrival = np.cumsum(rng.exponential(1e6 / (RATE_PER_MS * len(MODELS)), n)).astype(np.int64)
    codes = rng.integers(0, len(MODELS), n)
    table = conform_trace_table(pa.table({
        "request_id": np.arange(n, dtype=np.int64), "arrival_ns": arrival,
        "model": pa.array(list(MODELS), pa.string()).take(pa.array(codes)),
        # mixed_batch: half the requests at batch 8 (8x the reference size), for the size
        # tables' case; the same arrivals and models either way
        "batch_size": (np.where(np.random.default_rng(seed + 1).random(n) < 0.5, 8, 1)
                       .astype(np.int32) if mixed_batch else np.ones(n, np.int32)),
        "seq_len": np.full(n, 128, np.int32),
        "max_new_tokens": np.zeros(n, np.int32)}))
    return Trace(table=table, meta={})


def synthetic_profile(sized: bool = False, time_slice: bool = False):
    models = {m: {"kind": "encoder", "batch_sizes": [1, 8], "seq_lens": [128],
                  "service_ms": [[0.6], [1.8]], "service_cv": 0.1,
                  "reference": {"batch_size": 1, "seq_len": 128, "max_new_tokens": 0}}
              for m in MODELS}
    slowdown = {"bert+gpt": {"bert": 1.3, "gpt": 1.2}, "bert+vit": {"bert": 1.4, "vit": 1.1},
                "gpt+vit": {"gpt": 1.3, "vit": 1.2},
                "bert+gpt+vit": {"bert": 1.7, "gpt": 1.5, "vit": 1.3}}
    timeslice: dict = {"slowdown": slowdown}
    if sized:  # every pair: the victim's slowdown + 0.4 beside a request 8x the reference
        timeslice["slowdown_by_size"] = {
            key: {v: {"aggressor": a, "size": [1.0, 8.0],
                      "slowdown": [slowdown[key][v], slowdown[key][v] + 0.4]}
                  for v, a in (key.split("+"), key.split("+")[::-1])}
            for key in slowdown if key.count("+") == 1}
    if time_slice:  # the time-sliced engine (engine.timeslice_workers) instead of sharing
        timeslice["time_slice"] = {"quantum_ms": 2.0, "switch_ms": 0.1}
    return profile_from_dict({"schema": PROFILE_SCHEMA_ID, "device": {"name": "synthetic"},
                              "models": models,
                              "modes": {"exclusive": {}, "timeslice": timeslice}})


def simpy_queues(trace: Trace, service_ms: float, seed: int) -> tuple[float, dict]:
    """The same per-model FIFO queues in SimPy; returns (seconds, service starts per model)."""
    import simpy

    codes = trace.table.column("model")
    arrival = trace.table.column("arrival_ns").to_numpy()
    arrivals, services = {}, {}
    for m in MODELS:
        arrivals[m] = arrival[pc.equal(codes, m).to_numpy(zero_copy_only=False)]
        rng = np.random.default_rng([seed, zlib.crc32(m.encode())])  # the null backend's stream
        services[m] = np.rint(rng.exponential(service_ms * 1e6, arrivals[m].size))
    env = simpy.Environment()
    starts = {m: np.zeros(arrivals[m].size) for m in MODELS}

    def customer(env, res, m, i, service):
        with res.request() as req:
            yield req
            starts[m][i] = env.now
            yield env.timeout(service)

    def source(env, m, res):
        for i, (a, s) in enumerate(zip(arrivals[m].tolist(), services[m].tolist(),
                                       strict=True)):
            yield env.timeout(a - env.now)
            env.process(customer(env, res, m, i, s))

    t0 = time.perf_counter()
    for m in MODELS:
        env.process(source(env, m, simpy.Resource(env, capacity=1)))
    env.run()
    return time.perf_counter() - t0, starts


def bucketing_ratio(trace: Trace) -> dict:
    """``ModelProfile.bucket_shapes`` (one packed int64 per shape, 2026-12-01) against the
    column-wise ``np.unique(axis=1)`` it replaced, on the trace's 1M shapes, same run; both
    must give the same buckets. Best of 2 each."""
    from traceforge.simulate.profile import load_profile
    from traceforge.zoo.buckets import BucketPolicy

    pm = load_profile("h200-fidelity").models["distilbert-base"]
    rng = np.random.default_rng(SEED)
    bs = rng.choice([1, 2, 4, 8], trace.table.num_rows).astype(np.int64)
    seq = rng.integers(16, 256, trace.table.num_rows).astype(np.int64)
    new = np.zeros_like(seq)
    policy = BucketPolicy(kind=pm.kind, seq_buckets=pm.seq_buckets, batch_buckets=False,
                          max_positions=None)

    def column_wise():
        uniq, inverse = np.unique(np.stack([bs, seq, new]), axis=1, return_inverse=True)
        out = np.array([[(b := policy.bucket(*map(int, uniq[:, k]))).batch, b.seq]
                        for k in range(uniq.shape[1])], np.int64)
        return out[inverse.reshape(-1), 0], out[inverse.reshape(-1), 1]

    times = {}
    for name, fn in (("packed", lambda: pm.bucket_shapes(bs, seq, new)),
                     ("column-wise", column_wise)):
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            got = fn()
            best = min(best, time.perf_counter() - t0)
        times[name] = (best, got)
    for a, b in zip(times["packed"][1], times["column-wise"][1], strict=True):
        np.testing.assert_array_equal(a, b)
    ratio = times["column-wise"][0] / times["packed"][0]
    print(f"bucket_shapes, 1M shapes: packed {times['packed'][0]:.3f} s, column-wise "
          f"{times['column-wise'][0]:.3f} s ({ratio:.1f}x, same buckets)")
    return {"packed_s": times["packed"][0], "column_wise_s": times["column-wise"][0],
            "speedup": ratio}


def main() -> dict:
    trace = make_trace()
    profile = synthetic_profile()
    tmp = Path(tempfile.mkdtemp(prefix="bench-simulate-"))
    cases = {
        "null, 1 server/model (Lindley)": dict(service_ms=1.0, service_dist="exp", seed=SEED),
        "null, 2 servers/model (heap)": dict(servers=2, service_ms=2.0, service_dist="exp"),
        "profile exclusive": dict(profile=profile, mode="exclusive"),
        "profile timeslice + interference": dict(profile=profile, mode="timeslice"),
        "profile timeslice + batching 8/1ms": dict(profile=profile, mode="timeslice",
                                                   max_batch=8, max_wait_ms=1.0),
        "profile timeslice, time-sliced 2 ms": dict(profile=synthetic_profile(time_slice=True),
                                                    mode="timeslice"),
    }
    # Interference by request size (engine.SizeInterference): the same trace with batch 1 / 8
    # mixed, without and with the size tables; a change of size class re-rates the others.
    mixed = make_trace(mixed_batch=True)
    sized_cases = {
        "timeslice + interference, batch 1/8": dict(profile=profile, mode="timeslice"),
        "  the same + size tables": dict(profile=synthetic_profile(sized=True),
                                         mode="timeslice"),
    }
    results: dict[str, dict] = {}
    try:
        for name, kwargs in sized_cases.items():
            best = float("inf")
            for r in range(2):
                out = tmp / f"sized-{len(results)}-{r}"
                t0 = time.perf_counter()
                simulate(mixed, out, **kwargs)
                best = min(best, time.perf_counter() - t0)
                shutil.rmtree(out)
            results[name] = {"requests": N, "seconds": best, "p99_ms": None}
        for i, (name, kwargs) in enumerate(cases.items()):
            best, p99 = float("inf"), None
            for r in range(2):
                out = tmp / f"{i}-{r}"
                t0 = time.perf_counter()
                simulate(trace, out, **kwargs)
                best = min(best, time.perf_counter() - t0)
                if r == 0:
                    t = read_timeline(out)
                    lat = pc.subtract(t.column("done_ns"), t.column("scheduled_ns")).to_numpy()
                    p99 = float(np.percentile(lat, 99)) / 1e6
                if i == 0 and r == 0:
                    sim_starts = {m: t.filter(pc.equal(t.column("model"), m))
                                  .column("service_start_ns").to_numpy() for m in MODELS}
                shutil.rmtree(out)
            results[name] = {"requests": N, "seconds": best, "p99_ms": p99}
        t_simpy, simpy_starts = simpy_queues(trace, 1.0, SEED)
        for m in MODELS:  # float event times are exact for integer ns below 2**53
            np.testing.assert_array_equal(simpy_starts[m], sim_starts[m].astype(np.float64))
        results["SimPy, same queues and draws"] = {"requests": N, "seconds": t_simpy,
                                                   "p99_ms": None}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ours = results["null, 1 server/model (Lindley)"]["seconds"]
    speedup = t_simpy / ours
    print(f"{'case (1M requests, 3 models)':38s} {'seconds':>8s} {'M req/s':>8s} "
          f"{'p99 ms':>7s}")
    for name, r in results.items():
        p99 = f"{r['p99_ms']:7.2f}" if r["p99_ms"] is not None else "      -"
        print(f"{name:38s} {r['seconds']:8.3f} {r['requests'] / r['seconds'] / 1e6:8.2f} {p99}")
    print(f"simulate() vs SimPy on the same queues (identical service starts): {speedup:.1f}x")
    sized_cost = (results["  the same + size tables"]["seconds"]
                  / results["timeslice + interference, batch 1/8"]["seconds"])
    print(f"size tables: {sized_cost:.2f}x the size-blind interference's time, same trace")
    sliced_cost = (results["profile timeslice, time-sliced 2 ms"]["seconds"]
                   / results["profile timeslice + interference"]["seconds"])
    print(f"time-sliced engine: {sliced_cost:.2f}x processor sharing's time, same trace")
    bucketing = bucketing_ratio(trace)
    return {"cases": results, "size_tables_cost": sized_cost, "time_sliced_cost": sliced_cost,
            "speedup_vs_simpy": speedup, "null_1M_seconds": ours,
            "bucketing": bucketing,
            "interference_1M_seconds": results["profile timeslice + interference"]["seconds"]}


if __name__ == "__main__":
    main()
