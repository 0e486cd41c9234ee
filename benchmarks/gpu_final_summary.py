"""The summary table of benchmarks/gpu_final.sh (printed last) and its summary.json.

Reads what the steps left: the seed study's STUDY_DIR (grid cells: ok requests per model outside
warm-up, p50/p99 latency per model; capacity: the GPU bracket [low, high] and the simulator's
prescreen), the multi-GPU check's summary.json (wall times, ratio, compare verdicts) and the
stability check's stability.json. Any of them may be missing (a step that did not run or ran
out of time): the table says so instead of failing.

Usage: python benchmarks/gpu_final_summary.py --study DIR [--multi summary.json]
       [--stability stability.json] [--steps steps.tsv] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def cell_stats(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Per model: ok rows outside warm-up, their p50/p99 latency (ms), rows that are not ok."""
    import pyarrow.compute as pc

    from traceforge.record import read_timeline

    table = read_timeline(run_dir)
    keep = pc.invert(pc.fill_null(table.column("warmup"), False))
    table = table.filter(keep)
    out: dict[str, dict[str, Any]] = {}
    models = table.column("model").to_pylist()
    status = np.array(table.column("status").to_pylist(), dtype=object)
    sched = table.column("scheduled_ns").to_numpy().astype(np.float64)
    done = table.column("done_ns").fill_null(-1).to_numpy().astype(np.float64)
    names = np.array(models, dtype=object)
    for model in sorted(set(models)):
        pick = names == model
        ok = pick & (status == "ok") & (done >= 0)
        lat = (done[ok] - sched[ok]) / 1e6
        out[model] = {"ok": int(ok.sum()), "not_ok": int(pick.sum() - ok.sum()),
                      "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
                      "p99_ms": float(np.percentile(lat, 99)) if lat.size else None}
    return out


def study_summary(root: Path) -> dict[str, Any]:
    data = json.loads((root / "study.json").read_text())
    cells = []
    for cell in data["cells"]:
        if cell["kind"] != "grid":
            continue
        entry = {"name": cell["name"], "mix": cell["mix"], "coords": cell["coords"],
                 "status": cell["status"], "elapsed_s": cell.get("elapsed_s"),
                 "where": cell.get("where"), "error": cell.get("error")}
        run_dir = root / cell["run_dir"]
        if cell["status"] == "complete" and run_dir.exists():
            try:
                entry["models"] = cell_stats(run_dir)
            except Exception as exc:  # a damaged cell must not hide the others
                entry["error"] = f"summary: {type(exc).__name__}: {exc}"
        cells.append(entry)
    caps = []
    for cap in data.get("capacity", []):
        caps.append({k: cap.get(k) for k in ("mix", "config", "kind", "load", "low", "high",
                                             "converged", "stopped")}
                    | {"probes": [(p["load"], p["met"]) for p in cap.get("probes", [])]})
    return {"name": data.get("name"), "status": data.get("status"), "counts": data.get("counts"),
            "cells": cells, "capacity": caps}


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _cap(x: float | None) -> str:
    return "null" if x is None else f"{x:.3g}"


