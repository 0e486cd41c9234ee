"""How far to trust a simulation: simulate the traces of real runs and compare the latencies.

For every measured run directory (a ``replay --backend resident`` run), the trace it replayed is
simulated with a profile in the run's mode, batching settings and time scale, and per model the
measured and simulated p50/p99 latency (``done_ns - scheduled_ns``, ok rows outside warmup) are
set side by side with their relative error ``simulated / measured - 1``.

    python -m traceforge.simulate.fidelity --profile P.json RUN_DIR... [-o TABLE.md] [--json]
    python -m traceforge.simulate.fidelity --oracle RUN_DIR...   (the queueing model alone)
    python -m traceforge.simulate.fidelity --oracle --oracle-handoff exact RUN_DIR...
    python -m traceforge.simulate.fidelity --profile P.json --handoff-from OTHER_RUN RUN_DIR...

``--handoff-from`` measures the executor hand-off (:func:`~traceforge.simulate.measure.handoff_gaps`)
from other runs for a profile made before ``traceforge profile`` measured it; never pass the
runs being compared (that would fit the model to them).
"""

from __future__ import annotations

import argparse
import contextlib
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


def _run_zoo(info: dict[str, Any], trace) -> dict[str, str] | None:
    """The zoo entry each trace model ran as (``backend_info.zoo``: the spec's, or ``replay
    --zoo``'s), for the models of ``trace``; None for a run that did not record it."""
    zoo = info.get("zoo")
    if not isinstance(zoo, dict):
        return None
    names = set(trace.table.column("model").unique().to_pylist())
    return {k: v for k, v in zoo.items() if k in names and isinstance(v, str)} or None


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
                 cold_start=cold_start, zoo=_run_zoo(info, trace))
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


# Size classes of the request running beside another model's, as a multiple of its model's
# reference size (the shape the profile's co-runs used): <= 1.5x, 1.5-3x, 3-6x, > 6x.
SIZE_CLASS_EDGES = (1.5, 3.0, 6.0)
SIZE_CLASS_LABELS = ("<= 1.5x", "1.5-3x", "3-6x", "> 6x")


