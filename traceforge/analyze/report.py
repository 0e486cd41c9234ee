"""build_report: the numbers behind ``traceforge report`` (terminal, ``--json`` and ``--html``).

Every definition lives in docs/analysis.md; the per-row durations come from
:mod:`traceforge.analyze.rundata`. The report is a plain JSON-able dict (CONTRACT.md names the
keys users script against; the rest are additions).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from traceforge.analyze.rundata import NS_PER_MS, NS_PER_S, RunData, load_run
from traceforge.analyze.stats import PERCENTILES, percentile_ci, summarize
from traceforge.errors import BadInput
from traceforge.schema import STATUSES, spec_slo_ms

REPORT_SCHEMA_ID = "traceforge.report/1"
DEFAULT_SLO_FACTOR = 5.0
CI_LEVEL = 0.95
SPARSE_TAIL = 10  # fewer requests than this beyond a percentile: its CI is marked
# Used only when run.json has no self-check (e.g. a simulated run or an older replay).
LIMITED_LAG_P99_US = 1000.0
LIMITED_RATE_RATIO = 0.98
_COMPONENTS = ("send_lag", "queue_wait", "service", "transport_other")


# -- SLOs -------------------------------------------------------------------------------------
def parse_slo(text: str, *, source: str = "--slo") -> dict[str, float]:
    """``model=ms,model=ms`` -> {model: ms}; BadInput naming the bad entry."""
    out: dict[str, float] = {}
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        name, sep, value = entry.partition("=")
        if not sep or not name.strip():
            raise BadInput("expected MODEL=MS", source=source, value=entry,
                           allowed="e.g. bert=50,gpt=400")
        try:
            ms = float(value)
        except ValueError:
            raise BadInput("not a number", source=source, key=name.strip(),
                           value=value) from None
        if not math.isfinite(ms) or ms <= 0:
            raise BadInput("must be a positive number of milliseconds", source=source,
                           key=name.strip(), value=value)
        if name.strip() in out:  # which one was meant? (--rate refuses the same)
            raise BadInput("model given twice", source=source, key=name.strip(), value=value)
        out[name.strip()] = ms
    if not out:
        raise BadInput("no SLO given", source=source, value=text, allowed="MODEL=MS,...")
    return out


def spec_slos(manifest: dict[str, Any], source: object = None) -> dict[str, float]:
    """Per-model ``slo_ms`` from the workload spec recorded in run.json (may be empty); a bad
    value is refused naming its key (:func:`traceforge.schema.spec_slo_ms`)."""
    spec = ((manifest.get("trace") or {}).get("meta") or {}).get("spec") or {}
    return spec_slo_ms(spec, source=source, prefix="trace.meta.spec")


def baseline_slos(baseline_dir: Path | str, factor: float) -> dict[str, float]:
    """SLO = ``factor`` × the baseline run's p50 latency of ok rows, per model."""
    if not math.isfinite(factor) or factor <= 0:
        raise BadInput("must be a positive number", source="--slo-factor", value=factor)
    base = load_run(baseline_dir)
    latency = base.latency
    keep = base.ok & ~base.col("warmup")
    out = {}
    for code, name in enumerate(base.models):
        values = latency[keep & (base.model_code == code)]
        if values.size:
            out[name] = float(np.median(values) / NS_PER_MS * factor)
    if not out:
        raise BadInput("baseline run has no ok requests to take a p50 from",
                       source=Path(baseline_dir))
    return out


