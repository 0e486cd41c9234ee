"""How far to trust a simulation: simulate the traces of real runs and compare the latencies.

For every measured run directory (a ``replay --backend resident`` run), the trace it replayed is
simulated with a profile in the run's mode, batching settings and time scale, and per model the
measured and simulated p50/p99 latency (``done_ns - scheduled_ns``, ok rows outside warmup) are
set side by side with their relative error ``simulated / measured - 1``.

    python -m traceforge.simulate.fidelity --profile P.json RUN_DIR... [-o TABLE.md] [--json]
    python -m traceforge.simulate.fidelity --oracle RUN_DIR...   (the queueing model alone)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from traceforge.errors import BadInput
from traceforge.record import RunManifest, read_timeline
from traceforge.schema import read_trace
from traceforge.simulate.profile import Profile, load_profile
from traceforge.simulate.simulator import simulate


def latencies_by_model(run_dir: Path | str) -> dict[str, dict[str, Any]]:
    """Per model: latencies and service times (ms) of ok rows outside warmup, and the count of
    the model's other rows outside warmup. Reads the run with the report's loader."""
    from traceforge.analyze.rundata import NS_PER_MS, load_run

    run = load_run(run_dir)
    keep = ~run.col("warmup")
    out: dict[str, dict[str, Any]] = {}
    for code, name in enumerate(run.models):
        rows = keep & (run.model_code == code)
        ok = rows & run.ok
        out[name] = {"latency_ms": run.latency[ok] / NS_PER_MS,
                     "not_ok": int(rows.sum() - ok.sum()),
                     "service_ms": run.service[ok] / NS_PER_MS}
    return out


def _trace_of(run_dir: Path, manifest: dict[str, Any]) -> Path:
    local = run_dir / "trace.parquet"
    if local.exists():
        return local
    recorded = (manifest.get("trace") or {}).get("path")
    if recorded and Path(recorded).exists():
        return Path(recorded)
    raise BadInput("cannot find the trace this run replayed (looked for trace.parquet in the "
                   "run directory and the path in run.json)", source=run_dir, key="trace.path",
                   value=recorded)


def compare_run(run_dir: Path | str, profile: Profile, *, seed: int = 0,
                cold_start: bool | None = True) -> dict[str, Any]:
    """Simulate the trace a measured run replayed and compare per-model latencies.

    ``cold_start=False`` for a run whose backend had already served these shapes (e.g. a
    second run on a backend kept loaded)."""
    run_dir = Path(run_dir)
    manifest = RunManifest.load(run_dir)
    info = manifest.get("backend_info") or {}
    mode = manifest.get("mode") or info.get("mode")
    if mode is None:
        raise BadInput("run.json names no sharing mode", source=run_dir, key="mode")
    options = manifest.get("options") or {}
    prewarm = info.get("prewarm")
    if isinstance(prewarm, dict) and "enabled" in prewarm:
        cold_start = not prewarm["enabled"]  # a pre-warmed run has no cold shapes
    trace_path = _trace_of(run_dir, manifest)
    trace = read_trace(trace_path)
    measured = latencies_by_model(run_dir)
    with tempfile.TemporaryDirectory(prefix="traceforge-fidelity-") as tmp:
        simulate(trace, Path(tmp) / "sim", profile=profile, mode=mode,
                 max_batch=int(info.get("max_batch") or 1),
                 max_wait_ms=float(info.get("max_wait_ms") or 0.0),
                 time_scale=float(options.get("time_scale") or 1.0),
                 warmup_s=float(options.get("warmup_s") or 0.0), seed=seed,
                 cold_start=cold_start)
        simulated = latencies_by_model(Path(tmp) / "sim")
    models: dict[str, Any] = {}
    for model, real in measured.items():
        sim = simulated.get(model, {}).get("latency_ms", np.empty(0))
        row: dict[str, Any] = {"count": int(real["latency_ms"].size), "not_ok": real["not_ok"]}
        # Mean service time (service_end - service_start) on both sides separates an error in
        # the service model (profile) from one in the queueing/interference model.
        sim_service = simulated.get(model, {}).get("service_ms", np.empty(0))
        row["measured_service_ms"] = (float(np.nanmean(real["service_ms"]))
                                      if real["service_ms"].size else None)
        row["simulated_service_ms"] = float(np.nanmean(sim_service)) if sim_service.size else None
        for q in (50, 99):
            m = float(np.percentile(real["latency_ms"], q)) if real["latency_ms"].size else None
            s = float(np.percentile(sim, q)) if sim.size else None
            row[f"measured_p{q}_ms"] = m
            row[f"simulated_p{q}_ms"] = s
            row[f"error_p{q}"] = (s / m - 1.0) if (m and s is not None) else None
        models[model] = row
    return {"run_dir": str(run_dir), "mode": mode, "trace": str(trace_path),
            "cold_start": cold_start, "models": models}


def oracle_run(run_dir: Path | str) -> dict[str, Any]:
    """Re-queue a measured run with its own measured service times: the simulator's queueing
    rules (per-model FIFO, or one global FIFO worker in ``exclusive``) with each request's
    measured ``service_end - service_start``, measured send times, and per-model transport
    (5th percentile of ``service_start - sent``; median of ``done - service_end``).

    If this reproduces the measured latencies, the queueing model is right and any error of a
    full simulation comes from the service and interference model (the profile).
    """
    from traceforge.simulate.engine import fifo_servers

    run_dir = Path(run_dir)
    manifest = RunManifest.load(run_dir)
    mode = manifest.get("mode") or (manifest.get("backend_info") or {}).get("mode")
    t = read_timeline(run_dir)
    t = t.filter(pc.equal(t.column("status"), "ok"))
    d = {c: t.column(c).to_numpy(zero_copy_only=False) for c in
         ("scheduled_ns", "sent_ns", "service_start_ns", "service_end_ns", "done_ns")}
    models = np.asarray(t.column("model").to_pylist())
    warm = t.column("warmup").to_numpy(zero_copy_only=False)
    service = (d["service_end_ns"] - d["service_start_ns"]).astype(np.int64)
    groups = [np.ones(t.num_rows, bool)] if mode == "exclusive" else [
        models == m for m in set(models.tolist())]
    # Hand-off delay of each request: from when it was sent, or its worker freed up if later,
    # to its start (queueing excluded, so a long queue does not pass for transport).
    handoff = np.empty(t.num_rows, np.int64)
    for rows in groups:
        idx = np.flatnonzero(rows)
        idx = idx[np.argsort(d["service_start_ns"][idx], kind="stable")]
        prev_end = np.concatenate(([np.iinfo(np.int64).min], d["service_end_ns"][idx][:-1]))
        handoff[idx] = d["service_start_ns"][idx] - np.maximum(d["sent_ns"][idx], prev_end)
    reach = np.empty(t.num_rows, np.int64)
    back = np.empty(t.num_rows, np.int64)
    for m in set(models.tolist()):
        rows = models == m
        reach[rows] = d["sent_ns"][rows] + int(np.median(handoff[rows]))
        back[rows] = int(np.median(d["done_ns"][rows] - d["service_end_ns"][rows]))
    end = np.empty(t.num_rows, np.int64)
    for rows in groups:
        idx = np.flatnonzero(rows)
        idx = idx[np.argsort(reach[idx], kind="stable")]
        _, end[idx] = fifo_servers(reach[idx], service[idx], 1)
    latency = (end + back - d["scheduled_ns"]) / 1e6
    measured = (d["done_ns"] - d["scheduled_ns"]) / 1e6
    out: dict[str, Any] = {"run_dir": str(run_dir), "mode": mode, "models": {}}
    for m in sorted(set(models.tolist())):
        rows = (models == m) & ~warm
        row: dict[str, Any] = {"count": int(rows.sum()), "not_ok": 0}
        for q in (50, 99):
            mv = float(np.percentile(measured[rows], q))
            sv = float(np.percentile(latency[rows], q))
            row[f"measured_p{q}_ms"], row[f"simulated_p{q}_ms"] = mv, sv
            row[f"error_p{q}"] = sv / mv - 1.0 if mv else None
        row["measured_service_ms"] = row["simulated_service_ms"] = float(
            service[rows].mean() / 1e6)
        out["models"][m] = row
    return out


def render_markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| run | mode | model | n | measured p50 ms | simulated p50 ms | error p50 | "
             "measured p99 ms | simulated p99 ms | error p99 | service ms measured / "
             "simulated |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def num(x, fmt="{:.2f}"):
        return "-" if x is None else fmt.format(x)

    for r in results:
        for model, row in r["models"].items():
            lines.append(
                f"| {Path(r['run_dir']).name} | {r['mode']} | {model} | {row['count']} | "
                f"{num(row['measured_p50_ms'])} | {num(row['simulated_p50_ms'])} | "
                f"{num(row['error_p50'], '{:+.1%}')} | {num(row['measured_p99_ms'])} | "
                f"{num(row['simulated_p99_ms'])} | {num(row['error_p99'], '{:+.1%}')} | "
                f"{num(row['measured_service_ms'])} / {num(row['simulated_service_ms'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m traceforge.simulate.fidelity",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("-o", "--out", type=Path)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warm", default="",
                        help="comma-separated run directory names whose backend was already "
                             "warm (simulated with cold_start=False)")
    parser.add_argument("--oracle", action="store_true",
                        help="re-queue each run with its own measured service times instead "
                             "of simulating them (checks the queueing model alone)")
    args = parser.parse_args(argv)
    if not args.oracle and args.profile is None:
        parser.error("--profile is required (or --oracle)")
    try:
        if args.oracle:
            results = [oracle_run(run) for run in args.runs]
        else:
            profile = load_profile(args.profile)
            warm = {w.strip() for w in args.warm.split(",") if w.strip()}
            results = [compare_run(run, profile, seed=args.seed,
                                   cold_start=Path(run).name not in warm) for run in args.runs]
    except BadInput as exc:
        print(f"fidelity: error: {exc}", file=sys.stderr)
        return 2
    text = (json.dumps(results, indent=1) + "\n") if args.json else render_markdown(results)
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
