"""The executor hand-off in the simulator: hand-computed timelines in virtual time, how the
profile measures it, old profiles without it, and the fidelity oracle that isolates it.

The hand-off ``g`` of a request is worker time after its service ends and before the worker
can start the next request (reporting, taking the next job, launching it): a request already
waiting starts at ``end + g``; one arriving later starts on arrival (docs/simulator.md).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.test_simulate import make_profile, make_trace, model_profile, poisson_ns
from traceforge.errors import BadInput
from traceforge.record import RunManifest, read_timeline
from traceforge.schema import read_trace, write_trace
from traceforge.simulate import simulate
from traceforge.simulate.engine import (
    ModelQueue,
    fifo_pair_handoff,
    fifo_servers,
    shared_workers,
)
from traceforge.simulate.measure import (
    demand_starts,
    handoff_classes,
    handoff_gaps,
    handoff_ms,
    handoff_pair_ms,
    idle_transport_bins,
    idle_transport_samples,
)
from traceforge.simulate.profile import PROFILE_SCHEMA_ID, profile_from_dict

MS = 1_000_000


def col_ms(run_dir, name):
    return (read_timeline(run_dir).column(name).to_numpy() / MS).tolist()


def test_fifo_hand_off_exact_timeline():
    # service 100 each, gap 7. #1 waits (arrived at 10): starts at 100 + 7. #2 arrives at 500,
    # the worker is idle: starts on arrival. #3 arrives at 603, inside #2's hand-off window
    # (ends 600, free at 607): starts at 607, not 603.
    arrival = np.array([0, 10, 500, 603])
    service = np.array([100, 100, 100, 100])
    start, end = fifo_servers(arrival, service, 1, handoff_ns=np.full(4, 7))
    assert start.tolist() == [0, 107, 500, 607]
    assert end.tolist() == [100, 207, 600, 707]
    # Without a hand-off: the old model (back to back).
    start0, _ = fifo_servers(arrival, service, 1)
    assert start0.tolist() == [0, 100, 500, 603]


def test_gap_is_the_finishing_requests_own():
    # Per request: the gap after request k is handoff[k] (the model that finished decides).
    start, end = fifo_servers(np.array([0, 0, 0]), np.array([10, 10, 10]), 1,
                              handoff_ns=np.array([5, 50, 0]))
    assert start.tolist() == [0, 15, 75]
    assert end.tolist() == [10, 25, 85]


@pytest.mark.parametrize("fast_path", [True, False])
def test_per_model_workers_hand_off(fast_path):
    # Two workers, gaps 3 and 0. Worker 0: arrivals 0, 1, 20, service 10 each: starts 0, 13
    # (waited), 26 (arrived at 20 inside the window 23..26). Worker 1 unaffected by worker 0.
    queues = [ModelQueue(np.array([0.0, 1.0, 20.0]), np.array([10.0, 10.0, 10.0])),
              ModelQueue(np.array([0.0, 2.0]), np.array([5.0, 5.0]))]
    res = shared_workers(queues, exclusive=False, handoff_ns=[3.0, 0.0], fast_path=fast_path)
    assert res[0].start_ns.tolist() == [0.0, 13.0, 26.0]
    assert res[0].end_ns.tolist() == [10.0, 23.0, 36.0]
    assert res[1].start_ns.tolist() == [0.0, 5.0]


def test_hand_off_is_idle_time_for_interference():
    # a+b busy together run at half speed. a: one request [0, 10) alone-work 10 at rate 1
    # until b starts. b's worker: request 0 arrives at 0 (work 4), request 1 waits; gap 6.
    # t=0: both busy, rate 0.5 -> b0 ends at 8 (4 work), a has done 4 of 10.
    # t=8..14: b is in its hand-off, idle for interference: a runs at rate 1, done 10 at 14.
    # t=14: b1 starts (gap over) and a ends at the same instant.
    rates = {3: [0.5, 0.5]}
    queues = [ModelQueue(np.array([0.0]), np.array([10.0])),
              ModelQueue(np.array([0.0, 0.0]), np.array([4.0, 4.0]))]
    for fast in (True, False):
        res = shared_workers(queues, exclusive=False, rates=rates, handoff_ns=[0.0, 6.0],
                             fast_path=fast)
        assert res[0].end_ns.tolist() == pytest.approx([14.0])
        assert res[1].start_ns.tolist() == pytest.approx([0.0, 14.0])
        assert res[1].end_ns.tolist() == pytest.approx([8.0, 18.0])


def test_inlined_loop_matches_the_general_loop_with_hand_off():
    rng = np.random.default_rng(5)
    rates = {3: [0.6, 0.8, 1.0], 5: [0.7, 1.0, 0.9], 6: [1.0, 0.5, 0.75], 7: [0.4, 0.45, 0.6]}
    queues = [ModelQueue(np.sort(rng.uniform(0, 1e9, 2000)), rng.exponential(4e5, 2000))
              for _ in range(3)]
    gaps = [5e4, 0.0, 2e5]
    fast = shared_workers(queues, exclusive=False, rates=rates, handoff_ns=gaps)
    general = shared_workers(queues, exclusive=False, rates=rates, handoff_ns=gaps,
                             fast_path=False)
    for f, g in zip(fast, general, strict=True):
        np.testing.assert_allclose(f.start_ns, g.start_ns, rtol=0, atol=1e-3)
        np.testing.assert_allclose(f.end_ns, g.end_ns, rtol=0, atol=1e-3)
    # and the hand-off makes a difference here (the workers queue)
    plain = shared_workers(queues, exclusive=False, rates=rates)
    assert plain[2].end_ns[-1] < fast[2].end_ns[-1]


def test_batching_waits_for_the_hand_off():
    # max_batch 4, no wait: batch [0] at 0 (work 10); rows 1, 2 arrive at 1 and 11 (inside
    # the hand-off window 10..15), both join the batch that starts at 15.
    queues = [ModelQueue(np.array([0.0, 1.0, 11.0]), np.array([10.0, 10.0, 10.0]))]
    res = shared_workers(queues, exclusive=False, max_batch=4, handoff_ns=[5.0])
    assert res[0].start_ns.tolist() == [0.0, 15.0, 15.0]
    assert res[0].batched_with.tolist() == [1, 2, 2]


def test_simulator_exclusive_uses_the_profiles_hand_off(tmp_path):
    # Exclusive, a: 2 ms, b: 1 ms; hand-off after a 0.5 ms, after b 0.25 ms. Arrivals 0, 0.5,
    # 1 ms (a, b, a) all queue: b starts at 2 + 0.5, the second a at 3.5 + 0.25.
    profile = make_profile({"a": model_profile(2.0), "b": model_profile(1.0)},
                           {"exclusive": {"handoff_ms": {"a": 0.5, "b": 0.25}}})
    trace = make_trace([0, MS // 2, MS], models=["a", "b", "a"])
    simulate(trace, tmp_path / "run", profile=profile, mode="exclusive")
    assert col_ms(tmp_path / "run", "service_start_ns") == pytest.approx([0, 2.5, 3.75])
    assert col_ms(tmp_path / "run", "service_end_ns") == pytest.approx([2, 3.5, 5.75])
    info = RunManifest.load(tmp_path / "run")["backend_info"]
    assert info["handoff_ms"] == {"a": 0.5, "b": 0.25}


def test_simulator_per_model_worker_hand_off(tmp_path):
    # timeslice: one worker per model; a's two requests queue, b's worker is separate.
    profile = make_profile({"a": model_profile(2.0), "b": model_profile(1.0)},
                           {"timeslice": {"handoff_ms": {"a": 0.5},
                                          "slowdown": {"a+b": {"a": 1.0, "b": 1.0}}}})
    trace = make_trace([0, 0, MS // 2], models=["a", "a", "b"])
    simulate(trace, tmp_path / "run", profile=profile, mode="timeslice")
    assert col_ms(tmp_path / "run", "service_start_ns") == pytest.approx([0, 2.5, 0.5])


def test_old_profile_without_hand_off_loads_and_keeps_the_old_model(tmp_path):
    data = {"schema": PROFILE_SCHEMA_ID, "device": {"name": "test"},
            "models": {"a": model_profile(2.0)}, "modes": {"exclusive": {"inbound_ms": {}}}}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    from traceforge.simulate.profile import load_profile

    profile = load_profile(path)
    assert profile.modes["exclusive"].handoff_ms == {}
    trace = make_trace([0, 0], models=["a", "a"])
    simulate(trace, tmp_path / "run", profile=profile, mode="exclusive")
    assert col_ms(tmp_path / "run", "service_start_ns") == pytest.approx([0, 2])


def test_the_call_2_h200_profile_format_loads(tmp_path):
    # The profile format of device call 2 (2026-11-30): modes with alone_ms, corun, backend
    # and no handoff_ms. A trimmed copy of its mode entry keeps the test independent of files.
    mode = {"alone_ms": {"a": 0.488}, "alone_se_ms": {"a": 0.0078}, "alone_ratio": {"a": 1.0},
            "alone_ratio_se": {"a": 0.0}, "alone_scale": {"a": 1.0}, "inbound_ms": {"a": 0.19},
            "outbound_ms": {"a": 0.095}, "slowdown": {}, "corun": {},
            "backend": {"backend": "resident", "mode": "exclusive"}}
    profile = make_profile({"a": model_profile(0.5)}, {"exclusive": mode})
    assert profile.modes["exclusive"].handoff_ms == {}
    simulate(make_trace([0, 0], models=["a", "a"]), tmp_path / "run", profile=profile,
             mode="exclusive")
    # inbound 0.19 ms, then back to back: no hand-off
    assert col_ms(tmp_path / "run", "service_start_ns") == pytest.approx([0.19, 0.69])
    assert RunManifest.load(tmp_path / "run")["backend_info"]["handoff_ms"] == {}


@pytest.mark.parametrize("bad", [-0.1, "x", float("nan")])
def test_bad_hand_off_is_one_line(bad):
    data = {"schema": PROFILE_SCHEMA_ID, "models": {"a": model_profile(1.0)},
            "modes": {"exclusive": {"handoff_ms": {"a": bad}}}}
    with pytest.raises(BadInput, match=r"modes\.exclusive\.handoff_ms\.a"):
        profile_from_dict(data)


def test_handoff_gaps_hand_computed():
    # One worker "w": r0 [0, 100]; r1 sent at 50 (waiting; transport 10 -> reached 60 <= 100):
    # starts 130 -> gap 30 after an "a". r2 sent at 500 (idle) starts 510: no gap. r3 sent at
    # 520, r2 ends 600, r3 starts 640 -> gap 40 after a "b". A second worker "v" on its own.
    worker = np.array(["w", "w", "w", "w", "v", "v"])
    model = np.array(["a", "b", "b", "a", "a", "a"])
    sent = np.array([0, 50, 500, 520, 0, 1])
    start = np.array([10, 130, 510, 640, 10, 60])
    end = np.array([100, 200, 600, 700, 50, 90])
    gaps = handoff_gaps(worker, model, sent, start, end, {"a": 10.0, "b": 10.0})
    assert sorted(gaps["a"].tolist()) == [10.0, 30.0]  # w: r0 -> r1; v: 50 -> 60
    assert gaps["b"].tolist() == [40.0]
    # Default transport: the median start - sent of requests that found their worker idle
    # (w: r0 10, r2 10; v: its first 10) -> the same pairs.
    auto = handoff_gaps(worker, model, sent, start, end)
    assert {k: sorted(v.tolist()) for k, v in auto.items()} == {"a": [10.0, 30.0],
                                                               "b": [40.0]}
    # Pooled mean in ms, never below 0 (pipelined runs can overlap).
    assert handoff_ms([gaps, {"a": np.array([-1e6, -1e6])}]) == {"a": 0.0, "b": 4e-5}
    assert handoff_ms([gaps]) == {"a": 2e-5, "b": 4e-5}


def test_demand_starts_net_of_the_hand_off():
    # Second request reached at 5, previous ended at 10, started at 14: with a hand-off of 4
    # it could not start before 14, so none of that wait is interference.
    out = demand_starts(np.array([0.0, 5.0]), np.array([0.0, 14.0]), np.array([10.0, 20.0]),
                        4.0)
    assert out.tolist() == [0.0, 14.0]
    assert demand_starts(np.array([0.0, 5.0]), np.array([0.0, 14.0]),
                         np.array([10.0, 20.0])).tolist() == [0.0, 10.0]


def _simulated_run(tmp_path, handoff):
    profile = make_profile({"a": model_profile(0.5, cv=0.3), "b": model_profile(0.9, cv=0.3)},
                           {"exclusive": {"handoff_ms": handoff}})
    rng = np.random.default_rng(21)
    trace = make_trace(poisson_ns(0.95, 3000, seed=22),  # utilisation ~0.8 with gaps
                       models=np.array(["a", "b"])[rng.integers(0, 2, 3000)])
    write_trace(trace.table, tmp_path / "t.parquet", {})
    simulate(read_trace(tmp_path / "t.parquet"), tmp_path / "run", profile=profile,
             mode="exclusive", seed=4)
    return tmp_path / "run"


def test_oracle_with_exact_hand_off_reproduces_a_run_with_hand_off(tmp_path):
    # A simulated run with a hand-off stands in for a measured one. Re-queued with its own
    # service times and its own gaps it is reproduced exactly: "exact" (each request's gap,
    # including requests that arrived inside the previous one's hand-off window) and "mean"
    # (per-model mean gaps; constant here). Without gaps (the old oracle) latencies come out
    # short.
    from traceforge.simulate.fidelity import oracle_run

    run = _simulated_run(tmp_path, {"a": 0.1, "b": 0.2})
    exact = oracle_run(run, "exact")
    mean = oracle_run(run, "mean")  # the gaps are constant per model here: also exact
    old = oracle_run(run)
    for m in ("a", "b"):
        assert exact["models"][m]["error_p50"] == pytest.approx(0.0, abs=1e-9)
        assert exact["models"][m]["error_p99"] == pytest.approx(0.0, abs=1e-9)
        assert mean["models"][m]["error_p50"] == pytest.approx(0.0, abs=1e-9)
        assert mean["models"][m]["error_p99"] == pytest.approx(0.0, abs=1e-9)
        assert old["models"][m]["error_p50"] < -0.05
    with pytest.raises(BadInput):
        oracle_run(run, "median")


def test_handoff_from_runs_fills_only_missing_values(tmp_path):
    from traceforge.simulate.fidelity import handoff_from_runs, with_handoff

    run = _simulated_run(tmp_path, {"a": 0.1, "b": 0.2})
    measured = handoff_from_runs([run])
    assert measured["exclusive"] == pytest.approx({"a": 0.1, "b": 0.2}, abs=1e-6)
    profile = make_profile({"a": model_profile(1.0), "b": model_profile(1.0)},
                           {"exclusive": {"handoff_ms": {"a": 0.05}}, "mps": {}})
    filled = with_handoff(profile, measured)
    assert filled.modes["exclusive"].handoff_ms == pytest.approx({"a": 0.05, "b": 0.2})
    # A mode no run measured takes the pooled values.
    assert filled.modes["mps"].handoff_ms == pytest.approx({"a": 0.1, "b": 0.2}, abs=1e-6)


def test_fidelity_cli_refuses_a_compared_run_as_hand_off_source(tmp_path, capsys):
    from traceforge.simulate.fidelity import main

    run = _simulated_run(tmp_path, {"a": 0.1})
    (tmp_path / "p.json").write_text(json.dumps({
        "schema": PROFILE_SCHEMA_ID, "models": {"a": model_profile(0.5),
                                                "b": model_profile(0.9)},
        "modes": {"exclusive": {}}}))
    assert main(["--profile", str(tmp_path / "p.json"), "--handoff-from", str(run),
                 str(run)]) == 2
    assert "--handoff-from" in capsys.readouterr().err


def test_pooled_tail_means_resist_one_slow_sample_per_point():
    """Five samples per grid point, GPU-like bodies growing with the shape plus a heavy tail
    (one sample in five 2-4x slow): plain means scatter, the pooled estimate keeps the order of
    the true means and lands within 15 % of each (true mean = body x the tail's mean factor)."""
    from traceforge.simulate.measure import pooled_tail

    def pooled_tail_means(samples):  # a point's mean service: median x the pooled tail
        medians, factor = pooled_tail(samples)
        return medians * factor

    rng = np.random.default_rng(7)
    bodies = np.linspace(0.4, 0.9, 20)
    samples, truth = [], []
    for b in bodies:
        x = b * rng.normal(1.0, 0.02, 5)
        x[rng.integers(5)] *= rng.uniform(2, 4)  # one slow sample per point
        samples.append(x)
        truth.append(b * (1 + (3 - 1) / 5))  # 4 at 1x, 1 at 3x on average
    est = pooled_tail_means(samples)
    plain = np.array([s.mean() for s in samples])
    assert not np.all(np.diff(plain) > 0)  # the fixture does scatter the plain means
    assert np.all(np.diff(est) > 0)  # the body's order survives
    assert np.max(np.abs(est / truth - 1)) < 0.15
    assert np.max(np.abs(plain / truth - 1)) > np.max(np.abs(est / truth - 1))
    # no tail: the medians themselves
    flat = [np.full(5, b) for b in bodies]
    assert np.allclose(pooled_tail_means(flat), bodies)


def test_alone_scale_applies_a_significant_mode_ratio_for_graphs_only():
    from traceforge.simulate.measure import alone_scale

    # the 14:17 UTC H200 profile: distilgpt2 1.1594 (se 0.0013), distilbert-base 1.0317 (0.0087)
    assert alone_scale(1.1594, 0.0013, graphs=True) == pytest.approx(1.1594)
    assert alone_scale(1.0317, 0.0087, graphs=True) == pytest.approx(1.0317)
    assert alone_scale(0.95, 0.01, graphs=True) == pytest.approx(0.95)  # faster is a mode too
    assert alone_scale(1.02, 0.01, graphs=True) == 1.0  # within 3 standard errors: noise
    assert alone_scale(1.40, 0.001, graphs=False) == 1.0  # eager: process state, not the mode
    assert alone_scale(float("nan"), 0.0, graphs=True) == 1.0


def test_simulator_scales_the_grid_by_the_modes_alone_scale(tmp_path):
    # a: 2 ms in the grid, alone_scale 1.5 in mps -> 3 ms of service when alone
    profile = make_profile({"a": model_profile(2.0)},
                           {"mps": {"alone_scale": {"a": 1.5}, "slowdown": {}}})
    trace = make_trace([0, 10 * MS], models=["a", "a"])
    simulate(trace, tmp_path / "run", profile=profile, mode="mps")
    start = col_ms(tmp_path / "run", "service_start_ns")
    end = col_ms(tmp_path / "run", "service_end_ns")
    assert [e - s for s, e in zip(start, end, strict=True)] == pytest.approx([3.0, 3.0])


def test_idle_inbound_ignores_requests_that_queued():
    from traceforge.simulate.measure import idle_inbound_ns

    # 8 requests find the worker idle (transport 0.2 ms), 16 arrive while the one before is
    # still in service and wait ~3 ms more: a plain median over all of them is the wait's
    rng = np.random.default_rng(3)
    sent, start, end = [], [], []
    t = 0.0
    for i in range(24):
        if i % 3 == 0:  # idle: long gap since the last end
            t = (end[-1] if end else 0.0) + 10e6
            sent.append(t)
            start.append(t + 0.2e6)
        else:  # sent 0.1 ms after the previous start: queued behind it
            sent.append(start[-1] + 0.1e6)
            start.append(end[-1] + rng.uniform(0, 0.1e6))
        end.append(start[-1] + 3e6)
    sent, start, end = map(np.asarray, (sent, start, end))
    rows = np.ones(sent.size, bool)
    worker = np.zeros(sent.size, np.int64)  # one worker serves them all
    assert np.median(start - sent) > 1e6  # what the profile used to record
    assert idle_inbound_ns(worker, sent, start, end, rows) == pytest.approx(0.2e6)
    # too few idle rows: every row, as before
    assert idle_inbound_ns(worker, sent, start, end, rows, minimum=50) == pytest.approx(
        np.median(start - sent))
    # a request waits only behind its own worker: on a worker each, every one was idle
    alone = np.arange(sent.size)
    assert idle_inbound_ns(alone, sent, start, end, rows) == pytest.approx(
        np.median(start - sent))


# -- hand-off by class: (finished model, next model, next already waiting at the start) --------

def test_fifo_pair_handoff_hand_computed():
    # Service 100 each. #1 (b) arrived at 10, before #0 (a) started at 0? No: 10 > 0, so late:
    # gap(a, b, late) = 30 -> starts 130. #2 (b) arrived at 20 <= #1's start 130: early,
    # gap(b, b, early) = 5 -> 235. #3 (a) arrives at 900 (idle): gap(b, a, late) = 40 occupies
    # the worker only until 375: starts on arrival.
    gaps = {("a", "b", False): 30, ("b", "b", True): 5, ("b", "a", False): 40}
    names = ["a", "b"]
    start, end = fifo_pair_handoff(np.array([0, 10, 20, 900]), np.full(4, 100),
                                   np.array([0, 1, 1, 0]),
                                   lambda p, n, e: gaps[(names[p], names[n], e)])
    assert start.tolist() == [0, 130, 235, 900]
    assert end.tolist() == [100, 230, 335, 1000]


def test_fifo_pair_handoff_with_one_gap_per_model_is_fifo_servers():
    rng = np.random.default_rng(5)
    arrival = np.cumsum(rng.exponential(80, 400)).astype(np.int64)
    service = rng.integers(20, 150, 400)
    model = rng.integers(0, 3, 400)
    per_model = np.array([7, 0, 31])
    start, end = fifo_pair_handoff(arrival, service, model, lambda p, n, e: per_model[p])
    s2, e2 = fifo_servers(arrival, service, 1, handoff_ns=per_model[model])
    assert start.tolist() == s2.tolist() and end.tolist() == e2.tolist()


def test_handoff_classes_hand_computed():
    # One worker: r0 a [0, 100]; r1 b sent 50 (reached 60 > r0's start 10: late) starts 130;
    # r2 b sent 55 (reached 65 <= r1's start 130: early) starts 205 after r1's end 200;
    # r3 a sent 500 (idle): no pair.
    worker = np.array(["w"] * 4)
    model = np.array(["a", "b", "b", "a"])
    sent = np.array([0, 50, 55, 500])
    start = np.array([10, 130, 205, 510])
    end = np.array([100, 200, 300, 600])
    got = handoff_classes(worker, model, sent, start, end, {"a": 10.0, "b": 10.0})
    assert {k: v.tolist() for k, v in got.items()} == {("a", "b", False): [30.0],
                                                      ("b", "b", True): [5.0]}
    table = handoff_pair_ms([got, got, got], minimum=3)
    assert table == {"a": {"b": {"late": 3e-5, "n_late": 3}},
                     "b": {"b": {"early": 5e-6, "n_early": 3}}}
    assert handoff_pair_ms([got], minimum=3) == {}


def test_profile_pair_table_loads_falls_back_and_refuses_bad_values():
    modes = {"exclusive": {"handoff_ms": {"a": 0.5},
                           "handoff_pair_ms": {"a": {"b": {"early": 0.1, "late": 0.3,
                                                           "n_early": 9, "n_late": 4}}}}}
    mp = make_profile({"a": model_profile(2.0), "b": model_profile(1.0)}, modes).modes[
        "exclusive"]
    assert mp.pair_gap_ms("a", "b", True) == 0.1 and mp.pair_gap_ms("a", "b", False) == 0.3
    assert mp.pair_gap_ms("a", "a", True) == 0.5  # no class: the finished model's mean
    assert mp.pair_gap_ms("b", "a", False) == 0.0  # nothing known
    bad = {"exclusive": {"handoff_pair_ms": {"a": {"b": {"late": -0.2}}}}}
    with pytest.raises(BadInput, match=r"modes\.exclusive\.handoff_pair_ms\.a\.b\.late"):
        make_profile({"a": model_profile(2.0), "b": model_profile(1.0)}, bad)


def test_simulator_exclusive_uses_the_pair_table(tmp_path):
    # a: 2 ms, b: 1 ms. Arrivals 0 (a), 0.5 ms (b: late, it came after a started), 1 ms (a:
    # early, it came before b started at 2.4): gap(a, b, late) 0.4 -> b at 2.4; gap(b, a, early)
    # 0.05 -> a at 3.45. The per-model values (0.5 / 0.25) are what older profiles had.
    modes = {"exclusive": {"handoff_ms": {"a": 0.5, "b": 0.25},
                           "handoff_pair_ms": {"a": {"b": {"late": 0.4}},
                                               "b": {"a": {"early": 0.05}}}}}
    profile = make_profile({"a": model_profile(2.0), "b": model_profile(1.0)}, modes)
    trace = make_trace([0, MS // 2, MS], models=["a", "b", "a"])
    simulate(trace, tmp_path / "run", profile=profile, mode="exclusive")
    assert col_ms(tmp_path / "run", "service_start_ns") == pytest.approx([0, 2.4, 3.45])
    info = RunManifest.load(tmp_path / "run")["backend_info"]
    assert info["handoff_pair_ms"] == {"a": {"b": {"late": 0.4}}, "b": {"a": {"early": 0.05}}}


# -- transport by the worker's idle time ---------------------------------------------------------

def test_idle_transport_samples_and_bins():
    # One worker: r0 sent 0 (first: idle for inf), start 100, end 200. r1 sent 5_000_200 (idle
    # 5 ms) starts 5_000_600: transport 400. r2 sent 5_000_700 while r1 runs: not idle.
    worker = np.array(["w", "w", "w"])
    model = np.array(["a", "a", "a"])
    sent = np.array([0, 5_000_200, 5_000_700])
    start = np.array([100, 5_000_600, 5_001_000])
    end = np.array([200, 5_000_900, 5_001_200])
    got = idle_transport_samples(worker, model, sent, start, end)
    gaps, transport = got["a"]
    assert np.isinf(gaps[0]) and gaps[1] == 5_000_000 and transport.tolist() == [100, 400]
    bins = idle_transport_bins([got, got, got, got, got])
    assert bins == {"a": [[3.0, 10.0, 0.0004, 5], [10.0, None, 0.0001, 5]]}


def test_profile_idle_inbound_table_loads_and_picks_the_bin():
    modes = {"mps": {"inbound_ms": {"a": 0.25},
                     "inbound_by_idle_ms": {"a": [[0.0, 1.0, 0.2, 9], [1.0, 10.0, 0.3, 9],
                                                  [10.0, None, 0.6, 9]]},
                     "slowdown": {}}}
    mp = make_profile({"a": model_profile(2.0)}, modes).modes["mps"]
    assert mp.idle_inbound_ms("a", 0.1) == 0.2 and mp.idle_inbound_ms("a", 5) == 0.3
    assert mp.idle_inbound_ms("a", math.inf) == 0.6 and mp.idle_inbound_ms("b", 1) is None
    bad = {"mps": {"inbound_by_idle_ms": {"a": [[2.0, 1.0, 0.2, 9]]}}}
    with pytest.raises(BadInput, match=r"modes\.mps\.inbound_by_idle_ms\.a"):
        make_profile({"a": model_profile(2.0)}, bad)


def test_concurrent_worker_idle_inbound_hand_computed():
    # One worker, work 100. r0 sent 0: first request, idle forever -> inbound f(inf) = 50.
    # r1 sent 120 while r0 runs (50..150): keeps its arrival 120 + 10 = 130 -> starts at 150.
    # r2 sent 1_000 (idle since 250 for 750) -> inbound 750 // 10 = 75 -> starts 1_075.
    def f(idle):
        return 50.0 if math.isinf(idle) else idle / 10

    q = ModelQueue(np.array([10.0, 130.0, 1010.0]), np.array([100.0, 100.0, 100.0]),
                   sent_ns=np.array([0.0, 120.0, 1000.0]), idle_inbound=f)
    res = shared_workers([q], exclusive=False)
    assert res[0].start_ns.tolist() == [50.0, 150.0, 1075.0]
    # Without the table: the constant arrivals.
    res0 = shared_workers([ModelQueue(q.arrival_ns, q.work_ns)], exclusive=False)
    assert res0[0].start_ns.tolist() == [10.0, 130.0, 1010.0]


def test_fifo_pair_handoff_idle_inbound_matches_the_concurrent_worker():
    rng = np.random.default_rng(9)
    sent = np.cumsum(rng.exponential(300, 300))
    work = rng.uniform(50, 250, 300)

    def f(idle):
        return 40.0 if math.isinf(idle) else 20 + min(idle, 1000) / 20

    arrival = sent + 20
    res = shared_workers([ModelQueue(arrival, work, sent_ns=sent, idle_inbound=f)],
                         exclusive=False)
    s, _ = fifo_pair_handoff(np.rint(arrival).astype(np.int64), np.rint(work).astype(np.int64),
                             np.zeros(300, np.int64), lambda p, n, e: 0.0,
                             np.rint(sent).astype(np.int64), lambda m, idle: f(idle))
    assert np.abs(s - res[0].start_ns).max() <= 3  # integer rounding only


@pytest.mark.parametrize("where, value, key", [
    ("handoff_pair_ms", [1, 2], r"modes\.exclusive\.handoff_pair_ms"),
    ("handoff_pair_ms", {"a": [0.1]}, r"modes\.exclusive\.handoff_pair_ms\.a"),
    ("handoff_pair_ms", {"a": {"b": 0.1}}, r"modes\.exclusive\.handoff_pair_ms\.a\.b"),
    ("inbound_by_idle_ms", [[0, 1, 0.2, 9]], r"modes\.exclusive\.inbound_by_idle_ms"),
    ("handoff_ms", [0.1], r"modes\.exclusive\.handoff_ms"),
    ("send_lag_ms", -0.1, r"modes\.exclusive\.send_lag_ms"),
    ("send_lag_ms", "fast", r"modes\.exclusive\.send_lag_ms"),
    ("send_lag_ms", float("nan"), r"modes\.exclusive\.send_lag_ms"),
    ("send_lag_ms", True, r"modes\.exclusive\.send_lag_ms"),
])
def test_a_malformed_hand_off_or_transport_table_is_one_line(where, value, key):
    with pytest.raises(BadInput, match=key):
        make_profile({"a": model_profile(2.0), "b": model_profile(1.0)},
                     {"exclusive": {where: value}})


def test_reanchor_tail_keeps_the_grid_body_and_takes_the_reference_phase_tail():
    """The grid's medians stay; its pooled tail (lifted by a few slow samples in a fast phase)
    gives way to the reference phase's mean / median and CV; too few reference samples, or a
    grid without medians (an old profile), leave the entry as it was."""
    from traceforge.simulate.measure import TAIL_MIN_SAMPLES, reanchor_tail, tail_of

    medians = [[0.4, 0.5], [0.6, 0.9]]
    enc = {"generative": False, "service_median_ms": medians,
           "service_ms": (np.array(medians) * 1.224).tolist(), "service_cv": 0.39,
           "tail_factor": {"grid": 1.224, "used": "grid"}}
    ref = np.r_[np.full(79, 0.4), 0.4 * 2.0]  # one sample in 80 twice the median
    tail = {"n": 80, "service": tail_of(ref), "cv": float(np.std(ref) / np.mean(ref))}
    assert tail["service"] == pytest.approx(1 + 1 / 80)
    reanchor_tail(enc, tail)
    assert np.allclose(enc["service_ms"], np.array(medians) * (1 + 1 / 80), atol=1e-6)
    assert enc["service_cv"] == pytest.approx(tail["cv"], abs=1e-4)
    assert enc["service_cv_grid"] == 0.39
    assert enc["tail_factor"] == {"grid": 1.224, "used": "reference",
                                  "reference": round(1 + 1 / 80, 4), "reference_samples": 80}
    gen = {"generative": True, "service_median_ms": medians, "service_ms": medians,
           "decode_median_ms_per_token": [[1.0, 1.0], [2.0, 2.0]],
           "decode_ms_per_token": [[1.5, 1.5], [3.0, 3.0]], "service_cv": 0.2}
    reanchor_tail(gen, {"n": 40, "service": 1.0, "prefill": 1.1, "decode": 1.02, "cv": 0.01})
    assert np.allclose(gen["service_ms"], np.array(medians) * 1.1)
    assert np.allclose(gen["decode_ms_per_token"], [[1.02, 1.02], [2.04, 2.04]])
    assert gen["tail_factor"]["reference"] == {"prefill": 1.1, "decode": 1.02}
    few = {"generative": False, "service_median_ms": medians, "service_ms": [[9.0, 9.0]] * 2,
           "service_cv": 0.3}
    reanchor_tail(few, {"n": TAIL_MIN_SAMPLES - 1, "service": 1.0, "cv": 0.0})
    assert few["service_ms"] == [[9.0, 9.0]] * 2 and few["service_cv"] == 0.3
    no_prefill = {"generative": True, "service_median_ms": medians, "service_ms": [[9.0]],
                  "decode_median_ms_per_token": medians, "service_cv": 0.3}
    reanchor_tail(no_prefill, {"n": 80, "service": 1.0, "cv": 0.0})  # a decoder's tail needs both
    assert no_prefill["service_ms"] == [[9.0]] and "tail_factor" not in no_prefill
    old = {"generative": False, "service_ms": [[9.0]], "service_cv": 0.3}
    reanchor_tail(old, {"n": 80, "service": 1.0, "cv": 0.0})
    assert old == {"generative": False, "service_ms": [[9.0]], "service_cv": 0.3}
    assert tail_of(np.array([])) == 1.0 and tail_of(np.array([np.nan, 2.0, 2.0])) == 1.0


@pytest.mark.parametrize("mode", ["exclusive", "timeslice"])
def test_the_profiles_send_lag_delays_every_request_and_the_workers_arrivals(tmp_path, mode):
    """send_lag_ms: the dispatcher's median sent - scheduled in the mixed reference phase.
    Every request reaches its worker that much later (so queueing moves with it) and its
    latency from the scheduled time grows by it; sent_ns stays the scheduled time."""
    modes = {"handoff_ms": {"a": 0.5}, "slowdown": {"a+b": {"a": 1.0, "b": 1.0}}}
    base = make_profile({"a": model_profile(2.0), "b": model_profile(1.0)}, {mode: modes})
    lagged = make_profile({"a": model_profile(2.0), "b": model_profile(1.0)},
                          {mode: {**modes, "send_lag_ms": 0.25}})
    trace = make_trace([0, MS // 2, 10 * MS], models=["a", "a", "b"])
    simulate(trace, tmp_path / "0", profile=base, mode=mode)
    simulate(trace, tmp_path / "1", profile=lagged, mode=mode)
    for column in ("service_start_ns", "service_end_ns", "done_ns"):
        assert col_ms(tmp_path / "1", column) == pytest.approx(
            [x + 0.25 for x in col_ms(tmp_path / "0", column)])
    assert col_ms(tmp_path / "1", "sent_ns") == col_ms(tmp_path / "0", "sent_ns") == [0, 0.5, 10]
    assert RunManifest.load(tmp_path / "1")["backend_info"]["send_lag_ms"] == 0.25


def test_the_mixed_transport_pass_is_bounded_for_slow_models():
    from traceforge.simulate.measure import MIX_PHASE_MIN, mix_phase_requests

    # fast models (0.4 ms and 7 ms alone at 50 %): 3 x count each, ~1.8 s
    assert mix_phase_requests(40, [0.4e6, 7e6], 0.5) == 120
    # a 400 ms decoder beside a 1 ms encoder: ~0.4 s per request, at most ~10 s in all
    n = mix_phase_requests(40, [1e6, 400e6], 0.5)
    assert n * 2 * (200.5e6 / 0.5) / 1e9 <= 10.5 or n == MIX_PHASE_MIN
    assert n == MIX_PHASE_MIN  # 10 s / 0.4 s / 2 models = 12 -> the floor of 20
    assert mix_phase_requests(40, [5e6, 5e6], 0.5) == 120
    assert 20 <= mix_phase_requests(40, [60e6, 60e6], 0.5) < 120  # 10 s / 0.12 s / 2 = 41


def test_pooled_outbound_is_the_median_over_every_phase_not_of_phase_medians():
    from traceforge.simulate.measure import pooled_outbound_ms

    mix = {"a": np.array([300e3, 310e3, 320e3]), "b": np.array([500e3])}
    corun = {"a": np.array([100e3] * 7), "b": np.array([])}
    out = pooled_outbound_ms([mix, corun])
    # ten samples of a: seven at 0.1 ms, so the pooled median is 0.1 ms (the mean of the two
    # phase medians would be 0.205); b's empty co-run sample is ignored
    assert out == {"a": 0.1, "b": 0.5}
    assert pooled_outbound_ms([]) == {}


def _spread(center_ms: float = 0.0, width_ms: float = 0.1) -> list[float]:
    from traceforge.simulate.profile import SPREAD_QUANTILES

    return [round(center_ms + width_ms * (q - 0.5), 6) for q in SPREAD_QUANTILES]


@pytest.mark.parametrize("mode", ["exclusive", "mps"])
def test_transport_spreads_vary_single_transports_around_their_medians(tmp_path, mode):
    """inbound/outbound_spread_ms: each request's transport is its median plus a draw from the
    measured quantiles; the same seed gives the same run, and requests far apart (never
    queued) end exactly their draw later than without spreads."""
    from traceforge.simulate.profile import SPREAD_QUANTILES

    base = {"inbound_ms": {"a": 0.3}, "outbound_ms": {"a": 0.2}, "slowdown": {}}
    plain = make_profile({"a": model_profile(1.0)}, {mode: base})
    spread = make_profile({"a": model_profile(1.0)}, {mode: {
        **base, "inbound_spread_ms": {"a": _spread(0.05, 0.2)},
        "outbound_spread_ms": {"a": _spread(0.1, 0.3)}}})
    n = 400
    trace = make_trace([i * 10 * MS for i in range(n)], models=["a"] * n)
    for name, profile in (("0", plain), ("1", spread), ("2", spread)):
        simulate(trace, tmp_path / name, profile=profile, mode=mode, seed=3)
    start0, start1 = (np.array(col_ms(tmp_path / x, "service_start_ns")) for x in "01")
    back0, back1 = (np.array(col_ms(tmp_path / x, "done_ns"))
                    - np.array(col_ms(tmp_path / x, "service_end_ns")) for x in "01")
    assert np.allclose(start0 - np.arange(n) * 10, 0.3)  # the median alone
    dev_in, dev_out = start1 - start0, back1 - back0
    # every draw lies between the 1 % and 99 % quantiles; their median near the 50 % one
    lo_in, hi_in = 0.05 + 0.2 * (SPREAD_QUANTILES[0] - 0.5), 0.05 + 0.2 * 0.49
    assert dev_in.min() >= lo_in - 1e-6 and dev_in.max() <= hi_in + 1e-6
    assert np.median(dev_in) == pytest.approx(0.05, abs=0.02)
    assert np.median(dev_out) == pytest.approx(0.1, abs=0.03)
    assert dev_out.std() > 0.05 and dev_in.std() > 0.03  # they do vary
    assert col_ms(tmp_path / "1", "done_ns") == col_ms(tmp_path / "2", "done_ns")


def test_a_transport_never_goes_below_zero():
    from traceforge.simulate.simulator import _transport_deviations

    mp = make_profile({"a": model_profile(1.0)}, {"mps": {
        "inbound_ms": {"a": 0.1}, "outbound_ms": {"a": 0.1}, "slowdown": {},
        "inbound_spread_ms": {"a": _spread(-1.0, 0.1)},
        "outbound_spread_ms": {"a": _spread(-1.0, 0.1)}}}).modes["mps"]
    dev_in, dev_out = _transport_deviations(mp, [np.arange(50)], ["a"], {"a": "a"}, 50, 1)
    assert (dev_in >= -0.1 * MS - 1e-6).all()  # floored at minus the median
    assert (dev_out < -0.9 * MS).all()  # the way back is floored where it is added (done >= end)


@pytest.mark.parametrize("value", [[0.1] * 5, _spread()[::-1], [*_spread()[:-1], "x"],
                                   [*_spread()[:-1], float("nan")], "wide"])
def test_a_malformed_transport_spread_is_one_line(value):
    for where in ("inbound_spread_ms", "outbound_spread_ms"):
        with pytest.raises(BadInput, match=rf"modes\.mps\.{where}\.a"):
            make_profile({"a": model_profile(2.0)}, {"mps": {where: {"a": value}}})


def test_idle_transport_spread_is_around_each_requests_own_bin():
    from traceforge.simulate.measure import (
        SPREAD_MIN_SAMPLES,
        idle_transport_spread,
        outbound_spread,
    )
    from traceforge.simulate.profile import SPREAD_QUANTILES

    # Two bins with medians 0.2 ms (idle < 1 ms) and 0.6 ms (>= 1 ms); each request's transport
    # is its bin's median plus -10, 0 or +40 µs: the spread is those offsets, not the 0.4 ms
    # between the bins.
    gaps = np.array([0.5e6] * 30 + [5e6] * 30)
    offsets = np.tile([-10e3, 0.0, 40e3], 20)
    transport = np.where(gaps < 1e6, 0.2e6, 0.6e6) + offsets
    bins = {"a": [[0.0, 1.0, 0.2, 30], [1.0, None, 0.6, 30]]}
    spread = idle_transport_spread([{"a": (gaps, transport)}], bins)
    assert len(spread["a"]) == len(SPREAD_QUANTILES)
    assert spread["a"][0] == pytest.approx(-0.01) and spread["a"][-1] == pytest.approx(0.04)
    assert spread["a"][10] == pytest.approx(0.0)
    back = {"a": np.full(SPREAD_MIN_SAMPLES, 0.3e6), "b": np.full(SPREAD_MIN_SAMPLES - 1, 1e6)}
    out = outbound_spread([back], {"a": 0.25, "b": 1.0})
    assert out == {"a": [pytest.approx(0.05)] * len(SPREAD_QUANTILES)}  # b: too few samples