def slowdown_by_corunner_size(run_dir: Path | str, profile: Profile) -> dict[str, Any]:
    """Per model of a run in a sharing mode: its co-run slowdown split by how large the other
    models' requests running beside it were (tokens, or pixels for vision models, at their
    bucket, over the size of their model's reference shape).

    Each ok request's excess over its alone service (the profile's grid x ``alone_scale``) is
    fitted by least squares to the time each size class of other requests overlapped it: under
    processor sharing, ``excess = sum_c T_c (1 - 1/s_c)``. It checks the profile's co-run
    slowdowns against a real run, class by class: on the H200 under MPS distilgpt2's was
    1.16-1.18 at the reference shapes and 1.60-1.77 beside distilbert-base requests of more
    than 6x its 1 x 128 reference (2026-12-01 02:45-03:09 UTC, before the profile measured
    sizes; docs/results/simulator-fidelity-h200.md). Returns ``{model: {"slowdown": [per class
    or None], "overlap_ms": [per class], "profile": the profile's slowdown at the reference
    shapes or None, "profile_by_class": [per class: the profile's slowdown beside those
    requests, overlap-weighted, where it has a size table, else None]}}``; {} for
    ``exclusive`` (nothing overlaps) or a run with one model."""
    from traceforge.simulate.simulator import map_models

    run_dir = Path(run_dir)
    manifest = RunManifest.load(run_dir)
    mode = manifest.get("mode") or (manifest.get("backend_info") or {}).get("mode")
    t = read_timeline(run_dir)
    t = t.filter(pc.equal(t.column("status"), "ok"))
    names = sorted(set(t.column("model").to_pylist()))
    if mode not in profile.modes:
        raise BadInput("the run's mode is not measured in this profile", source=run_dir,
                       key="mode", value=mode, allowed=", ".join(profile.modes))
    if mode == "exclusive" or len(names) < 2:
        return {}
    trace = read_trace(_trace_of(run_dir, manifest))
    mapping = map_models(names, trace, profile,
                         zoo=_run_zoo(manifest.get("backend_info") or {}, trace))
    mp = profile.modes[mode]
    col = {c: t.column(c).to_numpy(zero_copy_only=False) for c in
           ("model", "batch_size", "seq_len", "max_new_tokens", "service_start_ns",
            "service_end_ns", "bucket_batch_size", "bucket_seq_len")}
    model = np.asarray(col["model"])
    start = col["service_start_ns"].astype(np.float64)
    end = col["service_end_ns"].astype(np.float64)
    ratio = np.full(model.size, np.nan)
    alone = np.zeros(model.size)
    for name in names:
        pm = profile.models[mapping[name]]
        rows = model == name
        # the bucket that ran where the backend recorded it, else the profile's bucketing
        b = np.asarray(col["bucket_batch_size"][rows], dtype=np.float64)
        sq = np.asarray(col["bucket_seq_len"][rows], dtype=np.float64)
        if np.isnan(b).any() or np.isnan(sq).any():
            bb, ss = pm.bucket_shapes(col["batch_size"][rows], col["seq_len"][rows],
                                      col["max_new_tokens"][rows])
            b = np.where(np.isnan(b), bb, b)
            sq = np.where(np.isnan(sq), ss, sq)
        alone[rows] = (pm.service_ns(b, sq, col["max_new_tokens"][rows])
                       * mp.alone_scale.get(mapping[name], 1.0))
        size = pm.size_over_reference(b, sq)
        if size is not None:
            ratio[rows] = size
    size_class = np.digitize(ratio, SIZE_CLASS_EDGES)
    out: dict[str, Any] = {}
    for name in names:
        mine = np.flatnonzero(model == name)
        others = np.flatnonzero((model != name) & ~np.isnan(ratio))
        if not mine.size or not others.size:
            continue
        # the profile's slowdown of this model beside each other request: the pair's, plus
        # its size table's excess at that request's size (slowdown_by_size), if any
        o_prof = np.full(others.size, np.nan)
        sized = False
        for o in names:
            if o == name:
                continue
            sel = model[others] == o
            try:
                pair = profile.slowdown(mode, mapping[name], [mapping[name], mapping[o]])
            except BadInput:
                continue
            ex = profile.size_excess(mode, mapping[name], mapping[o], ratio[others][sel])
            sized = sized or ex is not None
            o_prof[sel] = pair + (0.0 if ex is None else ex)
        o_start, o_end, o_class = start[others], end[others], size_class[others]
        order = np.argsort(o_start)
        o_start, o_end, o_class = o_start[order], o_end[order], o_class[order]
        o_prof = o_prof[order]
        k = len(SIZE_CLASS_LABELS)
        overlap = np.zeros((mine.size, k))
        prof_acc = np.zeros(k)
        reach = np.maximum.accumulate(o_end)  # the latest end among requests started so far
        for row, i in enumerate(mine):
            # other requests that started before this one ended and ended after it started
            hi = np.searchsorted(o_start, end[i], side="left")
            lo = np.searchsorted(reach[:hi], start[i], side="right")
            if lo >= hi:
                continue
            ov = np.clip(np.minimum(o_end[lo:hi], end[i]) - np.maximum(o_start[lo:hi], start[i]),
                         0.0, None)
            np.add.at(overlap[row], o_class[lo:hi], ov)
            np.add.at(prof_acc, o_class[lo:hi], ov * o_prof[lo:hi])
        excess = (end[mine] - start[mine]) - alone[mine]
        support = overlap.sum(axis=0)
        slow: list[float | None] = [None] * k
        used = np.flatnonzero(support > 0)
        if used.size:
            coef = np.linalg.lstsq(overlap[:, used], excess, rcond=None)[0]
            for c, x in zip(used.tolist(), coef.tolist(), strict=True):
                slow[c] = round(1.0 / (1.0 - x), 4) if x < 1.0 else None
        others_p = [mapping[o] for o in names if o != name]
        try:
            measured = profile.slowdown(mode, mapping[name], [mapping[name], *others_p])
        except BadInput:
            measured = None
        # per class, the overlap-weighted mean of the profile's slowdown beside those requests
        # (only where the profile has a size table: otherwise it is "profile" in every class)
        by_class: list[float | None] = [None] * k
        if sized:
            for c in used.tolist():
                v = prof_acc[c] / support[c]
                by_class[c] = round(float(v), 4) if np.isfinite(v) else None
        out[name] = {"slowdown": slow, "overlap_ms": [round(float(v) / 1e6, 2) for v in support],
                     "profile": measured, "profile_by_class": by_class}
    return out


