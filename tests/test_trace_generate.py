"""Arrival processes and shapes: hypothesis invariants and fixed-seed statistical tests.

Every statistical test uses a fixed seed, so it is deterministic; each tolerance is chosen
several standard errors wide (stated per test) so that a correct generator passes for any seed
with overwhelming probability, while the companion "power" assertions show the same test fails a
wrong law.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from traceforge.generate import generate_trace, parse_spec, trace_stats
from traceforge.generate.arrivals import PiecewiseClock, sample_state_path
from traceforge.generate.stats import goodness_of_fit, rate_ci_poisson


def spec_of(models: dict, duration_s: float | None = 10.0, **top) -> dict:
    out = {"name": "t", "models": models, **top}
    if duration_s is not None:
        out["duration_s"] = duration_s
    return out


def arrivals_s(trace, model: str | None = None) -> np.ndarray:
    table = trace.table
    t = table.column("arrival_ns").to_numpy() / 1e9
    if model is None:
        return t
    return t[np.asarray(table.column("model").to_pylist()) == model]


# -- hypothesis: invariants for any valid spec --------------------------------------------------
positive_rate = st.floats(0.5, 200.0)
processes = st.one_of(
    st.builds(lambda r: {"process": "constant", "rate": r}, positive_rate),
    st.builds(lambda r: {"process": "poisson", "rate": r}, positive_rate),
    st.builds(lambda r, cv: {"process": "gamma", "rate": r, "cv": cv}, positive_rate,
              st.floats(0.1, 8.0)),
    st.builds(lambda r, k: {"process": "weibull", "rate": r, "shape": k}, positive_rate,
              st.floats(0.3, 4.0)),
    st.builds(lambda rates, d: {"process": "mmpp", "rates": rates, "mean_dwell_s": d[:len(rates)]},
              st.lists(st.floats(0.0, 100.0), min_size=2, max_size=4).filter(
                  lambda r: max(r) > 0), st.lists(st.floats(0.05, 5.0), min_size=4, max_size=4)),
    st.builds(lambda r, on, off: {"process": "onoff", "rate": r, "mean_on_s": on,
                                  "mean_off_s": off}, positive_rate, st.floats(0.1, 5.0),
              st.floats(0.1, 5.0)),
    st.builds(lambda r, a, p: {"process": "diurnal", "rate": r, "amplitude": a, "period_s": p},
              positive_rate, st.floats(0.0, 1.0), st.floats(0.5, 20.0)),
)
shape_dists = st.one_of(
    st.integers(1, 5000),
    st.builds(lambda lo, span: {"dist": "uniform", "low": lo, "high": lo + span},
              st.integers(1, 100), st.integers(0, 1000)),
    st.builds(lambda vs: {"dist": "choice", "values": vs,
                          "weights": [float(i + 1) for i in range(len(vs))]},
              st.lists(st.integers(1, 64), min_size=1, max_size=5)),
    st.builds(lambda med, sig, mx: {"dist": "lognormal", "median": med, "sigma": sig, "max": mx},
              st.floats(1.0, 500.0), st.floats(0.05, 2.0), st.integers(1, 4096)),
    st.builds(lambda a, mx: {"dist": "zipf", "a": a, "max": mx}, st.floats(0.2, 3.0),
              st.integers(1, 2048)),
)


@st.composite
def specs(draw):
    n_models = draw(st.integers(1, 3))
    models = {}
    for i in range(n_models):
        models[f"m{i}"] = {"arrival": draw(processes), "batch_size": draw(shape_dists),
                           "seq_len": draw(shape_dists), "max_new_tokens": draw(shape_dists)}
    top = {}
    if draw(st.booleans()):
        top["modulations"] = {"s": {"mean_dwell_s": [1.0, 0.5], "multipliers": [1.0, 3.0]}}
        models["m0"]["modulation"] = "s"
    return spec_of(models, duration_s=draw(st.floats(0.5, 5.0)), **top)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=specs(), seed=st.integers(0, 2**32))
def test_any_spec_gives_a_sorted_bounded_deterministic_trace(raw, seed):
    spec = parse_spec(raw)
    trace = generate_trace(spec, seed=seed)
    table = trace.table
    arrival = table.column("arrival_ns").to_numpy()
    assert np.all(np.diff(arrival) >= 0)
    assert arrival.size == 0 or (arrival[0] >= 0 and arrival[-1] <= raw["duration_s"] * 1e9)
    assert table.column("request_id").to_pylist() == list(range(table.num_rows))
    models = np.asarray(table.column("model").to_pylist())
    for name, model in spec.models.items():
        mask = models == name
        for field, low in (("batch_size", 1), ("seq_len", 1), ("max_new_tokens", 0)):
            values = table.column(field).to_numpy()[mask]
            lo, hi = model.shape(field).bounds
            if values.size:
                assert values.min() >= max(lo, low) and values.max() <= hi
    assert generate_trace(spec, seed=seed).table.equals(table)


@settings(max_examples=40, deadline=None)
@given(rates=st.lists(st.one_of(st.just(0.0), st.floats(1e-3, 50.0)), min_size=2,
                      max_size=5).filter(lambda r: max(r) > 0),
       seed=st.integers(0, 2**32))
def test_piecewise_clock_inverse_undoes_forward(rates, seed):
    # (rates within ~1e-16 of 0 relative to the others vanish in float64 sums; not a use case)
    rng = np.random.default_rng(seed)
    bounds = np.concatenate(([0.0], np.cumsum(rng.uniform(0.1, 2.0, len(rates)))))
    clock = PiecewiseClock(bounds, np.asarray(rates))
    t = np.sort(rng.uniform(0, bounds[-1], 200))
    positive = np.asarray(rates)[np.searchsorted(bounds, t, side="right") - 1] > 0
    u = clock.forward(t)
    assert np.all(np.diff(u) >= -1e-12)
    np.testing.assert_allclose(clock.inverse(u[positive]), t[positive], rtol=1e-9, atol=1e-9)


# -- determinism and stream independence -----------------------------------------------------
def test_adding_a_model_leaves_other_streams_unchanged():
    one = {"a": {"arrival": {"process": "gamma", "rate": 30.0, "cv": 2.0}, "seq_len": {
        "dist": "uniform", "low": 1, "high": 100}}}
    two = {**one, "b": {"arrival": {"process": "poisson", "rate": 50.0}}}
    t1 = generate_trace(parse_spec(spec_of(one)), seed=5)
    t2 = generate_trace(parse_spec(spec_of(two)), seed=5)
    a2 = t2.table.filter(np.asarray(t2.table.column("model").to_pylist()) == "a")
    assert a2.column("arrival_ns").equals(t1.table.column("arrival_ns"))
    assert a2.column("seq_len").equals(t1.table.column("seq_len"))
    t3 = generate_trace(parse_spec(spec_of(one)), seed=6)
    assert not t3.table.column("arrival_ns").equals(t1.table.column("arrival_ns"))


def test_requests_mode_gives_exactly_n():
    raw = spec_of({"a": {"arrival": {"process": "mmpp", "rates": [1.0, 50.0],
                                     "mean_dwell_s": [5.0, 1.0]}}}, duration_s=None,
                  requests=5000)
    trace = generate_trace(parse_spec(raw), seed=2)
    assert trace.table.num_rows == 5000
    assert trace.meta["duration_s"] == pytest.approx(arrivals_s(trace)[-1])
    assert generate_trace(parse_spec(raw), seed=2).table.equals(trace.table)


def test_constant_is_exact():
    trace = generate_trace(parse_spec(spec_of({"c": {"arrival": {"process": "constant",
                                                                 "rate": 7.0}}})))
    t = trace.table.column("arrival_ns").to_numpy()
    assert t.size == 70 and t[0] == 0
    assert np.abs(np.diff(t) - 1e9 / 7).max() <= 1.0
    assert trace_stats(trace)["models"]["c"]["fit"]["p_value"] == 1.0


# -- statistical tests (fixed seeds) ---------------------------------------------------------
def test_poisson_rate_inside_its_99pct_ci_and_ks():
    trace = generate_trace(parse_spec(spec_of({"p": {"arrival": {"process": "poisson",
                                                                 "rate": 50.0}}},
                                              duration_s=2000.0)), seed=1)
    t = arrivals_s(trace)
    lo, hi = rate_ci_poisson(t.size, 2000.0, 0.99)  # exact for Poisson counts
    assert lo <= 50.0 <= hi
    assert hi - lo < 0.03 * 50  # 100k arrivals: the CI is tight, so the check has teeth
    fit = goodness_of_fit(t, {"process": "poisson", "rate": 50.0})
    assert fit["p_value"] > 0.01
    # power: 3% off in rate is rejected at this n
    assert goodness_of_fit(t, {"process": "poisson", "rate": 51.5})["p_value"] < 1e-4


@pytest.mark.parametrize("cv", [0.5, 4.0])
def test_gamma_cv_within_5pct_at_200k(cv):
    rate = 1000.0
    trace = generate_trace(parse_spec(spec_of({"g": {"arrival": {"process": "gamma",
                                                                 "rate": rate, "cv": cv}}},
                                              duration_s=250.0)), seed=3)
    t = arrivals_s(trace)
    assert t.size >= 200_000
    gaps = np.diff(t)
    # The sample CV's relative standard error is ~sqrt((kurtosis - 1) / 4n) (delta method):
    # about 1% for cv = 4 (excess kurtosis 6cv² = 96) at n = 250k, so 5% is > 4 SE.
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)
    # realised rate inside its 99% batch-means CI (bursty: the Poisson CI would be too narrow)
    report = trace_stats(trace, confidence=0.99)["models"]["g"]
    assert report["rate_ci"][0] <= rate <= report["rate_ci"][1]
    assert report["fit"]["p_value"] > 0.01
    assert report["fit"]["n"] >= 200_000
    # power: the same trace is decisively not Poisson (unless cv were 1)
    assert goodness_of_fit(t, {"process": "poisson", "rate": rate})["p_value"] < 1e-6


def test_weibull_ks_does_not_reject_and_rejects_wrong_shape():
    spec = {"w": {"arrival": {"process": "weibull", "rate": 20.0, "shape": 0.7}}}
    trace = generate_trace(parse_spec(spec_of(spec, duration_s=2000.0)), seed=4)
    t = arrivals_s(trace)
    assert goodness_of_fit(t, {"process": "weibull", "rate": 20.0, "shape": 0.7})[
        "p_value"] > 0.01
    assert goodness_of_fit(t, {"process": "weibull", "rate": 20.0, "shape": 0.75})[
        "p_value"] < 1e-3


def test_mmpp_long_run_rate_and_marginal_gap_law():
    rates, dwell = [2.0, 20.0, 0.0], [5.0, 1.0, 2.0]
    target = sum(d * r for d, r in zip(dwell, rates, strict=True)) / sum(dwell)  # Σdᵢλᵢ/Σdᵢ
    duration = 50_000.0
    raw = spec_of({"m": {"arrival": {"process": "mmpp", "rates": rates, "mean_dwell_s": dwell}}},
                  duration_s=duration)
    trace = generate_trace(parse_spec(raw), seed=8)
    report = trace_stats(trace, confidence=0.99)["models"]["m"]
    assert report["target_rate"] == pytest.approx(target)
    # The count variance is inflated by the modulation (IDC(∞) ≈ 1 + 2·Var(λ)·τ/λ̄ ≈ 30 here),
    # so the relative SE of the rate is ≈ sqrt(30 / (λ̄T)) ≈ 1.3%; 4% is three SE.
    assert report["rate"] == pytest.approx(target, rel=0.04)
    assert report["rate_ci"][0] <= target <= report["rate_ci"][1]
    assert report["idc_10s"] > 5  # strongly over-dispersed, unlike Poisson
    assert report["fit"]["p_value"] > 0.01


def test_state_path_time_shares_match_dwell_means():
    dwell = np.array([3.0, 1.0, 6.0])
    bounds, states = sample_state_path(np.random.default_rng(9), dwell, 100_000.0)
    lengths = np.diff(bounds)
    share = np.bincount(states, weights=lengths, minlength=3) / lengths.sum()
    # ~10k segments: each share's SE is well under 1%
    np.testing.assert_allclose(share, dwell / dwell.sum(), atol=0.02)
    assert np.all(states[1:] != states[:-1])  # a jump always changes state
    means = [lengths[states == i].mean() for i in range(3)]
    np.testing.assert_allclose(means, dwell, rtol=0.06)


def test_diurnal_rate_curve_recovered():
    rate, amp, period, phase = 50.0, 0.8, 100.0, 10.0
    duration = 5_000.0  # 50 periods, ~250k arrivals
    raw = spec_of({"d": {"arrival": {"process": "diurnal", "rate": rate, "amplitude": amp,
                                     "period_s": period, "phase_s": phase}}},
                  duration_s=duration)
    trace = generate_trace(parse_spec(raw), seed=10)
    t = arrivals_s(trace)
    bins = 20
    counts = np.bincount((np.mod(t, period) / period * bins).astype(int), minlength=bins)
    edges = np.linspace(0, period, bins + 1)
    w = 2 * np.pi / period
    # expected count per phase bin: ∫λ over the bin, times the number of periods
    integral = rate * (np.diff(edges) - amp / w * np.diff(np.cos(w * (edges - phase))))
    expected = integral * duration / period
    # the shape of the curve (chi² conditions on the total) and its level (each bin within 5%)
    assert stats.chisquare(counts, expected * counts.sum() / expected.sum()).pvalue > 0.001
    np.testing.assert_allclose(counts, expected, rtol=0.05)  # each bin has >= 2.5k arrivals
    assert trace_stats(trace)["models"]["d"]["fit"]["p_value"] > 0.01


def test_shared_modulation_correlates_bursts_and_scales_the_rate():
    mod = {"s": {"mean_dwell_s": [5.0, 5.0], "multipliers": [1.0, 10.0]}}
    models = {"a": {"arrival": {"process": "poisson", "rate": 20.0}, "modulation": "s"},
              "b": {"arrival": {"process": "poisson", "rate": 20.0}, "modulation": "s"},
              "c": {"arrival": {"process": "poisson", "rate": 20.0}}}
    trace = generate_trace(parse_spec(spec_of(models, duration_s=2000.0, modulations=mod)),
                           seed=12)
    counts = {m: np.bincount(arrivals_s(trace, m).astype(int), minlength=2000)[:2000]
              for m in models}
    assert np.corrcoef(counts["a"], counts["b"])[0, 1] > 0.7
    assert abs(np.corrcoef(counts["a"], counts["c"])[0, 1]) < 0.1
    report = trace_stats(trace)["models"]
    assert report["a"]["target_rate"] == pytest.approx(20.0 * 5.5)
    # ~200 state changes in 2000 s: relative SE of the rate ≈ 6%, so 20% is > 3 SE
    assert report["a"]["rate"] == pytest.approx(110.0, rel=0.2)
    assert report["a"]["fit"]["law"].startswith("mmpp(rates=[20.0, 200.0]")
    assert report["a"]["fit"]["p_value"] > 0.01


def test_onoff_is_silent_while_off():
    raw = spec_of({"o": {"arrival": {"process": "onoff", "rate": 100.0, "mean_on_s": 1.0,
                                     "mean_off_s": 3.0}}}, duration_s=400.0)
    report = trace_stats(generate_trace(parse_spec(raw), seed=13))["models"]["o"]
    assert report["target_rate"] == pytest.approx(25.0)
    assert report["rate"] == pytest.approx(25.0, rel=0.2)  # ~100 cycles: SE ≈ 7%
    assert report["cv"] > 2  # long empty stretches between bursts


def test_shapes_follow_their_laws():
    raw = spec_of({"s": {
        "arrival": {"process": "constant", "rate": 20_000.0},
        "batch_size": {"dist": "choice", "values": [1, 8], "weights": [0.7, 0.3]},
        "seq_len": {"dist": "lognormal", "median": 64, "sigma": 0.5, "max": 100_000},
        "max_new_tokens": {"dist": "zipf", "a": 1.5, "max": 10}}}, duration_s=5.0)
    table = generate_trace(parse_spec(raw), seed=14).table
    n = table.num_rows  # 100k
    batch = table.column("batch_size").to_numpy()
    assert (batch == 8).mean() == pytest.approx(0.3, abs=0.006)  # SE 0.0015
    seq = table.column("seq_len").to_numpy()
    assert np.median(seq) == pytest.approx(64, abs=1)
    assert np.log(seq).std() == pytest.approx(0.5, rel=0.03)  # rounding adds a little spread
    new = table.column("max_new_tokens").to_numpy()
    p = np.arange(1, 11) ** -1.5
    p /= p.sum()
    assert stats.chisquare(np.bincount(new, minlength=11)[1:], p * n).pvalue > 0.001
    assert math.isclose(np.bincount(new)[0], 0)


def test_mmpp_fit_has_power_against_wrong_rates():
    raw = spec_of({"m": {"arrival": {"process": "mmpp", "rates": [2.0, 20.0],
                                     "mean_dwell_s": [5.0, 1.0]}}}, duration_s=20_000.0)
    trace = generate_trace(parse_spec(raw), seed=15)
    t = arrivals_s(trace)
    right = goodness_of_fit(t, {"process": "mmpp", "rates": [2.0, 20.0],
                                "mean_dwell_s": [5.0, 1.0]}, duration_s=20_000.0)
    wrong = goodness_of_fit(t, {"process": "mmpp", "rates": [2.0, 30.0],
                                "mean_dwell_s": [5.0, 1.0]}, duration_s=20_000.0)
    assert right["p_value"] > 0.01
    assert wrong["p_value"] < 1e-4
    assert right["n"] < t.size  # one gap per expected sojourn, not all correlated gaps


def test_tiny_window_gives_an_empty_but_valid_trace():
    raw = spec_of({"g": {"arrival": {"process": "gamma", "rate": 0.001, "cv": 1.0}}},
                  duration_s=0.5)
    trace = generate_trace(parse_spec(raw), seed=0)
    assert trace.table.num_rows == 0
    report = trace_stats(trace)
    assert report["models"]["g"]["count"] == 0
    assert report["models"]["g"]["fit"]["law"] is None


def test_oversized_spec_is_refused_before_sampling():
    from traceforge.errors import BadInput

    raw = spec_of({"p": {"arrival": {"process": "poisson", "rate": 1e6}}}, duration_s=1e4)
    with pytest.raises(BadInput, match=r"duration_s = 10000\.0: sampling 1e\+04 s "
                                        r"\(about 1e\+10 requests\) needs about 698 GiB"):
        generate_trace(parse_spec(raw))


def test_stats_targets_survive_empirical_shapes(tmp_path):
    lengths = tmp_path / "len.csv"
    lengths.write_text("n\n5\n9\n")
    spec = tmp_path / "w.toml"
    spec.write_text('duration_s = 50\n[models.m]\narrival = { process = "poisson", rate = 4.0 }\n'
                    'seq_len = { dist = "empirical", path = "len.csv", column = "n" }\n')
    from traceforge.generate import load_spec

    report = trace_stats(generate_trace(load_spec(spec)))  # the metadata path is relative
    assert report["models"]["m"]["target_rate"] == 4.0
