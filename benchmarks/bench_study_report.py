"""Benchmark: `traceforge report STUDY_DIR` on a 216-cell simulated study (3 mixes × 6 loads ×
4 sharing modes × 3 repeats, ~1500 requests per cell, the shipped h200 profile), HTML included,
against a plain pass over the same cells.

Baseline (same process, same study): read every cell's timeline with pyarrow and take
np.percentile of done − scheduled per model — the least any study report must do. Then
build_study_report (build_report per cell: 5 bootstrap CIs per model, SLOs; aggregates with t
intervals; best configuration per load with compare + repeat tests) and the HTML page (one
curve figure per mix). The study is built with tests/study_helpers.py (simulate in-process).

Run: PYTHONPATH=. python benchmarks/bench_study_report.py [--requests N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DECODER = {"seq_len": {"dist": "choice", "values": [128]},
           "max_new_tokens": {"dist": "choice", "values": [16]}}
ENCODER = {"seq_len": {"dist": "choice", "values": [128]}}
MIXES = {
    "bert": {"distilbert-base": {"rate": 150.0, "slo_ms": 25.0, **ENCODER}},
    "bert-gpt2": {"distilbert-base": {"rate": 100.0, "slo_ms": 25.0, **ENCODER},
                  "distilgpt2": {"rate": 8.0, "slo_ms": 300.0, **DECODER}},
    "three": {"distilbert-base": {"rate": 60.0, "slo_ms": 25.0, **ENCODER},
              "distilgpt2": {"rate": 5.0, "slo_ms": 300.0, **DECODER},
              "mistral-7b": {"rate": 0.8, "slo_ms": 2000.0, **DECODER}},
}
LOADS = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
MODES = ["exclusive", "timeslice", "mps", "streams"]


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def _timed_cpu(fn):
    """(wall s, CPU s of this process, value): on a shared machine the CPU time is the steadier
    number."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, value


def _numpy_baseline(study_dir: Path) -> int:
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    n = 0
    for cell in sorted((study_dir / "cells").iterdir()):
        table = ds.dataset(cell / "timeline", format="parquet").to_table(
            columns=["model", "status", "scheduled_ns", "done_ns"])
        ok = pc.equal(table.column("status"), "ok").to_numpy(zero_copy_only=False)
        latency = table.column("done_ns").to_numpy() - table.column("scheduled_ns").to_numpy()
        for name in pc.unique(table.column("model")).to_pylist():
            rows = pc.equal(table.column("model"), name).to_numpy(zero_copy_only=False)
            np.percentile(latency[ok & rows], [50, 99])
        n += 1
    return n


def main(requests: int = 1500) -> dict:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from study_helpers import Config, write_study

    from traceforge.analyze.study import build_study_report
    from traceforge.analyze.study_html import write_study_html

    configs = [Config({"mode": m}, {"profile": "h200", "mode": m, "cold_start": False})
               for m in MODES]
    with tempfile.TemporaryDirectory() as tmp:
        study_dir = Path(tmp) / "study"
        setup_s, _ = _timed(lambda: write_study(study_dir, mixes=MIXES, configs=configs,
                                                loads=LOADS, repeats=3, requests=requests))
        cells = len(list((study_dir / "cells").iterdir()))
        import matplotlib.figure  # noqa: F401  (imports are not what is measured)
        import scipy.stats  # noqa: F401

        baseline_s, baseline_cpu, _ = _timed_cpu(lambda: _numpy_baseline(study_dir))
        report_s, report_cpu, report = _timed_cpu(lambda: build_study_report(study_dir))
        html_s, html_cpu, _ = _timed_cpu(lambda: write_study_html(report,
                                                                  Path(tmp) / "study.html"))
        import os
        import subprocess

        cli_s, _ = _timed(lambda: subprocess.run(
            [sys.executable, "-m", "traceforge", "report", str(study_dir), "--json", "--html",
             str(Path(tmp) / "cli.html")], check=True, capture_output=True,
            env={**os.environ, "PYTHONPATH": str(HERE.parent)}))
    load = os.getloadavg()
    result = {"cells": cells, "requests_per_cell": requests,
              "aggregates": len(report["aggregates"]), "best": len(report["best"]),
              "setup_simulate_s": round(setup_s, 3), "baseline_numpy_s": round(baseline_s, 3),
              "build_study_report_s": round(report_s, 3), "write_html_s": round(html_s, 3),
              "cli_report_json_html_s": round(cli_s, 3),
              "report_plus_html_over_baseline": round((report_s + html_s) / baseline_s, 1),
              "cpu_baseline_s": round(baseline_cpu, 3), "cpu_build_study_report_s":
              round(report_cpu, 3), "cpu_write_html_s": round(html_cpu, 3),
              "cpu_report_plus_html_over_baseline": round((report_cpu + html_cpu)
                                                          / baseline_cpu, 1),
              "loadavg_1min": round(load[0], 2)}
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500)
    main(parser.parse_args().requests)
