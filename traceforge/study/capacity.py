"""Capacity search: the highest load multiplier whose cell meets the SLO.

**SLO** (``[capacity] slo``): ``{metric = "p99", ms = 50}`` — every model's latency percentile
(``p50``, ``p90``, ``p95``, ``p99``, ``p999``) at most ``ms``; or ``{attainment = 0.99}`` — in
every model at least that fraction of requests finished ``ok`` within the model's ``slo_ms``
(from the mix's spec; ``ms`` gives a default for models without one). The rows judged are the
report's (``analyze.report.analysis_rows`` and ``slo_latency_ns``, shared code): rows flagged
``warmup`` are left out, errors, timeouts and drops count as infinitely late (failing requests
can never make a load look better), cancelled rows are left out. A cell's ``value`` is the
worst model's.

**Search** (:class:`LoadSearch`), one per configuration and repeat: probe ``start``; while every
probe met the SLO multiply the load by ``factor`` (doubling by default; up to ``max_load``),
while none did divide it (down to ``min_load``); once a met load ``low`` sits below a missed load
``high``, bisect until ``(high - low) / low <= tolerance``. The answer is ``low``. Loads are
rounded to 6 significant digits (they name cells). With common random numbers — a load scales
every arrival rate of the same seeded trace, so gaps shrink by exactly 1/load for renewal
processes — a FIFO queue's latencies only grow with load, and the bracket is consistent. If a
noisy backend makes a probe above ``high`` meet the SLO, ``low`` is the highest met load below
``high`` (conservative).

**Prescreen** (``prescreen = "simulate"``): the same search on the simulator first; the real
search then starts at the simulated capacity with a small step (``prescreen_factor``), so the
real backend only runs probes around the edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from traceforge.analyze.stats import PERCENTILES  # the report's percentile names


def round_load(x: float) -> float:
    return float(f"{x:.6g}")


def prescreen_factor(tolerance: float) -> float:
    """The step the confirming search starts with, around the simulated capacity."""
    return max(1.0 + 4.0 * tolerance, 1.05)


def evaluate_slo(run_dir: Path, slo: dict[str, Any], model_slo_ms: dict[str, float]
                 ) -> dict[str, Any]:
    """``{"met": bool, "value": float | None, "models": {MODEL: value}}`` for one run dir."""
    from traceforge.analyze.report import analysis_rows, slo_latency_ns
    from traceforge.analyze.rundata import NS_PER_MS, load_run

    run = load_run(run_dir)
    rows, _ = analysis_rows(run, warmup_s=None, include_warmup_rows=False)
    per_model: dict[str, float | None] = {}
    for code, model in enumerate(run.models):  # sorted names
        latency_ms = slo_latency_ns(run, rows & (run.model_code == code)) / NS_PER_MS
        if latency_ms.size == 0:
            continue
        if "attainment" in slo:
            per_model[model] = float(np.mean(latency_ms <= model_slo_ms[model]))
        else:
            q = np.quantile(latency_ms, PERCENTILES[slo["metric"]] / 100.0, method="linear")
            per_model[model] = float(q) if math.isfinite(q) else None
    if not per_model:
        return {"met": False, "value": None, "models": {}}
    if "attainment" in slo:
        value = min(per_model.values())
        met = value >= slo["attainment"]
    else:
        values = list(per_model.values())
        value = None if any(v is None for v in values) else max(values)
        met = value is not None and value <= slo["ms"]
    return {"met": bool(met), "value": value, "models": per_model}


@dataclass
class LoadSearch:
    """Bracketing then bisection over load, fed one outcome at a time (pure, picklable)."""

    start: float
    tolerance: float
    factor: float = 2.0
    min_load: float = 1e-3
    max_load: float = 1e3
    probes: list[dict[str, Any]] = field(default_factory=list)  # {"load", "met", "value"}
    stopped: str | None = None
    max_probes: int | None = None  # stop after this many probes ("max_probes"): [low, high]

    def bracket(self) -> tuple[float | None, float | None]:
        """(highest met load below ``high``, lowest missed load)."""
        missed = [p["load"] for p in self.probes if not p["met"]]
        high = min(missed) if missed else None
        met = [p["load"] for p in self.probes if p["met"] and (high is None or p["load"] < high)]
        return (max(met) if met else None), high

    def _step(self, direction: bool) -> float:
        # Consecutive steps in one direction grow (squared, up to 2x) when the search starts
        # with a small factor (a prescreened edge), so a wrong guess is still bracketed fast.
        run = 0
        for p in reversed(self.probes):
            if p["met"] != direction:
                break
            run += 1
        step = self.factor
        for _ in range(max(0, run - 1)):
            step = min(step * step, max(self.factor, 2.0))
        return step

    def next_load(self) -> float | None:
        """The next load to probe, or None when the search is over."""
        if self.stopped is not None:
            return None
        if not self.probes:
            return round_load(min(max(self.start, self.min_load), self.max_load))
        low, high = self.bracket()
        if high is not None and low is not None and (high - low) / low <= self.tolerance:
            self.stopped = "converged"
            return None
        if self.max_probes is not None and len(self.probes) >= self.max_probes:
            self.stopped = "max_probes"
            return None
        if high is None:  # everything met so far: go up
            if low >= self.max_load:
                self.stopped = "max_load met"
                return None
            nxt = min(low * self._step(True), self.max_load)
        elif low is None:  # nothing met so far: go down
            if high <= self.min_load:
                self.stopped = "min_load missed"
                return None
            nxt = max(high / self._step(False), self.min_load)
        else:
            if (high - low) / low <= self.tolerance:
                self.stopped = "converged"
                return None
            nxt = (low + high) / 2.0
        nxt = round_load(nxt)
        if any(p["load"] == nxt for p in self.probes):  # rounding reached its resolution
            self.stopped = "converged" if (low and high) else "resolution"
            return None
        return nxt

    def record(self, load: float, met: bool, value: float | None, cell: str | None = None
               ) -> None:
        self.probes.append({"load": load, "met": bool(met), "value": value, "cell": cell})

    @property
    def converged(self) -> bool:
        return self.stopped == "converged"

    def result(self) -> dict[str, Any]:
        low, high = self.bracket()
        return {"load": low, "low": low, "high": high, "tolerance": self.tolerance,
                "converged": self.converged, "stopped": self.stopped,
                "probes": [dict(p) for p in self.probes]}
