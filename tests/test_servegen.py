"""ServeGen client pools as an arrival process (generate/servegen.py) and ``trace import
servegen``: semantics on small synthetic pools, bad input, and the real deepseek-r1 pool
(../shared/data/servegen; skipped where absent) against its own numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import gammaln
from trace_cli_helpers import REPO, SHARED_DATA, assert_one_line_error, run_cli

from traceforge.errors import BadInput
from traceforge.generate import generate_trace
from traceforge.generate.servegen import law_cv, load_pool, renewal_in_windows, sample_pool
from traceforge.generate.spec import parse_spec
from traceforge.importers import import_trace
from traceforge.schema import read_trace

SLICE = REPO / "traces" / "servegen-deepseek-r1-2h"
R1 = SHARED_DATA / "servegen" / "reason" / "deepseek-r1"


def make_pool(folder, clients: dict[int, list[str]], dataset: dict | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    for c, rows in clients.items():
        (folder / f"chunk-{c}-trace.csv").write_text("\n".join(rows) + "\n")
        (folder / f"chunk-{c}-dataset.json").write_text(json.dumps(dataset or {
            "0": {"input_tokens": "{10: 0.5, 30: 0.5}", "output_tokens": "{5: 1.0}"}}))
    load_pool.cache_clear()
    return folder


def test_renewal_windows_expected_count_and_variance():
    # stationary renewal: E[N] = rate × length exactly; Var ≈ CV² × mean (Gamma a: CV² = 1/a)
    rng = np.random.default_rng(5)
    k = 4000
    law, shape = np.ones(k, np.int8), np.full(k, 0.25)  # CV = 2
    rate, length = np.full(k, 0.5), np.full(k, 600.0)
    times, seg = renewal_in_windows(rng, law, shape, rate, length)
    counts = np.bincount(seg, minlength=k)
    assert (times < 600).all() and (times >= 0).all()
    # mean 300, sd of the mean over 4000 windows ≈ sqrt(4 × 300 / 4000) = 0.55: ±5 sd
    assert counts.mean() == pytest.approx(300, abs=2.8)
    # renewal variance ≈ CV² × mean = 1200 (Poisson would be 300); ±15 % covers the sd of a
    # variance estimate from 4000 windows and the O(1) boundary terms
    assert counts.var() == pytest.approx(1200, rel=0.15)
    within = np.diff(times)[np.diff(seg) == 0]
    assert within.std() / within.mean() == pytest.approx(2.0, rel=0.05)


def test_rescale_mode_fills_each_window_like_servegen():
    rng = np.random.default_rng(1)
    rate = np.array([0.5, 2.0, 0.01])
    times, seg = renewal_in_windows(rng, np.array([1, 2, 1], np.int8), np.array([0.3, 0.8, 1]),
                                    rate, np.full(3, 600.0), mode="rescale")
    assert (times < 600).all()
    # ceil(rate × 600) gaps rescaled to sum to 600: the last lands on 600 and is dropped
    assert np.bincount(seg, minlength=3).tolist() == [299, 1199, 5]


def test_weibull_cv_and_pool_reading(tmp_path):
    assert law_cv(np.array([2]), np.array([1.0]))[0] == pytest.approx(1.0)
    pool = make_pool(tmp_path / "p", {
        3: ["0,1.0,1.0,Gamma,1.0,1.0", "600,0,0,,0,0"],
        7: ["0,0.5,0.7,Weibull,1.5,2.0", "600,2.0,1.0,Gamma,1.0,0.5"]})
    loaded = load_pool(str(pool))
    assert loaded.clients.tolist() == [3, 7] and loaded.window_s == 600
    assert loaded.select(1).tolist() == [1]  # the busiest client by mean rate
    s = sample_pool(loaded, np.random.default_rng(0), 1200.0)
    assert s.expected.tolist() == pytest.approx([900.0, 1200.0])
    assert set(s.seq_len.tolist()) == {10, 30} and set(s.max_new_tokens.tolist()) == {5}
    assert (np.diff(s.time_s) >= 0).all() and s.time_s[-1] < 1200


def test_multimodal_lengths_sum_text_and_media(tmp_path):
    pool = make_pool(tmp_path / "mm", {0: ["0,2.0,1.0,Gamma,1.0,0.5"]}, {"0": {
        "text_tokens": "{100: 1.0}", "image_tokens": "{50: 0.5, 70: 0.5}",
        "image_count": "{2: 1.0}", "audio_tokens": "{0: 1.0}", "audio_count": "{0: 1.0}",
        "output_tokens": "{9: 1.0}"}})
    s = sample_pool(load_pool(str(pool)), np.random.default_rng(0), 600.0)
    assert set(s.seq_len.tolist()) <= {200, 220, 240} and len(set(s.seq_len.tolist())) == 3
    assert set(s.max_new_tokens.tolist()) == {9}


@pytest.mark.parametrize(("rows", "needle"), [
    (["0,1.0,1.0,Poisson,1.0,1.0"], "unknown pattern"),
    (["0,1.0,1.0,,0,0"], "rate must be >= 0"),
    (["0,abc,1.0,Gamma,1.0,1.0"], "expected window_start_s"),
])
def test_bad_pool_rows_name_the_line(tmp_path, capsys, rows, needle):
    pool = make_pool(tmp_path / "bad", {0: rows})
    out = tmp_path / "t.parquet"
    code, _, err = run_cli(["trace", "import", "servegen", pool, "-o", out], capsys)
    assert_one_line_error(code, err, "chunk-0-trace.csv:1", needle)
    assert not out.exists()


@pytest.mark.parametrize(("extra", "needle"), [
    (["--clients", "0"], "--clients"),
    (["--clients", "48,99"], "client 99 is not in the pool"),
    (["--thin", "--rate-scale", "0.5"], "--thin"),
    (["--models", "a,b"], "one model"),
    (["--start", "1e9"], "past the pool's day"),
    # times past int64 ns used to wrap silently into negative arrivals
    (["--duration", "600", "--time-scale", "1e9"], "--time-scale"),
    (["--duration", "1e300"], "--duration"),
])
def test_bad_servegen_import_options(tmp_path, capsys, extra, needle):
    out = tmp_path / "t.parquet"
    code, _, err = run_cli(["trace", "import", "servegen", SLICE, "-o", out, *extra], capsys)
    assert_one_line_error(code, err, needle)
    assert not out.exists()


def test_import_the_shipped_slice(tmp_path, capsys):
    out = tmp_path / "t.parquet"
    code, stdout, _ = run_cli(["trace", "import", "servegen", SLICE, "--duration", "1200",
                               "--rate-scale", "2", "--seed", "3", "-o", out], capsys)
    assert code == 0, stdout
    trace = read_trace(out)
    assert trace.models == ["servegen-deepseek-r1-2h"]
    pool = load_pool(str(SLICE))
    mean = pool.rate[:, :2].sum() * 600 * 2  # rate_scale 2, two windows
    var = (np.nan_to_num(pool.cv()[:, :2]) ** 2 * pool.rate[:, :2] * 600 * 2).sum()
    assert abs(trace.table.num_rows - mean) < 4 * np.sqrt(var)
    again = import_trace("servegen", [SLICE], duration_s=1200, rate_scale=2, seed=3)
    assert again.table.equals(trace.table)


def test_spec_servegen_process_generates_and_rejects_lengths(tmp_path):
    raw = {"name": "sg", "duration_s": 600, "models": {"r1": {"arrival": {
        "process": "servegen", "pool": str(SLICE), "clients": [48, 62], "rate_scale": 0.5}}}}
    trace = generate_trace(parse_spec(raw))
    pool = load_pool(str(SLICE))
    rows = pool.select([48, 62])
    expected = pool.rate[rows, 0].sum() * 600 * 0.5
    assert abs(trace.table.num_rows - expected) < 5 * np.sqrt(expected * 1.5)
    assert trace.meta["spec"]["models"]["r1"]["arrival"]["clients"] == [48, 62]
    assert "seq_len" not in trace.meta["spec"]["models"]["r1"]
    bad = {**raw, "models": {"r1": {**raw["models"]["r1"], "seq_len": 128}}}
    with pytest.raises(BadInput, match="draws lengths from the pool"):
        parse_spec(bad)
    bad = {**raw, "models": {"r1": {**raw["models"]["r1"], "sessions": {"turns": 2}}}}
    with pytest.raises(BadInput, match="sessions"):
        parse_spec(bad)
    bad = {**raw, "models": {"r1": {"arrival": {**raw["models"]["r1"]["arrival"],
                                                 "clients": [5]}}}}
    with pytest.raises(BadInput, match="client 5 is not in the pool"):
        parse_spec(bad)


# -- the real deepseek-r1 pool -------------------------------------------------------------------
def _kurtosis(law: int, a: float) -> float:
    if law == 1:
        return 3 + 6 / a
    m = [np.exp(gammaln(1 + k / a)) for k in range(1, 5)]
    var = m[1] - m[0] ** 2
    return (m[3] - 4 * m[0] * m[2] + 6 * m[0] ** 2 * m[1] - 3 * m[0] ** 4) / var**2


@pytest.fixture(scope="module")
def r1_pool():
    if not R1.is_dir():
        pytest.skip(f"{R1} absent (the ServeGen pools live in ../shared/data)")
    return load_pool(str(R1))


def test_real_r1_two_hours_window_counts_within_3_sd(r1_pool):
    trace = import_trace("servegen", [R1], duration_s=7200, seed=0)
    t = trace.table.column("arrival_ns").to_numpy() / 1e9
    counts = np.histogram(t, np.arange(13) * 600.0)[0]
    mean = r1_pool.rate[:, :12].sum(axis=0) * 600
    # renewal semantics: Var ≈ Σ CV² × rate × 600 over clients (not the Poisson mean)
    sd = np.sqrt((np.nan_to_num(r1_pool.cv()[:, :12]) ** 2 * r1_pool.rate[:, :12] * 600)
                 .sum(axis=0))
    assert (np.abs(counts - mean) <= 3 * sd).all(), (counts, mean.round(), sd.round())
    assert trace.table.num_rows == pytest.approx(mean.sum(), rel=0.03)
    seq = trace.table.column("seq_len").to_numpy()
    assert seq.min() >= 1 and trace.table.column("max_new_tokens").to_numpy().max() > 1000


def test_real_r1_per_client_cvs_reproduced(r1_pool):
    """Gaps of each (client, window) with >= 200 expected requests, pooled over 20 seeds,
    against the window's law CV. The check is made where it can decide 10 %: a CV estimate
    from N gaps has relative sd ≈ ½√((κ − 1)/N) (κ the law's kurtosis; Gamma: 3 + 6/a), so
    windows whose 3 sd exceed 10 % (very bursty laws) are counted but not judged."""
    gaps: dict[tuple[int, int], list[np.ndarray]] = {}
    for seed in range(20):
        s = sample_pool(r1_pool, np.random.default_rng(seed), 7200.0, lengths=False)
        key = s.client.astype(np.int64) * 1000 + s.window
        order = np.lexsort((s.time_s, key))
        k, t = key[order], s.time_s[order]
        same = k[1:] == k[:-1]
        g, kk = np.diff(t)[same], k[1:][same]
        for u in np.unique(kk):
            gaps.setdefault(divmod(int(u), 1000), []).append(g[kk == u])
    cv = r1_pool.cv()
    judged, ratios = 0, []
    for (client, window), parts in gaps.items():
        row = int(np.searchsorted(r1_pool.clients, client))
        if r1_pool.rate[row, window] * 600 < 200:
            continue
        g = np.concatenate(parts)
        ratio = g.std() / g.mean() / cv[row, window]
        ratios.append(ratio)
        rel_sd = 0.5 * np.sqrt((_kurtosis(r1_pool.law[row, window],
                                          r1_pool.shape[row, window]) - 1) / len(g))
        if 3 * rel_sd <= 0.10:
            judged += 1
            assert ratio == pytest.approx(1.0, abs=0.10), (client, window, len(g))
    assert judged >= 50  # 72 of 101 such windows with seeds 0-19
    assert np.median(ratios) == pytest.approx(1.0, abs=0.05)


def test_start_window_length_and_day_wrap(tmp_path):
    pool = load_pool(str(make_pool(tmp_path / "p", {
        0: ["0,1.0,1.0,Gamma,1.0,1.0", "600,3.0,1.0,Gamma,1.0,1.0"]})))
    rng = np.random.default_rng(0)
    # start in the second window: 300 s of it, then the day wraps to the first window
    s = sample_pool(pool, rng, 600.0, start_s=900.0)
    assert s.expected.tolist() == pytest.approx([900.0, 300.0])
    # window_s = 60 replays each 600 s window in 60 s, rates unchanged
    s = sample_pool(pool, rng, 120.0, window_s=60.0)
    assert s.expected.tolist() == pytest.approx([60.0, 180.0])
    assert s.window_edges.tolist() == [0.0, 60.0, 120.0]
    assert np.histogram(s.time_s, [0, 60, 120])[0].sum() == len(s.time_s)
