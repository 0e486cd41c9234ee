"""Time-sliced GPU sharing (``timeslice``): one context on the GPU at a time, taking turns in
time slices (engine.timeslice_workers), with the slice and switch cost the profile fits to its
mixed pass (measure.fit_time_slice, profile ``modes.timeslice.time_slice``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_simulate import make_profile, make_trace, model_profile, poisson_ns

from traceforge.errors import BadInput
from traceforge.record import RunManifest
from traceforge.schema import write_trace
from traceforge.simulate import simulate
from traceforge.simulate.engine import ModelQueue, fifo_servers, timeslice_workers
from traceforge.simulate.fidelity import latencies_by_model
from traceforge.simulate.measure import fit_time_slice
from traceforge.simulate.profile import PROFILE_SCHEMA_ID, profile_from_dict

US = 1_000.0  # ns


def _queues(*models):
    return [ModelQueue(np.asarray(a, float) * US, np.asarray(w, float) * US) for a, w in models]


def _times(results):
    return [(list(np.round(r.start_ns / US, 6)), list(np.round(r.end_ns / US, 6)))
            for r in results]


def test_a_request_arriving_mid_slice_waits_for_the_boundary_then_runs_alone():
    """Worker 1 runs a 10 ms request from 0 with a 2 ms slice; worker 0's 0.4 ms request
    reaches it at 0.5 ms. By hand: worker 1 is preempted at its slice boundary (2 ms), worker 0
    runs alone 2.0-2.4 ms, worker 1 resumes with 8 ms left: ends at 10.4 ms. With a 0.1 ms
    switch each change of owner costs 0.1 ms: 2.1-2.5, then 2.6 + 8 = 10.6 ms."""
    q = _queues(([500], [400]), ([0], [10_000]))
    assert _times(timeslice_workers(q, 2_000 * US)) == [([2000.0], [2400.0]),
                                                        ([0.0], [10400.0])]
    assert _times(timeslice_workers(q, 2_000 * US, switch_ns=100 * US)) == [
        ([2100.0], [2500.0]), ([0.0], [10600.0])]
    # arriving after the first boundary: the next one (4 ms)
    q = _queues(([2_500], [400]), ([0], [10_000]))
    assert _times(timeslice_workers(q, 2_000 * US)) == [([4000.0], [4400.0]),
                                                        ([0.0], [10400.0])]


def test_a_decoder_yields_at_its_first_token_and_a_worker_keeps_the_gpu_for_its_queue():
    """Worker 1's request has its first token out after 0.7 ms of work: worker 0, waiting
    since 0.5 ms, gets the GPU then (0.7-1.1 ms), not at the 2 ms boundary. Worker 0's second
    request, already waiting when its first ends, runs on in the same turn."""
    q = _queues(([500, 600], [400, 300]), ([0], [10_000]))
    r = timeslice_workers(q, 2_000 * US, yield_ns=[None, np.array([700 * US])])
    assert _times(r) == [([700.0, 1100.0], [1100.0, 1400.0]), ([0.0], [10700.0])]
    # a yield point at or beyond the work (or NaN) is none
    for y in (10_000 * US, np.nan):
        r = timeslice_workers(_queues(([500], [400]), ([0], [10_000])), 2_000 * US,
                              yield_ns=[None, np.array([y])])
        assert _times(r) == [([2000.0], [2400.0]), ([0.0], [10400.0])]


def test_two_long_requests_alternate_slices_and_one_model_alone_is_plain_fifo():
    """Two 5 ms requests from 0, 2 ms slices: w0 0-2, w1 2-4, w0 4-6, w1 6-8, w0 8-9 (its
    last 1 ms), w1 9-10. Round robin, each request's interval spans the other's turns."""
    q = _queues(([0], [5_000]), ([0], [5_000]))
    assert _times(timeslice_workers(q, 2_000 * US)) == [([0.0], [9000.0]), ([2000.0], [10000.0])]
    rng = np.random.default_rng(3)
    arrival = np.sort(rng.uniform(0, 1e9, 500))
    work = rng.exponential(2e6, 500)
    r = timeslice_workers([ModelQueue(arrival, work)], 1e6, switch_ns=5e5)
    s, e = fifo_servers(np.rint(arrival).astype(np.int64), np.rint(work).astype(np.int64), 1)
    np.testing.assert_allclose(r[0].start_ns, s, atol=2)
    np.testing.assert_allclose(r[0].end_ns, e, atol=2)
    with pytest.raises(ValueError, match="quantum_ns"):
        timeslice_workers(q, 0.0)


def test_work_is_conserved_and_at_most_one_context_runs():
    """Random three-worker load: the GPU's busy time equals the work (plus the switches), and
    no two requests of one worker overlap; every request starts after it arrives."""
    rng = np.random.default_rng(11)
    queues = [ModelQueue(np.sort(rng.uniform(0, 2e8, n)), rng.exponential(w, n))
              for n, w in ((400, 2e5), (60, 3e6), (200, 5e5))]
    r = timeslice_workers(queues, 1.5e6)
    total_work = sum(float(q.work_ns.sum()) for q in queues)
    end = max(float(x.end_ns.max()) for x in r)
    assert end >= total_work  # one context at a time: the work takes at least its sum
    for q, x in zip(queues, r, strict=True):
        assert (x.start_ns >= q.arrival_ns - 1e-6).all()
        assert (x.end_ns - x.start_ns >= q.work_ns - 1e-6).all()
        assert (x.start_ns[1:] >= x.end_ns[:-1] - 1e-6).all()


def _ts_profile(time_slice: dict | None = None, *, slowdown: float = 2.0):
    grid = dict(batch_sizes=(1,), seq_lens=(32,))
    ref = {"reference": {"batch_size": 1, "seq_len": 32, "max_new_tokens": 0}}
    ts = {"slowdown": {"enc+gen": {"enc": slowdown, "gen": slowdown}}}
    if time_slice is not None:
        ts["time_slice"] = time_slice
    return make_profile({"enc": model_profile([[0.4]], **grid, **ref),
                         "gen": model_profile([[8.0]], **grid, **ref)},
                        {"exclusive": {}, "timeslice": ts})


def _mix(tmp_path, n: int = 600, rate_per_ms: float = 0.12):
    rng = np.random.default_rng(5)
    models = rng.choice(["enc", "gen"], n, p=[0.6, 0.4])
    trace = make_trace(poisson_ns(rate_per_ms, n, 6), models=models, seq_len=np.full(n, 32))
    path = tmp_path / "mix.parquet"
    write_trace(trace.table, path, {})
    return path


def test_the_simulator_runs_the_time_sliced_engine_when_the_profile_has_a_slice(tmp_path):
    """With ``time_slice`` the encoder's service is its alone time (it waits for a turn
    instead of running slower) and run.json says which engine ran; without it, processor
    sharing slows both by the co-run slowdown; ``applied: false`` keeps processor sharing."""
    path = _mix(tmp_path)
    runs = {}
    for name, ts in (("sliced", {"quantum_ms": 2.0, "switch_ms": 0.1}), ("shared", None),
                     ("not-applied", {"quantum_ms": 2.0, "switch_ms": 0.1, "applied": False})):
        simulate(path, tmp_path / name, profile=_ts_profile(ts), mode="timeslice", seed=1)
        runs[name] = latencies_by_model(tmp_path / name)
    info = RunManifest.load(tmp_path / "sliced")["backend_info"]
    assert info["time_slice"] == {"quantum_ms": 2.0, "switch_ms": 0.1}
    assert info["slowdown_by_size"] == {}
    assert RunManifest.load(tmp_path / "shared")["backend_info"]["time_slice"] is None
    assert RunManifest.load(tmp_path / "not-applied")["backend_info"]["time_slice"] is None
    assert np.median(runs["sliced"]["enc"]["service_ms"]) == pytest.approx(0.4, rel=1e-6)
    assert np.max(runs["shared"]["enc"]["service_ms"]) > 0.41  # slowed where gen was busy
    np.testing.assert_array_equal(runs["shared"]["enc"]["latency_ms"],
                                  runs["not-applied"]["enc"]["latency_ms"])
    # a slice fitted but not applied is kept: --time-slice with a quantum only takes its switch
    kept = _ts_profile({"quantum_ms": 2.0, "switch_ms": 0.1, "applied": False})
    assert kept.modes["timeslice"].time_slice == (2.0, 0.1)
    assert kept.modes["timeslice"].sliced() is None
    simulate(path, tmp_path / "what-if", profile=kept, mode="timeslice", time_slice="3")
    assert RunManifest.load(tmp_path / "what-if")["backend_info"]["time_slice"] == {
        "quantum_ms": 3.0, "switch_ms": 0.1}


@pytest.mark.parametrize(("entry", "key"), [
    ({"quantum_ms": 0}, "modes.timeslice.time_slice.quantum_ms"),
    ({"quantum_ms": "x"}, "modes.timeslice.time_slice.quantum_ms"),
    ({}, "modes.timeslice.time_slice.quantum_ms"),
    ({"quantum_ms": 2, "switch_ms": -1}, "modes.timeslice.time_slice.switch_ms"),
    ({"quantum_ms": 2, "applied": "yes"}, "modes.timeslice.time_slice.applied"),
    ([2.0, 0.1], "modes.timeslice.time_slice"),
])
def test_a_malformed_time_slice_is_refused_naming_its_key(entry, key):
    with pytest.raises(BadInput) as err:
        _ts_profile(entry)
    assert err.value.key == key
    data = {"schema": PROFILE_SCHEMA_ID, "models": {"enc": model_profile([[0.4]])},
            "modes": {"mps": {"time_slice": {"quantum_ms": 2.0}}}}
    with pytest.raises(BadInput) as err:
        profile_from_dict(data)
    assert err.value.key == "modes.mps.time_slice"


def test_the_fit_recovers_the_slice_and_switch_of_a_simulated_mixed_pass(tmp_path):
    """A "measured" mixed pass simulated with a 2.5 ms slice and a 0.15 ms switch: the fit,
    given the rest of the mode's profile, finds exactly those (both on its grid), reproduces
    the pass (rms 0) and beats processor sharing, so it is applied."""
    path = _mix(tmp_path)
    truth = _ts_profile({"quantum_ms": 2.5, "switch_ms": 0.15})
    simulate(path, tmp_path / "measured", profile=truth, mode="timeslice", seed=0)
    data = json.loads(json.dumps(truth.data))
    entry = data["modes"]["timeslice"]
    entry.pop("time_slice")
    fit = fit_time_slice(data["models"], entry, path, tmp_path / "measured")
    assert (fit["quantum_ms"], fit["switch_ms"]) == (2.5, 0.15)
    assert fit["fit_rms"] == pytest.approx(0.0, abs=1e-9) and fit["ps_rms"] > 0.01
    assert fit["applied"] is True and fit["phase"] == "reference-mix"
    # and the fitted entry loads back as the engine's parameters
    entry["time_slice"] = fit
    assert profile_from_dict(data).modes["timeslice"].time_slice == (2.5, 0.15)


def _tick_reference(arrivals, works, yields, quantum, switch):
    """The engine's rules literally, one time unit at a time (integer times): the owner runs one
    unit of work per tick; after each tick a request that ended, a yield point reached, or a
    slice boundary with another worker waiting decides who runs next (its own next request
    waiting keeps it; else the next waiting worker in round-robin order, after ``switch``
    idle units)."""
    k = len(arrivals)
    cur, done, began = [0] * k, [0] * k, [False] * k
    starts = [[None] * len(a) for a in arrivals]
    ends = [[None] * len(a) for a in arrivals]
    passed = [[False] * len(a) for a in arrivals]  # the request's yield point is behind it

    def waiting(w, t):
        return cur[w] < len(arrivals[w]) and arrivals[w][cur[w]] <= t

    def take(w, t):
        if not began[w]:
            starts[w][cur[w]], began[w] = t, True

    def next_after(w, t):
        for d in range(1, k + 1):
            u = (w + d) % k
            if u != w and waiting(u, t):
                return u
        return -1

    owner, slice_at, t = -1, 0, 0
    total = sum(len(a) for a in arrivals)
    while sum(cur) < total:
        if owner < 0:
            ready = [(arrivals[w][cur[w]], w) for w in range(k) if cur[w] < len(arrivals[w])]
            first, w = min(ready)
            if first > t:
                t += 1
                continue
            owner, slice_at = w, t
            take(w, t)
        w = owner
        done[w] += 1
        t += 1
        i = cur[w]
        if done[w] == works[w][i]:
            ends[w][i] = t
            cur[w], done[w], began[w] = i + 1, 0, False
            if waiting(w, t):
                take(w, t)
                continue
            u = next_after(w, t)
            owner = -1
            if u >= 0:  # the switch's idle units, then u's turn
                owner, slice_at = u, t + switch
                t += switch
                take(u, t)
            continue
        y = yields[w][i]
        if y is not None and done[w] == y and not passed[w][i]:
            passed[w][i] = True
            u = next_after(w, t)
            if u >= 0:
                owner, slice_at = u, t + switch
                t += switch
                take(u, t)
                continue
        if (t - slice_at) % quantum == 0 and t > slice_at:
            u = next_after(w, t)
            if u >= 0:
                owner, slice_at = u, t + switch
                t += switch
                take(u, t)
    return starts, ends


def test_the_engine_matches_a_tick_by_tick_reference_on_random_small_cases():
    """300 random cases of 2-3 workers with integer arrivals, works, yield points, slices and
    switch costs: every start and end equals the tick-by-tick reference's."""
    rng = np.random.default_rng(23)
    for _ in range(300):
        k = int(rng.integers(2, 4))
        arrivals, works, yields = [], [], []
        for _w in range(k):
            n = int(rng.integers(1, 6))
            arrivals.append(np.sort(rng.integers(0, 40, n)).tolist())
            works.append(rng.integers(1, 12, n).tolist())
            yields.append([int(rng.integers(1, w)) if w > 1 and rng.random() < 0.4 else None
                           for w in works[-1]])
        quantum, switch = int(rng.integers(1, 6)), int(rng.integers(0, 3))
        want_s, want_e = _tick_reference(arrivals, works, yields, quantum, switch)
        got = timeslice_workers(
            [ModelQueue(np.array(a, float), np.array(w, float))
             for a, w in zip(arrivals, works, strict=True)], float(quantum),
            yield_ns=[np.array([np.nan if v is None else v for v in y], float) for y in yields],
            switch_ns=float(switch))
        for m in range(k):
            case = (arrivals, works, yields, quantum, switch, m)
            assert got[m].start_ns.tolist() == pytest.approx(want_s[m], abs=1e-6), case
            assert got[m].end_ns.tolist() == pytest.approx(want_e[m], abs=1e-6), case


