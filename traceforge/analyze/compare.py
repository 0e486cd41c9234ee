"""compare_runs: is run B faster, slower or the same as run A, per model, and how sure are we?

The verdict rule (docs/analysis.md), at ``alpha`` = 1 %:

* ``slower`` — the two-sample Kolmogorov–Smirnov test rejects "same distribution" (p < alpha)
  AND the 100·(1-alpha) % bootstrap CI of p99(B) − p99(A) or of p50(B) − p50(A) lies entirely
  above 0 (and neither lies entirely below);
* ``faster`` — KS p < alpha AND one of those CIs lies entirely below 0 (neither above);
* ``mixed`` — KS p < alpha and one CI lies above 0 while the other lies below (e.g. the
  median got faster but the tail slower);
* ``same`` — otherwise ("no significant difference at 1 %").
The p50 counts too: a 20 % shift of the median with KS p ≪ alpha is a real change even when the
tail's CI is wide.

Requiring KS keeps the false-alarm rate at most alpha when A and B share a distribution; the
CI makes the verdict about the tail, which is what users of a shared GPU care about. Mann–Whitney
p and the Wasserstein distance are reported beside it, not used by the verdict.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from traceforge.analyze.report import analysis_rows
from traceforge.analyze.rundata import NS_PER_MS, RunData, load_run
from traceforge.analyze.stats import bootstrap_percentile_replicates
from traceforge.errors import BadInput

COMPARE_SCHEMA_ID = "traceforge.compare/1"
DEFAULT_ALPHA = 0.01
DIFF_REPLICATES = 20_000


def verdict_rule(alpha: float) -> str:
    pct = f"{100 * alpha:g} %"
    return (f"verdict: 'slower'/'faster' when KS p < {alpha:g} AND the {100 * (1 - alpha):g} % "
            f"bootstrap CI of p99(B) − p99(A) or of p50(B) − p50(A) lies above/below 0 "
            f"('mixed' when one is above and the other below); otherwise 'same' (no "
            f"significant difference at {pct})")


def ok_latencies_by_model(run_dir: Path | str, *, warmup_s: float | None = None,
                          include_warmup_rows: bool = False, run: RunData | None = None
                          ) -> dict[str, np.ndarray]:
    """Sorted ok latencies (ns) per model, with the report's warm-up rules (``run``: the run
    already loaded)."""
    run = run if run is not None else load_run(run_dir)
    rows, _ = analysis_rows(run, warmup_s=warmup_s, include_warmup_rows=include_warmup_rows)
    keep = rows & run.ok
    latency = run.latency
    return {name: np.sort(latency[keep & (run.model_code == code)])
            for code, name in enumerate(run.models)}


def compare_model(a_ns: np.ndarray, b_ns: np.ndarray, *, alpha: float = DEFAULT_ALPHA,
                  seed: int = 0) -> dict[str, Any]:
    """Statistics and verdict for one model; ``a_ns``/``b_ns`` sorted latencies in ns."""
    from scipy import stats

    out: dict[str, Any] = {"n_a": int(a_ns.size), "n_b": int(b_ns.size)}
    for tag, x in (("a", a_ns), ("b", b_ns)):
        p50, p99 = np.percentile(x, [50, 99]) / NS_PER_MS if x.size else (None, None)
        out[f"p50_{tag}_ms"] = None if p50 is None else float(p50)
        out[f"p99_{tag}_ms"] = None if p99 is None else float(p99)
    if a_ns.size < 2 or b_ns.size < 2:
        out.update(p50_ratio=None, p99_ratio=None, p99_diff_ms=None, p99_diff_ci_ms=None,
                   p50_diff_ms=None, p50_diff_ci_ms=None,
                   ks_p=None, mw_p=None, wasserstein_ms=None, verdict="same",
                   insufficient_data=True)
        return out
    out["p50_ratio"] = _ratio(out["p50_b_ms"], out["p50_a_ms"])
    out["p99_ratio"] = _ratio(out["p99_b_ms"], out["p99_a_ms"])
    out["p99_diff_ms"] = out["p99_b_ms"] - out["p99_a_ms"]

    rng = np.random.default_rng(seed)
    diff = (bootstrap_percentile_replicates(b_ns, 99.0, replicates=DIFF_REPLICATES, rng=rng)
            - bootstrap_percentile_replicates(a_ns, 99.0, replicates=DIFF_REPLICATES, rng=rng))
    lo, hi = np.quantile(diff, [alpha / 2, 1 - alpha / 2]) / NS_PER_MS
    out["p99_diff_ci_ms"] = [float(lo), float(hi)]
    out["p99_diff_ci_level"] = 1 - alpha
    diff50 = (bootstrap_percentile_replicates(b_ns, 50.0, replicates=DIFF_REPLICATES, rng=rng)
              - bootstrap_percentile_replicates(a_ns, 50.0, replicates=DIFF_REPLICATES, rng=rng))
    lo50, hi50 = np.quantile(diff50, [alpha / 2, 1 - alpha / 2]) / NS_PER_MS
    out["p50_diff_ms"] = out["p50_b_ms"] - out["p50_a_ms"]
    out["p50_diff_ci_ms"] = [float(lo50), float(hi50)]

    with warnings.catch_warnings():
        # "Exact calculation unsuccessful. Switching to method=asymp": scipy's own fallback,
        # not the user's concern (it leaked onto stderr for some samples)
        warnings.simplefilter("ignore", RuntimeWarning)
        out["ks_p"] = float(stats.ks_2samp(a_ns, b_ns).pvalue)
    out["mw_p"] = float(stats.mannwhitneyu(a_ns, b_ns, alternative="two-sided").pvalue)
    out["wasserstein_ms"] = float(stats.wasserstein_distance(a_ns, b_ns) / NS_PER_MS)
    differs = out["ks_p"] < alpha
    up = differs and (lo > 0 or lo50 > 0)
    down = differs and (hi < 0 or hi50 < 0)
    verdict = "mixed" if up and down else "slower" if up else "faster" if down else "same"
    out["verdict"] = verdict
    out["insufficient_data"] = False
    return out


def _ratio(b: float, a: float) -> float | None:
    return b / a if a else None


def _manifest(run_dir: Path | str) -> dict[str, Any]:
    import json

    try:
        return json.loads((Path(run_dir) / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def run_differences(a_dir: Path | str, b_dir: Path | str, a: dict[str, np.ndarray],
                    b: dict[str, np.ndarray]) -> list[str]:
    """Ways the two runs differ that make a comparison of their latencies misleading: warm-up
    handling (a different ``--warmup``, so one run's cold start is compared with the other's
    warm state) and the number of requests (different traces or a cut-short run)."""
    ma, mb = _manifest(a_dir), _manifest(b_dir)
    out = []
    wa = (ma.get("options") or {}).get("warmup_s") or 0.0
    wb = (mb.get("options") or {}).get("warmup_s") or 0.0
    if wa != wb:
        out.append(f"the runs differ in warm-up handling: A flagged the first {wa:g} s as "
                   f"warm-up, B the first {wb:g} s (replay --warmup); cold-start latencies "
                   "are in one and not the other")
    na = (ma.get("trace") or {}).get("rows")
    nb = (mb.get("trace") or {}).get("rows")
    if na is not None and nb is not None and na != nb:
        out.append(f"the runs replayed different numbers of requests: A {na:,}, B {nb:,} "
                   "(different traces or windows)")
    ca = sum(v.size for v in a.values())
    cb = sum(v.size for v in b.values())
    if (na == nb or na is None or nb is None) and ca and cb and abs(ca - cb) > 0.05 * max(ca, cb):
        out.append(f"the runs have different numbers of ok requests analysed: A {ca:,}, "
                   f"B {cb:,}; failures or a cut-short run change what is compared")
    return out


def check_compare_args(run_dirs: list[Path | str], *, alpha: float,
                       warmup_s: float | None) -> None:
    """The argument checks of :func:`compare_runs`, before any run is read."""
    if len(run_dirs) < 2:
        raise BadInput("compare needs at least two run directories", source="compare",
                       value=len(run_dirs))
    if not (0 < alpha < 0.5) or not math.isfinite(alpha):
        raise BadInput("must be in (0, 0.5)", source="--alpha", value=alpha)
    if warmup_s is not None and (not math.isfinite(warmup_s) or warmup_s < 0):
        raise BadInput("must be a number of seconds >= 0", source="--warmup", value=warmup_s)


def compare_runs(run_dirs: list[Path | str], *, alpha: float = DEFAULT_ALPHA,
                 warmup_s: float | None = None,
                 latencies: list[dict[str, np.ndarray]] | None = None) -> dict[str, Any]:
    """Each run after the first against the first, per common model (ratios are B over A).

    The top-level ``models`` / ``only_in_a`` / ``only_in_b`` are those of the first pair, so
    two-run output matches CONTRACT.md; ``comparisons`` lists every pair. ``latencies`` (one
    :func:`ok_latencies_by_model` dict per run) saves reading the runs again when the caller
    already has them.
    """
    check_compare_args(run_dirs, alpha=alpha, warmup_s=warmup_s)
    runs = latencies if latencies is not None else [
        ok_latencies_by_model(d, warmup_s=warmup_s) for d in run_dirs]
    base = runs[0]
    comparisons = []
    for other_dir, other in zip(run_dirs[1:], runs[1:], strict=True):
        common = sorted(set(base) & set(other))
        models = {name: compare_model(base[name], other[name], alpha=alpha, seed=i)
                  for i, name in enumerate(common)}
        comparisons.append({
            "a": str(run_dirs[0]), "b": str(other_dir), "models": models,
            "warnings": run_differences(run_dirs[0], other_dir, base, other),
            "only_in_a": sorted(set(base) - set(other)),
            "only_in_b": sorted(set(other) - set(base)),
        })
    first = comparisons[0]
    return {
        "schema": COMPARE_SCHEMA_ID,
        "alpha": alpha,
        "rule": verdict_rule(alpha),
        "baseline": str(run_dirs[0]),
        "runs": [str(d) for d in run_dirs],
        "models": first["models"],
        "only_in_a": first["only_in_a"],
        "only_in_b": first["only_in_b"],
        "comparisons": comparisons,
    }
