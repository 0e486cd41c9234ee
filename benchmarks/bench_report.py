"""Benchmark: `traceforge report` on a 1M-row run, HTML included, against a plain numpy pass.

Baseline (same process, same run directory): read the timeline with pyarrow and take
np.percentile of done − scheduled per model — the least any report must do. Then:
build_report (percentiles, 5 bootstrap CIs per model, decomposition, SLOs, self-check) and
write_html (6 matplotlib figures). Also the bootstrap itself: the O(B) Beta-order-statistic draw
used by the report against textbook resampling (numpy and scipy.stats.bootstrap), whose cost is
measured on a few resamples and extrapolated linearly to B = 1000.

Run: PYTHONPATH=. python benchmarks/bench_report.py [--rows N] [--coverage]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

ROWS = 1_000_000
TARGET_S = 5.0


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def _numpy_baseline(run_dir: Path) -> dict:
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    table = ds.dataset(run_dir / "timeline", format="parquet").to_table(
        columns=["model", "status", "scheduled_ns", "done_ns"])
    ok = pc.equal(table.column("status"), "ok").to_numpy(zero_copy_only=False)
    latency = table.column("done_ns").to_numpy() - table.column("scheduled_ns").to_numpy()
    out = {}
    for name in pc.unique(table.column("model")).to_pylist():
        rows = pc.equal(table.column("model"), name).to_numpy(zero_copy_only=False)
        out[name] = np.percentile(latency[ok & rows], [50, 90, 95, 99, 99.9])
    return out


def main(rows: int = ROWS) -> dict:
    from traceforge.analyze.html import write_html
    from traceforge.analyze.report import build_report
    from traceforge.analyze.rundata import load_run
    from traceforge.analyze.stats import bootstrap_percentile_replicates
    from traceforge.analyze.synthetic import SyntheticModel, write_synthetic_run

    models = [SyntheticModel("bert", rate=5000, slo_ms=30.0),
              SyntheticModel("gpt", rate=1000, service_ms=50, max_new_tokens=16, gpu=True),
              SyntheticModel("vit", rate=2000, service_ms=5)]
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        setup_s, _ = _timed(lambda: write_synthetic_run(run_dir, models, requests=rows, seed=0,
                                                        error_rate=0.01))
        baseline_s, expected = _timed(lambda: _numpy_baseline(run_dir))

        def report_and_html():
            run = load_run(run_dir)
            report = build_report(run_dir, run=run)
            write_html(run_dir, report, Path(tmp) / "report.html", run=run)
            return report

        total_s, report = _timed(report_and_html)
        import subprocess
        import sys

        cli_s, _ = _timed(lambda: subprocess.run(
            [sys.executable, "-m", "traceforge", "report", str(run_dir), "--html",
             str(Path(tmp) / "cli.html")], check=True, capture_output=True,
            env={**__import__("os").environ,
                 "PYTHONPATH": str(Path(__file__).resolve().parents[1])}))
        run = load_run(run_dir)
        load_s, _ = _timed(lambda: load_run(run_dir).latency)
        build_s, report = _timed(lambda: build_report(run_dir, run=run))
        html_s, _ = _timed(lambda: write_html(run_dir, report, Path(tmp) / "r2.html", run=run))
        for name, qs in expected.items():  # the report's numbers are numpy's
            got = [report["models"][name]["latency_ms"][k] * 1e6
                   for k in ("p50", "p90", "p95", "p99", "p999")]
            np.testing.assert_allclose(got, qs, rtol=1e-12)

        # Bootstrap of one p99 over the largest model's latencies.
        latency = np.sort(run.latency[run.ok & (run.model_code == 0)])
        rng = np.random.default_rng(0)
        fast_s, _ = _timed(lambda: bootstrap_percentile_replicates(latency, 99.0,
                                                                   replicates=10_000, rng=rng))
        few = 5
        naive_s, _ = _timed(lambda: [np.percentile(latency[rng.integers(0, latency.size,
                                                                        latency.size)], 99)
                                     for _ in range(few)])
        from scipy import stats

        scipy_s, _ = _timed(lambda: stats.bootstrap(
            (latency,), lambda x, axis: np.percentile(x, 99, axis=axis), n_resamples=few,
            vectorized=True, batch=1, method="percentile", random_state=0))

    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''} "
                   f"{__import__('os').cpu_count()} cpus".strip(),
        "rows": rows,
        "write_run_s": setup_s,
        "numpy_percentile_baseline_s": baseline_s,
        "report_plus_html_s": total_s,
        "load_s": load_s,
        "build_report_s": build_s,
        "write_html_s": html_s,
        "report_plus_html_over_baseline": total_s / baseline_s,
        "cli_report_html_s": cli_s,
        "target_s": TARGET_S,
        "meets_target": total_s <= TARGET_S,
        "bootstrap_n": int(latency.size),
        "bootstrap_fast_10000_replicates_s": fast_s,
        "bootstrap_numpy_resampling_1000_s_extrapolated": naive_s / few * 1000,
        "bootstrap_scipy_1000_s_extrapolated": scipy_s / few * 1000,
    }
    print(f"bench_report: {rows:,} rows on {result['machine']}")
    print(f"  {'numpy percentile pass (baseline)':44s} {baseline_s:8.3f} s")
    print(f"  {'report + HTML (load, build, write)':44s} {total_s:8.3f} s   "
          f"x{result['report_plus_html_over_baseline']:.1f} of baseline, target <= {TARGET_S} s")
    print(f"  {'  of which load / build_report / HTML':44s} {load_s:.3f} / {build_s:.3f} / "
          f"{html_s:.3f} s")
    print(f"  {'traceforge report RUN --html (new process)':44s} {cli_s:8.3f} s")
    print(f"  bootstrap of p99, n = {latency.size:,}:")
    print(f"  {'  O(B) order-statistic draw, B = 10000':44s} {fast_s:8.3f} s")
    print(f"  {'  numpy resampling, B = 1000 (extrapolated)':44s} "
          f"{result['bootstrap_numpy_resampling_1000_s_extrapolated']:8.1f} s")
    print(f"  {'  scipy.stats.bootstrap, B = 1000 (extrap.)':44s} "
          f"{result['bootstrap_scipy_1000_s_extrapolated']:8.1f} s")
    return result


def bootstrap_coverage(reps: int = 2000, seed: int = 2024) -> list[dict]:
    """Coverage of the report's 95 % CIs for known Exp(1) / LogNormal(0, 1) percentiles
    (docs/analysis.md quotes this table). Not part of main(): ~10 s."""
    from traceforge.analyze.stats import percentile_ci

    rng = np.random.default_rng(seed)
    cases = [(500, 99.0, "exp"), (2000, 50.0, "exp"), (2000, 99.0, "exp"),
             (5000, 99.0, "exp"), (20000, 99.9, "exp"), (2000, 99.0, "lognormal")]
    out = []
    print(f"{'n':>7} {'pct':>6} {'dist':>10} {'beyond':>7} {'coverage':>9}")
    for n, pct, dist in cases:
        if dist == "exp":
            true_value = -np.log(1 - pct / 100)
        else:
            from scipy.stats import norm

            true_value = float(np.exp(norm.ppf(pct / 100)))
        hits = 0
        for _ in range(reps):
            x = rng.exponential(1.0, n) if dist == "exp" else rng.lognormal(0.0, 1.0, n)
            lo, hi = percentile_ci(np.sort(x), pct, replicates=4000, rng=rng)
            hits += lo <= true_value <= hi
        row = {"n": n, "pct": pct, "dist": dist, "beyond": n * (1 - pct / 100),
               "coverage": hits / reps}
        out.append(row)
        print(f"{n:>7} {pct:>6} {dist:>10} {row['beyond']:>7.0f} {row['coverage']:>9.3f}")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--coverage", action="store_true",
                        help="also measure the bootstrap CIs' coverage (docs/analysis.md)")
    args = parser.parse_args()
    main(args.rows)
    if args.coverage:
        bootstrap_coverage()