def test_a_failing_time_slice_fit_keeps_the_timeslice_mode(monkeypatch):
    """The fit runs last in the timeslice mode; if it fails, the mode's measurements stand
    (processor sharing, the reason recorded), instead of the whole mode being dropped.
    The same CPU profile checks the way back by activity (``outbound_by_activity_ms``, written
    for the modes in ACTIVITY_OUTBOUND_MODES: mps on a GPU, timeslice here) is measured from
    the mode's open-loop phases and loads."""
    pytest.importorskip("torch")
    from traceforge.simulate import measure

    def broken(*args, **kwargs):
        raise RuntimeError("no luck")

    monkeypatch.setattr(measure, "fit_time_slice", broken)
    monkeypatch.setattr(measure, "ACTIVITY_OUTBOUND_MODES", ("timeslice",))
    lines: list[str] = []
    data = measure.measure_profile(measure.ProfileSettings(
        models=["tiny-bert", "tiny-gpt2"], device="cpu", modes=["timeslice"], batch_sizes=[1],
        seq_lens=[16], new_tokens=2, repeats=2, warmup=1, corun_seconds=0.2, corun_repeats=1,
        corun_sizes=[], image_sides=[224]), log=lines.append)
    entry = data["modes"]["timeslice"]
    assert "errors" not in data and "time_slice" not in entry
    assert entry["time_slice_error"] == "RuntimeError: no luck"
    assert entry["slowdown"] and any("time slice not fitted" in line for line in lines)
    by_activity = entry["outbound_by_activity_ms"]
    assert set(by_activity) == {"tiny-bert", "tiny-gpt2"}
    for rows in by_activity.values():
        assert rows and all(r[0] in measure.ACTIVITY_BINS and r[2] > 0 and r[3] >= 8
                            for r in rows)
    assert set(entry["outbound_by_activity_spread_ms"]) <= set(by_activity)
    assert "outbound_by_activity_ms" not in data["modes"].get("exclusive", {})
    loaded = profile_from_dict(data)  # and it loads: processor sharing for timeslice
    assert loaded.modes["timeslice"].activity_outbound_ms("tiny-bert", 0) > 0