def print_study(s: dict[str, Any]) -> list[str]:
    lines = [f"seed study: {s['status']}, cells {s['counts']}"]
    cap_of = {}
    for c in s["capacity"]:
        key = (c["mix"], json.dumps(c["config"], sort_keys=True))
        cap_of.setdefault(key, {})[c["kind"]] = c
    lines.append(f"{'mix':<8}{'mode':<10}{'model':<16}{'ok':>6}{'not ok':>7}{'p50 ms':>9}"
                 f"{'p99 ms':>9}  "
                 f"capacity GPU [low, high] (stopped) | prescreen")
    low_cells = 0
    for cell in s["cells"]:
        config = {k: v for k, v in cell["coords"].items() if k != "load"}
        mode = str(config.get("mode", "-"))
        caps = cap_of.get((cell["mix"], json.dumps(config, sort_keys=True)), {})
        gpu, pre = caps.get("capacity"), caps.get("prescreen")
        cap_txt = "-" if gpu is None else (f"[{_cap(gpu['low'])}, {_cap(gpu['high'])}] "
                                            f"({gpu['stopped']})")
        cap_txt += " | " + ("-" if pre is None else _cap(pre["load"]))
        models = cell.get("models")
        if not models:
            lines.append(f"{cell['mix']:<8}{mode:<10}{'(' + cell['status'] + ')':<16}"
                         f"{'':>31}  {cap_txt}  {cell.get('error') or ''}"[:160])
            continue
        if min(m["ok"] for m in models.values()) < 500:
            low_cells += 1
        for i, (model, m) in enumerate(models.items()):
            lines.append(f"{cell['mix'] if i == 0 else '':<8}{mode if i == 0 else '':<10}"
                         f"{model:<16}{m['ok']:>6}{m['not_ok']:>7}{_fmt(m['p50_ms']):>9}"
                         f"{_fmt(m['p99_ms']):>9}"
                         f"  {cap_txt if i == 0 else ''}")
    done = sum(1 for c in s["cells"] if c.get("models"))
    lines.append(f"grid cells measured: {done} of {len(s['cells'])}; with < 500 ok requests "
                 f"(outside warm-up) for some model: {low_cells}")
    return lines


def print_multi(m: dict[str, Any]) -> list[str]:
    wall = m.get("wall_s") or {}
    verdicts = m.get("verdicts") or {}
    flat = [v for d in verdicts.values() for v in d.values()]
    ratio = m.get("ratio")
    lines = [f"multi-GPU: wall one GPU {_fmt(wall.get('one-gpu'))} s, two GPUs "
             f"{_fmt(wall.get('two-gpu'))} s, ratio "
             + ("n/a" if ratio is None else f"{ratio:.1%}") + " (target <= 55 %); status "
             + str(m.get("status"))]
    lines.append(f"compare verdicts (1 GPU vs 2 GPUs): {sum(v == 'same' for v in flat)} same "
                 f"of {len(flat)}")
    for cell, d in sorted(verdicts.items()):
        lines.append(f"  {cell}: " + ", ".join(f"{k} {v}" for k, v in sorted(d.items())))
    return lines


def print_stability(st: dict[str, Any]) -> list[str]:
    models = (st.get("compare") or {}).get("models", {})
    return ["stability (same trace twice): " + (", ".join(
        f"{k} p50 x{v.get('p50_ratio', float('nan')):.3f} p99 x{v.get('p99_ratio', float('nan')):.3f}"
        f" {v.get('verdict')}" for k, v in sorted(models.items())) or "no result")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", type=Path)
    ap.add_argument("--multi", type=Path)
    ap.add_argument("--stability", type=Path)
    ap.add_argument("--steps", type=Path, help="TSV: step, exit code, seconds, MPS left")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    summary: dict[str, Any] = {}
    lines = ["==== gpu_final summary ===="]
    if args.steps and args.steps.exists():
        summary["steps"] = []
        for row in args.steps.read_text().splitlines():
            step, rc, secs, mps = [*row.split("\t"), "", "", "", ""][:4]
            summary["steps"].append({"step": step, "rc": rc, "seconds": secs, "mps_left": mps})
            lines.append(f"step {step}: exit {rc}, {secs} s, MPS processes left: {mps or 'none'}")
    if args.study and (args.study / "study.json").exists():
        summary["seed_study"] = study_summary(args.study)
        lines += print_study(summary["seed_study"])
    else:
        lines.append("seed study: no study.json (step 1 did not run or did not start)")
    if args.multi and args.multi.exists():
        summary["multi_gpu"] = json.loads(args.multi.read_text())
        lines += print_multi(summary["multi_gpu"])
    else:
        lines.append("multi-GPU: no summary.json (step 2 did not run or did not finish)")
    if args.stability and args.stability.exists():
        summary["stability"] = json.loads(args.stability.read_text())
        lines += print_stability(summary["stability"])
    if args.json:
        try:
            args.json.write_text(json.dumps(summary, indent=1, default=str) + "\n")
        except OSError as exc:  # the table below still gets printed
            lines.append(f"(summary.json not written: {exc})")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
