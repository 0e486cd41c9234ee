"""The simulator against queueing theory, hand-computed timelines, and itself (determinism).

Statistical tolerances were set from 30 seeds of the same experiment at n = 100k (relative
standard deviation of the mean response time 0.9 % for M/M/1 and 0.5 % for M/D/1, of the p99
2.2 % and 1.4 %); the tests use n = 200k and a fixed seed, and allow about 4 standard deviations,
so a correct engine fails with probability < 1e-4 while a wrong service discipline or an
off-by-one in the recursion (which moves these numbers by 10 % or more) cannot pass.
"""

from __future__ import annotations

import itertools
import json
import math
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from queueing_helpers import erlang_c
from scipy import optimize, stats

from traceforge.errors import BadInput
from traceforge.record import RunManifest, read_timeline
from traceforge.schema import TRACE_SCHEMA, Trace, conform_trace_table, read_trace, write_trace
from traceforge.simulate import simulate
from traceforge.simulate.engine import ModelQueue, fifo_servers, shared_workers
from traceforge.simulate.measure import estimate_slowdowns
from traceforge.simulate.profile import PROFILE_SCHEMA_ID, profile_from_dict

N = 200_000


def make_trace(arrival_ns, models=None, *, batch_size=None, seq_len=None, new_tokens=None,
               meta=None) -> Trace:
    arrival = np.asarray(arrival_ns, dtype=np.int64)
    n = arrival.size
    table = conform_trace_table(pa.table({
        "request_id": np.arange(n, dtype=np.int64),
        "arrival_ns": arrival,
        "model": ["m"] * n if models is None else list(models),
        "batch_size": np.ones(n, np.int32) if batch_size is None else np.asarray(batch_size,
                                                                                 np.int32),
        "seq_len": np.full(n, 128, np.int32) if seq_len is None else np.asarray(seq_len,
                                                                                np.int32),
        "max_new_tokens": np.zeros(n, np.int32) if new_tokens is None else np.asarray(
            new_tokens, np.int32),
    }))
    return Trace(table=table, meta=meta or {})


def poisson_ns(rate_per_ms: float, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.exponential(1e6 / rate_per_ms, n)).astype(np.int64)


def latency_ms(run_dir) -> np.ndarray:
    t = read_timeline(run_dir)
    return pc.subtract(t.column("done_ns"), t.column("scheduled_ns")).to_numpy() / 1e6


def model_profile(service_ms, *, batch_sizes=(1,), seq_lens=(128,), cv=0.0, **extra):
    grid = np.broadcast_to(np.asarray(service_ms, float),
                           (len(batch_sizes), len(seq_lens))).tolist()
    return {"kind": "encoder", "generative": False, "batch_sizes": list(batch_sizes),
            "seq_lens": list(seq_lens), "service_ms": grid, "service_cv": cv, **extra}


def make_profile(models: dict, modes: dict | None = None):
    return profile_from_dict({"schema": PROFILE_SCHEMA_ID, "device": {"name": "test"},
                              "models": models,
                              "modes": modes or {"exclusive": {}, "timeslice": {}}})


# -- closed forms ------------------------------------------------------------------------------

def test_mm1_mean_and_p99(tmp_path):
    lam, mu = 0.5, 1.0  # per ms: rho = 0.5
    trace = make_trace(poisson_ns(lam, N, seed=1))
    simulate(trace, tmp_path / "run", service_ms=1 / mu, service_dist="exp", seed=3)
    lat = latency_ms(tmp_path / "run")
    # M/M/1 response time is Exp(mu - lam): mean 1/(mu-lam), p99 ln(100)/(mu-lam).
    assert lat.mean() == pytest.approx(1 / (mu - lam), rel=0.03)
    assert np.percentile(lat, 99) == pytest.approx(math.log(100) / (mu - lam), rel=0.07)


