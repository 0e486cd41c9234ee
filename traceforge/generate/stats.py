"""Trace statistics: what ``traceforge trace stats`` prints, per model and in aggregate.

Definitions (docs/traces.md repeats them): T is the observation window (``meta["duration_s"]``,
else the last arrival). Realised rate n/T with two confidence intervals: exact Poisson (chi²),
valid for Poisson arrivals only, and batch means (20 equal windows, Student t), which stays honest
for bursty processes whose correlations are shorter than T/20. CV of inter-arrival gaps. Index of
dispersion of counts IDC(w) = Var(N_w)/E(N_w) over the full windows of w seconds (1 for Poisson,
> 1 for bursty). Goodness of fit against the process that generated the trace (from the spec in
the metadata): a Kolmogorov–Smirnov test of the gaps against the exact inter-arrival law.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from traceforge.generate.arrivals import GammaArrivals, OnOffArrivals, WeibullArrivals
from traceforge.schema import Trace

CONFIDENCE = 0.95
BATCHES = 20
# Arrival times are integer ns, so gaps far below 1 µs are distorted by rounding (a Gamma process
# with CV 4 puts a quarter of its gaps under 1 ns). The KS test therefore uses gaps >= 1 µs against
# the law conditioned on X >= 1 µs; the share of shorter gaps is checked by a binomial test; the
# reported p-value is the Bonferroni combination of the two.
SHORT_GAP_S = 1e-6
KS_MAX_N = 1_000_000  # evenly strided subsample above this: the test's power is ample already


def rate_ci_poisson(count: int, duration_s: float, confidence: float = CONFIDENCE):
    """Exact (Garwood) interval for a Poisson rate from ``count`` events in ``duration_s``."""
    from scipy.stats import chi2

    alpha = 1.0 - confidence
    lo = 0.0 if count == 0 else chi2.ppf(alpha / 2, 2 * count) / (2 * duration_s)
    hi = chi2.ppf(1 - alpha / 2, 2 * count + 2) / (2 * duration_s)
    return [float(lo), float(hi)]


def rate_ci_batch_means(arrival_s: np.ndarray, duration_s: float,
                        confidence: float = CONFIDENCE, batches: int = BATCHES):
    """Mean of per-window rates over ``batches`` equal windows ± Student t half-width."""
    from scipy.stats import t as student_t

    width = duration_s / batches
    counts = np.bincount(np.minimum((arrival_s / width).astype(np.int64), batches - 1),
                         minlength=batches)[:batches]
    rates = counts / width
    half = student_t.ppf(0.5 + confidence / 2, batches - 1) * rates.std(ddof=1) / math.sqrt(
        batches)
    mean = float(rates.mean())
    return [max(0.0, mean - float(half)), mean + float(half)]  # a rate is never negative


def index_of_dispersion(arrival_s: np.ndarray, duration_s: float, window_s: float):
    """Var/mean of counts in the full windows of ``window_s``; None with fewer than 2 windows."""
    n_windows = int(duration_s // window_s)
    if n_windows < 2:
        return None
    inside = arrival_s[arrival_s < n_windows * window_s]
    if not inside.size:
        return None
    # Occupied windows only, the empty ones counted in closed form: one count per window of a
    # 5e9 s trace was a 37 GiB array. var(ddof=1) = (sum c^2 - n mean^2) / (n - 1).
    _, counts = np.unique((inside / window_s).astype(np.int64), return_counts=True)
    mean = inside.size / n_windows
    square_sum = float(np.dot(counts.astype(np.float64), counts))
    return float((square_sum - n_windows * mean * mean) / (n_windows - 1) / mean)


# -- goodness of fit ---------------------------------------------------------------------------
def mmpp_interarrival_sf(rates, mean_dwell_s):
    """Survival function of the stationary (Palm) inter-arrival law of an MMPP.

    With D1 = diag(λ), Q the generator (leave state i at rate 1/dᵢ, to each other state equally),
    D0 = Q − D1 and π the stationary law: P(X > t) = π_a·exp(D0·t)·1 with π_a = πD1 / πλ.
    Evaluated through the eigen-decomposition of D0 (k×k), so it is vectorised over t.
    """
    lam = np.asarray(rates, dtype=np.float64)
    dwell = np.asarray(mean_dwell_s, dtype=np.float64)
    k = lam.size
    leave = 1.0 / dwell
    q = np.repeat((leave / (k - 1))[:, None], k, axis=1)
    np.fill_diagonal(q, -leave)
    d0 = q - np.diag(lam)
    pi = dwell / dwell.sum()
    pi_a = pi * lam / (pi * lam).sum()
    eigval, vec = np.linalg.eig(d0)
    left = pi_a @ vec
    right = np.linalg.solve(vec, np.ones(k))
    coef = left * right

    def sf(t):
        t = np.asarray(t, dtype=np.float64)
        return np.real(np.exp(np.multiply.outer(t, eigval)) @ coef).clip(0.0, 1.0)

    return sf


def _target_law(arrival: dict, multipliers=None, mod=None):
    """(description, cdf over gaps in seconds) of a spec arrival table, or (None, reason)."""
    from scipy import stats

    process = arrival.get("process")
    rate = arrival.get("rate")
    if mod is not None:
        if process != "poisson":
            return None, f"no closed-form gap law for {process} under a shared modulation"
        # Poisson on a modulated clock is an MMPP with rates λ·mᵢ over the modulation's states.
        mult = multipliers or mod["multipliers"]
        rates = [rate * m for m in mult]
        sf = mmpp_interarrival_sf(rates, mod["mean_dwell_s"])
        return f"mmpp(rates={rates}, mean_dwell_s={mod['mean_dwell_s']})", lambda x: 1 - sf(x)
    if process == "poisson":
        return f"exponential(rate={rate})", stats.expon(scale=1 / rate).cdf
    # The laws' parameters come from the process classes that sample them (one definition).
    if process == "gamma":
        law = GammaArrivals(rate, arrival["cv"])
        if not math.isfinite(law.shape):
            return None, "cv so small that every gap is 1/rate (no spread to test)"
        return (f"gamma(shape={law.shape:g}, mean={1 / rate:g})",
                stats.gamma(law.shape, scale=law.scale).cdf)
    if process == "weibull":
        law = WeibullArrivals(rate, arrival["shape"])
        return (f"weibull(shape={law.shape:g}, scale={law.scale:g})",
                stats.weibull_min(law.shape, scale=law.scale).cdf)
    if process in ("mmpp", "onoff"):
        if process == "onoff":
            onoff = OnOffArrivals.build(arrival["rate"], arrival["mean_on_s"],
                                        arrival["mean_off_s"], arrival.get("off_rate", 0.0))
            rates, dwell = list(onoff.rates), list(onoff.mean_dwell_s)
        else:
            rates, dwell = arrival["rates"], arrival["mean_dwell_s"]
        sf = mmpp_interarrival_sf(rates, dwell)
        return f"mmpp(rates={rates}, mean_dwell_s={dwell})", lambda x: 1 - sf(x)
    return None, f"no gap law for process {process!r}"


def _ks_with_short_gaps(gaps_s: np.ndarray, cdf) -> dict[str, Any]:
    # Extreme spec parameters (a Weibull shape of 1e300) overflow inside scipy's cdf to values
    # that are still right (0 or 1); the float warnings would only alarm the user.
    with np.errstate(all="ignore"):
        return _ks_checked(gaps_s, cdf)


def _ks_checked(gaps_s: np.ndarray, cdf) -> dict[str, Any]:
    from scipy import stats

    n = gaps_s.size
    f_short = float(cdf(SHORT_GAP_S))
    f_short = f_short if math.isfinite(f_short) else 0.0
    long_gaps = gaps_s[gaps_s >= SHORT_GAP_S]
    n_short = n - long_gaps.size
    p_short = float(stats.binomtest(n_short, n, min(max(f_short, 0.0), 1.0)).pvalue)
    if long_gaps.size > KS_MAX_N:
        long_gaps = long_gaps[:: math.ceil(long_gaps.size / KS_MAX_N)]
    if long_gaps.size < 2 or f_short >= 1.0:
        p_ks, statistic = 1.0, 0.0
    else:
        res = stats.kstest(long_gaps, lambda x: (cdf(x) - f_short) / (1.0 - f_short))
        p_ks, statistic = float(res.pvalue), float(res.statistic)
    return {"statistic": statistic, "p_value": min(1.0, 2.0 * min(p_ks, p_short)),
            "p_ks": p_ks, "p_short_gaps": p_short, "n": int(n), "n_ks": int(long_gaps.size)}


def goodness_of_fit(arrival_s: np.ndarray, arrival_spec: dict | None, *,
                    multipliers=None, modulation: dict | None = None,
                    duration_s: float | None = None) -> dict[str, Any]:
    """Test arrival times (seconds, sorted) against the process in ``arrival_spec``.

    Without a target (imported traces) the reference is a Poisson process at the realised rate,
    marked ``"reference": true``: a small p-value then means "not Poisson", not "wrong".
    """
    from scipy import stats

    if arrival_s.size < 3:
        return {"law": None, "reason": "fewer than 3 arrivals"}
    gaps = np.diff(arrival_s)
    process = (arrival_spec or {}).get("process")
    if process in (None, "imported"):
        rate = (arrival_s.size - 1) / float(arrival_s[-1] - arrival_s[0] or 1.0)
        out = _ks_with_short_gaps(gaps, stats.expon(scale=1 / rate).cdf)
        return {"law": f"exponential(rate={rate:.6g}) (realised)", "test": "ks",
                "reference": True, **out}
    if process == "constant" and modulation is None:
        expected = 1.0 / arrival_spec["rate"]
        # times are k/rate rounded to the nearest ns, so every gap is within 1 ns of 1/rate
        worst = float(np.abs(gaps - expected).max())
        return {"law": f"deterministic(gap={expected:g} s)", "test": "exact",
                "statistic": worst, "p_value": 1.0 if worst <= 1.0e-9 + 1e-12 else 0.0,
                "n": int(gaps.size)}
    if process == "diurnal" and modulation is None:
        # time-rescaling theorem: Λ(tᵢ) of an inhomogeneous Poisson process is a unit Poisson
        # process, so its gaps are Exp(1) and independent.
        rate, amp = arrival_spec["rate"], arrival_spec["amplitude"]
        period, phase = arrival_spec["period_s"], arrival_spec.get("phase_s", 0.0)
        w = 2 * np.pi / period
        big_lambda = rate * (arrival_s + amp / w * (np.cos(w * (0 - phase))
                                                    - np.cos(w * (arrival_s - phase))))
        out = _ks_with_short_gaps(np.diff(big_lambda), stats.expon().cdf)
        return {"law": "diurnal Poisson, time-rescaled to Exp(1)", "test": "ks-time-rescaled",
                **out}
    law, cdf = _target_law(arrival_spec, multipliers, modulation)
    if law is None:
        return {"law": None, "reason": cdf}
    note = None
    if process in ("mmpp", "onoff") or modulation is not None:
        # MMPP gaps are correlated through the hidden state: the empirical gap law converges to
        # the marginal only as the number of state sojourns grows, not the number of gaps. Keep
        # about one gap per expected sojourn (evenly strided), so the tested gaps are roughly
        # independent and the p-value roughly calibrated.
        dwell = (modulation or {}).get("mean_dwell_s") or arrival_spec.get("mean_dwell_s") or [
            arrival_spec.get("mean_on_s", 1.0), arrival_spec.get("mean_off_s", 1.0)]
        span = duration_s if duration_s else float(arrival_s[-1] - arrival_s[0])
        sojourns = max(2, int(span / float(np.mean(dwell))))
        if gaps.size > sojourns:
            gaps = gaps[:: math.ceil(gaps.size / sojourns)]
        note = (f"gaps are correlated through the hidden state; tested one gap per expected "
                f"state sojourn ({gaps.size} of {arrival_s.size - 1})")
    out = _ks_with_short_gaps(gaps, cdf)
    if note:
        out["note"] = note
    return {"law": law, "test": "ks", **out}


# -- the whole report --------------------------------------------------------------------------
def encode_models(table) -> tuple[list[str], np.ndarray]:
    """Model names present (sorted) and each row's index into them, without a Python loop."""
    if table.num_rows == 0:
        return [], np.empty(0, np.int32)
    encoded = table.column("model").combine_chunks().dictionary_encode()
    names = encoded.dictionary.to_pylist()
    order = np.argsort(names)
    rank = np.empty(len(names), dtype=np.int32)
    rank[order] = np.arange(len(names), dtype=np.int32)
    return sorted(names), rank[encoded.indices.to_numpy()]