def test_time_slice_override_runs_a_what_if_or_forces_processor_sharing(tmp_path):
    """``--time-slice Q[,S]`` runs the time-sliced engine with that slice whatever the profile
    holds (the switch defaults to the profile's); ``none`` forces processor sharing; bad values,
    other modes and the null model are refused naming --time-slice, with nothing written."""
    from typer.testing import CliRunner

    from traceforge.cli import app

    path = _mix(tmp_path)
    fitted = _ts_profile({"quantum_ms": 2.0, "switch_ms": 0.1})
    for name, value, want in (("q4", "4", {"quantum_ms": 4.0, "switch_ms": 0.1}),
                              ("q1s0", "1,0", {"quantum_ms": 1.0, "switch_ms": 0.0}),
                              ("ps", "none", None)):
        simulate(path, tmp_path / name, profile=fitted, mode="timeslice", time_slice=value)
        info = RunManifest.load(tmp_path / name)["backend_info"]
        assert info["time_slice"] == want and info["time_slice_override"] == value
    # none = the profile without a slice; a slice on a profile without one = as if fitted
    simulate(path, tmp_path / "plain", profile=_ts_profile(None), mode="timeslice")
    np.testing.assert_array_equal(latencies_by_model(tmp_path / "ps")["enc"]["latency_ms"],
                                  latencies_by_model(tmp_path / "plain")["enc"]["latency_ms"])
    simulate(path, tmp_path / "what-if", profile=_ts_profile(None), mode="timeslice",
             time_slice="2,0.1")
    simulate(path, tmp_path / "as-fitted", profile=fitted, mode="timeslice")
    np.testing.assert_array_equal(
        latencies_by_model(tmp_path / "what-if")["enc"]["latency_ms"],
        latencies_by_model(tmp_path / "as-fitted")["enc"]["latency_ms"])
    for kwargs, value in ((dict(profile=fitted, mode="timeslice"), "0"),
                          (dict(profile=fitted, mode="timeslice"), "2,-1"),
                          (dict(profile=fitted, mode="timeslice"), "fast"),
                          (dict(profile=fitted, mode="timeslice"), "1,2,3"),
                          (dict(profile=fitted, mode="timeslice"), "1.25,25"),  # µs as ms
                          (dict(profile=fitted, mode="timeslice"), "2,2"),
                          (dict(profile=fitted, mode="timeslice"), "nan"),
                          (dict(profile=fitted, mode="exclusive"), "2"),
                          ({}, "2")):
        with pytest.raises(BadInput) as err:
            simulate(path, tmp_path / "bad", time_slice=value, **kwargs)
        assert err.value.key == "--time-slice"
        assert not (tmp_path / "bad").exists()
    profile_file = tmp_path / "p.json"
    profile_file.write_text(json.dumps(fitted.data))
    done = CliRunner().invoke(app, ["simulate", str(path), "-o", str(tmp_path / "cli"),
                                    "--profile", str(profile_file), "--mode", "timeslice",
                                    "--time-slice", "3,0.05"])
    assert done.exit_code == 0, done.output
    assert RunManifest.load(tmp_path / "cli")["backend_info"]["time_slice"] == {
        "quantum_ms": 3.0, "switch_ms": 0.05}