# -- per-group statistics ---------------------------------------------------------------------
def _group_stats(run: RunData, rows: np.ndarray, *, duration_s: float, slo_ms: float | None,
                 seed: int, ci_keys: tuple[str, ...] | None = None,
                 arrival_s: float | None = None) -> dict[str, Any]:
    """Statistics of the rows selected by the boolean mask ``rows`` (bootstrap CIs for the
    percentiles named in ``ci_keys``, default all)."""
    per_code = np.bincount(run.status_code[rows] + 1, minlength=len(STATUSES) + 1)
    counts = {s: int(per_code[i + 1]) for i, s in enumerate(STATUSES)}
    unknown = int(per_code[0])
    ok_rows = rows & run.ok
    latency_ns = run.latency[ok_rows]
    sorted_ns = np.sort(latency_ns)
    count = int(per_code.sum())
    out: dict[str, Any] = {
        "count": count,
        "ok": counts["ok"],
        "errors": counts["error"],
        "timeouts": counts["timeout"],
        "cancelled": counts["cancelled"],
        "dropped": counts["dropped"],
        # ok rows whose stream ended short without [DONE] (http; 0 where not recorded)
        "truncated": (int(np.count_nonzero(run.col("truncated")[rows]))
                      if "truncated" in run.table.column_names else 0),
        "status_counts": {**counts, **({"other": unknown} if unknown else {})},
        # offered: over the arrival window (first to last scheduled send), not the drain
        "offered_rps": (count / arrival_s if arrival_s else
                        count / duration_s if duration_s > 0 else None),
        "throughput_rps": sorted_ns.size / duration_s if duration_s > 0 else None,
    }

    lat: dict[str, Any] = {k: None for k in ("mean", *PERCENTILES, "min", "max", "std")}
    ci: dict[str, Any] = {k: None for k in PERCENTILES}
    if sorted_ns.size:
        qs = np.percentile(sorted_ns, list(PERCENTILES.values()))
        lat = {"mean": float(sorted_ns.mean() / NS_PER_MS),
               **{k: float(q / NS_PER_MS) for k, q in zip(PERCENTILES, qs, strict=True)},
               "min": float(sorted_ns[0] / NS_PER_MS), "max": float(sorted_ns[-1] / NS_PER_MS),
               "std": float(sorted_ns.std() / NS_PER_MS)}
        rng = np.random.default_rng(seed)  # fixed: the same run always reports the same CI
        for key, pct in PERCENTILES.items():
            if ci_keys is not None and key not in ci_keys:
                continue
            lo, hi = percentile_ci(sorted_ns, pct, level=CI_LEVEL, rng=rng)
            ci[key] = None if math.isnan(lo) else [lo / NS_PER_MS, hi / NS_PER_MS]
    out["latency_ms"] = lat
    out["latency_ci95_ms"] = ci
    # With few requests beyond a percentile its bootstrap CI under-covers (docs/analysis.md).
    out["latency_ci_sparse"] = [k for k, pct in PERCENTILES.items()
                                if sorted_ns.size * (1 - pct / 100) < SPARSE_TAIL]

    # Decomposition over ok rows: means add up to the mean latency (percentiles do not).
    decomposition = {}
    for name in (*_COMPONENTS, "gpu"):
        values = getattr(run, name)[ok_rows]
        summary = summarize(values, scale=NS_PER_MS)
        summary["known"] = summary.pop("count")
        decomposition[name] = summary
    out["decomposition_ms"] = decomposition
    # What the slowest 1 % of requests spent their time on (mean of each component over them).
    tail = {}
    if sorted_ns.size:
        in_tail = latency_ns >= np.percentile(sorted_ns, 99.0)
        for name in (*_COMPONENTS, "gpu"):
            values = getattr(run, name)[ok_rows][in_tail]
            known = values[~np.isnan(values)]
            tail[name] = float(known.mean() / NS_PER_MS) if known.size else None
        tail["latency"] = float(latency_ns[in_tail].mean() / NS_PER_MS)
        tail["count"] = int(np.count_nonzero(in_tail))
    out["tail_decomposition_ms"] = tail or None

    out["overload"] = _overload(run, rows, ok_rows, count, arrival_s)
    out["generative"] = _generative(run, ok_rows, duration_s)
    out["batching"] = _batching(run, ok_rows)
    out["buckets"] = _buckets(run, ok_rows)
    out["slo"] = _slo(slo_latency_ns(run, rows), slo_ms, duration_s)
    return out


# A model is overloaded when it is offered more than it serves *and* its queue keeps growing:
# a stable queue under bursts has latency that rises and falls, an overloaded one has latency
# that trends up over the whole run. The trend test is Kendall's tau between scheduled time and
# latency (every request, failed ones at their done time or, never done, at the window end);
# OVERLOAD_TAU/OVERLOAD_P/OVERLOAD_GROWTH are the thresholds (docs/analysis.md).
OVERLOAD_TAU = 0.3
OVERLOAD_P = 0.01
OVERLOAD_GROWTH = 2.0  # median latency of the last fifth of arrivals over the first fifth's
OVERLOAD_SERVED = 0.95  # served in the arrival window / offered
OVERLOAD_MAX_N = 5000  # requests the trend test looks at (evenly thinned beyond)