def handoff_from_runs(run_dirs: list[Path | str]) -> dict[str, dict[str, float]]:
    """Per mode, per zoo model: the executor hand-off (ms) measured in these runs'
    timelines (:func:`~traceforge.simulate.measure.handoff_gaps`), keyed by zoo entry so it
    applies to a profile whatever the runs called their models."""
    from traceforge.simulate.measure import handoff_ms, timeline_gaps

    by_mode: dict[str, list[dict[str, np.ndarray]]] = {}
    for run_dir in run_dirs:
        manifest = RunManifest.load(Path(run_dir))
        mode = manifest.get("mode") or (manifest.get("backend_info") or {}).get("mode")
        zoo = {m.get("name"): m.get("zoo") or m.get("name")
               for m in (manifest.get("options") or {}).get("models") or []}
        gaps = timeline_gaps(read_timeline(run_dir))
        by_mode.setdefault(mode, []).append({zoo.get(k, k): v for k, v in gaps.items()})
    return {mode: handoff_ms(g) for mode, g in by_mode.items()}


def with_handoff(profile: Profile, measured: dict[str, dict[str, float]]) -> Profile:
    """``profile`` with ``handoff_ms`` filled in where it has none: from runs of the same mode,
    else from the runs of all modes pooled by mean (the executor's code is the same in every
    mode). Values the profile measured itself are kept."""
    import dataclasses

    pooled: dict[str, list[float]] = {}
    for values in measured.values():
        for k, v in values.items():
            pooled.setdefault(k, []).append(v)
    modes = {}
    for mode, mp in profile.modes.items():
        source = measured.get(mode) or {k: float(np.mean(v)) for k, v in pooled.items()}
        fill = {}
        for name, pm in profile.models.items():
            if name in mp.handoff_ms:
                continue
            value = source.get(name, source.get(pm.zoo)) if pm.zoo else source.get(name)
            if value is not None:
                fill[name] = float(value)
        modes[mode] = dataclasses.replace(mp, handoff_ms={**fill, **mp.handoff_ms})
    return dataclasses.replace(profile, modes=modes)


def size_blind(profile: Profile) -> Profile:
    """``profile`` without its ``slowdown_by_size`` tables: the pairs' one slowdown whatever
    runs beside (the A/B of the size model, ``--size-blind``)."""
    import dataclasses

    return dataclasses.replace(profile, modes={
        mode: dataclasses.replace(mp, slowdown_by_size={}) for mode, mp in profile.modes.items()})


def pooled_way_back(profile: Profile) -> Profile:
    """``profile`` without its ``outbound_by_activity_ms`` tables: every request's way back is
    the one pooled ``outbound_ms`` with its spread ``outbound_spread_ms`` (the A/B of the
    activity model, ``--pooled-way-back``)."""
    import dataclasses

    return dataclasses.replace(profile, modes={
        mode: dataclasses.replace(mp, outbound_by_activity_ms={},
                                  outbound_by_activity_spread_ms={})
        for mode, mp in profile.modes.items()})


