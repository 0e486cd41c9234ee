"""Percentiles and their bootstrap confidence intervals, fast enough for million-row runs.

A percentile bootstrap resamples the n latencies with replacement B times and takes the quantile
of each resample: O(B·n), about 20 s for n = 1M and B = 1000 with numpy, and longer with
``scipy.stats.bootstrap`` (benchmarks/bench_report.py measures both). We draw the *same*
bootstrap distribution in O(B) after one sort, exactly, with no approximation:

A resample is ``F_n^{-1}(U_1..U_n)`` for n iid uniforms, where ``F_n^{-1}(u) = x_(ceil(n·u))`` is
the empirical quantile function of the sorted sample. ``F_n^{-1}`` is monotone, so the resample's
k-th order statistic is ``F_n^{-1}(U_(k))``, and the k-th uniform order statistic is
``Beta(k, n-k+1)``. numpy's default (linear) percentile needs the k-th and (k+1)-th order
statistics: given ``U_(k)``, the next is ``U_(k) + (1-U_(k))·Beta(1, n-k)`` (the minimum of the
n-k uniforms left above it). So each bootstrap replicate costs two Beta draws and two lookups.
tests/test_analyze_stats.py checks this against naive resampling.
"""

from __future__ import annotations

import numpy as np

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p999": 99.9}
DEFAULT_REPLICATES = 10_000


def bootstrap_percentile_replicates(sorted_x: np.ndarray, pct: float, *,
                                    replicates: int = DEFAULT_REPLICATES,
                                    rng: np.random.Generator) -> np.ndarray:
    """``replicates`` draws of ``np.percentile(resample, pct)`` for resamples of ``sorted_x``.

    ``sorted_x`` must be sorted ascending and free of NaN.
    """
    n = len(sorted_x)
    if n == 0:
        return np.full(replicates, np.nan)
    position = (n - 1) * pct / 100.0  # numpy's linear method: x[lo] + frac·(x[lo+1] - x[lo])
    lo = int(np.floor(position))
    frac = position - lo
    k = lo + 1  # 1-based rank of the lower order statistic
    u_lower = rng.beta(k, n - k + 1, size=replicates)
    lower = sorted_x[np.clip(np.ceil(n * u_lower).astype(np.int64) - 1, 0, n - 1)]
    if frac == 0.0 or k >= n:
        return lower
    u_upper = u_lower + (1.0 - u_lower) * rng.beta(1, n - k, size=replicates)
    upper = sorted_x[np.clip(np.ceil(n * u_upper).astype(np.int64) - 1, 0, n - 1)]
    return lower + frac * (upper - lower)


def percentile_ci(sorted_x: np.ndarray, pct: float, *, level: float = 0.95,
                  replicates: int = DEFAULT_REPLICATES,
                  rng: np.random.Generator) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval for the ``pct`` percentile."""
    if len(sorted_x) < 2:
        return (float("nan"), float("nan"))
    reps = bootstrap_percentile_replicates(sorted_x, pct, replicates=replicates, rng=rng)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(reps, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def naive_bootstrap_replicates(x: np.ndarray, pct: float, *, replicates: int,
                               rng: np.random.Generator) -> np.ndarray:
    """Textbook resampling bootstrap (O(B·n)): the reference the fast path is tested against."""
    idx = rng.integers(0, len(x), size=(replicates, len(x)))
    return np.percentile(x[idx], pct, axis=1)


def summarize(values: np.ndarray, *, scale: float = 1.0) -> dict[str, float | int | None]:
    """count, mean and the standard percentiles of the non-NaN values, divided by ``scale``."""
    finite = values[~np.isnan(values)]
    out: dict[str, float | int | None] = {"count": int(finite.size)}
    if finite.size == 0:
        out.update({"mean": None, **{k: None for k in PERCENTILES}})
        return out
    qs = np.percentile(finite, list(PERCENTILES.values()))
    out["mean"] = float(finite.mean() / scale)
    out.update({k: float(q / scale) for k, q in zip(PERCENTILES, qs, strict=True)})
    return out
