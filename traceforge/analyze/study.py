"""build_study_report: the numbers behind ``traceforge report STUDY_DIR`` (terminal, ``--json``,
``--html``) for a study directory written by ``traceforge study`` (CONTRACT.md, "Studies").

Every cell is an ordinary run directory, read once and summarised by :func:`build_report` (its
percentiles, bootstrap CIs, SLO attainment and goodput; nothing is re-implemented here). On top
of the per-cell numbers (docs/study-report.md):

* **aggregates** per (mix, source, configuration, load): each metric's mean over the repeats
  (one repeat = one trace seed) with a Student-t 95 % interval when there are >= 2 repeats
  (``ci_method = "t"``); with a single repeat, the within-run interval instead (bootstrap for
  percentiles, Wilson for attainment, Garwood for goodput). Percentiles of the repeats' pooled
  ok latencies, with their bootstrap CI, are given beside (``pooled``).
* **best** per (mix, source, load, model): the configuration with the lowest mean p99 and the one
  with the highest mean goodput, and whether its lead over the runner-up is significant at
  ``alpha``: both the pooled test (p99: :func:`compare_model`'s verdict, i.e. KS and the
  bootstrap CI of the p99 difference; goodput: the conditional binomial test of two Poisson
  rates on attained counts) AND a t-test on the repeat-level values (paired by trace seed when
  both configurations ran the same seeds, else Welch; p99 on log values) must reject. The
  reported ``p_value`` is the larger of the two p-values (the p-value of that
  intersection-union test).
* **sim_vs_measured**: for coordinates that hold both simulated cells (backend ``simulate`` or
  kind ``prescreen``) and measured cells, the two side by side.

``source`` separates simulated from measured cells so they are never averaged together.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from traceforge.analyze.compare import DEFAULT_ALPHA, compare_model, ok_latencies_by_model
from traceforge.analyze.report import (
    CI_LEVEL,
    DEFAULT_SLO_FACTOR,
    baseline_slos,
    build_report,
    spec_slos,
)
from traceforge.analyze.rundata import NS_PER_MS, load_run
from traceforge.analyze.stats import percentile_ci
from traceforge.errors import BadInput

STUDY_SCHEMA_ID = "traceforge.study/1"
STUDY_REPORT_SCHEMA_ID = "traceforge.study-report/1"
ALL = "(all)"  # the group of every model of a mix together
SIMULATED, MEASURED = "simulated", "measured"
METRICS = ("p50_ms", "p99_ms", "attainment", "goodput_rps")
LEVEL_AXES = ("load", "capacity")
_PCT = {"p50_ms": 50.0, "p99_ms": 99.0}

METHODS = {
    "across_repeats": "mean over repeats (one repeat = one trace seed) with a Student-t 95 % "
                      "interval, mean ± t(0.975, n-1)·s/√n, when n >= 2 (ci_method 't'), "
                      "clipped to the metric's range (>= 0; attainment <= 1)",
    "single_repeat": "with one repeat, the within-run 95 % interval: percentile bootstrap of "
                     "the run's ok latencies for p50/p99, Wilson for attainment, Garwood "
                     "(exact Poisson) for goodput (ci_method 'bootstrap'/'wilson'/'poisson')",
    "pooled": "p50/p99 of all repeats' ok latencies pooled, with a percentile-bootstrap 95 % CI "
              "(sampling noise within runs only; seed-to-seed variation is in the t interval)",
    "best": "lowest mean p99 / highest mean goodput per (mix, source, load, model); the lead "
            "over the runner-up is significant when the pooled test (p99: compare's verdict, "
            "KS p < alpha AND the bootstrap CI of the p99 difference below 0; goodput: the "
            "conditional binomial test of two Poisson rates, p < alpha) AND a t-test on the "
            "repeat-level values (paired by trace seed when both ran the same seeds, else "
            "Welch; on log p99) reject, the latter when both sides have >= 2 repeats; "
            "p_value is the larger of the two p-values",
    "attainment": "fraction of eligible requests (all but cancelled) that are ok within the "
                  "model's slo_ms; goodput = those requests per second of the run's window",
}


@dataclass(frozen=True)
class StudyOptions:
    """How each cell is read: the ``report`` command's options, applied to every cell."""

    warmup_s: float | None = None
    slo_ms: dict[str, float] | None = None
    slo_from: Path | None = None
    slo_factor: float = DEFAULT_SLO_FACTOR
    include_warmup_rows: bool = False
    alpha: float = DEFAULT_ALPHA


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None