def test_a_study_applies_time_slice_to_its_timeslice_cells_only(tmp_path):
    """``[options] time_slice`` reaches the timeslice cells (their run.json says so) and not the
    other modes' cells of the same mode axis; a malformed value or one without a profile is
    refused naming the key, before anything is written."""
    from traceforge.study.engine import run_study
    from traceforge.study.spec import load_study

    profile_file = tmp_path / "p.json"
    profile_file.write_text(json.dumps(_ts_profile({"quantum_ms": 2.0, "switch_ms": 0.1}).data))

    def spec(options: str, axes: str = 'mode = ["exclusive", "timeslice"]') -> Path:
        path = tmp_path / f"s{len(list(tmp_path.glob('s*.toml')))}.toml"
        path.write_text(f"""name = "ts"
backend = "simulate"
[mixes.m]
duration_s = 3
[mixes.m.models.enc]
arrival = {{ process = "poisson", rate = 40 }}
seq_len = 32
[mixes.m.models.gen]
arrival = {{ process = "poisson", rate = 20 }}
seq_len = 32
[axes]
{axes}
[options]
{options}
""")
        return path

    result = run_study(load_study(spec(f'profile = "{profile_file}"\ntime_slice = "4,0.05"')),
                       tmp_path / "ok")
    assert result["status"] == "complete"
    seen = {}
    for run in (tmp_path / "ok" / "cells").iterdir():
        info = RunManifest.load(run)["backend_info"]
        seen[info["mode"]] = info["time_slice"]
    assert seen == {"timeslice": {"quantum_ms": 4.0, "switch_ms": 0.05}, "exclusive": None}
    for options, axes in ((f'profile = "{profile_file}"\ntime_slice = "fast"',
                           'mode = ["exclusive", "timeslice"]'),
                          ('time_slice = "2"', "load = [1.0]")):
        with pytest.raises(BadInput) as err:
            run_study(load_study(spec(options, axes)), tmp_path / "bad")
        assert err.value.key.endswith("time_slice")
        assert not (tmp_path / "bad").exists()