def _overload(run: RunData, rows: np.ndarray, ok_rows: np.ndarray, count: int,
              arrival_s: float | None) -> dict[str, Any] | None:
    if not arrival_s or count < 20:
        return None
    from scipy import stats

    scheduled = run.col("scheduled_ns")[rows]
    done = run.col("done_ns")[rows]
    end = float(scheduled.max())
    served = int(np.count_nonzero(ok_rows[rows] & (done <= end)))
    served_rps = served / arrival_s
    latency = np.where(np.isnan(done), np.nanmax(done) if np.any(~np.isnan(done)) else end,
                       done) - scheduled
    order = np.argsort(scheduled, kind="stable")
    scheduled, latency = scheduled[order], latency[order]
    step = max(1, math.ceil(scheduled.size / OVERLOAD_MAX_N))
    tau = stats.kendalltau(scheduled[::step], latency[::step])
    fifth = max(1, scheduled.size // 5)
    early, late = float(np.median(latency[:fifth])), float(np.median(latency[-fifth:]))
    growth = late / early if early > 0 else math.inf
    tau_value = float(tau.statistic) if np.isfinite(tau.statistic) else 0.0
    p_value = float(tau.pvalue) if np.isfinite(tau.pvalue) else 1.0
    overloaded = bool(served_rps < OVERLOAD_SERVED * (count / arrival_s)
                      and tau_value > OVERLOAD_TAU and p_value < OVERLOAD_P
                      and growth > OVERLOAD_GROWTH)
    return {"overloaded": overloaded, "served_in_window_rps": served_rps,
            "queue_trend": {"kendall_tau": tau_value, "p_value": p_value,
                            "late_over_early_p50": growth,
                            "early_p50_ms": early / NS_PER_MS, "late_p50_ms": late / NS_PER_MS}}


def _generative(run: RunData, ok_rows: np.ndarray, duration_s: float) -> dict[str, Any] | None:
    gen_rows = ok_rows & (run.col("max_new_tokens") > 0)
    if not np.any(gen_rows):
        return None
    tokens = run.col("tokens_out")[gen_rows]
    tokens_total = float(np.nansum(tokens))
    return {
        "count": int(np.count_nonzero(gen_rows)),
        "ttft_ms": summarize(run.ttft[gen_rows], scale=NS_PER_MS),
        "tpot_ms": summarize(run.tpot[gen_rows], scale=NS_PER_MS),
        "itl_ms": summarize(run.itl_values(gen_rows), scale=NS_PER_MS),
        "tokens_out": int(tokens_total),
        "tokens_per_s": tokens_total / duration_s if duration_s > 0 else None,
    }


def _batching(run: RunData, ok_rows: np.ndarray) -> dict[str, Any] | None:
    batched = run.col("batched_with")[ok_rows]
    batched = batched[~np.isnan(batched)]
    if not batched.size:
        return None
    return {"mean_batched_with": float(batched.mean()), "max_batched_with": int(batched.max())}


def _buckets(run: RunData, ok_rows: np.ndarray) -> dict[str, Any] | None:
    """Resident shape buckets: how often requests were padded, the share of executed tokens
    that were padding, and the rows and p50 service time per bucket that ran."""
    if "bucket_seq_len" not in run.table.column_names:
        return None
    seq_b = run.col("bucket_seq_len")[ok_rows]
    known = ~np.isnan(seq_b)
    if not np.any(known):
        return None
    seq_b = seq_b[known]
    bs_b = run.col("bucket_batch_size")[ok_rows][known]
    seq = run.col("seq_len")[ok_rows][known]
    bs = run.col("batch_size")[ok_rows][known]
    service = run.service[ok_rows][known]
    ran = bs_b * seq_b
    by: dict[str, Any] = {}
    keys = np.stack([bs_b, seq_b])
    for b, s_ in np.unique(keys, axis=1).T:
        sel = (bs_b == b) & (seq_b == s_)
        svc = service[sel]
        svc = svc[~np.isnan(svc)]
        by[f"b{int(b)}s{int(s_)}"] = {
            "count": int(sel.sum()),
            "service_p50_ms": float(np.median(svc) / NS_PER_MS) if svc.size else None}
    return {"padded_share": float(np.mean((seq_b > seq) | (bs_b > bs))),
            "padding_token_share": float(1.0 - (bs * seq).sum() / ran.sum()),
            "by_bucket": by}


def slo_latency_ns(run: RunData, rows: np.ndarray) -> np.ndarray:
    """The latencies an SLO judges among ``rows`` (the report's rule, shared by the study's
    capacity search): ok rows their latency; errors, timeouts and drops +inf (misses, so
    failing requests never make a run look better); cancelled rows (Ctrl-C, the end of a
    drain) and rows of an unknown status left out: they say nothing about the system."""
    code = run.status_code[rows]
    judged = (code >= 0) & (code != STATUSES.index("cancelled"))
    latency = np.where(run.ok[rows], run.latency[rows], np.inf)
    return latency[judged]


def _slo(judged_ns: np.ndarray, slo_ms: float | None, duration_s: float) -> dict[str, Any] | None:
    if slo_ms is None:
        return None
    eligible = judged_ns.size
    attained = int(np.count_nonzero(judged_ns <= slo_ms * NS_PER_MS))
    return {
        "slo_ms": slo_ms,
        "eligible": int(eligible),
        "attained": attained,
        "attainment": attained / eligible if eligible else None,
        "goodput_rps": attained / duration_s if duration_s > 0 else None,
    }


def _overall_slo(models: dict[str, dict[str, Any]], duration_s: float) -> dict[str, Any] | None:
    with_slo = [m["slo"] for m in models.values() if m.get("slo")]
    if not with_slo:
        return None
    eligible = sum(s["eligible"] for s in with_slo)
    attained = sum(s["attained"] for s in with_slo)
    return {
        "slo_ms": None,  # per model
        "models": len(with_slo),
        "eligible": eligible,
        "attained": attained,
        "attainment": attained / eligible if eligible else None,
        "goodput_rps": attained / duration_s if duration_s > 0 else None,
    }


# -- self-check -------------------------------------------------------------------------------
def _self_check(run: RunData, rows: np.ndarray) -> dict[str, Any]:
    """run.json's self-check; computed from the timeline where the run did not record one."""
    recorded = run.manifest.get("self_check")
    sent = run.col("sent_ns")
    lag = run.send_lag[rows & ~np.isnan(sent)]
    scheduled = run.col("scheduled_ns")[rows]
    measured: dict[str, Any] = {"send_lag_us": None, "achieved_rate_ratio": None}
    if lag.size:
        p50, p99 = np.percentile(lag, [50, 99]) / 1e3
        measured["send_lag_us"] = {"p50": float(p50), "p99": float(p99),
                                   "max": float(lag.max() / 1e3)}
    sent_sorted = np.sort(sent[rows & ~np.isnan(sent)])
    if sent_sorted.size >= 2 and scheduled.size >= 2:
        offered_span = float(scheduled.max() - scheduled.min())
        sent_span = float(sent_sorted[-1] - sent_sorted[0])
        if offered_span > 0 and sent_span > 0:
            measured["achieved_rate_ratio"] = ((sent_sorted.size - 1) / sent_span) / (
                (scheduled.size - 1) / offered_span)
    limited_here = bool(
        (measured["send_lag_us"] and measured["send_lag_us"]["p99"] > LIMITED_LAG_P99_US)
        or (measured["achieved_rate_ratio"] is not None
            and measured["achieved_rate_ratio"] < LIMITED_RATE_RATIO))
    if isinstance(recorded, dict) and recorded:
        out = dict(recorded)
        out["source"] = "run.json"
        out["from_timeline"] = measured
        out.setdefault("generator_limited", False)
        # run.json judges the whole run; warm-up rows the report leaves out may be the only
        # lagging ones (e.g. a stall at the first sends), which must not taint this report.
        out["limits_this_report"] = bool(out["generator_limited"]) and limited_here
        return out
    warning = None
    if limited_here:
        warning = (f"send lag p99 {measured['send_lag_us']['p99']:.0f} µs / achieved rate "
                   f"ratio {measured['achieved_rate_ratio'] or float('nan'):.3f}: the load "
                   "generator may have fallen behind the trace")
    return {**measured, "generator_limited": limited_here, "limits_this_report": limited_here,
            "warning": warning, "source": "timeline"}


# -- the report -------------------------------------------------------------------------------
def resolve_slos(run: RunData, *, slo_ms: dict[str, float] | None,
                 slo_from: Path | str | None, slo_factor: float) -> tuple[dict, str | None]:
    """Pick the SLO source: ``--slo`` over ``--slo-from`` over the trace spec."""
    if slo_ms:
        return dict(slo_ms), "--slo"
    if slo_from is not None:
        return baseline_slos(slo_from, slo_factor), f"{slo_factor:g} x p50 of {slo_from}"
    spec = spec_slos(run.manifest, source=run.run_dir / "run.json")
    return spec, ("trace spec" if spec else None)


def build_report(run_dir: Path | str, *, warmup_s: float | None = None,
                 slo_ms: dict[str, float] | None = None, slo_from: Path | str | None = None,
                 slo_factor: float = DEFAULT_SLO_FACTOR, include_warmup_rows: bool = False,
                 run: RunData | None = None,
                 ci_percentiles: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The ``report --json`` object for one run directory (docs/analysis.md).

    ``warmup_s`` drops rows scheduled in the first S seconds after the first scheduled request;
    rows the replay flagged ``warmup`` are dropped unless ``include_warmup_rows``. ``slo_ms``
    ({model: ms}) overrides ``slo_from`` (a baseline run: SLO = ``slo_factor`` × its p50), which
    overrides the spec's per-model ``slo_ms``. ``ci_percentiles`` (e.g. ``("p50", "p99")``)
    limits the bootstrap CIs to those percentiles (the others' CIs are null); default all.
    """
    if warmup_s is not None and (not math.isfinite(warmup_s) or warmup_s < 0):
        raise BadInput("must be a number of seconds >= 0", source="--warmup", value=warmup_s)
    run = run if run is not None else load_run(run_dir)
    slos, slo_source = resolve_slos(run, slo_ms=slo_ms, slo_from=slo_from,
                                    slo_factor=slo_factor)
    unknown = sorted(set(slos) - set(run.models))
    if slo_ms and unknown:
        raise BadInput("no such model in the run", source="--slo", key=unknown[0],
                       allowed=", ".join(run.models) or "(run has no requests)")

    rows, window = analysis_rows(run, warmup_s=warmup_s, include_warmup_rows=include_warmup_rows)
    duration_s = window["duration_s"]
    arrival_s = window["arrival_window_s"]
    models = {}
    for code, name in enumerate(run.models):
        mask = rows & (run.model_code == code)
        if np.any(mask):
            models[name] = _group_stats(run, mask, duration_s=duration_s,
                                        slo_ms=slos.get(name), seed=code + 1,
                                        ci_keys=ci_percentiles, arrival_s=arrival_s)
    overall = _group_stats(run, rows, duration_s=duration_s, slo_ms=None, seed=0,
                           ci_keys=ci_percentiles, arrival_s=arrival_s)
    overall["slo"] = _overall_slo(models, duration_s)

    manifest = run.manifest
    notes = []
    status = manifest.get("status", "unknown")
    if status != "complete":
        notes.append(f"run status is {status!r}: the report covers the requests recorded")
    if run.n == 0:
        notes.append("the timeline has no rows")
    for name, m in models.items():
        if m.get("truncated"):
            notes.append(f"{name}: {m['truncated']} streamed responses were TRUNCATED (the "
                         "stream ended short of max_new_tokens without [DONE]; counted ok)")
    lost = lost_rows_note(manifest, run.n)
    if lost:
        notes.append(lost)
    for name, m in models.items():
        over = m.get("overload") or {}
        if over.get("overloaded"):
            trend = over["queue_trend"]
            notes.append(f"{name} is OVERLOADED: offered {m['offered_rps']:.3g} req/s, served "
                         f"{over['served_in_window_rps']:.3g} req/s while requests arrived; "
                         f"its queue grew (median latency {trend['early_p50_ms']:.3g} ms in "
                         f"the first fifth of arrivals, {trend['late_p50_ms']:.3g} ms in the "
                         f"last; Kendall tau {trend['kendall_tau']:.2f})")
    # A simulated run whose models sent requests far larger than the shapes the profile's
    # co-runs measured (simulate/simulator.py: interference_shapes).
    from traceforge.simulate.simulator import interference_note

    shapes = (manifest.get("backend_info") or {}).get("interference_shapes")
    if isinstance(shapes, dict) and (note := interference_note(shapes)):
        notes.append(note.removeprefix("note: "))
    # A simulated timeslice run on the time-sliced engine (simulate/engine.timeslice_workers)
    sliced = (manifest.get("backend_info") or {}).get("time_slice")
    if (isinstance(sliced, dict) and isinstance(sliced.get("quantum_ms"), int | float)
            and isinstance(sliced.get("switch_ms"), int | float)):
        notes.append(f"simulated time-sliced: the models took turns on the GPU in "
                     f"{sliced['quantum_ms']:g} ms slices with a {sliced['switch_ms']:g} ms "
                     "context switch (no co-run slowdowns; docs/simulator.md)")
    extra = {}  # sections present only when the run has them (analyze/sessions.py)
    from traceforge.analyze.sessions import server_metrics_report, session_report

    if (sessions := session_report(run, rows)) is not None:
        extra["sessions"] = sessions
    if (server := server_metrics_report(run)) is not None:
        extra["server_metrics"] = server
    return {
        "schema": REPORT_SCHEMA_ID,
        "run_dir": str(run.run_dir),
        "run": _run_summary(manifest),
        "status": status,
        "self_check": _self_check(run, rows),
        "window": window,
        "slo_source": slo_source,
        "models": models,
        "overall": overall,
        "notes": notes,
        **extra,
    }


def lost_rows_note(manifest: dict[str, Any], n_rows: int) -> str | None:
    """Rows the trace had, minus those recorded and those whose time never came (``not_due``):
    anything left was lost (e.g. the timeline writer failed). None when nothing was lost."""
    trace_rows = (manifest.get("trace") or {}).get("rows")
    not_due = manifest.get("not_due") or 0
    if not isinstance(trace_rows, int) or manifest.get("status") == "running":
        return None
    lost = trace_rows - n_rows - (not_due if isinstance(not_due, int) else 0)
    if lost <= 0:
        return None
    cause = f" ({manifest['error']})" if manifest.get("error") else ""
    return (f"ROWS LOST: {lost} of the trace's {trace_rows} requests were due but have no row "
            f"in the timeline{cause}; latency statistics cover only the recorded rows")


def analysis_rows(run: RunData, *, warmup_s: float | None,
                  include_warmup_rows: bool) -> tuple[np.ndarray, dict[str, Any]]:
    """The rows a report covers and the time window its rates divide by."""
    scheduled = run.col("scheduled_ns")
    rows = np.ones(run.n, dtype=bool)
    flagged = run.col("warmup")
    excluded_flagged = 0
    if not include_warmup_rows:
        excluded_flagged = int(np.count_nonzero(flagged))
        rows &= ~flagged
    trimmed = 0
    first = float(scheduled.min()) if run.n else 0.0
    if warmup_s:
        late_enough = scheduled >= first + warmup_s * NS_PER_S
        trimmed = int(np.count_nonzero(rows & ~late_enough))
        rows &= late_enough
    start_ns = end_ns = last_ns = 0.0
    if np.any(rows):
        start_ns = float(scheduled[rows].min())
        last_ns = float(scheduled[rows].max())
        done = run.col("done_ns")[rows]
        end_ns = float(max(np.nanmax(done) if np.any(~np.isnan(done)) else -np.inf,
                           scheduled[rows].max()))
    return rows, {
        "start_s": start_ns / NS_PER_S,
        "end_s": end_ns / NS_PER_S,
        "duration_s": (end_ns - start_ns) / NS_PER_S,
        # first to last scheduled send: offered rates divide by this, not by the drain
        "arrival_window_s": (last_ns - start_ns) / NS_PER_S,
        "warmup_s": warmup_s or 0.0,
        "include_warmup_rows": include_warmup_rows,
        "rows_total": run.n,
        "rows_analysed": int(np.count_nonzero(rows)),
        "excluded_warmup_flagged": excluded_flagged,
        "excluded_warmup_trim": trimmed,
    }


def _run_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    backend = manifest.get("backend")
    described = manifest.get("describe") or manifest.get("backend_info") or {}
    if isinstance(backend, dict):
        described, backend = backend, backend.get("name")
    trace = manifest.get("trace") or {}
    keys = ("mode", "device", "gpu", "gpu_name", "driver")
    return {
        "backend": backend,
        **{k: (manifest.get(k) or (described.get(k) if isinstance(described, dict) else None))
           for k in keys},
        "started_at": manifest.get("started_at"),
        "finished_at": manifest.get("finished_at"),
        "host": manifest.get("host"),
        "trace_path": trace.get("path"),
        "trace_sha256": trace.get("sha256"),
        "counts": manifest.get("counts"),
    }