@dataclass
class StudyCell:
    """One cell of study.json."""

    name: str
    mix: str
    coords: dict[str, Any]
    repeat: int
    status: str
    run_dir: Path
    kind: str | None
    backend: str | None
    seed: Any = None
    load_run: float | None = None  # the cell's top-level "load": the multiplier it ran at
    error: str | None = None

    @property
    def level_axis(self) -> str | None:
        """The coordinate that is the x axis: ``load``, or ``capacity`` (fractions of each
        configuration's capacity) in a study whose load axis is capacity-based."""
        return next((a for a in LEVEL_AXES if a in self.coords), None)

    @property
    def level(self) -> float | None:
        axis = self.level_axis
        return _number(self.coords[axis]) if axis else self.load_run

    @property
    def config(self) -> dict[str, Any]:
        return {k: v for k, v in self.coords.items() if k != self.level_axis}

    @property
    def source(self) -> str:
        return SIMULATED if self.backend == "simulate" or self.kind == "prescreen" else MEASURED

    @property
    def is_grid(self) -> bool:
        """Grid cells make the tables; capacity-search probes (kinds ``capacity`` and
        ``prescreen``) sit at loads the search picked and are reported with their search."""
        return self.kind in (None, "grid")


@dataclass
class _CellData:
    """What a usable cell contributes to aggregates (per model group, incl. ALL)."""

    entry: dict[str, Any]
    latencies: dict[str, np.ndarray]  # sorted ok latencies in ns
    slo: dict[str, dict[str, Any]]  # build_report's "slo" block per group (may be missing)
    duration_s: float


@dataclass
class Study:
    """A study directory: study.json parsed, plus each usable cell's data once read."""

    study_dir: Path
    raw: dict[str, Any]
    cells: list[StudyCell]
    data: dict[str, _CellData] = field(default_factory=dict)

    @property
    def study_json(self) -> Path:
        return self.study_dir / "study.json"

    def input_paths(self) -> list[Path]:
        """Every path the report reads (an output must not be, or be inside, one of them:
        traceforge.paths.check_output)."""
        return [self.study_json, self.study_dir / "cells", *(c.run_dir for c in self.cells)]


# -- reading ----------------------------------------------------------------------------------
def is_study_dir(path: Path | str) -> bool:
    """A directory holding study.json (a run directory holds run.json instead)."""
    path = Path(path)
    return path.is_dir() and (path / "study.json").is_file()


def config_label(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items()) or "(default)"


def _config_key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def load_study(study_dir: Path | str) -> Study:
    """Parse and check study.json; each problem is a one-line :class:`BadInput`."""
    study_dir = Path(study_dir)
    path = study_dir / "study.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput("no such file: not a study directory", source=path) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"not JSON ({exc})", source=path) from exc
    if not isinstance(raw, dict):
        raise BadInput("not a JSON object", source=path)
    if raw.get("schema") != STUDY_SCHEMA_ID:
        raise BadInput("not a traceforge study", source=path, key="schema",
                       value=raw.get("schema"), allowed=STUDY_SCHEMA_ID)
    cells_raw = raw.get("cells")
    if not isinstance(cells_raw, list):
        raise BadInput("must be a list of cells", source=path, key="cells",
                       value=type(cells_raw).__name__)
    cells = []
    seen: set[str] = set()
    for i, c in enumerate(cells_raw):
        key = f"cells[{i}]"
        if not isinstance(c, dict):
            raise BadInput("must be an object", source=path, key=key, value=c)
        for name, typ in (("name", str), ("mix", str), ("status", str), ("coords", dict)):
            if not isinstance(c.get(name), typ):
                raise BadInput(f"missing or not a {typ.__name__}", source=path,
                               key=f"{key}.{name}", value=c.get(name))
        if c["name"] in seen:
            raise BadInput("duplicate cell name", source=path, key=f"{key}.name",
                           value=c["name"])
        seen.add(c["name"])
        run_dir = c.get("run_dir", f"cells/{c['name']}")
        if not isinstance(run_dir, str):
            raise BadInput("not a path", source=path, key=f"{key}.run_dir", value=run_dir)
        repeat = c.get("repeat", 0)
        if isinstance(repeat, bool) or not isinstance(repeat, int):
            raise BadInput("must be an integer", source=path, key=f"{key}.repeat", value=repeat)
        cells.append(StudyCell(name=c["name"], mix=c["mix"], coords=c["coords"], repeat=repeat,
                               status=c["status"], run_dir=study_dir / run_dir,
                               kind=c.get("kind"), backend=c.get("backend"),
                               seed=c.get("seed"),
                               load_run=_number(c.get("load", c["coords"].get("load"))),
                               error=c.get("error") if isinstance(c.get("error"), str)
                               else None))
    capacity = raw.get("capacity", [])
    if not isinstance(capacity, list):
        raise BadInput("must be a list", source=path, key="capacity",
                       value=type(capacity).__name__)
    for i, entry in enumerate(capacity):
        if not isinstance(entry, dict) or not isinstance(entry.get("mix"), str) \
                or not isinstance(entry.get("config", {}), dict):
            raise BadInput("must be an object with 'mix' and 'config'", source=path,
                           key=f"capacity[{i}]", value=entry)
        for bound in ("load", "low", "high"):
            value = entry.get(bound)
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, int | float)):
                raise BadInput("must be a number or null", source=path,
                               key=f"capacity[{i}].{bound}", value=value)
    return Study(study_dir=study_dir, raw=raw, cells=cells)