def oracle_run(run_dir: Path | str, handoff: str | None = None) -> dict[str, Any]:
    """Re-queue a measured run with its own measured service times: the simulator's queueing
    rules (per-model FIFO, or one global FIFO worker in ``exclusive``) with each request's
    measured ``service_end - service_start``, measured send times, and per-model transport
    (median of ``service_start - sent`` net of queueing; median of ``done - service_end``).

    ``handoff``: None re-queues without an executor hand-off (every gap between queued
    requests counts as transport, the original oracle); ``"exact"`` adds each request's own
    measured gap to the next request when that one was waiting (or arrived, and was delayed,
    inside the hand-off window: the model's mean gap), so what remains is what FIFO order and
    transport cannot explain; ``"mean"`` adds the run's mean gap per finishing model (the simulator's
    hand-off model with a perfectly measured parameter). With a hand-off the transport is the
    median ``service_start - sent`` of requests that found their worker idle.

    If this reproduces the measured latencies, the queueing model is right and any error of a
    full simulation comes from the service and interference model (the profile).
    """
    from traceforge.simulate.engine import fifo_servers
    from traceforge.simulate.measure import handoff_gaps, idle_transport_ns

    if handoff not in (None, "exact", "mean"):
        raise BadInput("unknown hand-off model", key="--oracle-handoff", value=handoff,
                       allowed="exact, mean")

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
    handoff_prev = np.empty(t.num_rows, np.int64)
    for rows in groups:
        idx = np.flatnonzero(rows)
        idx = idx[np.argsort(d["service_start_ns"][idx], kind="stable")]
        prev_end = np.concatenate(([np.iinfo(np.int64).min], d["service_end_ns"][idx][:-1]))
        handoff_prev[idx] = d["service_start_ns"][idx] - np.maximum(d["sent_ns"][idx], prev_end)
    reach = np.empty(t.num_rows, np.int64)
    back = np.empty(t.num_rows, np.int64)
    gap_after = np.zeros(t.num_rows, np.int64)
    workers = np.asarray(t.column("worker").fill_null("").to_pylist())
    if handoff is not None:
        # Requests that found their worker idle give the transport; the gap after each request
        # whose successor on the worker was already waiting is its hand-off.
        order = {}
        for w in set(workers.tolist()):
            idx = np.flatnonzero(workers == w)
            order[w] = idx[np.argsort(d["service_start_ns"][idx], kind="stable")]
        transport = idle_transport_ns(workers, models, d["sent_ns"], d["service_start_ns"],
                                      d["service_end_ns"])
        per_model = handoff_gaps(workers, models, d["sent_ns"], d["service_start_ns"],
                                 d["service_end_ns"], transport)
        mean_gap = {m: max(0.0, float(np.mean(g))) if g.size else 0.0
                    for m, g in per_model.items()}
        if handoff == "mean":
            for m, g in mean_gap.items():
                gap_after[models == m] = int(g)
        else:
            for idx in order.values():
                reach_next = d["sent_ns"][idx][1:] + np.array(
                    [transport.get(m, 0.0) for m in models[idx][1:].tolist()])
                prev_end = d["service_end_ns"][idx][:-1]
                # Waiting as the previous one ended, or (delayed) arrived inside its hand-off
                # window, whose length is the model's mean gap.
                window = np.array([mean_gap.get(m, 0.0) for m in models[idx][:-1].tolist()])
                waiting = (reach_next <= prev_end) | (
                    (reach_next < d["service_start_ns"][idx][1:])
                    & (reach_next <= prev_end + window))
                gaps = d["service_start_ns"][idx][1:] - prev_end
                gap_after[idx[:-1]] = np.where(waiting, gaps, 0)
    for m in set(models.tolist()):
        rows = models == m
        if handoff is None:
            reach[rows] = d["sent_ns"][rows] + int(np.median(handoff_prev[rows]))
        else:  # the transport above; a model that never found its worker idle: all its rows
            reach[rows] = d["sent_ns"][rows] + int(transport[m] if m in transport else np.median(
                (d["service_start_ns"] - d["sent_ns"])[rows]))
        back[rows] = int(np.median(d["done_ns"][rows] - d["service_end_ns"][rows]))
    end = np.empty(t.num_rows, np.int64)
    for rows in groups:
        idx = np.flatnonzero(rows)
        idx = idx[np.argsort(reach[idx], kind="stable")]
        _, end[idx] = fifo_servers(reach[idx], service[idx], 1,
                                   handoff_ns=gap_after[idx] if handoff else None)
    latency = (end + back - d["scheduled_ns"]) / 1e6
    measured = (d["done_ns"] - d["scheduled_ns"]) / 1e6
    out: dict[str, Any] = {"run_dir": str(run_dir), "mode": mode, "handoff": handoff,
                           "models": {}}
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


