"""GPU check helper behind ``benchmarks/gpu_check.sh`` (one device call runs all of it).

Subcommands, each a separate process so every mode starts from a clean GPU:

    env       GPU, driver, package versions, MPS tools → env.json
    overhead  harness overhead: exclusive mode vs a bare PyTorch loop (distilbert-base, bs 8,
              seq 128): throughput ratio and done − sent − gpu_ns
    mode M    the seed study in one sharing mode: distilbert-base + distilgpt2 + mistral-7b
              resident together, a Poisson and a Gamma (cv 4) trace at ~60 % of the exclusive
              capacity (measured first, in `mode exclusive`), per-model latency / throughput /
              GPU utilisation, a closed-loop co-run test (GIL effect), MPS attach and quit
    report    seed-study markdown + the short table printed last

Every replay goes through the product's own path (``replay_async`` + the resident backend);
the backend is started once per mode and kept loaded across that mode's runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

SEED_MODELS = ("distilbert-base", "distilgpt2", "mistral-7b")
# (batch_size, seq_len, max_new_tokens) per model, and each model's share of requests.
SHAPES = {"distilbert-base": (8, 128, 0), "distilgpt2": (1, 64, 32), "mistral-7b": (1, 128, 16)}
SHARES = {"distilbert-base": 0.7, "distilgpt2": 0.2, "mistral-7b": 0.1}
LOAD = 0.6
GAMMA_CV = 4.0
MODES = ("exclusive", "timeslice", "mps", "streams")
# GPU_CHECK_DRY=1: the same script on the CPU with tiny stand-ins (to test it without a GPU).
DRY = os.environ.get("GPU_CHECK_DRY") == "1"
DEVICE = "cpu" if DRY else "cuda"
DRY_ZOO = {"distilbert-base": "tiny-bert", "distilgpt2": "tiny-gpt2", "mistral-7b": "tiny-llama"}


def zoo_of(model: str) -> str:
    return DRY_ZOO.get(model, model) if DRY else model


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pct(values, q: float) -> float | None:
    values = np.asarray(values, dtype=float)
    return None if values.size == 0 else float(np.percentile(values, q))


# -- the shared-backend adaptor -----------------------------------------------------------------
def make_trace(rates: dict[str, float], process: str, duration_s: float, seed: int):
    from traceforge.schema import Trace, conform_trace_table

    rng = np.random.default_rng(seed)
    arrivals, models = [], []
    for model, rate in rates.items():
        n = int(rate * duration_s * 3 + 50)
        if process == "poisson":
            gaps = rng.exponential(1.0 / rate, n)
        else:  # gamma with the given cv: shape k = 1/cv², mean 1/rate
            k = 1.0 / GAMMA_CV**2
            gaps = rng.gamma(k, 1.0 / (rate * k), n)
        t = np.cumsum(gaps)
        t = t[t < duration_s]
        arrivals.append(t)
        models += [model] * len(t)
    arrival = np.concatenate(arrivals)
    order = np.argsort(arrival, kind="stable")
    arrival_ns = np.rint(arrival[order] * 1e9).astype(np.int64)
    models = [models[i] for i in order]
    shapes = np.array([SHAPES[m] for m in models], dtype=np.int32).reshape(-1, 3)
    table = conform_trace_table(pa.table({
        "request_id": np.arange(len(models), dtype=np.int64), "arrival_ns": arrival_ns,
        "model": models, "batch_size": shapes[:, 0], "seq_len": shapes[:, 1],
        "max_new_tokens": shapes[:, 2]}))
    spec = {"name": f"seed-study-{process}", "duration_s": duration_s, "seed": seed,
            "models": {m: {"zoo": m, "arrival": ({"process": "poisson", "rate": r}
                                                  if process == "poisson" else
                                                  {"process": "gamma", "rate": r,
                                                   "cv": GAMMA_CV}),
                           "batch_size": SHAPES[m][0], "seq_len": SHAPES[m][1],
                           "max_new_tokens": SHAPES[m][2]} for m, r in rates.items()}}
    meta = {"spec": spec, "seed": seed, "source": {"generator": "benchmarks/gpu_check.py"}}
    return Trace(table=table, meta=meta)


def closed_trace(model: str, n: int, shape=None):
    from traceforge.schema import Trace, conform_trace_table

    bs, seq, new = shape or SHAPES[model]
    table = conform_trace_table(pa.table({"request_id": np.arange(n, dtype=np.int64),
                      "arrival_ns": np.zeros(n, np.int64), "model": [model] * n,
                      "batch_size": np.full(n, bs, np.int32), "seq_len": np.full(n, seq, np.int32),
                      "max_new_tokens": np.full(n, new, np.int32)}))
    return Trace(table=table, meta={"source": {"generator": "benchmarks/gpu_check.py"}})


async def replay(backend, clock, trace, run_dir: Path, **opts):
    from traceforge.replay import ModelInfo, ReplayOptions, replay_async
    from traceforge.schema import write_trace
    from traceforge.study.runner import KeepStarted  # one adaptor for gpu_check and studies

    run_dir.mkdir(parents=True, exist_ok=True)
    write_trace(trace.table, run_dir / "trace.parquet", trace.meta)
    from traceforge.schema import read_trace

    trace = read_trace(run_dir / "trace.parquet")
    models = [ModelInfo(m, zoo_of(m)) for m in trace.models]
    options = ReplayOptions(models=models, **opts)
    return await replay_async(trace, run_dir, KeepStarted(backend, clock, run_dir), options)


class Rows:
    """A run's timeline as numpy columns (ints with nulls become float with NaN)."""

    def __init__(self, table: pa.Table) -> None:
        self.n = table.num_rows
        self.cols = {}
        for name in table.column_names:
            col = table.column(name)
            if pa.types.is_integer(col.type):
                self.cols[name] = col.to_numpy(zero_copy_only=False).astype(float)
            elif pa.types.is_string(col.type):
                self.cols[name] = np.array(col.to_pylist(), dtype=object)

    def __getattr__(self, name: str):
        return self.cols[name]

    def where(self, mask) -> Rows:
        out = Rows.__new__(Rows)
        out.cols = {k: v[mask] for k, v in self.cols.items()}
        out.n = int(np.count_nonzero(mask))
        return out