def _capacity_slo_ms(raw: dict[str, Any]) -> float | None:
    """A study whose capacity SLO is "p99 <= X ms" applies X to models without their own
    slo_ms (the attainment column then has a threshold for every model)."""
    slo = ((raw.get("spec") or {}).get("capacity") or {}).get("slo")
    if isinstance(slo, dict) and isinstance(slo.get("ms"), int | float) and slo["ms"] > 0:
        return float(slo["ms"])
    return None


def _read_cell(cell: StudyCell, options: StudyOptions, fallback_slo_ms: float | None,
               baseline: dict[str, float] | None) -> _CellData:
    run = load_run(cell.run_dir)
    if options.slo_ms:
        slos, source = dict(options.slo_ms), "--slo"
    elif baseline is not None:
        slos, source = dict(baseline), f"{options.slo_factor:g} x p50 of {options.slo_from}"
    else:
        slos, source = spec_slos(run.manifest, source=run.run_dir / "run.json"), "trace spec"
        if fallback_slo_ms is not None:
            missing = [m for m in run.models if m not in slos]
            slos.update({m: fallback_slo_ms for m in missing})
            if missing:
                source = f"trace spec; capacity slo ({fallback_slo_ms:g} ms) for {missing}"
    slos = {m: v for m, v in slos.items() if m in run.models}
    rep = build_report(cell.run_dir, warmup_s=options.warmup_s, slo_ms=slos or None,
                       include_warmup_rows=options.include_warmup_rows, run=run,
                       ci_percentiles=("p50", "p99"))
    latencies = ok_latencies_by_model(cell.run_dir, warmup_s=options.warmup_s,
                                      include_warmup_rows=options.include_warmup_rows, run=run)
    everything = [v for v in latencies.values() if v.size]
    latencies[ALL] = np.sort(np.concatenate(everything)) if everything else np.empty(0)

    def summary(s: dict[str, Any]) -> dict[str, Any]:
        slo = s.get("slo") or {}
        return {"p50_ms": s["latency_ms"]["p50"], "p99_ms": s["latency_ms"]["p99"],
                "attainment": slo.get("attainment"), "goodput_rps": slo.get("goodput_rps"),
                "p50_ci95_ms": s["latency_ci95_ms"]["p50"],
                "p99_ci95_ms": s["latency_ci95_ms"]["p99"],
                "slo_ms": slo.get("slo_ms"), "requests": s["count"], "ok": s["ok"],
                "throughput_rps": s["throughput_rps"]}

    groups = {**rep["models"], ALL: rep["overall"]}
    entry = {"models": {m: summary(s) for m, s in rep["models"].items()},
             "overall": summary(rep["overall"]),
             "slo_source": source if slos else None,
             "duration_s": rep["window"]["duration_s"],
             "run_status": rep["status"]}
    return _CellData(entry=entry, latencies=latencies,
                     slo={m: s["slo"] for m, s in groups.items() if s.get("slo")},
                     duration_s=rep["window"]["duration_s"])


