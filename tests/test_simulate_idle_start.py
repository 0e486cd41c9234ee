"""The idle-start extra: a request that finds its worker idle runs longer (launching onto an
idle GPU, measured on an H200: docs/results/simulator-fidelity-h200.md). Hand-computed
timelines in virtual time for every engine path, the profile's estimate from a phase's rows,
and a profile that carries it."""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_simulate import make_profile, make_trace, model_profile
from traceforge.errors import BadInput
from traceforge.record import read_timeline
from traceforge.simulate import simulate
from traceforge.simulate.engine import ModelQueue, fifo_servers, shared_workers
from traceforge.simulate.measure import idle_starts, split_idle_start
from traceforge.simulate.profile import PROFILE_SCHEMA_ID, profile_from_dict

MS = 1_000_000


def test_fifo_idle_start_exact_timeline():
    # service 10, extra 3, hand-off 2. #0 idle: 0..13. #1 arrives at 5, waits: 15..25.
    # #2 arrives at 27 = free time (25 + 2): a tie waits, no extra: 27..37.
    # #3 arrives at 100, idle: 100..113.
    arrival = np.array([0, 5, 27, 100])
    start, end = fifo_servers(arrival, np.full(4, 10), 1, handoff_ns=np.full(4, 2),
                              idle_extra_ns=np.full(4, 3))
    assert start.tolist() == [0, 15, 27, 100]
    assert end.tolist() == [13, 25, 37, 113]
    with pytest.raises(ValueError):
        fifo_servers(arrival, np.full(4, 10), 2, idle_extra_ns=np.full(4, 3))


def test_exclusive_worker_loop_matches_fifo_with_idle_extra():
    rng = np.random.default_rng(3)
    n = 3000
    arrival = np.sort(rng.uniform(0, 2e9, n)).round()
    work = rng.exponential(5e5, n).round()
    model = rng.integers(0, 2, n)
    extras, gaps = [1e5, 3e5], [2e4, 5e4]
    s, e = fifo_servers(arrival.astype(np.int64), work.astype(np.int64), 1,
                        handoff_ns=np.array(gaps)[model].astype(np.int64),
                        idle_extra_ns=np.array(extras)[model].astype(np.int64))
    queues = [ModelQueue(arrival[model == m], work[model == m]) for m in (0, 1)]
    res = shared_workers(queues, exclusive=True, handoff_ns=gaps, idle_extra_ns=extras)
    for m in (0, 1):
        np.testing.assert_allclose(res[m].start_ns, s[model == m], atol=1e-3)
        np.testing.assert_allclose(res[m].end_ns, e[model == m], atol=1e-3)
    # the extra is paid only by requests that did not wait: some did, some did not
    waited = s > arrival
    assert 0.1 < waited.mean() < 0.9
    paid = (e - s) > work + 1
    assert not np.any(paid & waited) and np.all(paid | waited)


@pytest.mark.parametrize("gaps", [[0.0, 0.0, 0.0], [5e4, 0.0, 2e5]])
def test_inlined_loop_matches_the_general_loop_with_idle_extra(gaps):
    rng = np.random.default_rng(5)
    rates = {3: [0.6, 0.8, 1.0], 5: [0.7, 1.0, 0.9], 6: [1.0, 0.5, 0.75], 7: [0.4, 0.45, 0.6]}
    queues = [ModelQueue(np.sort(rng.uniform(0, 1e9, 2000)), rng.exponential(4e5, 2000))
              for _ in range(3)]
    extras = [1e5, 0.0, 3e5]
    fast = shared_workers(queues, exclusive=False, rates=rates, handoff_ns=gaps,
                          idle_extra_ns=extras)
    general = shared_workers(queues, exclusive=False, rates=rates, handoff_ns=gaps,
                             idle_extra_ns=extras, fast_path=False)
    for f, g in zip(fast, general, strict=True):
        np.testing.assert_allclose(f.start_ns, g.start_ns, rtol=0, atol=1e-3)
        np.testing.assert_allclose(f.end_ns, g.end_ns, rtol=0, atol=1e-3)
    plain = shared_workers(queues, exclusive=False, rates=rates, handoff_ns=gaps)
    # worker 2 pays 0.3 ms per idle start: its requests end later in total
    assert plain[2].end_ns.sum() < fast[2].end_ns.sum()


