"""`traceforge simulate` and `traceforge profile` end to end, and simulate vs a real replay."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from scipy import stats

from traceforge.record import RunManifest, read_timeline
from traceforge.schema import conform_trace_table, read_trace, write_trace
from traceforge.simulate import load_profile, simulate

ROOT = Path(__file__).resolve().parents[1]


def write_poisson_trace(path: Path, *, rate_per_s: float, n: int, models: list[str],
                        seed: int, zoo: dict[str, str] | None = None, **shape) -> Path:
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1e9 / rate_per_s, n)).astype(np.int64)
    table = conform_trace_table(pa.table({
        "request_id": np.arange(n, dtype=np.int64),
        "arrival_ns": arrival - arrival[0],
        "model": [models[i % len(models)] for i in range(n)],
        "batch_size": np.full(n, shape.get("batch_size", 1), np.int32),
        "seq_len": np.full(n, shape.get("seq_len", 16), np.int32),
        "max_new_tokens": np.asarray([shape.get("new", {}).get(models[i % len(models)], 0)
                                      for i in range(n)], np.int32),
    }))
    spec = {"models": {m: ({"zoo": zoo[m]} if zoo else {}) for m in models}}
    write_trace(table, path, {"spec": spec, "seed": seed})
    return path


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "traceforge", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_simulate_command_and_bad_input(tmp_path):
    trace = write_poisson_trace(tmp_path / "t.parquet", rate_per_s=100, n=400,
                                models=["a", "b"], seed=1)
    done = cli("simulate", str(trace), "-o", str(tmp_path / "run"), "--service-ms", "2",
               "--service-dist", "const", "--servers", "2")
    assert done.returncode == 0, done.stderr
    assert "simulated 400 requests" in done.stdout
    assert RunManifest.load(tmp_path / "run")["backend"] == "simulate"
    t = read_timeline(tmp_path / "run")
    assert set(t.column("worker").unique().to_pylist()) <= {"a/0", "a/1", "b/0", "b/1"}

    for args, needle in [
        (["--service-dist", "pareto"], "--service-dist = 'pareto'"),
        (["--mode", "mps"], "--mode = 'mps'"),
        (["--profile", str(tmp_path / "missing.json"), "--mode", "mps"], "missing.json"),
    ]:
        bad = cli("simulate", str(trace), "-o", str(tmp_path / "bad"), *args)
        assert bad.returncode == 2, bad.stderr
        assert needle in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "bad").exists()

    for args, needle in [
        (["--models", "nope"], "--models = 'nope'"),
        (["--models", "tiny-bert", "--batch-sizes", "4,2"], "--batch-sizes = '4,2'"),
        (["--models", "tiny-bert", "--reference", "tiny-bert=8"], "--reference"),
    ]:
        bad = cli("profile", "--device", "cpu", *args, "-o", str(tmp_path / "p.json"))
        assert bad.returncode == 2, bad.stderr
        assert needle in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "p.json").exists()


def test_profile_path_that_is_not_a_json_file_is_one_line(tmp_path, capsys):
    """--profile naming a directory, a missing file or a non-JSON file: exit 2, one line
    naming the path, nothing written (a directory was a traceback-free exit 1)."""
    from trace_cli_helpers import assert_one_line_error, run_cli

    trace = write_poisson_trace(tmp_path / "t.parquet", rate_per_s=100, n=10, models=["a"],
                                seed=1)
    (tmp_path / "pdir").mkdir()
    (tmp_path / "bad.json").write_text("not json")
    for profile, needle in [(tmp_path / "pdir", "is a directory, not a file"),
                            (tmp_path / "missing.json", "no such file"),
                            (tmp_path / "bad.json", "not JSON")]:
        out = tmp_path / "run"
        code, _, err = run_cli(["simulate", trace, "-o", out, "--profile", profile,
                                "--mode", "exclusive"], capsys)
        assert_one_line_error(code, err, str(profile), needle)
        assert not out.exists()


@pytest.mark.realtime
def test_simulate_matches_real_null_replay(tmp_path):
    """The same trace through `simulate` and through a real `replay --backend null` run.

    Same seed: the simulator draws exactly the null backend's service times (same per-model
    streams), so the two runs are the same experiment and differ only by what real time adds —
    send lag and event-loop wake-up lateness, ~0.5-1 ms at the median on this busy 2-core box.
    With 20 ms service (rho = 0.4, mean latency ~33 ms) that shifts the distribution by a few
    % of its scale, which a KS test at n = 400 must not detect (p > 0.01; measured p ~ 0.5).
    (Independent seeds would not make a valid KS test here: queueing latencies are strongly
    autocorrelated, so the effective sample size is far below n and p-values come out too small.)
    Request by request, the median difference must stay under 3 ms.
    """
    from traceforge.backends.null import NullBackend
    from traceforge.replay import ReplayOptions, run_replay

    trace_path = write_poisson_trace(tmp_path / "t.parquet", rate_per_s=40, n=400,
                                     models=["a", "b"], seed=2)
    trace = read_trace(trace_path)
    run_replay(trace, tmp_path / "real", NullBackend(servers=1, service_ms=20.0,
                                                     service_dist="exp", seed=5),
               ReplayOptions())
    simulate(trace, tmp_path / "sim", servers=1, service_ms=20.0, service_dist="exp", seed=5)

    def lat(run):
        t = read_timeline(run)
        assert t.column("status").unique().to_pylist() == ["ok"]
        return pc.subtract(t.column("done_ns"), t.column("scheduled_ns")).to_numpy() / 1e6

    real, sim = lat(tmp_path / "real"), lat(tmp_path / "sim")
    # asymptotic p-value: the exact one fails for these sample sizes and scipy warns as it falls back
    assert stats.ks_2samp(real, sim, method="asymp").pvalue > 0.01
    assert np.median(np.abs(real - sim)) < 3.0


@pytest.mark.realtime
def test_profile_command_on_cpu_then_simulate(tmp_path):
    """`traceforge profile` on tiny CPU models (the same code path as on a GPU), then a
    simulation with the profile it wrote. Realtime: its transport bounds and co-run repeats
    assume a machine not busy with other tests."""
    pytest.importorskip("torch")
    out = tmp_path / "cpu.json"
    done = cli("profile", "--models", "tiny-bert,tiny-gpt2", "--device", "cpu",
               "--modes", "exclusive,timeslice", "--batch-sizes", "1,2", "--seq-lens", "16,32",
               "--new-tokens", "3", "--repeats", "3", "--warmup", "1", "--corun-seconds", "0.4",
               "--corun-sizes", "2,8", "--keep-runs", str(tmp_path / "runs"), "-o", str(out),
               timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    # each model beside the other's 2x requests (2 x 32 over the 1 x 32 reference: the grid
    # has no shape near 8x, so that size is skipped, with a line saying so)
    data = json.loads(out.read_text())
    by_size = data["modes"]["timeslice"]["slowdown_by_size"]["tiny-bert+tiny-gpt2"]
    assert set(by_size) == {"tiny-bert", "tiny-gpt2"}
    for victim, other in (("tiny-bert", "tiny-gpt2"), ("tiny-gpt2", "tiny-bert")):
        entry = by_size[victim]
        assert entry["aggressor"] == other and entry["size"] == [1.0, 2.0]
        assert entry["shapes"] == [["1x32"], ["2x32"]]
        assert entry["slowdown"][0] == data["modes"]["timeslice"]["slowdown"][
            "tiny-bert+tiny-gpt2"][victim]
        # the recorded slowdown is the repeats' median (1.0 when only some repeats are below
        # 1: interference does not speed a model up), clamped to [0.5, 50]
        # (a repeat whose 0.4 s co-run saw no overlap gives no estimate and is left out)
        reps = entry["repeats"][1]
        med = float(np.median(reps))
        want = 1.0 if med < 1.0 and not all(r < 1.0 for r in reps) else min(max(med, 0.5), 50)
        assert len(reps) in (1, 2) and entry["slowdown"][1] == pytest.approx(want, abs=1e-4)
    assert "no grid shape of 8x its reference" in done.stderr
    assert "slowdown_by_size" not in data["modes"]["exclusive"]
    # timeslice: the time slice fitted to its mixed pass (measure.fit_time_slice)
    from traceforge.simulate.measure import TIME_SLICE_QUANTA_MS

    fit = data["modes"]["timeslice"]["time_slice"]
    assert min(TIME_SLICE_QUANTA_MS) - 0.25 <= fit["quantum_ms"] <= max(TIME_SLICE_QUANTA_MS) + 0.25
    assert fit["switch_ms"] >= 0 and fit["phase"] == "reference-mix"
    assert fit["applied"] == (fit["fit_rms"] < fit["ps_rms"])
    assert "timeslice: time slice" in done.stderr
    assert "time_slice" not in data["modes"]["exclusive"]
    cosize = sorted(p.name for p in (tmp_path / "runs" / "timeslice").iterdir()
                    if p.is_dir() and "cosize-" in p.name)
    assert len(cosize) == 4 and cosize[0].endswith("cosize-tiny-bert-by-tiny-gpt2-2x-r0")
    data = json.loads(out.read_text())
    assert data["schema"] == "traceforge.profile/1"
    assert data["device"]["kind"] == "cpu" and data["versions"]["python"]
    assert "--models tiny-bert,tiny-gpt2" in data["command"]
    # measured on the loop replays run on (timerfd waits on Linux), not stock asyncio
    from traceforge.replay.loop import new_event_loop

    loop = new_event_loop()
    expected = "asyncio+timerfd" if getattr(loop, "_traceforge_precise", False) else "asyncio"
    loop.close()
    assert data["event_loop"] == expected
    for mode in ("exclusive", "timeslice"):  # a transport time, never a queueing wait
        assert all(0 <= v < 50 for v in data["modes"][mode]["inbound_ms"].values())
        # the dispatcher's send lag from the mode's mixed reference phase (timeslice: its own
        # reference-mix pass, exclusive: the mixed reference-open pass)
        assert 0 <= data["modes"][mode]["send_lag_ms"] < 50
    assert sorted(p.name for p in (tmp_path / "runs" / "timeslice").iterdir()
                  if p.is_dir())[:4] == ["01-reference", "02-reference-open", "03-reference-mix",
                                         "04-reference-idle"]
    assert not any("reference-mix" in p.name for p in (tmp_path / "runs" / "exclusive").iterdir())
    # timeslice: the way back is the median over the mixed pass and the co-runs together
    backs: dict[str, list] = {}
    for run in sorted((tmp_path / "runs" / "timeslice").iterdir()):
        if run.is_dir() and run.name[3:].startswith(("reference-mix", "corun-")):
            t = read_timeline(run)
            for row in t.filter(pc.equal(t.column("status"), "ok")).to_pylist():
                backs.setdefault(row["model"], []).append(row["done_ns"] - row["service_end_ns"])
    assert data["modes"]["timeslice"]["outbound_ms"] == pytest.approx(
        {m: np.median(v) / 1e6 for m, v in backs.items()}, abs=2e-6)
    # exclusive: the median over its mixed reference-open pass
    backs = {}
    for run in sorted((tmp_path / "runs" / "exclusive").iterdir()):
        if run.is_dir() and run.name[3:].startswith("reference-open"):
            t = read_timeline(run)
            for row in t.filter(pc.equal(t.column("status"), "ok")).to_pylist():
                backs.setdefault(row["model"], []).append(row["done_ns"] - row["service_end_ns"])
    assert set(backs) == {"tiny-bert", "tiny-gpt2"}
    assert data["modes"]["exclusive"]["outbound_ms"] == pytest.approx(
        {m: np.median(v) / 1e6 for m, v in backs.items()}, abs=2e-6)
    # and the spread of single transports around the medians, both ways, in every mode
    from traceforge.simulate.profile import SPREAD_QUANTILES

    for mode in ("exclusive", "timeslice"):
        for key in ("inbound_spread_ms", "outbound_spread_ms"):
            table = data["modes"][mode][key]
            assert set(table) == {"tiny-bert", "tiny-gpt2"}, (mode, key)
            for qs in table.values():
                assert len(qs) == len(SPREAD_QUANTILES) and qs == sorted(qs)
                assert qs[0] <= 0 <= qs[-1]  # around the median
    bert, gpt = data["models"]["tiny-bert"], data["models"]["tiny-gpt2"]
    assert np.array(bert["service_ms"]).shape == (2, 2) and not bert["generative"]
    assert gpt["generative"] and np.array(gpt["decode_ms_per_token"]).shape == (2, 2)
    assert all(v > 0 for row in bert["service_ms"] + gpt["decode_ms_per_token"] for v in row)
    # the grid's body (medians) with the tail the exclusive reference phase measured
    # (measure.reanchor_tail): service = median x that phase's mean / median at its shape
    tail = data["modes"]["exclusive"]["tail"]
    assert bert["tail_factor"]["used"] == "reference" == gpt["tail_factor"]["used"]
    assert np.allclose(np.array(bert["service_ms"]),
                       np.array(bert["service_median_ms"]) * tail["tiny-bert"]["service"],
                       rtol=1e-3, atol=1e-5)
    assert np.allclose(np.array(gpt["decode_ms_per_token"]),
                       np.array(gpt["decode_median_ms_per_token"]) * tail["tiny-gpt2"]["decode"],
                       rtol=1e-3, atol=1e-5)
    assert bert["service_cv"] == pytest.approx(tail["tiny-bert"]["cv"], abs=1e-4)
    assert isinstance(bert["tail_factor"]["grid"], float) and bert["service_cv_grid"] >= 0
    assert set(data["modes"]) == {"exclusive", "timeslice"}
    slow = data["modes"]["timeslice"]["slowdown"]["tiny-bert+tiny-gpt2"]
    assert set(slow) == {"tiny-bert", "tiny-gpt2"} and all(v > 0 for v in slow.values())
    assert data["modes"]["exclusive"]["slowdown"] == {}
    for mode in ("exclusive", "timeslice"):  # the executor hand-off, from open-loop phases
        entry = data["modes"][mode]
        assert set(entry["handoff_ms"]) <= {"tiny-bert", "tiny-gpt2"}
        assert all(v >= 0 for v in entry["handoff_ms"].values())
        assert set(entry["handoff_pairs"]) == {"tiny-bert", "tiny-gpt2"}
    assert sum(data["modes"]["exclusive"]["handoff_pairs"].values()) > 0
    # exclusive: the mixed reference phase measures hand-offs between different models too
    pairs = data["modes"]["exclusive"]["handoff_pair_ms"]
    assert {(a, b) for a, nexts in pairs.items() for b in nexts} >= {
        ("tiny-bert", "tiny-gpt2"), ("tiny-gpt2", "tiny-bert")}, pairs
    assert all(v >= 0 for nexts in pairs.values() for e in nexts.values() for k, v in e.items()
               if not k.startswith("n_"))
    assert data["modes"]["timeslice"]["handoff_pair_ms"].keys() <= {"tiny-bert", "tiny-gpt2"}
    assert all(set(nexts) <= {a} for a, nexts in
               data["modes"]["timeslice"]["handoff_pair_ms"].items())  # a worker per model
    simulate(write_poisson_trace(tmp_path / "x.parquet", rate_per_s=50, n=100,
                                 models=["bert", "gpt"], seed=4,
                                 zoo={"bert": "tiny-bert", "gpt": "tiny-gpt2"}, new={"gpt": 4}),
             tmp_path / "sim-x", profile=load_profile(out), mode="exclusive")
    info = json.loads((tmp_path / "sim-x" / "run.json").read_text())["backend_info"]
    assert set(info["handoff_pair_ms"]) == {"bert", "gpt"}
    # transport by idle time, from the reference phases; the simulator applied it (and says so)
    for mode in ("exclusive", "timeslice"):
        table = data["modes"][mode]["inbound_by_idle_ms"]
        assert set(table) == {"tiny-bert", "tiny-gpt2"}
        for rows in table.values():
            assert all(r[3] >= 5 and r[2] >= 0 for r in rows)
            assert [r[0] for r in rows] == sorted(r[0] for r in rows)
            assert rows[-1][:2] == [10.0, None], rows  # the sparse phase's long idle gaps
    assert set(info["inbound_by_idle_ms"]) == {"bert", "gpt"}

    profile = load_profile(out)
    trace = write_poisson_trace(tmp_path / "t.parquet", rate_per_s=50, n=200,
                                models=["bert", "gpt"], seed=3,
                                zoo={"bert": "tiny-bert", "gpt": "tiny-gpt2"},
                                new={"gpt": 4})
    summary = simulate(trace, tmp_path / "sim", profile=profile, mode="timeslice")
    assert summary.counts == {"ok": 200}
    t = read_timeline(tmp_path / "sim")
    gen = pc.equal(t.column("model"), "gpt")
    assert t.filter(gen).column("first_token_ns").null_count == 0
    assert t.filter(gen).column("tokens_out").unique().to_pylist() == [4]


def test_profile_streams_transports_and_slowdowns_from_the_mixed_pass(tmp_path):
    """streams (executor threads in the dispatcher's process): the transports come from the
    mixed reference pass alone (the co-runs measure a GIL-saturated process), and the co-run
    slowdowns count each model busy from its measured service starts."""
    pytest.importorskip("torch")
    from traceforge.simulate.measure import (
        SERVICE_START_MODES,
        TRANSPORT_FROM_MIX_MODES,
        estimate_slowdowns,
        idle_inbound_ns,
    )

    assert "streams" in SERVICE_START_MODES and "streams" in TRANSPORT_FROM_MIX_MODES
    out = tmp_path / "streams.json"
    done = cli("profile", "--models", "tiny-bert,tiny-gpt2", "--device", "cpu",
               "--modes", "streams", "--batch-sizes", "1", "--seq-lens", "16,32",
               "--new-tokens", "3", "--repeats", "3", "--warmup", "1", "--corun-seconds", "0.4",
               "--corun-repeats", "1", "--corun-sizes", "none",
               "--keep-runs", str(tmp_path / "runs"), "-o", str(out), timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    entry = json.loads(out.read_text())["modes"]["streams"]
    runs = {p.name[3:]: p for p in (tmp_path / "runs" / "streams").iterdir() if p.is_dir()}
    mix = read_timeline(runs["reference-mix"])
    mix = mix.filter(pc.equal(mix.column("status"), "ok"))
    col = {c: mix.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
           for c in ("sent_ns", "service_start_ns", "service_end_ns", "done_ns")}
    model = np.asarray(mix.column("model").to_pylist())
    worker = np.asarray(mix.column("worker").fill_null("").to_pylist())
    for m in ("tiny-bert", "tiny-gpt2"):
        rows = model == m
        want_in = idle_inbound_ns(worker, col["sent_ns"], col["service_start_ns"],
                                  col["service_end_ns"], rows) / 1e6
        assert entry["inbound_ms"][m] == pytest.approx(want_in, abs=2e-6)
        want_back = np.median(col["done_ns"][rows] - col["service_end_ns"][rows]) / 1e6
        assert entry["outbound_ms"][m] == pytest.approx(want_back, abs=2e-6)
    # the co-run's slowdowns from its service starts (the recorded repeat is that estimate)
    corun = read_timeline(runs["corun-tiny-bert+tiny-gpt2-r0"])
    names = np.asarray(corun.column("model").to_pylist())
    start = corun.column("service_start_ns").to_numpy(zero_copy_only=False).astype(np.float64)
    end = corun.column("service_end_ns").to_numpy(zero_copy_only=False).astype(np.float64)
    intervals, counted = {}, {}
    for m in ("tiny-bert", "tiny-gpt2"):
        sel = names == m
        intervals[m] = (start[sel], end[sel])
        counted[m] = np.arange(int(sel.sum())) >= 1  # the first request per model starts it
    est = estimate_slowdowns(intervals, {m: entry["alone_ms"][m] * 1e6 for m in intervals},
                             lambda m, busy: 1.0, counted)
    for m, e in est.items():
        assert entry["corun"]["tiny-bert+tiny-gpt2"]["repeats"][m] == [
            pytest.approx(e["slowdown"], abs=1e-4)]


def test_simulate_zoo_override_picks_the_profile_entry(tmp_path):
    """--zoo MODEL=ENTRY (as replay --zoo) simulates a trace model as that profile entry over
    the spec's zoo; fidelity's compare_run uses the zoo a run recorded (backend_info.zoo), so a
    run replayed with --zoo is compared against the entries it really ran."""
    from traceforge.simulate.fidelity import compare_run

    trace = write_poisson_trace(tmp_path / "t.parquet", rate_per_s=50, n=200,
                                models=["a", "b"], seed=3,
                                zoo={"a": "bert-base", "b": "gpt2"}, new={"b": 16})
    base = ["simulate", str(trace), "--profile", "h200-fidelity", "--mode", "exclusive"]
    bad = cli(*base, "-o", str(tmp_path / "no-zoo"))
    assert bad.returncode == 2 and "a (zoo bert-base)" in bad.stderr
    assert "--zoo" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    done = cli(*base, "-o", str(tmp_path / "sim"), "--zoo", "a=distilbert-base,b=distilgpt2")
    assert done.returncode == 0, done.stderr
    info = RunManifest.load(tmp_path / "sim")["backend_info"]
    assert info["models"] == {"a": "distilbert-base", "b": "distilgpt2"}
    for args, needle in [
        (["--zoo", "c=distilbert-base"], "--zoo = 'c'"),
        (["--zoo", "a=resnet-50,b=distilgpt2"], "--zoo = 'a=resnet-50'"),
        (["--zoo", "a"], "--zoo = 'a'"),
    ]:
        bad = cli(*base, "-o", str(tmp_path / "bad"), *args)
        assert bad.returncode == 2, (args, bad.stderr)
        assert needle in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert not (tmp_path / "bad").exists()
    bad = cli("simulate", str(trace), "-o", str(tmp_path / "bad"), "--zoo", "a=distilbert-base")
    assert bad.returncode == 2 and "--zoo needs --profile" in bad.stderr
    assert not (tmp_path / "bad").exists()

    # A "measured" run: the simulation above, as a replay with --zoo would record it.
    manifest = json.loads((tmp_path / "sim" / "run.json").read_text())
    manifest["backend_info"]["zoo"] = {"a": "distilbert-base", "b": "distilgpt2"}
    manifest["mode"] = "exclusive"
    (tmp_path / "sim" / "run.json").write_text(json.dumps(manifest))
    result = compare_run(tmp_path / "sim", load_profile("h200-fidelity"), cold_start=False)
    assert set(result["models"]) == {"a", "b"}
    # the same profile, seed and trace: the simulation reproduces itself exactly
    assert all(abs(row["error_p50"]) < 1e-9 for row in result["models"].values())
    manifest["backend_info"].pop("zoo")
    (tmp_path / "sim" / "run.json").write_text(json.dumps(manifest))
    from traceforge.errors import BadInput

    with pytest.raises(BadInput, match="bert-base"):
        compare_run(tmp_path / "sim", load_profile("h200-fidelity"), cold_start=False)