# -- statistics -------------------------------------------------------------------------------
def across_repeats(values: list[float], *, within_ci: list[float] | None = None,
                   within_method: str | None = None, low: float = 0.0,
                   high: float = math.inf) -> dict[str, Any] | None:
    """Mean, sample std and 95 % interval of one metric over repeats (module docstring); the
    t interval is clipped to the metric's range [low, high] (attainment lies in [0, 1])."""
    from scipy import stats

    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(values)
    if n == 0:
        return None
    mean = float(np.mean(values))
    out: dict[str, Any] = {"mean": mean, "n": n, "values": values, "std": None,
                           "ci95": within_ci, "ci_method": within_method if within_ci else None}
    if n >= 2:
        std = float(np.std(values, ddof=1))
        sem = std / math.sqrt(n)
        lo, hi = (mean, mean) if sem == 0 else stats.t.interval(CI_LEVEL, n - 1, loc=mean,
                                                                 scale=sem)
        out.update(std=std, ci95=[max(float(lo), low), min(float(hi), high)], ci_method="t")
    return out


def _seed(*parts: Any) -> int:
    return zlib.crc32(json.dumps(parts, default=str).encode())


def _pooled(sorted_ns: np.ndarray, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {"requests_ok": int(sorted_ns.size)}
    rng = np.random.default_rng(seed)
    for key, pct in _PCT.items():
        if sorted_ns.size == 0:
            out[key], out[key.replace("_ms", "_ci95_ms")] = None, None
            continue
        out[key] = float(np.percentile(sorted_ns, pct) / NS_PER_MS)
        lo, hi = percentile_ci(sorted_ns, pct, level=CI_LEVEL, rng=rng)
        out[key.replace("_ms", "_ci95_ms")] = (None if math.isnan(lo)
                                               else [lo / NS_PER_MS, hi / NS_PER_MS])
    return out


def _aggregate_model(model: str, members: list[tuple[StudyCell, _CellData]], seed: int
                     ) -> dict[str, Any]:
    """One model group (or ALL) of one (mix, source, config, load) group."""
    from scipy import stats

    from traceforge.generate.stats import rate_ci_poisson

    present = [(d, d.entry["overall"] if model == ALL else d.entry["models"].get(model), cell)
               for cell, d in members]
    seeds = [None if cell.seed is None else str(cell.seed) for _, e, cell in present
             if e is not None]
    present = [(d, e) for d, e, _ in present if e is not None]
    # repeat-level values with their trace seeds, for the repeat test (paired when seeds match)
    out: dict[str, Any] = {"_by_seed": {
        metric: [(k, e[metric]) for k, (_, e) in zip(seeds, present, strict=True)
                 if e[metric] is not None] for metric in METRICS}}
    single = present[0] if len(present) == 1 else None
    for metric in METRICS:
        within, method = None, None
        if single is not None:
            c, e = single
            slo = c.slo.get(model)
            if metric in _PCT:
                within, method = e[metric.replace("_ms", "_ci95_ms")], "bootstrap"
            elif slo and slo["eligible"] and metric == "attainment":
                ci = stats.binomtest(slo["attained"], slo["eligible"]).proportion_ci(
                    CI_LEVEL, method="wilson")
                within, method = [float(ci.low), float(ci.high)], "wilson"
            elif slo and metric == "goodput_rps" and c.duration_s > 0:
                within, method = rate_ci_poisson(slo["attained"], c.duration_s,
                                                 CI_LEVEL), "poisson"
        out[metric] = across_repeats([e[metric] for _, e in present], within_ci=within,
                                     within_method=method,
                                     high=1.0 if metric == "attainment" else math.inf)
    parts = [c.latencies.get(model, np.empty(0)) for c, _ in present]
    pooled_ns = np.sort(np.concatenate(parts)) if parts else np.empty(0)
    out["_pooled_ns"] = pooled_ns  # for the lead and sim-vs-measured tests; dropped from JSON
    out["pooled"] = _pooled(pooled_ns, seed)
    slos = [c.slo[model] for c, _ in present if model in c.slo]
    out["pooled"]["attained"] = sum(s["attained"] for s in slos) if slos else None
    out["pooled"]["eligible"] = sum(s["eligible"] for s in slos) if slos else None
    out["pooled"]["duration_s"] = sum(c.duration_s for c, _ in present)
    return out


def repeat_test(best: dict[str, Any], runner: dict[str, Any], metric: str, *,
                log: bool) -> dict[str, Any] | None:
    """Two-sided t-test of one metric's repeat-level values, best vs runner-up, or None with
    fewer than 2 repeats on a side. Paired (``ttest_rel``) when both were run with the same
    trace seeds (common random numbers: the seed-to-seed variation cancels), else Welch's
    ``ttest_ind(equal_var=False)``. ``log``: on log values (a latency's spread scales with its
    level, so differences are compared as ratios)."""
    from scipy import stats

    a, b = best["_by_seed"][metric], runner["_by_seed"][metric]
    if len(a) < 2 or len(b) < 2:
        return None
    seeds_a, seeds_b = [k for k, _ in a], [k for k, _ in b]
    paired = (None not in seeds_a and len(set(seeds_a)) == len(seeds_a)
              and sorted(seeds_a) == sorted(seeds_b))
    if paired:
        by_seed = dict(b)
        x = np.array([v for _, v in sorted(a)], dtype=float)
        y = np.array([by_seed[k] for k, _ in sorted(a)], dtype=float)
    else:
        x = np.array([v for _, v in a], dtype=float)
        y = np.array([v for _, v in b], dtype=float)
    if log and np.all(x > 0) and np.all(y > 0):
        x, y = np.log(x), np.log(y)
    else:
        log = False
    result = stats.ttest_rel(x, y) if paired else stats.ttest_ind(x, y, equal_var=False)
    p = float(result.pvalue)
    if math.isnan(p):  # no spread at all: equal values give no evidence, a constant shift is exact
        p = 1.0 if np.allclose(x.mean(), y.mean()) else 0.0
    return {"test": "paired t (same seeds)" if paired else "Welch t",
            "on": f"log {metric}" if log else metric, "n": [int(x.size), int(y.size)], "p": p}


def _lead_p99(best: dict, runner: dict, alpha: float, seed: int) -> dict[str, Any]:
    cmp = compare_model(runner["_pooled_ns"], best["_pooled_ns"], alpha=alpha, seed=seed)
    repeats = repeat_test(best, runner, "p99_ms", log=True)
    repeat_p = repeats["p"] if repeats else None
    # Why a lead is not significant, first failing condition (None when it is significant).
    if cmp["ks_p"] is None:
        reason = "too few ok requests to test"
    elif cmp["ks_p"] >= alpha:
        reason = "KS p >= alpha"
    elif not (cmp["p99_diff_ci_ms"] and cmp["p99_diff_ci_ms"][1] < 0):
        # The p99 CI itself, not compare's verdict: that verdict also moves on a p50 shift, and a
        # p99 lead must stand on the p99 difference (best - runner-up, entirely below 0).
        reason = "bootstrap CI of the p99 difference includes 0"
    elif repeat_p is not None and repeat_p >= alpha:
        reason = "repeat test p >= alpha"
    else:
        reason = None
    ps = [p for p in (cmp["ks_p"], repeat_p) if p is not None]
    return {"pooled_test": "compare: KS + bootstrap CI of p99(best) - p99(runner-up)",
            "ks_p": cmp["ks_p"], "mw_p": cmp["mw_p"], "verdict": cmp["verdict"],
            "p99_diff_ms": cmp["p99_diff_ms"], "p99_diff_ci_ms": cmp["p99_diff_ci_ms"],
            "repeats": repeats, "p_value": max(ps) if ps else None,
            "significant": reason is None, "reason": reason}


def _lead_goodput(best: dict, runner: dict, alpha: float) -> dict[str, Any]:
    from scipy import stats

    b, r = best["pooled"], runner["pooled"]
    poisson_p = None
    if b["attained"] is not None and r["attained"] is not None and b["duration_s"] > 0 \
            and r["duration_s"] > 0:
        # Conditional (binomial) test of two Poisson rates: given k = k_b + k_r, k_b is
        # Binomial(k, T_b / (T_b + T_r)) when the rates are equal. Exact, and ~100× faster
        # than scipy's poisson_means_test (E-test) on these counts.
        k = b["attained"] + r["attained"]
        share = b["duration_s"] / (b["duration_s"] + r["duration_s"])
        poisson_p = float(stats.binomtest(b["attained"], k, share).pvalue) if k else 1.0
    repeats = repeat_test(best, runner, "goodput_rps", log=False)
    repeat_p = repeats["p"] if repeats else None
    if best["goodput_rps"]["mean"] <= runner["goodput_rps"]["mean"]:
        reason = "no lead (equal means)"
    elif poisson_p is None or poisson_p >= alpha:
        reason = "rate test p >= alpha"
    elif repeat_p is not None and repeat_p >= alpha:
        reason = "repeat test p >= alpha"
    else:
        reason = None
    ps = [p for p in (poisson_p, repeat_p) if p is not None]
    return {"pooled_test": "conditional binomial test of two Poisson rates (attained "
                           "counts over the pooled windows)",
            "poisson_p": poisson_p, "repeats": repeats,
            "p_value": max(ps) if ps else None, "significant": reason is None,
            "reason": reason}


# -- the report -------------------------------------------------------------------------------
def read_study(study_dir: Path | str, options: StudyOptions | None = None, *,
               study: Study | None = None) -> Study:
    """load_study (unless ``study`` is given), then every complete cell's run read and
    summarised once."""
    options = options or StudyOptions()
    study = study if study is not None else load_study(study_dir)
    fallback = _capacity_slo_ms(study.raw)
    baseline = (baseline_slos(options.slo_from, options.slo_factor)
                if options.slo_from is not None and not options.slo_ms else None)
    for cell in study.cells:
        if cell.status != "complete":
            continue
        try:
            study.data[cell.name] = _read_cell(cell, options, fallback, baseline)
        except BadInput as exc:
            # One broken cell must not hide the study: it is listed with the reason.
            study.data[cell.name] = _CellData(entry={"error": str(exc)}, latencies={},
                                              slo={}, duration_s=0.0)
    if options.slo_ms:
        seen = {m for d in study.data.values() for m in d.entry.get("models", {})}
        unknown = sorted(set(options.slo_ms) - seen)
        if seen and unknown:
            raise BadInput("no such model in any cell of the study", source="--slo",
                           key=unknown[0], allowed=", ".join(sorted(seen)))
    return study


def build_study_report(study_dir: Path | str, options: StudyOptions | None = None, *,
                       study: Study | None = None) -> dict[str, Any]:
    """The ``report STUDY_DIR --json`` object (CONTRACT.md keys plus the module's additions)."""
    options = options or StudyOptions()
    if not (0 < options.alpha < 0.5):
        raise BadInput("must be in (0, 0.5)", source="--alpha", value=options.alpha)
    study = study if study is not None else read_study(study_dir, options)

    cells_out, incomplete = [], []
    usable: list[tuple[StudyCell, _CellData]] = []
    status_counts: dict[str, int] = {}
    for cell in study.cells:
        status_counts[cell.status] = status_counts.get(cell.status, 0) + 1
        data = study.data.get(cell.name)
        entry = {"name": cell.name, "mix": cell.mix, "coords": cell.coords,
                 "repeat": cell.repeat, "status": cell.status, "kind": cell.kind,
                 "backend": cell.backend, "source": cell.source, "seed": cell.seed,
                 "load": cell.load_run, "run_dir": str(cell.run_dir), "models": {}}
        if data is not None:
            entry.update(data.entry)
        cells_out.append(entry)
        if data is None or "error" in data.entry:
            reason = (data.entry["error"] if data is not None
                      else cell.error or f"status {cell.status}")
            incomplete.append({"name": cell.name, "mix": cell.mix, "coords": cell.coords,
                               "repeat": cell.repeat, "kind": cell.kind,
                               "status": cell.status, "reason": reason})
        else:
            usable.append((cell, data))

    aggregates = _aggregates(usable)
    grid = [a for a in aggregates if a["kind"] == "grid"]
    display: dict[tuple[str, str], list[float]] = {}
    for agg in grid:
        display.setdefault((agg["mix"], agg["source"]), []).append(agg["level"])
    display = {k: sorted(set(v)) for k, v in display.items()}
    best = _best(grid, options.alpha)
    sim_vs_measured = _sim_vs_measured(aggregates, options.alpha)
    for agg in aggregates:
        for m in agg["models"].values():
            m.pop("_pooled_ns", None)
            m.pop("_by_seed", None)

    capacity, prescreen = [], []
    for entry in study.raw.get("capacity") or []:
        out = {"mix": entry["mix"], "config": entry.get("config", {}),
               "load": entry.get("load"), "low": entry.get("low"), "high": entry.get("high")}
        out.update({k: v for k, v in entry.items() if k not in out})
        out["config_label"] = config_label(out["config"])
        (prescreen if entry.get("kind") == "prescreen" else capacity).append(out)

    notes = []
    if incomplete:
        notes.append(f"{len(incomplete)} of {len(study.cells)} cells are not in the numbers "
                     "(not complete, or unreadable): see the list of cells not in the numbers")
    if study.raw.get("status") not in (None, "complete"):
        notes.append(f"the study's status is {study.raw.get('status')!r}: this report covers "
                     "the cells complete so far")
    single = sum(1 for a in grid if a["repeats"] == 1)
    if single:
        notes.append(f"{single} of {len(grid)} grid groups have one repeat: their intervals "
                     "are within-run (bootstrap/Wilson/Poisson), not across repeats")
    spec = study.raw.get("spec") or {}
    return {
        "schema": STUDY_REPORT_SCHEMA_ID,
        "study_dir": str(study.study_dir),
        "name": study.raw.get("name"),
        "status": study.raw.get("status"),
        "alpha": options.alpha,
        "ci_level": CI_LEVEL,
        "methods": METHODS,
        "capacity_slo": (spec.get("capacity") or {}).get("slo"),
        "counts": {"cells": len(study.cells), "usable": len(usable), "by_status": status_counts},
        "cells": cells_out,
        "capacity": capacity,
        "capacity_prescreen": prescreen,
        "capacity_summary": _capacity_summary(capacity + prescreen),
        "levels": {f"{mix}/{source}": levels for (mix, source), levels in display.items()},
        "aggregates": aggregates,
        "best": best,
        "sim_vs_measured": sim_vs_measured,
        "sim_vs_measured_capacity": _capacity_pairs(prescreen, capacity),
        "incomplete": incomplete,
        "notes": notes,
    }


def _aggregates(usable: list[tuple[StudyCell, _CellData]]) -> list[dict[str, Any]]:
    """One entry per (mix, source, kind, configuration, level), in study.json order."""
    groups: dict[tuple, list[tuple[StudyCell, _CellData]]] = {}
    for cell, data in usable:
        key = (cell.mix, cell.source, "grid" if cell.is_grid else "search",
               _config_key(cell.config), cell.level_axis, cell.level)
        groups.setdefault(key, []).append((cell, data))
    mix_order = {m: i for i, m in enumerate(dict.fromkeys(c.mix for c, _ in usable))}
    config_order = {k: i for i, k in enumerate(dict.fromkeys(
        (c.mix, _config_key(c.config)) for c, _ in usable))}
    out = []
    for key in sorted(groups, key=lambda k: (mix_order[k[0]], k[1], k[2],
                                             config_order[(k[0], k[3])],
                                             -1.0 if k[5] is None else k[5])):
        mix, source, kind, config_key, level_axis, level = key
        members = groups[key]
        config = json.loads(config_key)
        names = sorted({m for _, d in members for m in d.entry["models"]})
        models = {model: _aggregate_model(model, members,
                                          _seed(mix, source, kind, config_key, level, model))
                  for model in (*names, ALL)}
        out.append({"mix": mix, "source": source, "kind": kind, "config": config,
                    "config_label": config_label(config), "level_axis": level_axis,
                    "level": level, "load": level if level_axis in ("load", None) else None,
                    "repeats": len(members), "cells": [c.name for c, _ in members],
                    "models": models})
    return out


def _capacity_summary(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (mix, configuration, kind): the capacity over the searched repeats — mean with a t
    interval when >= 2 repeats found one — and the widest bracket."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for e in entries:
        groups.setdefault((e["mix"], _config_key(e["config"]), e.get("kind", "capacity")),
                          []).append(e)
    out = []
    for (mix, config_key, kind), items in groups.items():
        loads = [e["load"] for e in items if e["load"] is not None]
        lows = [e["low"] for e in items if e["low"] is not None]
        highs = [e["high"] for e in items if e["high"] is not None]
        config = json.loads(config_key)
        out.append({"mix": mix, "config": config, "config_label": config_label(config),
                    "kind": kind, "searches": len(items), "none_met": len(items) - len(loads),
                    "load": across_repeats(loads), "low": min(lows) if lows else None,
                    "high": max(highs) if len(highs) == len(items) else None})
    return out


def _capacity_pairs(prescreen: list[dict], capacity: list[dict]) -> list[dict[str, Any]]:
    """A prescreen (simulated) search beside the real one of the same configuration and
    repeat: how far the simulator's capacity was from the measured one."""
    real = {(c["mix"], _config_key(c["config"]), c.get("repeat")): c for c in capacity}
    out = []
    for pre in prescreen:
        match = real.get((pre["mix"], _config_key(pre["config"]), pre.get("repeat")))
        if match is None:
            continue
        out.append({"mix": pre["mix"], "config": pre["config"],
                    "config_label": pre["config_label"], "repeat": pre.get("repeat"),
                    "simulated": {k: pre[k] for k in ("load", "low", "high")},
                    "measured": {k: match[k] for k in ("load", "low", "high")},
                    "ratio": (match["load"] / pre["load"] if match["load"] is not None
                              and pre["load"] else None)})
    return out


def _best(grid: list[dict], alpha: float) -> list[dict[str, Any]]:
    by_level: dict[tuple, list[dict]] = {}
    for agg in grid:
        if agg["level"] is not None:
            by_level.setdefault((agg["mix"], agg["source"], agg["level"]), []).append(agg)
    out = []
    for (mix, source, level), aggs in by_level.items():
        names = sorted({m for a in aggs for m in a["models"] if m != ALL})
        models = [*names, ALL] if len(names) > 1 else names  # one model: (all) is the same
        for model in models:
            for metric, sign in (("p99_ms", 1.0), ("goodput_rps", -1.0)):
                ranked = sorted(((a, a["models"][model]) for a in aggs
                                 if model in a["models"] and a["models"][model].get(metric)),
                                key=lambda am, metric=metric, sign=sign:
                                sign * am[1][metric]["mean"])
                if not ranked:
                    continue
                (best_agg, best), runner = ranked[0], (ranked[1] if len(ranked) > 1 else None)
                entry = {"mix": mix, "source": source, "level_axis": best_agg["level_axis"],
                         "level": level, "load": best_agg["load"], "model": model,
                         "metric": metric, "config": best_agg["config"],
                         "config_label": best_agg["config_label"],
                         "value": best[metric]["mean"], "ci95": best[metric]["ci95"],
                         "repeats": best[metric]["n"], "candidates": len(ranked),
                         # configurations at this level with no value (e.g. no ok request)
                         "without_value": [a["config_label"] for a in aggs
                                           if not (a["models"].get(model) or {}).get(metric)],
                         "runner_up": None, "lead": None}
                if runner is not None:
                    runner_agg, runner_m = runner
                    entry["runner_up"] = {"config": runner_agg["config"],
                                          "config_label": runner_agg["config_label"],
                                          "value": runner_m[metric]["mean"],
                                          "ci95": runner_m[metric]["ci95"],
                                          "repeats": runner_m[metric]["n"]}
                    if metric == "p99_ms":
                        entry["lead"] = _lead_p99(best, runner_m, alpha,
                                                  _seed(mix, source, level, model))
                    else:
                        entry["lead"] = _lead_goodput(best, runner_m, alpha)
                out.append(entry)
    return out


def _sim_vs_measured(aggregates: list[dict], alpha: float) -> list[dict[str, Any]]:
    """Simulated and measured cells at the same (mix, configuration, load): grid groups where
    a source has them, else capacity-search probes that landed on that load."""
    by_coords: dict[tuple, dict[str, dict]] = {}
    for agg in aggregates:
        if agg["load"] is None:
            continue
        pair = by_coords.setdefault((agg["mix"], _config_key(agg["config"]), agg["load"]), {})
        if agg["source"] not in pair or agg["kind"] == "grid":
            pair[agg["source"]] = agg
    out = []
    for (mix, _, load), pair in by_coords.items():
        if SIMULATED not in pair or MEASURED not in pair:
            continue
        sim, meas = pair[SIMULATED], pair[MEASURED]
        for model in sorted(set(sim["models"]) & set(meas["models"]), key=lambda m: m == ALL):
            s, m = sim["models"][model], meas["models"][model]

            def mean(x: dict, metric: str) -> float | None:
                return x[metric]["mean"] if x.get(metric) else None

            entry = {"mix": mix, "config": sim["config"], "config_label": sim["config_label"],
                     "load": load, "model": model,
                     "simulated": {k: mean(s, k) for k in METRICS} | {
                         "repeats": sim["repeats"], "kind": sim["kind"]},
                     "measured": {k: mean(m, k) for k in METRICS} | {
                         "repeats": meas["repeats"], "kind": meas["kind"]}}
            for k in ("p50_ms", "p99_ms"):
                a, b = entry["simulated"][k], entry["measured"][k]
                entry[f"{k[:3]}_ratio"] = b / a if a and b is not None else None
            a, b = entry["simulated"]["attainment"], entry["measured"]["attainment"]
            entry["attainment_diff"] = b - a if a is not None and b is not None else None
            cmp = compare_model(s["_pooled_ns"], m["_pooled_ns"], alpha=alpha,
                                seed=_seed(mix, load, model))
            entry["compare"] = {k: cmp.get(k) for k in ("ks_p", "mw_p", "verdict",
                                                        "p99_diff_ms", "p99_diff_ci_ms",
                                                        "wasserstein_ms")}
            out.append(entry)
    return out
