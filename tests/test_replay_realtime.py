"""Real-time replays through the null backend must reproduce queueing theory.

ρ = 0.5, one server, Poisson arrivals (λ = 200/s), mean service S = 2.5 ms, 2000 requests
(10 s per test). Two checks per queue:

1. Sample path (always): the Lindley recursion fed with the *intended* arrival times and the
   service times the backend drew predicts every response time; the recorded ``done_ns -
   scheduled_ns`` may differ only by the generator's send lag and the loop's completion lag. The
   median per-request difference must stay under 0.4 ms: a preempted process (shared CI machine)
   delays a few requests by milliseconds, which the median ignores, while a generator on stock
   asyncio timers (0-1 ms late on every send *and* every completion) fails it.
2. Theory (statistical): M/M/1 mean T = S/(1-ρ) = 5 ms, p99 = ln(100)·S/(1-ρ) = 23.0 ms;
   M/D/1 mean T = S + ρS/(2(1-ρ)) = 3.75 ms, p99 from Erlang's waiting-time CDF (10.84 ms).
   Tolerances are 3 standard deviations of the estimator at n = 2000, measured over 400 seeded
   Lindley simulations: relative sd of the mean 6.5 % (M/M/1) / 2.9 % (M/D/1), of the p99
   15 % / 11 %. Hence ±20 % / ±9 % on the mean, ±45 % / ±33 % on the p99. The fixed seeds used
   here land well inside (sample-path offsets from theory: M/M/1 +4.6 % mean, +7.3 % p99;
   M/D/1 -1.1 % mean, -3.8 % p99), so a failure means the replay, not the dice. The means
   also allow REALTIME_MEAN_MS for what real time adds on average: the null backend's service
   is a real sleep whose wake-up lateness the queue carries forward (2026-12-01, this 2-core
   VM: recorded minus sample-path mean 0.39 ms in an M/D/1 run that failed the bare ±9 %, which
   left 0.30 ms above the seed's -1.1 %; 2 of 4 runs of the realtime tests that day). A
   generator on stock asyncio timers still fails check 1. These asserts
   need a generator that kept time: when the run's own self-check reports it was generator
   limited (send-lag p99 > 1 ms: the machine was too busy), the run is repeated (at most three
   runs); if every run was limited, the test skips them and says so.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from replay_helpers import make_trace, poisson_arrivals

from traceforge.backends.null import NullBackend
from traceforge.record import read_timeline
from traceforge.replay import ReplayOptions, run_replay

pytestmark = pytest.mark.realtime

S_MS = 2.5
RHO = 0.5
N = 2000
REALTIME_MEAN_MS = 0.25  # see the module docstring


def md1_p99_sojourn_ms(s_ms: float, rho: float) -> float:
    """p99 of M/D/1 sojourn time: Erlang's CDF of the waiting time, inverted by bisection."""
    lam = rho / s_ms

    def cdf(t: float) -> float:
        return (1 - rho) * sum((lam * (k * s_ms - t)) ** k / math.factorial(k)
                               * math.exp(-lam * (k * s_ms - t))
                               for k in range(int(t // s_ms) + 1))

    lo, hi = 0.0, 40 * s_ms
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < 0.99 else (lo, mid)
    return lo + s_ms


def replay_queue(tmp_path, dist: str, seed: int):
    arrival = poisson_arrivals(RHO / S_MS * 1e3, N, seed)
    summary = run_replay(make_trace(arrival), tmp_path / "run",
                         NullBackend(servers=1, service_ms=S_MS, service_dist=dist, seed=seed),
                         ReplayOptions())
    assert summary.status == "complete" and summary.counts == {"ok": N}
    tl = read_timeline(tmp_path / "run").to_pydict()
    scheduled = np.array(tl["scheduled_ns"])
    done = np.array(tl["done_ns"])
    service = np.array(tl["service_end_ns"]) - np.array(tl["service_start_ns"])
    # Lindley on the intended arrivals with the service times the backend drew.
    predicted_end = np.empty(N, np.int64)
    free = np.iinfo(np.int64).min
    for k in range(N):
        free = max(int(scheduled[k]), free) + int(service[k])
        predicted_end[k] = free
    return (done - scheduled) / 1e6, (predicted_end - scheduled) / 1e6, summary


def assert_sample_path(recorded, predicted, summary):
    deviation = np.median(recorded - predicted)
    assert deviation <= 0.4, (deviation, summary.self_check)
    if summary.self_check["generator_limited"]:
        pytest.skip("machine too busy for the theory check: " + summary.self_check["warning"])


def replay_until_generator_kept_time(tmp_path, dist: str, seed: int, attempts: int = 3):
    """The same seeded run, repeated (at most ``attempts`` times) while the run's own self-check
    says a busy machine limited the generator: a preempted 10 s run is retried rather than
    skipping the theory check outright."""
    for attempt in range(attempts):
        result = replay_queue(tmp_path / f"try{attempt}", dist, seed)
        if not result[2].self_check["generator_limited"]:
            break
    return result


def test_mm1_matches_theory(tmp_path):
    recorded, predicted, summary = replay_until_generator_kept_time(tmp_path, "exp", seed=11)
    assert_sample_path(recorded, predicted, summary)
    mean_theory = S_MS / (1 - RHO)
    p99_theory = math.log(100) * S_MS / (1 - RHO)
    assert abs(recorded.mean() - mean_theory) <= 0.20 * mean_theory + REALTIME_MEAN_MS, \
        recorded.mean()
    assert abs(np.percentile(recorded, 99) / p99_theory - 1) <= 0.45
    # a generator on ms-rounded stock asyncio timers sits at ~550 µs (benchmarks/bench_pacing.py);
    # the precise loop measured 7-15 µs. (< 1000 would already follow from an unflagged p99.)
    assert summary.self_check["send_lag_us"]["p50"] < 200


def test_md1_matches_theory(tmp_path):
    recorded, predicted, summary = replay_until_generator_kept_time(tmp_path, "const", seed=12)
    assert_sample_path(recorded, predicted, summary)
    mean_theory = S_MS + RHO * S_MS / (2 * (1 - RHO))
    p99_theory = md1_p99_sojourn_ms(S_MS, RHO)
    assert abs(recorded.mean() - mean_theory) <= 0.09 * mean_theory + REALTIME_MEAN_MS, \
        (recorded.mean(), predicted.mean())
    assert abs(np.percentile(recorded, 99) / p99_theory - 1) <= 0.33