def render_corunner_size(by_run: dict[str, dict[str, Any]]) -> str:
    """Markdown: per run and model, the profile's slowdown at the reference shapes and the
    fitted one per size class (overlap ms in parentheses); where the profile has a size table
    (slowdown_by_size), each class also shows the profile's slowdown there, "fit / profile"."""
    lines = ["| run | model | profile | " + " | ".join(SIZE_CLASS_LABELS) + " |",
             "|---|---|---:|" + "---:|" * len(SIZE_CLASS_LABELS)]
    for run, models in by_run.items():
        for model, v in models.items():
            by_class = v.get("profile_by_class") or [None] * len(v["slowdown"])
            cells = [("—" if x is None else f"{x:.2f}")
                     + ("" if p is None else f" / {p:.2f}") + f" ({ms:.0f})"
                     for x, p, ms in zip(v["slowdown"], by_class, v["overlap_ms"], strict=True)]
            prof = "—" if v["profile"] is None else f"{v['profile']:.3f}"
            lines.append(f"| {Path(run).name} | {model} | {prof} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line and exit 2, like every traceforge command."""

    def error(self, message: str):  # type: ignore[override]
        print(f"fidelity: error: {message} (--help for usage)", file=sys.stderr)
        sys.exit(2)


def _check_run(run: Path, what: str) -> None:
    """``run`` is a readable run directory with ok rows to compare (BadInput otherwise): the
    report's loader refuses a corrupt run.json or timeline in one line."""
    from traceforge.analyze.rundata import load_run

    if not (run / "run.json").is_file():
        raise BadInput("not a run directory (no run.json in it)", key=what, value=str(run))
    loaded = load_run(run)
    if not np.any(loaded.ok & ~loaded.col("warmup")):
        raise BadInput("no ok rows outside warmup to compare", key=what, value=str(run))


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m traceforge.simulate.fidelity",
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
    parser.add_argument("--oracle-handoff", choices=("exact", "mean"),
                        help="with --oracle: add the executor hand-off between queued requests "
                             "(each request's measured gap, or the run's mean per model)")
    parser.add_argument("--handoff-from", type=Path, action="append", default=[],
                        metavar="RUN_DIR",
                        help="measure the executor hand-off from this run (repeatable) for a "
                             "profile without handoff_ms; never one of the compared runs")
    parser.add_argument("--by-corunner-size", action="store_true",
                        help="with --profile: each sharing-mode run's co-run slowdown per model "
                             "by the size class of the request beside it "
                             "(slowdown_by_corunner_size) instead of a simulation")
    parser.add_argument("--size-blind", action="store_true",
                        help="simulate without the profile's slowdown_by_size tables (each "
                             "pair's reference slowdown whatever runs beside): what the size "
                             "model changes, on the same runs")
    parser.add_argument("--pooled-way-back", action="store_true",
                        help="simulate without the profile's outbound_by_activity_ms tables "
                             "(one pooled way back per model): what the activity model "
                             "changes, on the same runs")
    args = parser.parse_args(argv)
    if (not args.oracle or args.by_corunner_size) and args.profile is None:
        parser.error("--profile is required (or --oracle)")
    if args.oracle and (args.size_blind or args.pooled_way_back):
        parser.error("--size-blind and --pooled-way-back simulate with a profile; --oracle "
                     "uses none")
    if args.oracle_handoff and not args.oracle:
        parser.error("--oracle-handoff needs --oracle")
    if args.handoff_from and (args.oracle or args.by_corunner_size):
        parser.error("--handoff-from feeds the simulation; --oracle and --by-corunner-size "
                     "do not simulate")
    warm = {w.strip() for w in args.warm.split(",") if w.strip()}
    unknown = sorted(warm - {Path(r).name for r in args.runs})
    if unknown:
        parser.error(f"--warm names {unknown[0]!r}, which is not one of the runs' directory "
                     "names")
    try:
        for run in args.runs:
            _check_run(run, "RUN_DIR")
        for run in args.handoff_from:
            _check_run(run, "--handoff-from")
        profile = None
        if args.profile is not None:
            profile = load_profile(args.profile)
            if args.size_blind:
                profile = size_blind(profile)
            if args.pooled_way_back:
                profile = pooled_way_back(profile)
        if args.out:  # refused before the simulations, not after them
            from traceforge.paths import check_output

            inputs = [("a run directory", r) for r in [*args.runs, *args.handoff_from]]
            if profile is not None and profile.path is not None:
                inputs.append(("the profile", profile.path))
            for run in args.runs:  # the traces the runs replayed
                with contextlib.suppress(BadInput, OSError, ValueError):
                    inputs.append(("a run's trace",
                                   _trace_of(Path(run), RunManifest.load(run))))
            check_output(args.out, inputs=inputs, key="--out",
                         replaces=(".md", ".json", ".markdown"))
        if args.by_corunner_size:
            by_size = {str(run): slowdown_by_corunner_size(run, profile) for run in args.runs}
            text = (json.dumps(by_size, indent=1) + "\n" if args.json
                    else render_corunner_size(by_size))
        elif args.oracle:
            results = [oracle_run(run, args.oracle_handoff) for run in args.runs]
        else:
            if args.handoff_from:
                compared = {p.resolve() for p in args.runs}
                if any(p.resolve() in compared for p in args.handoff_from):
                    raise BadInput("a hand-off run is also a compared run (that fits the "
                                   "model to the runs it is judged on)", key="--handoff-from")
                profile = with_handoff(profile, handoff_from_runs(args.handoff_from))
            results = [compare_run(run, profile, seed=args.seed,
                                   cold_start=Path(run).name not in warm) for run in args.runs]
    except BadInput as exc:
        print(f"fidelity: error: {exc}", file=sys.stderr)
        return 2
    if args.by_corunner_size and not any(by_size.values()):
        print("fidelity: error: --by-corunner-size: no run has two models sharing the GPU in a "
              "mode the profile measured (exclusive runs and one-model runs have no co-runner)",
              file=sys.stderr)
        return 2
    if not args.by_corunner_size:
        text = (json.dumps(results, indent=1) + "\n") if args.json else render_markdown(results)
    if args.out:
        from traceforge.schema import atomic_write

        try:
            atomic_write(args.out, lambda tmp: tmp.write_text(text))
        except BadInput as exc:
            print(f"fidelity: error: {exc}", file=sys.stderr)
            return 2
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
