"""Study engine speed: the issue's 216-cell simulate study (3 mixes × 6 loads × 4 modes × 3
repeats) end to end, next to the bare simulator on the same 216 traces.

* ``study``: ``run_study`` on the spec below — plan, generate each cell's trace (written into its
  run directory), simulate it with the h200 profile, land the run directory, rewrite study.json
  after every cell. The issue's claim: <= 60 s on the 2-core machine.
* ``bare``: the same 216 traces generated once in memory, then ``simulate()`` into fresh
  directories — the work any study must do. The ratio study / bare is the engine's overhead.

Timings on a shared machine are noisy: the load average is printed with them.

    PYTHONPATH=. python benchmarks/bench_study.py
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
# the spec test_study_report.py runs too (with SLOs)
from study_helpers import issue_216_study

SPEC = issue_216_study("bench-216", slo=False)


def main() -> dict:
    from traceforge.generate import generate_trace, parse_spec
    from traceforge.simulate import simulate
    from traceforge.study.engine import run_study
    from traceforge.study.plan import configurations, grid_cells
    from traceforge.study.spec import load_study, scale_workload

    tmp = Path(tempfile.mkdtemp(prefix="bench-study-"))
    try:
        spec_path = tmp / "bench.toml"
        spec_path.write_text(SPEC)
        spec = load_study(spec_path)
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        result = run_study(spec, tmp / "study")
        study_s = time.perf_counter() - t0
        n_cells = len(result["cells"])
        assert result["status"] == "complete" and n_cells == 216, result["counts"]
        requests = sum(sum(c["outcome"]["counts"].values()) for c in result["cells"])

        cells = [c for mix in spec.mixes for config in configurations(spec)
                 for c in grid_cells(spec, mix, config)]
        traces = [(c, generate_trace(parse_spec(scale_workload(c.workload, c.load)),
                                     seed=c.seed)) for c in cells]
        t0 = time.perf_counter()
        for i, (cell, trace) in enumerate(traces):
            simulate(trace, tmp / "bare" / str(i), profile="h200", mode=cell.options["mode"])
        bare_s = time.perf_counter() - t0
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = {"cells": n_cells, "requests": requests, "study_s": round(study_s, 2),
           "bare_simulate_s": round(bare_s, 2), "ratio_study_over_bare": round(study_s / bare_s, 2),
           "loadavg_before": [round(x, 2) for x in load_before],
           "loadavg_after": [round(x, 2) for x in load_after]}
    print(f"{'case':<10}{'cells':>7}{'requests':>10}{'seconds':>9}")
    print(f"{'study':<10}{n_cells:>7}{requests:>10}{study_s:>9.2f}")
    print(f"{'bare':<10}{n_cells:>7}{requests:>10}{bare_s:>9.2f}")
    print(f"study / bare = {study_s / bare_s:.2f}; load average before {load_before}, "
          f"after {load_after} ({os.cpu_count()} CPUs)")
    return out


if __name__ == "__main__":
    main()