def _shape_summary(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    p50, p99 = np.percentile(values, [50, 99])
    return {"mean": float(values.mean()), "p50": float(p50), "p99": float(p99),
            "min": int(values.min()), "max": int(values.max())}


def _stream_stats(arrival_s: np.ndarray, duration_s: float, confidence: float) -> dict:
    n = int(arrival_s.size)
    gaps = np.diff(arrival_s)
    return {
        "count": n,
        "rate": n / duration_s if duration_s > 0 else None,
        "rate_ci": rate_ci_batch_means(arrival_s, duration_s, confidence)
        if duration_s > 0 and n else None,
        "rate_ci_poisson": rate_ci_poisson(n, duration_s, confidence) if duration_s > 0 else None,
        "cv": float(gaps.std() / gaps.mean()) if gaps.size >= 2 and gaps.mean() > 0 else None,
        "idc_1s": index_of_dispersion(arrival_s, duration_s, 1.0),
        "idc_10s": index_of_dispersion(arrival_s, duration_s, 10.0),
    }


def pc_first_turns(table) -> np.ndarray | None:
    """Rows that start a session or belong to none (None when the trace has no sessions)."""
    if "session_id" not in table.column_names:
        return None
    sid = table.column("session_id")
    if sid.null_count == len(sid):
        return None
    from traceforge.record.recorder import NULL_I64
    from traceforge.replay.dispatcher import session_links

    _, prev = session_links(sid.fill_null(NULL_I64).to_numpy())
    return prev < 0


def _parsed_arrivals(spec_models: object, modulations: dict) -> dict[str, bool]:
    """{model: True} where the metadata's arrival (and modulation) parse as a spec would."""
    from traceforge.generate.spec import parse_spec

    out: dict[str, bool] = {}
    if not isinstance(spec_models, dict):
        return out
    for name, table in spec_models.items():
        out[name] = False
        if not isinstance(table, dict) or not isinstance(table.get("arrival"), dict):
            continue
        part = {k: v for k, v in table.items() if k in ("arrival", "modulation")}
        ref = part.get("modulation")
        ref_name = ref.get("name") if isinstance(ref, dict) else ref
        mods = ({ref_name: modulations[ref_name]}
                if isinstance(ref_name, str) and ref_name in modulations else {})
        try:
            parse_spec({"modulations": mods, "models": {name: part}})
        except Exception:  # any failure means "no target to test against"
            continue
        out[name] = True
    return out


def trace_stats(trace: Trace, *, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Per-model and aggregate statistics of a trace (the ``trace stats --json`` object)."""
    from traceforge.generate.spec import parse_spec

    table = trace.table
    arrival_s = table.column("arrival_ns").to_numpy().astype(np.float64) / 1e9
    meta = trace.meta or {}
    duration_s = float(meta.get("duration_s") or (arrival_s[-1] if arrival_s.size else 0.0))
    spec = meta.get("spec") or {}
    spec_models = spec.get("models") or {}
    modulations = spec.get("modulations") if isinstance(spec.get("modulations"), dict) else {}
    # each model's arrival as the spec parser reads it; None where it does not parse (an
    # imported trace's "imported", a hand-edited entry): fitted against the realised rate
    valid = _parsed_arrivals(spec_models, modulations)
    long_run = {}
    if (meta.get("source") or {}).get("kind") == "generate":
        try:  # only the arrival parts: shapes (e.g. empirical files) are not needed here
            parsed = parse_spec({
                "modulations": modulations,
                "models": {m: {k: v for k, v in t.items() if k in ("arrival", "modulation")}
                           for m, t in spec_models.items() if valid.get(m)}})
            long_run = {m: s.long_run_rate(parsed.modulations) for m, s in parsed.models.items()}
        except Exception:  # a hand-edited spec in metadata: stats still work without targets
            long_run = {}

    present, present_codes = encode_models(table)
    names = list(spec_models) if spec_models else list(present)
    names += [m for m in present if m not in names]
    codes = {name: i for i, name in enumerate(names)}
    model_codes = np.asarray([codes[m] for m in present], dtype=np.int32)[present_codes] \
        if present else np.empty(0, np.int32)
    shapes = {f: table.column(f).to_numpy() for f in ("batch_size", "seq_len", "max_new_tokens")}

    # Sessions: the spec's arrival process gives the session starts (first turns); later
    # turns' nominal times follow from think times, so the fit looks at the starts only.
    first_turn = pc_first_turns(table)
    models: dict[str, Any] = {}
    for name in names:
        mask = model_codes == codes[name]
        mspec = spec_models.get(name) if isinstance(spec_models.get(name), dict) else {}
        sessions = None
        if "sessions" in mspec and first_turn is not None:
            n_rows = int(mask.sum())
            mask_rows, mask = mask, mask & first_turn
            sessions = {"arrivals": "session starts", "sessions": int(mask.sum()),
                        "rows": n_rows, "turns_per_session":
                            n_rows / int(mask.sum()) if mask.any() else None}
        times = arrival_s[mask]
        entry = _stream_stats(times, duration_s, confidence)
        if sessions is not None:
            entry["sessions"] = sessions
            mask = mask_rows  # shapes over every turn
        entry["target_rate"] = long_run.get(name)
        mod_ref = mspec.get("modulation") if valid.get(name) else None
        mod_name = mod_ref.get("name") if isinstance(mod_ref, dict) else mod_ref
        entry["fit"] = goodness_of_fit(
            times, mspec.get("arrival") if valid.get(name) else None,
            multipliers=mod_ref.get("multipliers") if isinstance(mod_ref, dict) else None,
            modulation=modulations.get(mod_name) if mod_name else None, duration_s=duration_s)
        entry["shapes"] = {f: _shape_summary(v[mask]) for f, v in shapes.items()}
        for key in ("zoo", "slo_ms"):
            if key in mspec:
                entry[key] = mspec[key]
        models[name] = entry

    agg_times = arrival_s
    with_sessions = first_turn is not None and any(
        isinstance(m, dict) and "sessions" in m for m in spec_models.values())
    if with_sessions:
        agg_times = arrival_s[first_turn]
    aggregate = _stream_stats(agg_times, duration_s, confidence)
    if with_sessions:
        aggregate["sessions"] = {"arrivals": "session starts and rows without a session",
                                 "rows": int(arrival_s.size)}
    aggregate["target_rate"] = sum(long_run.values()) if long_run else None
    all_poisson = spec_models and all(
        valid.get(n) and m["arrival"].get("process") == "poisson" and "modulation" not in m
        for n, m in spec_models.items())
    if all_poisson:  # a superposition of independent Poisson processes is Poisson
        rate = aggregate["target_rate"]
        if rate is None:  # not a generated trace: the spec's rates still sum to the target
            rate = sum(float(m["arrival"]["rate"]) for m in spec_models.values())
        aggregate["fit"] = goodness_of_fit(agg_times, {"process": "poisson", "rate": rate})
    else:
        aggregate["fit"] = goodness_of_fit(agg_times, None)
    aggregate["shapes"] = {f: _shape_summary(v) for f, v in shapes.items()}
    from traceforge.schema import prefix_block_tokens

    block = prefix_block_tokens(meta)
    if block is not None and "prefix_blocks" in table.column_names:
        aggregate["prefix_reuse"] = prefix_reuse(table, block)
    return {
        "trace": str(trace.path) if trace.path else None,
        "source": meta.get("source"),
        "duration_s": duration_s,
        "confidence": confidence,
        "models": models,
        "aggregate": aggregate,
    }


def prefix_reuse(table, block_tokens: int) -> dict[str, Any]:
    """How much prompt a prefix cache could reuse, by the trace's ``prefix_blocks``: a row's
    leading blocks that an earlier row already sent (ids chain, as Mooncake's do: a block seen
    before means its whole prefix was) count as reusable, up to seq_len. Vectorised.

    ``token_fraction`` is the hit rate an unbounded cache would see on prompt tokens."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.column("prefix_blocks").combine_chunks()
    col = pc.if_else(pc.is_null(col), pa.scalar([], col.type), col)
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.int64)
    seq = table.column("seq_len").to_numpy().astype(np.int64)
    row = np.repeat(np.arange(len(lengths)), lengths)
    _, first_at, inverse = np.unique(values, return_index=True, return_inverse=True)
    seen = row[first_at][inverse] < row  # sent by an earlier row
    starts = np.concatenate(([0], np.cumsum(lengths)))[:-1]
    pos = np.arange(len(values)) - np.repeat(starts, lengths)
    # leading run of seen blocks: the first unseen position in each row (or its length)
    first_unseen = lengths.copy()
    unseen = ~seen
    np.minimum.at(first_unseen, row[unseen], pos[unseen])
    reused = np.minimum(first_unseen * block_tokens, seq)
    total = int(seq.sum())
    return {"block_tokens": block_tokens, "rows_with_blocks": int((lengths > 0).sum()),
            "unique_blocks": len(first_at), "reusable_tokens": int(reused.sum()),
            "prompt_tokens": total,
            "token_fraction": float(reused.sum() / total) if total else 0.0}


MAX_PLOT_BINS = 100_000  # a 10-inch figure at 100 dpi shows 1,000 columns: still 100x finer


def plot_arrivals(trace: Trace, path, *, bin_s: float = 1.0) -> None:
    """PNG of arrivals per ``bin_s`` per model (matplotlib, Agg backend, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from traceforge.schema import atomic_write

    table = trace.table
    arrival_s = table.column("arrival_ns").to_numpy() / 1e9
    names, codes = encode_models(table)
    duration = float((trace.meta or {}).get("duration_s") or
                     (arrival_s[-1] if arrival_s.size else 1.0))
    # at most MAX_PLOT_BINS bins (one per second of a 5e9 s trace was 37 GiB): wider ones
    bin_s = max(bin_s, duration / MAX_PLOT_BINS)
    n_bins = max(1, math.ceil(duration / bin_s))
    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    for code, name in enumerate(names):
        times = arrival_s[codes == code]
        counts = np.bincount(np.minimum((times / bin_s).astype(np.int64), n_bins - 1),
                             minlength=n_bins)
        ax.step(np.arange(n_bins) * bin_s, counts / bin_s, where="post", label=name,
                linewidth=1)
    ax.set_xlabel("time since trace start (s)")
    ax.set_ylabel(f"arrivals per second ({bin_s:g} s bins)")
    ax.set_title(trace.path.name if trace.path else "trace")
    if names:  # no models (an empty trace): no legend, and no matplotlib warning about it
        ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
