"""GPU check helper behind ``benchmarks/gpu_check.sh`` (one device call runs all of it).

Subcommands, each a separate process:

    env       GPU, driver, package versions, MPS tools → env.json
    report    gpu-check.md from what the call left in --out: the harness overhead
              (overhead.json), the service stability (stability.json, both from
              benchmarks/gpu_serving_check.py) and the seed study in --study (its capacity per
              mix and sharing mode, its grid cells, from ``traceforge report STUDY_DIR --json``);
              the short table is printed last

The seed study itself is ``traceforge study studies/seed-study.toml`` (benchmarks/gpu_study.sh).
This module also holds the small replay helpers benchmarks/gpu_serving_check.py uses: a closed-
loop trace, a replay on an already started resident backend, a run's timeline as numpy columns.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

# GPU_CHECK_DRY=1: the same helpers on the CPU with tiny stand-ins (to test them without a GPU).
DRY = os.environ.get("GPU_CHECK_DRY") == "1"
DRY_ZOO = {"distilbert-base": "tiny-bert", "distilgpt2": "tiny-gpt2", "mistral-7b": "tiny-llama"}


def zoo_of(model: str) -> str:
    return DRY_ZOO.get(model, model) if DRY else model


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pct(values, q: float) -> float | None:
    values = np.asarray(values, dtype=float)
    return None if values.size == 0 else float(np.percentile(values, q))


# -- replay helpers (benchmarks/gpu_serving_check.py) -------------------------------------------
def closed_trace(model: str, n: int, shape: tuple[int, int, int]):
    from traceforge.schema import Trace, conform_trace_table

    bs, seq, new = shape
    table = conform_trace_table(pa.table({"request_id": np.arange(n, dtype=np.int64),
                      "arrival_ns": np.zeros(n, np.int64), "model": [model] * n,
                      "batch_size": np.full(n, bs, np.int32), "seq_len": np.full(n, seq, np.int32),
                      "max_new_tokens": np.full(n, new, np.int32)}))
    return Trace(table=table, meta={"source": {"generator": "benchmarks/gpu_check.py"}})


async def replay(backend, clock, trace, run_dir: Path, **opts):
    """Replay ``trace`` on an already started ``backend`` (kept started afterwards)."""
    from traceforge.replay import ModelInfo, ReplayOptions, replay_async
    from traceforge.schema import read_trace, write_trace
    from traceforge.study.runner import KeepStarted  # one adaptor for the checks and studies

    # The trace as a file beside the run (a run directory must be new or empty, and never hold
    # its input), read back so the replay sees exactly what `traceforge replay` would.
    path = run_dir.with_name(f"{run_dir.name}.trace.parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_trace(trace.table, path, trace.meta)
    trace = read_trace(path)
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


# -- env ----------------------------------------------------------------------------------------
def cmd_env(out: Path) -> None:
    import torch
    import transformers

    from traceforge.gpu.cuda import gpu_info
    from traceforge.gpu.mps import mps_processes

    info = {"gpu": gpu_info(0) if not DRY else {"name": "cpu (dry run)"},
            "torch": torch.__version__, "torch_cuda": torch.version.cuda,
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


# -- report -------------------------------------------------------------------------------------
def fmt(v, spec=".1f") -> str:
    return "—" if v is None or v != v else format(v, spec)  # v != v: NaN (no gpu_ns on a CPU)


def overhead_section(o: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The alternating-pass yardstick (gpu_serving_check.py overhead): markdown, short lines."""
    lines = [f"## Harness overhead ({o['model']}, bucket {o['bucket']}, {o['compile']})", "",
             f"{o['passes']} alternating passes of {o['requests_per_pass']} requests; medians "
             "(min–max):", "", "| loop | req/s | harness / bare |", "|---|---|---|"]
    for k, label in (("bare", "bare loop (same bucket, fresh inputs)"),
                     ("c1", "harness, concurrency 1"), ("c2", "harness, concurrency 2")):
        r = o["rps"][k]
        ratio = "1" if k == "bare" else (f"{o['ratio_of_medians'][k]:.3f} "
                                          f"({o['ratio_' + k]['min']:.3f}–"
                                          f"{o['ratio_' + k]['max']:.3f})")
        lines.append(f"| {label} | {r['median']:.1f} ({r['min']:.1f}–{r['max']:.1f}) | {ratio} |")
    d = o["done_sent_minus_gpu_us_c1"]
    lines += ["", f"done − sent − gpu_ns at concurrency 1: p50 {fmt(d['p50'], '.0f')} µs, p99 "
              f"{fmt(d['p99'], '.0f')} µs; NVML utilisation of a 6 s saturated run (c=2): "
              f"{fmt(o['util_run'].get('mean_util_gpu_pct'))} %", ""]
    short = [f"overhead: harness/bare c1 {o['ratio_of_medians']['c1']:.3f} c2 "
             f"{o['ratio_of_medians']['c2']:.3f}; done-sent-gpu p50 {fmt(d['p50'], '.0f')} us"]
    return lines, short