def test_batched_worker_pays_the_extra_once_per_idle_batch():
    # max_batch 4, no wait: [0] starts idle at 0 (10 + 3); rows 1, 2 arrive meanwhile and run
    # as one batch at 13 without the extra (20 of work); row 3 at 100 finds the worker idle.
    queues = [ModelQueue(np.array([0.0, 1.0, 2.0, 100.0]), np.array([10.0] * 4))]
    res = shared_workers(queues, exclusive=False, max_batch=4, idle_extra_ns=[3.0])
    assert res[0].start_ns.tolist() == [0.0, 13.0, 13.0, 100.0]
    assert res[0].end_ns.tolist() == [13.0, 33.0, 33.0, 113.0]


def test_idle_starts_and_the_split_recover_the_extra():
    # One worker, open loop: each request's service is body(point) x noise, plus 0.2 ms when it
    # found the worker idle.
    rng = np.random.default_rng(11)
    bodies = np.array([0.4, 0.5, 0.7]) * MS
    n = 600
    point = rng.integers(0, 3, n)
    sent = np.cumsum(rng.exponential(1.0 * MS, n))
    start, end = np.empty(n), np.empty(n)
    free, was_idle = -np.inf, np.empty(n, bool)
    for i in range(n):
        was_idle[i] = sent[i] > free
        start[i] = max(sent[i], free)
        end[i] = start[i] + bodies[point[i]] * rng.normal(1, 0.03) + (0.2 * MS if was_idle[i]
                                                                       else 0)
        free = end[i]
    idle = idle_starts(sent, start, end)
    assert np.array_equal(idle, was_idle)
    svc = end - start
    queued, extra, n_idle, n_queued = split_idle_start(
        [svc[point == p] for p in range(3)], [idle[point == p] for p in range(3)])
    assert n_idle + n_queued == n and min(n_idle, n_queued) > 50
    assert extra == pytest.approx(0.2 * MS, rel=0.1)
    np.testing.assert_allclose(queued, bodies, rtol=0.05)
    # too few queued requests: no extra, the pooled means of everything
    _, none, _, _ = split_idle_start([svc[:3]], [np.array([True, True, False])])
    assert none == 0.0


def test_profile_idle_start_is_used_and_validated(tmp_path):
    # exclusive, 2 ms service, idle extra 0.5 ms: two requests 10 ms apart both start idle;
    # a third arriving during the second waits and pays nothing extra.
    models = {"m": {**model_profile(2.0), "idle_start_ms": 0.5}}
    profile = make_profile(models, {"exclusive": {}})
    trace = make_trace([0, 10 * MS, 11 * MS])
    simulate(trace, tmp_path / "run", profile=profile, mode="exclusive")
    t = read_timeline(tmp_path / "run")
    svc = ((t.column("service_end_ns").to_numpy() - t.column("service_start_ns").to_numpy())
           / MS).tolist()
    assert svc == pytest.approx([2.5, 2.5, 2.0])
    # the mode's own value wins over the grid's
    profile2 = make_profile(models, {"exclusive": {"idle_start_ms": {"m": 0.0}}})
    simulate(trace, tmp_path / "run2", profile=profile2, mode="exclusive")
    t2 = read_timeline(tmp_path / "run2")
    assert (t2.column("service_end_ns").to_numpy()[0] / MS) == pytest.approx(2.0)
    bad = {"schema": PROFILE_SCHEMA_ID, "device": {"name": "test"},
           "models": {"a": {**model_profile(2.0), "idle_start_ms": -1}}, "modes": {}}
    with pytest.raises(BadInput, match="idle_start_ms"):
        profile_from_dict(bad)
    bad["models"]["a"]["idle_start_ms"] = 0.5
    bad["modes"] = {"mps": {"idle_start_ms": {"a": "nan"}}}
    with pytest.raises(BadInput, match="idle_start_ms"):
        profile_from_dict(bad)