def timeline(run_dir: Path) -> Rows:
    from traceforge.record import read_timeline

    return Rows(read_timeline(run_dir))


def ok_rows(run_dir: Path) -> Rows:
    rows = timeline(run_dir)
    return rows.where(rows.status == "ok")


def summarise_run(run_dir: Path, duration_s: float) -> dict[str, Any]:
    rows = timeline(run_dir)
    out: dict[str, Any] = {"models": {}}
    for model in sorted(set(rows.model)):
        g = rows.where(rows.model == model)
        ok = g.where(g.status == "ok")
        bad = g.where(g.status != "ok")
        lat = (ok.done_ns - ok.scheduled_ns) / 1e6
        svc = (ok.service_end_ns - ok.service_start_ns) / 1e6
        out["models"][model] = {
            "count": g.n, "ok": ok.n, "errors": bad.n,
            "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
            "mean_ms": float(lat.mean()) if ok.n else None,
            "service_p50_ms": pct(svc, 50), "throughput_rps": ok.n / duration_s,
            "error_examples": sorted({e for e in bad.error if e})[:2]}
    lag = (rows.sent_ns - rows.scheduled_ns) / 1e3
    lag = lag[~np.isnan(lag)]
    out["send_lag_us"] = {"p50": pct(lag, 50), "p99": pct(lag, 99),
                          "max": float(lag.max()) if lag.size else None}
    tel = run_dir / "telemetry.parquet"
    if tel.exists():
        import pyarrow.parquet as pq

        t = pq.read_table(tel)
        util = t.column("util_gpu_pct").to_numpy(zero_copy_only=False).astype(float)
        ts = t.column("t_ns").to_numpy()
        out["mean_util_gpu_pct"] = float(np.nanmean(util)) if util.size else None
        out["telemetry_samples"] = int(ts.size)
        if ts.size > 1:
            out["telemetry_hz"] = (ts.size - 1) / ((ts[-1] - ts[0]) / 1e9)
    return out


