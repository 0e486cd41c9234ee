"""The summary of ``benchmarks/gpu_zoo.sh``: per run and model, ok / all rows, the other
statuses with their first error, p50 / p99 latency (done - scheduled, ok rows), mean GPU time,
pre-warm seconds and buckets; written to OUT/zoo-summary.{md,json}, the table printed.

    python benchmarks/gpu_zoo_summary.py WORK OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from traceforge.record import RunManifest, read_timeline


def summarise(run_dir: Path, rc: str) -> dict:
    out: dict = {"run": run_dir.name, "rc": rc, "models": {}}
    try:
        manifest = RunManifest.load(run_dir)
    except Exception as exc:  # no run.json: the replay failed before it wrote one
        out["error"] = f"{type(exc).__name__}: {exc}"[:300]
        return out
    out["status"] = manifest.get("status")
    info = manifest.get("backend_info") or {}
    out["compile"] = info.get("compile")
    out["inline"] = info.get("inline_requests")
    per_model = info.get("models") or {}
    t = read_timeline(run_dir)
    for model in sorted(set(t.column("model").to_pylist())):
        m = t.filter(pc.equal(t.column("model"), model))
        status = np.asarray(m.column("status").to_pylist())
        ok = status == "ok"
        row: dict = {"rows": int(m.num_rows), "ok": int(ok.sum()),
                     "other": {s: int((status == s).sum()) for s in set(status.tolist()) - {"ok"}}}
        errors = [e for e in m.column("error").to_pylist() if e]
        row["first_error"] = errors[0][:200] if errors else None
        if ok.any():
            done = m.column("done_ns").to_numpy(zero_copy_only=False).astype(float)[ok]
            sched = m.column("scheduled_ns").to_numpy(zero_copy_only=False).astype(float)[ok]
            lat = (done - sched) / 1e6
            row["p50_ms"] = float(np.percentile(lat, 50))
            row["p99_ms"] = float(np.percentile(lat, 99))
            gpu = m.column("gpu_ns").to_numpy(zero_copy_only=False).astype(float)[ok]
            row["gpu_ms_mean"] = float(np.nanmean(gpu) / 1e6) if np.isfinite(gpu).any() else None
        mi = per_model.get(model) or {}
        pre = mi.get("prewarm") or {}
        row.update(zoo=mi.get("zoo"), compile=mi.get("compile"), dtype=mi.get("dtype"),
                   prewarm_s=pre.get("seconds"), buckets=len(pre.get("buckets") or []),
                   ready_s=mi.get("ready_s"))
        out["models"][model] = row
    return out


def f(x) -> str:
    return "—" if x is None else f"{x:.2f}"


def main(work: Path, out_dir: Path) -> int:
    rcs = {}
    rc_file = work / "rc.txt"
    if rc_file.exists():
        for line in rc_file.read_text().splitlines():
            name, _, rest = line.partition(" ")
            rcs[name] = rest
    runs = [summarise(work / "runs" / name, rc) for name, rc in rcs.items()]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "zoo-summary.json").write_text(json.dumps(runs, indent=1))
    lines = ["| run | rc | model (zoo) | ok / rows | other statuses | p50 ms | p99 ms | "
             "GPU ms | pre-warm s (buckets) | first error |", "|" + "---|" * 10]
    bad = 0
    for r in runs:
        if not r["models"]:
            bad += 1
            lines.append(f"| {r['run']} | {r['rc']} | — | — | — | — | — | — | — | "
                         f"{r.get('error', 'no rows')} |")
        for model, v in r["models"].items():
            bad += v["ok"] < v["rows"]
            lines.append(
                f"| {r['run']} | {r['rc']} | {model} ({v['zoo']}, {v['compile']}) | "
                f"{v['ok']} / {v['rows']} | {v['other'] or ''} | {f(v.get('p50_ms'))} | "
                f"{f(v.get('p99_ms'))} | {f(v.get('gpu_ms_mean'))} | "
                f"{f(v['prewarm_s'])} ({v['buckets']}) | {v['first_error'] or ''} |")
    lines.append("")
    lines.append(f"runs with a model short of all-ok (or no rows): {bad}")
    (out_dir / "zoo-summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