def test_a_time_sliced_run_says_so_in_its_report_and_has_no_co_run_shape_note(tmp_path):
    """The report of a time-sliced simulated run names the slice and switch; the co-run shape
    note (large requests beside, under-estimated slowdowns) does not apply and is not given."""
    from traceforge.analyze.report import build_report

    path = _mix(tmp_path)
    big = make_trace(poisson_ns(0.12, 400, 6), models=["enc", "gen"] * 200,
                     batch_size=np.full(400, 1), seq_len=np.full(400, 256))
    write_trace(big.table, tmp_path / "big.parquet", {})
    for name, ts in (("sliced", {"quantum_ms": 2.0, "switch_ms": 0.1}), ("shared", None)):
        for trace in (path, tmp_path / "big.parquet"):
            run = tmp_path / f"{name}-{trace.stem}"
            simulate(trace, run, profile=_ts_profile(ts), mode="timeslice")
            notes = build_report(run)["notes"]
            sliced = [n for n in notes if n.startswith("simulated time-sliced")]
            assert bool(sliced) == (name == "sliced")
            if sliced:
                assert "2 ms slices with a 0.1 ms context switch" in sliced[0]
            info = RunManifest.load(run)["backend_info"]
            assert (info["interference_shapes"] == {}) == (name == "sliced")