def stability_section(s: dict[str, Any]) -> tuple[list[str], list[str]]:
    lines = ["## Service stability (one trace replayed twice, `traceforge compare`)", "",
             "| model | p50 ratio | p99 ratio | verdict |", "|---|---|---|---|"]
    short = []
    for m, v in s["compare"]["models"].items():
        lines.append(f"| {m} | {v['p50_ratio']:.3f} | {v['p99_ratio']:.3f} | {v['verdict']} |")
        short.append(f"stability {m}: p50 x{v['p50_ratio']:.3f} p99 x{v['p99_ratio']:.3f} "
                     f"{v['verdict']}")
    return [*lines, ""], short


def study_report(study_dir: Path) -> dict[str, Any]:
    """``traceforge report STUDY_DIR --json`` (the CLI, so this is what a user would read)."""
    proc = subprocess.run([sys.executable, "-m", "traceforge", "report", str(study_dir),
                           "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"traceforge report {study_dir} --json: exit {proc.returncode}: "
                           f"{proc.stderr.strip()[-300:]}")
    return json.loads(proc.stdout)


def _bracket(low, high) -> str:
    return f"[{fmt(low, '.3g')}, {fmt(high, '.3g')}]"


def _mean(stat: dict[str, Any] | None) -> float | None:
    return None if not stat else stat.get("mean")


def study_section(r: dict[str, Any], study_dir: Path,
                  min_ok: int = 500) -> tuple[list[str], list[str]]:
    """The seed study's capacity per mix and configuration, and its grid cells."""
    counts = r["counts"]
    lines = [f"## Seed study `{r['name']}` ({r['status']}): {counts['usable']} of "
             f"{counts['cells']} cells usable", "",
             f"Study directory `{study_dir}`; full report: `traceforge report {study_dir}`.", "",
             *(f"- {note}" for note in r["notes"]), ""]
    short = [f"study {r['name']}: {r['status']}, {counts['usable']}/{counts['cells']} cells "
             f"usable {counts['by_status']}"]
    prescreen = {(c["mix"], c["config_label"]): c for c in r["capacity_summary"]
                 if c["kind"] == "prescreen"}
    lines += [f"### Capacity (load multiplier meeting the SLO {json.dumps(r['capacity_slo'])})",
              "", "| mix | configuration | measured (mean) | bracket | searches | none met | "
              "simulated prescreen |", "|---|---|---|---|---|---|---|"]
    for c in r["capacity_summary"]:
        if c["kind"] != "capacity":
            continue
        pre = prescreen.get((c["mix"], c["config_label"]))
        pre_txt = "—" if pre is None else fmt(_mean(pre["load"]), ".3g")
        load = fmt(_mean(c["load"]), ".3g")
        lines.append(f"| {c['mix']} | {c['config_label']} | {load} | "
                     f"{_bracket(c['low'], c['high'])} | {c['searches']} | {c['none_met']} | "
                     f"{pre_txt} |")
        short.append(f"capacity {c['mix']:8s} {c['config_label']:16s} {load:>7s} "
                     f"{_bracket(c['low'], c['high'])} | prescreen {pre_txt}")
    lines += ["", "### Grid cells (pooled over repeats)", "",
              "| mix | configuration | load | model | ok requests | p50 ms | p99 ms | attainment "
              "| goodput req/s |", "|---|---|---|---|---|---|---|---|---|"]
    low = []
    for a in r["aggregates"]:
        if a["kind"] != "grid":
            continue
        for model, m in a["models"].items():
            ok = m["pooled"]["requests_ok"]
            lines.append(f"| {a['mix']} | {a['config_label']} | {a['level']:g} | {model} | {ok} "
                         f"| {fmt(_mean(m['p50_ms']))} | {fmt(_mean(m['p99_ms']))} | "
                         f"{fmt(_mean(m['attainment']), '.3f')} | "
                         f"{fmt(_mean(m['goodput_rps']), '.2f')} |")
            if model.startswith("("):  # "(all)": in the table, not in the per-model checks
                continue
            if ok < min_ok:
                low.append(f"{a['mix']}/{a['config_label']}/{model} {ok}")
            short.append(f"{a['mix']:8s} {a['config_label']:16s} {model:16s} ok {ok:>6d} p50 "
                         f"{fmt(_mean(m['p50_ms'])):>8s} p99 {fmt(_mean(m['p99_ms'])):>8s} ms")
    short.append(f"grid (mix, configuration, model) with < {min_ok} ok requests: {len(low)}"
                 + (f" ({', '.join(low[:4])})" if low else ""))
    if r["incomplete"]:
        lines += ["", f"Cells not in the numbers: {len(r['incomplete'])}", ""]
        lines += [f"- {c['name']}: {c['reason']}" for c in r["incomplete"][:20]]
    return [*lines, ""], short


def cmd_report(out: Path, study_dir: Path | None, command: str) -> None:
    env = json.loads((out / "env.json").read_text()) if (out / "env.json").exists() else {}
    gpu = env.get("gpu", {})
    lines = [f"# GPU check on {gpu.get('name', '?')}", "",
             f"- card: {gpu.get('name')}, driver {gpu.get('driver')}, "
             f"{(gpu.get('memory_total_bytes') or 0) / 2**30:.1f} GiB",
             f"- software: torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), "
             f"transformers {env.get('transformers')}, python {env.get('python')}",
             f"- date (UTC): {env.get('date_utc')}",
             f"- command: `{command}` (one device call; full JSON + run directories in the "
             "call's output)", ""]
    short: list[str] = []
    parts = [("overhead.json", overhead_section), ("stability.json", stability_section)]
    for name, section in parts:
        path = out / name
        if not path.exists():
            lines += [f"({name}: not written; see gpu_check.log)", ""]
            continue
        try:
            more, more_short = section(json.loads(path.read_text()))
        except (KeyError, TypeError, ValueError) as exc:  # one bad file must not hide the rest
            more, more_short = [f"({name} unreadable: {type(exc).__name__}: {exc})", ""], []
        lines += more
        short += more_short
    if study_dir is not None and (study_dir / "study.json").exists():
        try:
            more, more_short = study_section(study_report(study_dir), study_dir)
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            more = [f"(seed study in {study_dir}: no report: {type(exc).__name__}: {exc})", ""]
            more_short = [more[0]]
        lines += more
        short += more_short
    elif study_dir is not None:
        lines += [f"(seed study: no study.json in {study_dir}; see gpu_check.log)", ""]
        short.append("seed study: not run")
    mps = out / "mps-after-study.txt"
    if mps.exists():
        short.append(f"MPS processes after the study: {mps.read_text().strip() or 'none'}")
    (out / "gpu-check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(["", "==== gpu_check summary ====", *short]), flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("env", "report"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--study", type=Path, help="report: the seed study's directory")
    ap.add_argument("--command", default="bash benchmarks/gpu_check.sh")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.what == "env":
        cmd_env(a.out)
    else:
        cmd_report(a.out, a.study, a.command)


if __name__ == "__main__":
    main()