def md1_wait_cdf(t: float, lam: float, d: float) -> float:
    """Erlang's M/D/1 waiting-time distribution (exact; stable for t/d of a few)."""
    rho = lam * d
    k = np.arange(int(t // d) + 1)
    x = lam * (k * d - t)
    return float((1 - rho) * np.sum(np.exp(k * np.log(np.abs(x) + 1e-300) - x
                                           - np.array([math.lgamma(i + 1) for i in k]))
                                    * np.where(k % 2 == 1, np.sign(x), 1.0)))


def test_md1_mean_and_p99(tmp_path):
    lam, d = 0.5, 1.0
    trace = make_trace(poisson_ns(lam, N, seed=2))
    simulate(trace, tmp_path / "run", service_ms=d, service_dist="const")
    lat = latency_ms(tmp_path / "run")
    rho = lam * d
    assert lat.mean() == pytest.approx(d + rho * d / (2 * (1 - rho)), rel=0.02)
    w99 = optimize.brentq(lambda t: md1_wait_cdf(t, lam, d) - 0.99, 0.01, 20 * d)
    assert np.percentile(lat, 99) == pytest.approx(d + w99, rel=0.06)


@pytest.mark.parametrize("mode", ["exclusive", "timeslice"])
def test_mg1_pollaczek_khinchine(tmp_path, mode):
    # Gamma service (cv 0.5) from a profile: exclusive goes through the vectorised Lindley path,
    # timeslice (one model, nothing to interfere with) through the event loop.
    lam, s, cv = 0.6, 1.0, 0.5
    n = N if mode == "exclusive" else N // 4
    profile = make_profile({"m": model_profile(s, cv=cv)})
    trace = make_trace(poisson_ns(lam, n, seed=4))
    simulate(trace, tmp_path / "run", profile=profile, mode=mode, seed=5)
    t = read_timeline(tmp_path / "run")
    wait = pc.subtract(t.column("service_start_ns"), t.column("scheduled_ns")).to_numpy() / 1e6
    rho = lam * s
    es2 = s**2 * (1 + cv**2)
    pk = lam * es2 / (2 * (1 - rho))  # Pollaczek–Khinchine mean wait: 0.9375 ms
    # Mean waits are noisier than mean responses (rel. sd ~1.5 % at 200k, 3 % at 50k).
    assert wait.mean() == pytest.approx(pk, rel=0.06 if mode == "exclusive" else 0.12)


def test_mmc_waiting_probability_erlang_c(tmp_path):
    c, lam, mu = 3, 2.1, 1.0  # a = 2.1 erlangs on 3 servers: rho = 0.7, P(wait) = 0.4445
    trace = make_trace(poisson_ns(lam, N, seed=6))
    simulate(trace, tmp_path / "run", servers=c, service_ms=1 / mu, service_dist="exp", seed=7)
    t = read_timeline(tmp_path / "run")
    waited = pc.greater(t.column("service_start_ns"), t.column("scheduled_ns")).to_numpy(
        zero_copy_only=False)
    # The fraction is a mean of correlated indicators; sd across seeds ~0.005 at 200k.
    assert waited.mean() == pytest.approx(erlang_c(c, lam / mu), abs=0.02)


def test_gi_m1_gamma_arrivals(tmp_path):
    # Gamma inter-arrivals, shape k (cv = 1/sqrt(k) = 2), mean 1/lam; exponential service mu.
    # sigma solves sigma = A*(mu (1 - sigma)) with A*(s) = (1 + s theta)^-k, and the response
    # time is Exp(mu (1 - sigma)).
    lam, mu, k = 0.5, 1.0, 0.25
    theta = 1 / (lam * k)
    sigma = optimize.brentq(lambda x: (1 + mu * (1 - x) * theta) ** -k - x, 1e-9, 1 - 1e-9)
    rng = np.random.default_rng(8)
    trace = make_trace(np.cumsum(rng.gamma(k, theta * 1e6, N)).astype(np.int64))
    simulate(trace, tmp_path / "run", service_ms=1 / mu, service_dist="exp", seed=9)
    lat = latency_ms(tmp_path / "run")
    rate = mu * (1 - sigma)
    # Bursty arrivals make long busy periods, so estimates are noisier than for M/M/1.
    assert lat.mean() == pytest.approx(1 / rate, rel=0.06)
    assert np.percentile(lat, 99) == pytest.approx(math.log(100) / rate, rel=0.10)
    # Shape, not only moments: KS distance to Exp(rate) stays small (sup-distance; the sample
    # is autocorrelated, so a p-value would overstate the evidence).
    assert stats.kstest(lat, "expon", args=(0, 1 / rate)).statistic < 0.02


# -- exact timelines ---------------------------------------------------------------------------

def test_lindley_matches_a_direct_loop():
    rng = np.random.default_rng(10)
    a = np.cumsum(rng.integers(0, 2_000, 5000))
    s = rng.integers(1, 3_000, 5000)
    for servers in (1, 2, 3):
        start, end = fifo_servers(a, s, servers)
        free = [0] * servers
        expect = []
        for ai, si in zip(a.tolist(), s.tolist(), strict=True):
            j = min(range(servers), key=free.__getitem__)
            st = max(ai, free[j])
            free[j] = st + si
            expect.append(st)
        np.testing.assert_array_equal(start, expect)
        np.testing.assert_array_equal(end, start + s)
    const = np.full(5000, 1500)
    for servers in (2, 4):  # the residue-class shortcut for equal service times
        start, _ = fifo_servers(a, const, servers)
        free = [0] * servers
        expect = []
        for ai in a.tolist():
            j = min(range(servers), key=free.__getitem__)
            st = max(ai, free[j])
            free[j] = st + 1500
            expect.append(st)
        np.testing.assert_array_equal(start, expect)


def timeline_ms(run_dir, column: str) -> list[float]:
    return [v / 1e6 for v in read_timeline(run_dir).column(column).to_pylist()]


def test_dynamic_batching_exact_timeline(tmp_path):
    # Service 1 ms for batch 1, 1.5 ms for 2 (linear in between), constant in seq_len.
    profile = make_profile({"m": model_profile([[1.0], [1.5]], batch_sizes=(1, 2))})
    ms = 1_000_000
    trace = make_trace([0, int(0.2 * ms), int(0.3 * ms), 5 * ms])
    simulate(trace, tmp_path / "run", profile=profile, mode="timeslice", max_batch=2,
             max_wait_ms=0.5)
    # #0 waits for a partner: #1 fills the batch at 0.2 -> runs to 1.7. #2's deadline (0.8) has
    # passed when the worker frees at 1.7: alone, 1.7 -> 2.7. #3 waits its 0.5 ms: 5.5 -> 6.5.
    assert timeline_ms(tmp_path / "run", "service_start_ns") == pytest.approx(
        [0.2, 0.2, 1.7, 5.5])
    assert timeline_ms(tmp_path / "run", "service_end_ns") == pytest.approx(
        [1.7, 1.7, 2.7, 6.5])
    t = read_timeline(tmp_path / "run")
    assert t.column("batched_with").to_pylist() == [2, 2, 1, 1]
    assert t.column("batch_id").to_pylist() == [0, 0, 1, 2]
    assert t.column("sent_ns").to_pylist() == t.column("scheduled_ns").to_pylist()


def test_batch_sums_sizes_and_pads_to_longest(tmp_path):
    profile = make_profile({"m": model_profile([[1.0, 2.0], [3.0, 5.0]], batch_sizes=(1, 2),
                                               seq_lens=(64, 128))})
    trace = make_trace([0, 0], batch_size=[1, 1], seq_len=[64, 128])
    simulate(trace, tmp_path / "run", profile=profile, mode="exclusive", max_batch=4)
    # One batch of 2 rows at the longest seq_len (128): 5 ms.
    assert timeline_ms(tmp_path / "run", "service_end_ns") == pytest.approx([5.0, 5.0])


def test_exclusive_is_one_global_fifo_server(tmp_path):
    profile = make_profile({"a": model_profile(2.0), "b": model_profile(1.0)})
    ms = 1_000_000
    trace = make_trace([0, ms // 2, ms], models=["a", "b", "a"])
    simulate(trace, tmp_path / "run", profile=profile, mode="exclusive")
    assert timeline_ms(tmp_path / "run", "service_start_ns") == pytest.approx([0, 2, 3])
    assert timeline_ms(tmp_path / "run", "service_end_ns") == pytest.approx([2, 3, 5])
    # In timeslice the two workers run side by side (no slowdown measured = none applied
    # to single-model busy sets; here a+b has a slowdown, see the next test).


def test_interference_rates_recomputed_at_each_event(tmp_path):
    modes = {"timeslice": {"slowdown": {"a+b": {"a": 2.0, "b": 1.5}},
                           "inbound_ms": {"a": 0.25}, "outbound_ms": {"b": 0.5}}}
    profile = make_profile({"a": model_profile(2.0), "b": model_profile(1.0)}, modes)
    ms = 1_000_000
    trace = make_trace([0, int(0.75 * ms)], models=["a", "b"])
    simulate(trace, tmp_path / "run", profile=profile, mode="timeslice")
    # a reaches its worker at 0.25 and runs alone until b arrives at 0.75 (0.5 ms of work done).
    # Both busy: a at rate 1/2, b at 2/3. b's 1 ms of work ends at 0.75 + 1.5 = 2.25, when a has
    # done 0.5 + 0.75 = 1.25; a's last 0.75 ms run alone: ends at 3.0.
    assert timeline_ms(tmp_path / "run", "service_start_ns") == pytest.approx([0.25, 0.75])
    assert timeline_ms(tmp_path / "run", "service_end_ns") == pytest.approx([3.0, 2.25])
    assert timeline_ms(tmp_path / "run", "done_ns") == pytest.approx([3.0, 2.75])


def test_generative_first_token_and_tokens(tmp_path):
    gen = model_profile(4.0, generative=True, decode_ms_per_token=[[1.0]], new_tokens=8)
    gen["kind"] = "decoder"
    profile = make_profile({"g": gen})
    trace = make_trace([0], models=["g"], new_tokens=[5], batch_size=[2])
    simulate(trace, tmp_path / "run", profile=profile, mode="exclusive")
    # 4 ms to the first token, then 4 more tokens at 1 ms.
    assert timeline_ms(tmp_path / "run", "first_token_ns") == pytest.approx([4.0])
    assert timeline_ms(tmp_path / "run", "service_end_ns") == pytest.approx([8.0])
    assert read_timeline(tmp_path / "run").column("tokens_out").to_pylist() == [10]


# -- determinism and the run directory ----------------------------------------------------------

def test_deterministic_under_seed(tmp_path):
    profile = make_profile({"a": model_profile(0.5, cv=0.3), "b": model_profile(0.8, cv=0.3)},
                           {"timeslice": {"slowdown": {"a+b": {"a": 1.4, "b": 1.2}}}})
    rng = np.random.default_rng(11)
    trace = make_trace(poisson_ns(2.0, 20_000, seed=12),
                       models=np.array(["a", "b"])[rng.integers(0, 2, 20_000)])
    runs = {}
    for name, seed in (("x", 1), ("y", 1), ("z", 2)):
        simulate(trace, tmp_path / name, profile=profile, mode="timeslice", seed=seed,
                 max_batch=4, max_wait_ms=0.2)
        runs[name] = read_timeline(tmp_path / name).drop_columns(["warmup"])
    assert runs["x"].equals(runs["y"])
    assert not runs["x"].column("service_end_ns").equals(runs["z"].column("service_end_ns"))


def test_run_directory_matches_replay(tmp_path):
    trace_path = tmp_path / "t.parquet"
    trace = make_trace(poisson_ns(0.1, 500, seed=13), models=["a", "b"] * 250)
    write_trace(trace.table, trace_path, {"spec": {"models": {}}})
    summary = simulate(read_trace(trace_path), tmp_path / "run", service_ms=2, warmup_s=0.5)
    manifest = RunManifest.load(tmp_path / "run")
    assert manifest["backend"] == "simulate" and manifest["status"] == "complete"
    assert manifest["counts"] == {"ok": 500} == summary.counts
    assert manifest["self_check"]["send_lag_us"] == {"p50": 0.0, "p99": 0.0, "max": 0.0}
    assert manifest["trace"]["sha256"] and manifest["trace"]["path"] == str(trace_path)
    t = read_timeline(tmp_path / "run")
    assert t.num_rows == 500 and t.column("gpu_ns").null_count == 500
    warm = t.column("warmup").to_numpy(zero_copy_only=False)
    sched = t.column("scheduled_ns").to_numpy()
    np.testing.assert_array_equal(warm, sched < 500_000_000)


def test_null_model_draws_the_null_backends_service_times(tmp_path):
    # The same generator as backends/null.py: one stream per (seed, model name).
    trace = make_trace(np.arange(50) * 10**9, models=["bert"] * 50)  # no queueing
    simulate(trace, tmp_path / "run", service_ms=3.0, seed=4)
    t = read_timeline(tmp_path / "run")
    service = pc.subtract(t.column("service_end_ns"), t.column("service_start_ns")).to_numpy()
    expect = np.rint(np.random.default_rng([4, zlib.crc32(b"bert")]).exponential(3e6, 50))
    np.testing.assert_array_equal(service, expect.astype(np.int64))


def test_bad_inputs_write_nothing(tmp_path):
    trace = make_trace([0, 1])
    profile = make_profile({"other": model_profile(1.0)})
    cases = [
        dict(service_dist="weibull"),
        dict(servers=0),
        dict(max_batch=2),  # batching needs a profile
        dict(profile=profile),  # a profile needs a mode
        dict(profile=profile, mode="mps"),  # mode not in the profile
        dict(profile=profile, mode="exclusive"),  # model m not in the profile
    ]
    for i, kwargs in enumerate(cases):
        with pytest.raises(BadInput):
            simulate(trace, tmp_path / f"run{i}", **kwargs)
        assert not (tmp_path / f"run{i}").exists()


def test_failure_after_the_claim_leaves_no_lock_and_no_empty_directory(tmp_path):
    """The run directory is claimed after the simulation; a fault between the claim and
    run.json (here the trace file is gone by the time it is hashed, as when it is deleted
    mid-run) left OUT/.traceforge.lock and the directory behind."""
    from dataclasses import replace

    trace = replace(make_trace([0, 1]), path=tmp_path / "gone.parquet")
    out = tmp_path / "new" / "run"
    with pytest.raises(FileNotFoundError):
        simulate(trace, out)
    assert not out.exists()
    existing = tmp_path / "empty"
    existing.mkdir()
    with pytest.raises(FileNotFoundError):
        simulate(trace, existing)
    assert list(existing.iterdir()) == []  # adopted, not made here: kept, without the lock


def test_profile_model_matched_by_zoo_entry(tmp_path):
    profile = make_profile({"distilbert-base": model_profile(1.0, zoo="distilbert-base")})
    trace = make_trace([0], models=["bert"],
                       meta={"spec": {"models": {"bert": {"zoo": "distilbert-base"}}}})
    simulate(trace, tmp_path / "run", profile=profile, mode="exclusive")
    assert timeline_ms(tmp_path / "run", "service_end_ns") == pytest.approx([1.0])
    assert RunManifest.load(tmp_path / "run")["backend_info"]["models"] == {
        "bert": "distilbert-base"}


# -- the slowdown estimator ---------------------------------------------------------------------

def test_slowdown_estimator_recovers_the_simulators_slowdowns():
    # Simulate three saturated workers with known slowdowns, then estimate them back from the
    # busy intervals alone, as `traceforge profile` does from a real co-run.
    names = ["a", "b", "c"]
    alone = {"a": 2e6, "b": 5e6, "c": 3e6}
    truth = {3: {"a": 1.5, "b": 1.3}, 5: {"a": 1.4, "c": 1.2}, 6: {"b": 1.6, "c": 1.7},
             7: {"a": 2.2, "b": 1.9, "c": 2.5}}
    rates = {mask: [1 / d.get(m, 1.0) if mask >> i & 1 else 1.0 for i, m in enumerate(names)]
             for mask, d in truth.items()}
    rng = np.random.default_rng(14)
    counts = {"a": 3000, "b": 1200, "c": 2000}
    queues = [ModelQueue(np.sort(rng.uniform(0, 6e9, counts[m])),
                         alone[m] * rng.gamma(100, 0.01, counts[m])) for m in names]
    res = shared_workers(queues, exclusive=False, rates=rates)
    intervals = {m: (res[i].start_ns, res[i].end_ns) for i, m in enumerate(names)}

    def known(m, busy):
        return 1.0 if len(busy) == 1 else truth[sum(1 << names.index(b) for b in busy)][m]

    est = estimate_slowdowns(intervals, alone, known)
    for m in names:
        # Service noise (cv 0.1 over >1000 requests) leaves ~1 % error in the work balance.
        assert est[m]["slowdown"] == pytest.approx(truth[7][m], rel=0.03)
        assert est[m]["overlap"] > 0.5


def test_fidelity_of_a_run_against_itself_is_exact(tmp_path):
    # A simulated run stands in for a measured one: re-simulating its trace with the same
    # profile, mode, batching and seed must give zero error (checks how fidelity reads run.json).
    from traceforge.simulate.fidelity import compare_run, render_markdown

    profile = make_profile({"a": model_profile(0.5, cv=0.2), "b": model_profile(0.9, cv=0.2)},
                           {"timeslice": {"slowdown": {"a+b": {"a": 1.3, "b": 1.1}}}})
    rng = np.random.default_rng(15)
    trace = make_trace(poisson_ns(1.0, 3000, seed=16),
                       models=np.array(["a", "b"])[rng.integers(0, 2, 3000)])
    write_trace(trace.table, tmp_path / "t.parquet", {})
    simulate(read_trace(tmp_path / "t.parquet"), tmp_path / "run", profile=profile,
             mode="timeslice", max_batch=2, max_wait_ms=0.1, warmup_s=0.2, seed=3)
    result = compare_run(tmp_path / "run", profile, seed=3)
    assert result["mode"] == "timeslice"
    for row in result["models"].values():
        assert row["error_p50"] == 0.0 and row["error_p99"] == 0.0
        assert row["count"] < 1500  # warmup rows left out
    assert "| run | timeslice | a |" in render_markdown([result])


def test_inlined_loop_matches_the_general_loop():
    rng = np.random.default_rng(17)
    rates = {3: [0.6, 0.8, 1.0], 5: [0.7, 1.0, 0.9], 6: [1.0, 0.5, 0.75],
             7: [0.4, 0.45, 0.6]}
    queues = [ModelQueue(np.sort(rng.uniform(0, 1e9, 3000)), rng.exponential(4e5, 3000))
              for _ in range(3)]
    fast = shared_workers(queues, exclusive=False, rates=rates)
    general = shared_workers(queues, exclusive=False, rates=rates, fast_path=False)
    for f, g in zip(fast, general, strict=True):
        np.testing.assert_allclose(f.start_ns, g.start_ns, rtol=0, atol=1e-3)
        np.testing.assert_allclose(f.end_ns, g.end_ns, rtol=0, atol=1e-3)
        # the inlined loop numbers its (single-request) batches on its own
        np.testing.assert_array_equal(f.batch_id, g.batch_id)
        np.testing.assert_array_equal(f.batched_with, g.batched_with)


def test_shipped_profiles_load_by_name_and_match_the_repo_copies():
    from traceforge.simulate import load_profile
    from traceforge.simulate.profile import shipped_profiles

    shipped = shipped_profiles()
    assert "cpu-tiny" in shipped
    repo = Path(__file__).resolve().parents[1] / "profiles"
    for name, path in shipped.items():
        assert path.read_bytes() == (repo / f"{name}.json").read_bytes()
        profile = load_profile(name)
        # (profiles measured before the "status" key existed are complete by construction)
        assert profile.data.get("status", "complete") == "complete"
        assert profile.data["command"].startswith("traceforge profile ")
    with pytest.raises(BadInput, match=r"allowed: .*cpu-tiny"):
        load_profile("no-such-profile")


def test_empty_trace_writes_an_empty_run(tmp_path):
    empty = Trace(table=TRACE_SCHEMA.empty_table(), meta={})
    profile = make_profile({"m": model_profile(1.0)})
    for i, kwargs in enumerate([{}, dict(profile=profile, mode="timeslice"),
                                dict(profile=profile, mode="exclusive", max_batch=4)]):
        summary = simulate(empty, tmp_path / f"r{i}", **kwargs)
        assert summary.counts == {} and read_timeline(tmp_path / f"r{i}").num_rows == 0


@settings(max_examples=60, deadline=None)
@given(
    gaps=st.lists(st.integers(0, 3_000_000), min_size=1, max_size=60),
    model_ix=st.lists(st.integers(0, 2), min_size=60, max_size=60),
    mode=st.sampled_from(["exclusive", "timeslice"]),
    max_batch=st.integers(1, 4),
    max_wait_ms=st.sampled_from([0.0, 0.5, 2.0]),
)
def test_worker_invariants(tmp_path_factory, gaps, model_ix, mode, max_batch, max_wait_ms):
    """Whatever the trace: service starts after the request reached its worker, per-model FIFO,
    batches respect max_batch, and in exclusive mode no two batches overlap."""
    n = len(gaps)
    names = np.array(["a", "b", "c"])[model_ix[:n]]
    profile = make_profile(
        {m: model_profile([[0.4 + k * 0.3], [0.9 + k * 0.3]], batch_sizes=(1, 4), cv=0.2)
         for k, m in enumerate("abc")},
        {"exclusive": {}, "timeslice": {"inbound_ms": {"a": 0.1}, "slowdown": {
            "a+b": {"a": 1.5, "b": 1.2}, "a+c": {"a": 1.3, "c": 2.0},
            "b+c": {"b": 1.1, "c": 1.4}, "a+b+c": {"a": 2.0, "b": 1.6, "c": 2.2}}}})
    trace = make_trace(np.cumsum(gaps), models=names)
    run = tmp_path_factory.mktemp("run") / "r"
    simulate(trace, run, profile=profile, mode=mode, max_batch=max_batch,
             max_wait_ms=max_wait_ms, seed=1)
    t = read_timeline(run).to_pydict()
    inbound = {"a": 100_000} if mode == "timeslice" else {}
    for i in range(n):
        assert t["service_start_ns"][i] >= t["scheduled_ns"][i] + inbound.get(names[i], 0) - 1
        assert t["service_end_ns"][i] > t["service_start_ns"][i]
        assert 1 <= t["batched_with"][i] <= max_batch
    for m in "abc":
        starts = [t["service_start_ns"][i] for i in range(n) if names[i] == m]
        assert starts == sorted(starts)
    if mode == "exclusive":
        batches = sorted({(t["service_start_ns"][i], t["service_end_ns"][i]) for i in range(n)})
        for (_, end), (start, _) in itertools.pairwise(batches):
            assert start >= end


def test_exclusive_batching_takes_the_oldest_model_first(tmp_path):
    profile = make_profile({"a": model_profile([[1.0], [1.5]], batch_sizes=(1, 2)),
                            "b": model_profile(2.0)})
    ms = 1_000_000
    trace = make_trace([0, ms // 10, ms // 5, 3 * ms // 10], models=["a", "b", "a", "a"])
    simulate(trace, tmp_path / "run", profile=profile, mode="exclusive", max_batch=2,
             max_wait_ms=0.5)
    # a@0 is the oldest: its batch fills with a@0.2 and runs 0.2 -> 1.7 while b@0.1 waits (other
    # model). Then b (older than a@0.3) 1.7 -> 3.7; a@0.3, past its deadline, alone 3.7 -> 4.7.
    assert timeline_ms(tmp_path / "run", "service_start_ns") == pytest.approx(
        [0.2, 1.7, 0.2, 3.7])
    assert timeline_ms(tmp_path / "run", "service_end_ns") == pytest.approx(
        [1.7, 3.7, 1.7, 4.7])
    assert read_timeline(tmp_path / "run").column("worker").unique().to_pylist() == [
        "exclusive"]


@pytest.mark.parametrize("max_wait_ns", [0.0, 3e5])
def test_inlined_batching_loop_matches_the_general_loop(max_wait_ns):
    rng = np.random.default_rng(18)
    rates = {3: [0.6, 0.8, 1.0], 5: [0.7, 1.0, 0.9], 6: [1.0, 0.5, 0.75],
             7: [0.4, 0.45, 0.6]}
    queues = [ModelQueue(np.sort(rng.uniform(0, 1e9, 3000)), rng.exponential(4e5, 3000))
              for _ in range(3)]
    kwargs = dict(exclusive=False, rates=rates, max_batch=4, max_wait_ns=max_wait_ns)
    fast = shared_workers(queues, **kwargs)
    general = shared_workers(queues, **kwargs, fast_path=False)
    for f, g in zip(fast, general, strict=True):
        np.testing.assert_allclose(f.start_ns, g.start_ns, rtol=0, atol=1e-3)
        np.testing.assert_allclose(f.end_ns, g.end_ns, rtol=0, atol=1e-3)
        np.testing.assert_array_equal(f.batch_id, g.batch_id)
        np.testing.assert_array_equal(f.batched_with, g.batched_with)
    assert max(r.batched_with.max() for r in fast) == 4  # batching really happened


def test_corun_rows_of_every_model_span_the_same_window():
    from traceforge.simulate.measure import interleave

    # A fast model and one whose minimum of 6 rows needs 6 s: both must cover the 6 s, and the
    # slow model's rows must be spread through the fast one's, not appended after them.
    order = interleave({"fast": 5e6, "slow": 1e9}, 3.0, minimum=6)
    assert order.count("slow") == 6 and order.count("fast") == 1200
    slow_at = [i for i, m in enumerate(order) if m == "slow"]
    assert slow_at[0] < 150 and slow_at[-1] > 1000


@pytest.mark.parametrize("max_batch", [1, 2])
def test_cold_start_charges_the_first_request_of_each_shape(tmp_path, max_batch):
    # 1 ms warm for seq 64, 2 ms for seq 128; the first request of a shape costs 10 ms more.
    profile = make_profile({"m": model_profile([[1.0, 2.0]], seq_lens=(64, 128),
                                               cold_extra_ms=[[10.0, 10.0]])})
    ms = 1_000_000
    trace = make_trace([0, 20 * ms, 40 * ms, 60 * ms], seq_len=[64, 64, 128, 128])
    simulate(trace, tmp_path / "cold", profile=profile, mode="timeslice", max_batch=max_batch)
    simulate(trace, tmp_path / "warm", profile=profile, mode="timeslice", max_batch=max_batch,
             cold_start=False)
    service = [e - s for s, e in zip(timeline_ms(tmp_path / "cold", "service_start_ns"),
                                     timeline_ms(tmp_path / "cold", "service_end_ns"),
                                     strict=True)]
    assert service == pytest.approx([11.0, 1.0, 12.0, 2.0])
    warm = [e - s for s, e in zip(timeline_ms(tmp_path / "warm", "service_start_ns"),
                                  timeline_ms(tmp_path / "warm", "service_end_ns"), strict=True)]
    assert warm == pytest.approx([1.0, 1.0, 2.0, 2.0])


def test_interference_shapes_flag_requests_far_above_the_corun_reference(tmp_path):
    """The shipped H200 profile measured co-runs at batch 1 x 128 for both models and, beside
    each, the other at up to 16x that (slowdown_by_size). An encoder sending half its requests
    at batch 8 x 200 (bucket 8 x 256: 16x the reference tokens) is within what was measured: no
    note. The same profile without its size tables measured the reference only: the encoder is
    named, with the share and the ratio, in run.json and on the command's stderr; the decoder
    at its reference bucket is not; exclusive mode (no interference) names nothing."""
    import subprocess
    import sys

    from traceforge.simulate.profile import shipped_profiles

    n = 40
    models = ["enc", "gen"] * (n // 2)
    bs = [8 if k % 4 == 0 else 1 for k in range(n)]  # every other encoder request: 8 x 200
    seq = [200 if k % 4 == 0 else 100 for k in range(n)]
    new = [0 if m == "enc" else 16 for m in models]
    trace = make_trace(np.arange(n) * 5_000_000, models=models, batch_size=bs, seq_len=seq,
                       new_tokens=new, meta={"spec": {"models": {
                           "enc": {"zoo": "distilbert-base"}, "gen": {"zoo": "distilgpt2"}}}})
    path = tmp_path / "t.parquet"
    write_trace(trace.table, path, trace.meta)
    root = Path(__file__).resolve().parents[1]
    shipped = json.loads(shipped_profiles()["h200-fidelity"].read_text())
    assert shipped["modes"]["mps"]["slowdown_by_size"]
    out = subprocess.run([sys.executable, "-m", "traceforge", "simulate", str(path), "-o",
                          str(tmp_path / "sized"), "--profile", "h200-fidelity", "--mode", "mps"],
                         capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stderr
    shapes = RunManifest.load(tmp_path / "sized")["backend_info"]["interference_shapes"]
    assert shapes["enc"] == {"reference": "1x128", "measured_up_to": 16.0,
                             "above_2x_share": 0.0, "max_ratio": 16.0}
    assert "note:" not in out.stderr
    for table in shipped["modes"].values():
        table.pop("slowdown_by_size", None)
    blind = tmp_path / "blind.json"
    blind.write_text(json.dumps(shipped))
    for mode in ("mps", "exclusive"):
        run = tmp_path / mode
        out = subprocess.run([sys.executable, "-m", "traceforge", "simulate", str(path), "-o",
                              str(run), "--profile", str(blind), "--mode", mode],
                             capture_output=True, text=True, cwd=root)
        assert out.returncode == 0, out.stderr
        shapes = RunManifest.load(run)["backend_info"]["interference_shapes"]
        if mode == "exclusive":
            assert shapes == {} and "note:" not in out.stderr
            continue
        assert shapes["enc"] == {"reference": "1x128", "measured_up_to": 1.0,
                                 "above_2x_share": 0.5, "max_ratio": 16.0}
        assert shapes["gen"]["above_2x_share"] == 0.0 and shapes["gen"]["max_ratio"] == 1.0
        assert "enc 50% (up to 16x its 1x128 reference, measured up to 1x)" in out.stderr
        assert "gen" not in out.stderr.split("note:")[1].split(";")[0]
        # the report of the simulated run carries the same note
        rep = subprocess.run([sys.executable, "-m", "traceforge", "report", str(run), "--json"],
                             capture_output=True, text=True, cwd=root)
        assert rep.returncode == 0, rep.stderr
        notes = json.loads(rep.stdout)["notes"]
        assert any("enc 50% (up to 16x its 1x128 reference" in n for n in notes), notes


def test_slowdown_by_corunner_size_recovers_a_shape_blind_slowdown(tmp_path, capsys):
    """A simulated MPS run (processor sharing, no noise) whose interference does not depend on
    shapes: the fit gives the profile's slowdowns back in every size class of the request beside
    (a 1.5, b 1.25), with the overlap each class had; a run of one model or in exclusive mode
    gives {}."""
    from traceforge.simulate.fidelity import slowdown_by_corunner_size

    grid = dict(batch_sizes=(1, 8), seq_lens=(32, 256))
    ref = {"reference": {"batch_size": 1, "seq_len": 32, "max_new_tokens": 0}}
    modes = {"mps": {"slowdown": {"a+b": {"a": 1.5, "b": 1.25}}}, "exclusive": {}}
    profile = make_profile({"a": model_profile([[1.0, 2.0], [3.0, 6.0]], **grid, **ref),
                            "b": model_profile([[0.5, 1.0], [1.5, 3.0]], **grid, **ref)}, modes)
    rng = np.random.default_rng(5)
    n = 3000
    models = rng.choice(["a", "b"], n)
    bs = rng.choice([1, 2, 4, 8], n)
    seq = rng.choice([32, 64, 128, 256], n)
    trace = make_trace(poisson_ns(0.4, n, 6), models=models, batch_size=bs, seq_len=seq)
    path = tmp_path / "t.parquet"
    write_trace(trace.table, path, {})
    simulate(path, tmp_path / "mps", profile=profile, mode="mps")
    got = slowdown_by_corunner_size(tmp_path / "mps", profile)
    assert set(got) == {"a", "b"}
    for name, want in (("a", 1.5), ("b", 1.25)):
        v = got[name]
        assert v["profile"] == want
        # sizes over the 1 x 32 reference: 1, 2, 4 ... 64: every class has overlap
        assert all(ms > 0 for ms in v["overlap_ms"]), v
        assert v["slowdown"] == pytest.approx([want] * 4, abs=1e-3), v
    # the command prints the same fit, per run and model
    from traceforge.simulate.fidelity import main

    prof_path = tmp_path / "p.json"
    prof_path.write_text(json.dumps(profile.data))
    assert main(["--profile", str(prof_path), "--by-corunner-size", str(tmp_path / "mps")]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| mps |")]
    assert [r.split("|")[2].strip() for r in rows] == ["a", "b"]
    assert rows[0].split("|")[3].strip() == "1.500" and "| 1.50 (" in rows[0]
    assert main(["--profile", str(prof_path), "--by-corunner-size", str(tmp_path / "none")]) == 2
    assert "fidelity: error:" in capsys.readouterr().err
    simulate(path, tmp_path / "excl", profile=profile, mode="exclusive")
    assert slowdown_by_corunner_size(tmp_path / "excl", profile) == {}
    one = make_trace(poisson_ns(0.2, 50, 7), models=["a"] * 50)
    write_trace(one.table, tmp_path / "one.parquet", {})
    simulate(tmp_path / "one.parquet", tmp_path / "one", profile=profile, mode="mps")
    assert slowdown_by_corunner_size(tmp_path / "one", profile) == {}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 16), st.integers(1, 3000), st.integers(0, 300)),
                min_size=1, max_size=60),
       st.booleans())
def test_bucket_shapes_match_the_backends_policy_request_by_request(shapes, huge):
    """ModelProfile.bucket_shapes (one int64 key per shape, or the column-wise unique when a
    value does not fit 21 bits) gives each request the bucket zoo/buckets.py pads it to; a
    shape beyond the largest bucket keeps its own shape."""
    from traceforge.simulate.profile import ModelProfile
    from traceforge.zoo.buckets import BucketPolicy

    pm = make_profile({"d": model_profile(1.0, seq_buckets=[16, 64, 256, 1024])}).models["d"]
    pm = ModelProfile(**{**pm.__dict__, "kind": "decoder", "generative": True,
                         "seq_buckets": (16, 64, 256, 1024), "bucketed": True})
    if huge:
        shapes = [*shapes, (1, 1 << 22, 0)]
    b, s, n = (np.array(c, np.int64) for c in zip(*shapes, strict=True))
    got_b, got_s = pm.bucket_shapes(b, s, n)
    policy = BucketPolicy(kind="decoder", seq_buckets=(16, 64, 256, 1024), batch_buckets=False,
                          max_positions=None)
    for k in range(b.size):
        try:
            want = policy.bucket(int(b[k]), int(s[k]), int(n[k]))
            want = (want.batch, want.seq)
        except ValueError:
            want = (int(b[k]), int(s[k]))
        assert (int(got_b[k]), int(got_s[k])) == want


def test_interference_note_ignores_malformed_run_json_entries():
    """`report` reads interference_shapes back from run.json: entries that are not
    {model: {numbers}} are skipped, never a crash; a well-formed one is still named."""
    from traceforge.simulate.simulator import interference_note

    good = {"reference": "1x128", "above_2x_share": 0.25, "max_ratio": 8.0}
    assert interference_note({"a": 5, "b": {"above_2x_share": "x"}, "c": {}}) is None
    note = interference_note({"a": 5, "b": None, "enc": good})
    # a run simulated before size tables has no measured_up_to: the reference only
    assert note is not None and "enc 25% (up to 8x its 1x128 reference, measured up to 1x)" in note
    note = interference_note({"enc": {**good, "measured_up_to": "x"}})
    assert "measured up to 1x" in note