# -- env ----------------------------------------------------------------------------------------
def cmd_env(out: Path) -> None:
    import torch
    import transformers

    from traceforge.gpu.cuda import gpu_info
    from traceforge.gpu.mps import mps_processes

    info = {"gpu": gpu_info(0) if not DRY else {"name": "cpu (dry run)"}, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "transformers": transformers.__version__, "python": sys.version.split()[0],
            "mps_control": subprocess.run(["which", "nvidia-cuda-mps-control"],
                                          capture_output=True, text=True).stdout.strip(),
            "mps_processes_before": mps_processes(),
            "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    try:
        import pynvml

        info["nvidia_ml_py"] = getattr(pynvml, "__version__", "present")
    except ImportError:
        info["nvidia_ml_py"] = None
    (out / "env.json").write_text(json.dumps(info, indent=2, default=str))
    log(f"env: {info['gpu'].get('name')} driver {info['gpu'].get('driver')} torch "
        f"{info['torch']} transformers {info['transformers']} mps {info['mps_control']!r}")


# -- overhead -----------------------------------------------------------------------------------
def bare_loop(n: int) -> dict[str, float]:
    import torch

    from traceforge.zoo import build_model

    m = build_model(zoo_of("distilbert-base"), DEVICE)
    ids = torch.randint(0, m.vocab_size, (8, 128), device=DEVICE)
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(30):
            m.model(input_ids=ids)
        sync()
        rates = []
        for _ in range(2):
            t = time.perf_counter()
            for _ in range(n):
                m.model(input_ids=ids)
                sync()
            rates.append(n / (time.perf_counter() - t))
    del m
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return {"rps_runs": rates, "rps": max(rates)}


async def overhead_async(out: Path, n: int) -> dict[str, Any]:
    from traceforge.backends.resident import from_options
    from traceforge.clock import RunClock
    from traceforge.replay import ModelInfo

    result: dict[str, Any] = {"model": "distilbert-base", "batch_size": 8, "seq_len": 128}
    result["bare_before"] = bare_loop(n)
    backend = from_options({"mode": "exclusive", "device": DEVICE, "telemetry": True,
                            "zoo": {"distilbert-base": zoo_of("distilbert-base")}})
    clock = RunClock()
    await backend.start([ModelInfo("distilbert-base", zoo_of("distilbert-base"))], clock)
    try:
        for c in (1, 2):
            run_dir = out / "runs" / f"overhead-exclusive-c{c}"
            await replay(backend, clock, closed_trace("distilbert-base", n), run_dir,
                         concurrency=c)
            ok = ok_rows(run_dir)
            span = (ok.done_ns.max() - ok.sent_ns.min()) / 1e9
            over = (ok.done_ns - ok.sent_ns - ok.gpu_ns) / 1e3
            outside = (ok.done_ns - ok.sent_ns - (ok.service_end_ns - ok.service_start_ns)) / 1e3
            result[f"harness_c{c}"] = {
                "rps": ok.n / span, "ok": ok.n,
                "done_sent_minus_gpu_us": {"p50": pct(over, 50), "p99": pct(over, 99)},
                "done_sent_minus_service_us": {"p50": pct(outside, 50),
                                               "p99": pct(outside, 99)},
                "gpu_ms_p50": pct(ok.gpu_ns / 1e6, 50),
                "service_ms_p50": pct((ok.service_end_ns - ok.service_start_ns) / 1e6, 50)}
    finally:
        await backend.stop()
    result["bare_after"] = bare_loop(n)
    bare = max(result["bare_before"]["rps"], result["bare_after"]["rps"])
    for c in (1, 2):
        result[f"harness_c{c}"]["ratio_to_bare"] = result[f"harness_c{c}"]["rps"] / bare
    result["backend"] = backend.describe()
    return result


def cmd_overhead(out: Path, n: int) -> None:
    result = asyncio.run(overhead_async(out, n))
    (out / "overhead.json").write_text(json.dumps(result, indent=2, default=str))
    for c in (1, 2):
        h = result[f"harness_c{c}"]
        log(f"overhead c={c}: {h['rps']:.1f} rps = {h['ratio_to_bare']:.3f} x bare; "
            f"done-sent-gpu p50 {h['done_sent_minus_gpu_us']['p50']:.0f} us")


# -- one mode of the seed study -----------------------------------------------------------------
async def measure_capacity(backend, clock, out: Path, n_scale: float) -> dict[str, Any]:
    cap: dict[str, Any] = {"service_ms": {}, "shares": SHARES, "shapes": SHAPES, "load": LOAD}
    for model, n in (("distilbert-base", 60), ("distilgpt2", 20), ("mistral-7b", 8)):
        n = max(3, int(n * n_scale))
        run_dir = out / "runs" / f"capacity-{model}"
        await replay(backend, clock, closed_trace(model, n), run_dir, concurrency=1)
        ok = ok_rows(run_dir)
        cap["service_ms"][model] = float(((ok.done_ns - ok.sent_ns) / 1e6).mean())
    mean_s = sum(SHARES[m] * cap["service_ms"][m] / 1e3 for m in SEED_MODELS)
    cap["capacity_rps"] = 1.0 / mean_s
    cap["rates"] = {m: LOAD * cap["capacity_rps"] * SHARES[m] for m in SEED_MODELS}
    # Launch-bound decode: per-token time of mistral-7b vs the weight-streaming floor.
    dec: dict[str, Any] = {}
    for new in (1, 65):
        run_dir = out / "runs" / f"decode-mistral-7b-new{new}"
        await replay(backend, clock, closed_trace("mistral-7b", 4, (1, 128, new)), run_dir,
                     concurrency=1)
        ok = ok_rows(run_dir)
        dec[f"service_ms_new{new}"] = pct((ok.service_end_ns - ok.service_start_ns) / 1e6, 50)
        dec[f"gpu_ms_new{new}"] = pct(ok.gpu_ns / 1e6, 50)
    dec["ms_per_token"] = (dec["service_ms_new65"] - dec["service_ms_new1"]) / 64
    cap["decode"] = dec
    return cap


async def corun(backend, seconds: float) -> dict[str, Any]:
    """Closed-loop distilbert-base + distilgpt2, alone and together (one outstanding each)."""
    from traceforge.replay import Request

    async def loop(model: str, stop_at: float, counter: list[int]) -> None:
        bs, seq, new = SHAPES[model]
        rid = (1 + pair.index(model)) * 10**9  # ids apart from any trace's
        while time.perf_counter() < stop_at:
            rid += 1
            out = await backend.submit(Request(rid, model, bs, seq, new, 0))
            if out.status == "ok":
                counter[0] += 1

    res: dict[str, Any] = {"seconds": seconds}
    pair = ("distilbert-base", "distilgpt2")
    for model in pair:
        c = [0]
        await loop(model, time.perf_counter() + seconds, c)
        res[f"alone_rps_{model}"] = c[0] / seconds
    counters = {m: [0] for m in pair}
    stop_at = time.perf_counter() + seconds
    await asyncio.gather(*(loop(m, stop_at, counters[m]) for m in pair))
    for m in pair:
        res[f"together_rps_{m}"] = counters[m][0] / seconds
    res["progress_sum"] = sum(res[f"together_rps_{m}"] / res[f"alone_rps_{m}"] for m in pair)
    return res


async def mode_async(mode: str, out: Path, trace_s: float, quick: bool) -> dict[str, Any]:
    from traceforge.backends.resident import from_options
    from traceforge.clock import RunClock
    from traceforge.gpu.mps import mps_processes
    from traceforge.replay import ModelInfo

    result: dict[str, Any] = {"mode": mode}
    t = time.perf_counter()
    backend = None
    try:
        backend = from_options({"mode": mode, "device": DEVICE, "telemetry": True,
                                "zoo": {m: zoo_of(m) for m in SEED_MODELS}})
        clock = RunClock()
        # The shapes this mode will serve, so the backend pre-warms (captures) their buckets.
        shapes = {m: [SHAPES[m]] for m in SEED_MODELS}
        shapes["mistral-7b"] += [(1, 128, 1), (1, 128, 65)]  # the decode measurement
        await backend.start([ModelInfo(m, zoo_of(m), shapes=shapes[m]) for m in SEED_MODELS],
                            clock)
        result["start_s"] = time.perf_counter() - t
        log(f"{mode}: resident set ready in {result['start_s']:.1f} s")
        cap_path = out / "capacity.json"
        if mode == "exclusive":
            cap = await measure_capacity(backend, clock, out, 0.3 if quick else 1.0)
            cap_path.write_text(json.dumps(cap, indent=2))
            log(f"capacity {cap['capacity_rps']:.2f} rps; service ms {cap['service_ms']}; "
                f"mistral decode {cap['decode']['ms_per_token']:.2f} ms/token")
        cap = json.loads(cap_path.read_text())
        for i, process in enumerate(("poisson", "gamma")):
            trace = make_trace(cap["rates"], process, trace_s, seed=100 + i)
            run_dir = out / "runs" / f"{mode}-{process}"
            summary = await replay(backend, clock, trace, run_dir, timeout_s=30.0)
            result[process] = {"status": summary.status, "counts": summary.counts,
                               **summarise_run(run_dir, trace_s)}
            log(f"{mode} {process}: {summary.counts} " + "; ".join(
                f"{m} p50 {v['p50_ms']:.1f} p99 {v['p99_ms']:.1f} ms"
                for m, v in result[process]["models"].items() if v["p50_ms"] is not None))
        result["corun"] = await corun(backend, 2.0 if quick else 3.0)
        log(f"{mode} co-run progress sum {result['corun']['progress_sum']:.2f}")
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        log(f"{mode}: FAILED {result['error']}")
    finally:
        if backend is not None:
            try:
                await backend.stop()
            except Exception as exc:
                result["stop_error"] = f"{type(exc).__name__}: {exc}"
            result["backend"] = backend.describe()
    if mode == "mps":
        result["mps_processes_after"] = mps_processes()
        result["mps_daemon_gone"] = not result["mps_processes_after"]
        log(f"mps attach: {result.get('backend', {}).get('mps_attach')}; daemon gone after "
            f"stop: {result['mps_daemon_gone']}")
    return result


def cmd_mode(mode: str, out: Path, trace_s: float, quick: bool) -> None:
    result = asyncio.run(mode_async(mode, out, trace_s, quick))
    (out / f"mode-{mode}.json").write_text(json.dumps(result, indent=2, default=str))
    if "error" in result:
        sys.exit(1)


# -- report -------------------------------------------------------------------------------------
def fmt(v, spec=".1f") -> str:
    return "—" if v is None else format(v, spec)


def cmd_report(out: Path, command: str) -> None:
    env = json.loads((out / "env.json").read_text()) if (out / "env.json").exists() else {}
    gpu = env.get("gpu", {})
    lines = [f"# Seed study on {gpu.get('name', '?')}", "",
             f"- card: {gpu.get('name')}, driver {gpu.get('driver')}, "
             f"{(gpu.get('memory_total_bytes') or 0) / 2**30:.1f} GiB",
             f"- software: torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), "
             f"transformers {env.get('transformers')}, python {env.get('python')}",
             f"- date (UTC): {env.get('date_utc')}",
             f"- command: `{command}` (one device call; full JSON + run directories in the "
             "call's output)", ""]
    short = []
    ov = out / "overhead.json"
    if ov.exists():
        o = json.loads(ov.read_text())
        if "ratio_of_medians" in o:  # the alternating-pass yardstick (gpu_serving_check.py)
            lines += [f"## Harness overhead ({o['model']}, bucket {o['bucket']}, {o['compile']})",
                      "", f"{o['passes']} alternating passes of {o['requests_per_pass']} requests"
                      "; medians (min–max):", "",
                      "| loop | req/s | harness / bare |", "|---|---|---|"]
            for k, label in (("bare", "bare loop (same bucket, fresh inputs)"),
                             ("c1", "harness, concurrency 1"), ("c2", "harness, concurrency 2")):
                r = o["rps"][k]
                ratio = "1" if k == "bare" else (
                    f"{o['ratio_of_medians'][k]:.3f} ({o['ratio_' + k]['min']:.3f}–"
                    f"{o['ratio_' + k]['max']:.3f})")
                lines.append(f"| {label} | {r['median']:.1f} ({r['min']:.1f}–{r['max']:.1f}) | "
                             f"{ratio} |")
            d = o["done_sent_minus_gpu_us_c1"]
            lines += ["", f"done − sent − gpu_ns at concurrency 1: p50 {fmt(d['p50'], '.0f')} µs,"
                      f" p99 {fmt(d['p99'], '.0f')} µs; NVML utilisation of a 6 s saturated run "
                      f"(c=2): {fmt(o['util_run'].get('mean_util_gpu_pct'))} %", ""]
            short.append(f"overhead: harness/bare c1 {o['ratio_of_medians']['c1']:.3f} c2 "
                         f"{o['ratio_of_medians']['c2']:.3f}; done-sent-gpu p50 "
                         f"{fmt(d['p50'], '.0f')} us")
        else:
            lines += ["(overhead.json in an older format: see the run's JSON)", ""]
    st = out / "stability.json"
    if st.exists():
        s = json.loads(st.read_text())
        lines += ["## Service stability (one trace replayed twice, `traceforge compare`)", "",
                  "| model | p50 ratio | p99 ratio | verdict |", "|---|---|---|---|"]
        for m, v in s["compare"]["models"].items():
            lines.append(f"| {m} | {v['p50_ratio']:.3f} | {v['p99_ratio']:.3f} | "
                         f"{v['verdict']} |")
            short.append(f"stability {m}: p50 x{v['p50_ratio']:.3f} p99 x{v['p99_ratio']:.3f} "
                         f"{v['verdict']}")
        lines.append("")
    cap_path = out / "capacity.json"
    if cap_path.exists():
        cap = json.loads(cap_path.read_text())
        d = cap["decode"]
        lines += ["## Capacity (exclusive mode) and trace rates", "",
                  "Shapes (batch, seq_len, max_new_tokens): " + ", ".join(
                      f"{m} {tuple(s)}" for m, s in cap["shapes"].items()),
                  "Request shares: " + ", ".join(f"{m} {s:.0%}" for m, s in
                                                 cap["shares"].items()),
                  "Mean service (ms, alone, closed loop): " + ", ".join(
                      f"{m} {v:.2f}" for m, v in cap["service_ms"].items()),
                  f"Exclusive capacity for this mix: {cap['capacity_rps']:.2f} req/s; traces at "
                  f"{cap['load']:.0%}: " + ", ".join(f"{m} {r:.2f}/s" for m, r in
                                                      cap["rates"].items()), "",
                  f"mistral-7b decode (batch 1, 128-token prompt): "
                  f"{d['ms_per_token']:.2f} ms/token measured "
                  f"(service {d['service_ms_new1']:.1f} ms for 1 token, "
                  f"{d['service_ms_new65']:.1f} ms for 65).", ""]
        short.append(f"capacity {cap['capacity_rps']:.2f} rps; mistral decode "
                     f"{d['ms_per_token']:.2f} ms/token")
    for process in ("poisson", "gamma"):
        rows = []
        for mode in MODES:
            p = out / f"mode-{mode}.json"
            if not p.exists():
                continue
            r = json.loads(p.read_text())
            if process not in r:
                rows.append(f"| {mode} | — | failed: {r.get('error', '?')} | | | | |")
                continue
            run = r[process]
            for model, v in run["models"].items():
                rows.append(f"| {mode} | {model} | {v['ok']}/{v['count']} | {fmt(v['p50_ms'])} "
                            f"| {fmt(v['p99_ms'])} | {v['throughput_rps']:.2f} | "
                            f"{fmt(run.get('mean_util_gpu_pct'))} |")
                short.append(f"{process:7s} {mode:9s} {model:15s} p50 {fmt(v['p50_ms']):>8s} "
                             f"p99 {fmt(v['p99_ms']):>8s} ms  util "
                             f"{fmt(run.get('mean_util_gpu_pct'))}%")
        title = "Poisson" if process == "poisson" else f"Gamma (cv {GAMMA_CV:g})"
        lines += [f"## {title} trace", "",
                  "| mode | model | ok/count | p50 ms | p99 ms | throughput req/s | "
                  "mean GPU util % (run) |", "|---|---|---|---|---|---|---|", *rows, ""]
    co = []
    for mode in MODES:
        p = out / f"mode-{mode}.json"
        if p.exists() and "corun" in (r := json.loads(p.read_text())):
            c = r["corun"]
            co.append(f"| {mode} | {c['alone_rps_distilbert-base']:.1f} | "
                      f"{c['alone_rps_distilgpt2']:.1f} | {c['together_rps_distilbert-base']:.1f}"
                      f" | {c['together_rps_distilgpt2']:.1f} | {c['progress_sum']:.2f} |")
            short.append(f"co-run {mode:9s} progress sum {c['progress_sum']:.2f}")
            if mode == "mps":
                att = r.get("backend", {}).get("mps_attach", {})
                short.append(f"mps attach all={att.get('all_attached')} daemon gone after="
                             f"{r.get('mps_daemon_gone')}")
    if co:
        lines += ["## Co-run, closed loop (one outstanding request per model)", "",
                  "Progress sum = Σ together/alone throughput: 1.0 = no gain from sharing, "
                  "2.0 = perfect overlap.", "",
                  "| mode | distilbert alone req/s | distilgpt2 alone | distilbert together | "
                  "distilgpt2 together | progress sum |", "|---|---|---|---|---|---|", *co, ""]
    (out / "seed-study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(["", "==== gpu_check summary ====", *short]), flush=True)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("env", "overhead", "mode", "report"))
    ap.add_argument("mode", nargs="?")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--trace-s", type=float, default=25.0)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--command", default="bash benchmarks/gpu_check.sh")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if a.what == "env":
        cmd_env(a.out)
    elif a.what == "overhead":
        cmd_overhead(a.out, a.n)
    elif a.what == "mode":
        cmd_mode(a.mode, a.out, a.trace_s, a.quick)
    else:
        cmd_report(a.out, a.command)
    return {}


if __name__ == "__main__":
    main()
