"""The knobs users bring from vLLM `bench serve` / guidellm (issue 10, "The first hour"):
`--rate`, `--max-concurrency`, `-h`, `-o/--output`; and replay's schedule range check."""

from __future__ import annotations

import json

import numpy as np
import pytest
from replay_helpers import make_trace
from trace_cli_helpers import assert_one_line_error, run_cli

from traceforge.errors import BadInput
from traceforge.record import read_timeline
from traceforge.replay.rate import apply_rate, parse_rate

MS = 1_000_000


@pytest.fixture
def trace_path(tmp_path):
    # a: 20 requests over 1 s (20/s), b: 5 requests (5/s); window 1 s
    path = tmp_path / "trace.parquet"
    a = np.arange(20) * 50 * MS
    b = np.arange(5) * 200 * MS + 7 * MS
    times = np.concatenate([a, b])
    models = ["a"] * 20 + ["b"] * 5
    order = np.argsort(times, kind="stable")
    make_trace(times[order], models=[models[i] for i in order], path=path,
               meta={"duration_s": 1.0, "spec": {"models": {}}})
    return path


def test_parse_rate_forms():
    assert parse_rate("12.5") == 12.5
    assert parse_rate("a=3, b=4") == {"a": 3.0, "b": 4.0}
    for bad in ("0", "-1", "nan", "inf", "x", "a=", "a=1,a=2", "a=0"):
        with pytest.raises(BadInput) as err:
            parse_rate(bad)
        assert err.value.key == "--rate"


def test_global_rate_is_a_time_scale_keeping_the_shape(trace_path):
    from traceforge.schema import read_trace

    trace = read_trace(trace_path)
    same, scale, info = apply_rate(trace, "50", 1.0)
    assert same is trace  # the arrivals are not touched: only stretched at replay
    assert scale == pytest.approx(25 / 50)  # mean 25 req/s over the 1 s window -> 50 req/s
    assert info["trace_mean_rate"] == pytest.approx(25.0)
    with pytest.raises(BadInput, match="either --rate or --time-scale"):
        apply_rate(trace, "50", 2.0)


def test_per_model_rate_rescales_each_model_and_keeps_request_ids(trace_path):
    from traceforge.schema import read_trace

    trace = read_trace(trace_path)
    new, scale, info = apply_rate(trace, "b=10", 1.0)
    assert scale == 1.0
    t = new.table
    arrival = t.column("arrival_ns").to_numpy()
    assert np.all(np.diff(arrival) >= 0)  # re-merged by the new times
    ids = t.column("request_id").to_numpy()
    assert sorted(ids.tolist()) == list(range(25))  # every trace row once, ids kept
    models = np.asarray(t.column("model").to_pylist())
    old = trace.table.column("arrival_ns").to_numpy()
    # b (5/s) at 10/s: every b time halves; a is untouched
    assert np.array_equal(arrival[models == "b"], np.rint(old[ids[models == "b"]] * 0.5))
    assert np.array_equal(arrival[models == "a"], old[ids[models == "a"]])
    assert info["per_model"]["b"]["time_scale"] == pytest.approx(0.5)
    # a row keeps its own shape columns with its id
    old_models = np.asarray(trace.table.column("model").to_pylist())
    assert np.array_equal(old_models[ids], models)
    with pytest.raises(BadInput, match="model not in the trace"):
        apply_rate(trace, "zzz=1", 1.0)


def test_replay_rate_and_max_concurrency_and_output_alias(tmp_path, trace_path, capsys):
    run = tmp_path / "run"
    code, _, err = run_cli(["replay", trace_path, "--output", run, "--rate", "a=40",
                            "--max-concurrency", "4", "--service-ms", "1"], capsys)
    assert code == 0, err
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["options"]["max_inflight"] == 4  # the alias sets the open-loop cap
    assert manifest["options"]["rate"]["per_model"]["a"]["rate"] == 40.0
    tl = read_timeline(run)
    sched = tl.column("scheduled_ns").to_numpy()
    models = np.asarray(tl.column("model").to_pylist())
    ids = tl.column("request_id").to_numpy()
    assert sorted(ids.tolist()) == list(range(25))
    a = np.sort(sched[models == "a"])
    # a's 50 ms gaps became 25 ms (40/s); b keeps its 200 ms gaps
    assert np.allclose(np.diff(a), 25 * MS, atol=1)
    assert np.allclose(np.diff(np.sort(sched[models == "b"])), 200 * MS, atol=1)


@pytest.mark.parametrize("args, key", [
    (["--time-scale", "1e12"], "--time-scale"),  # wraps int64 ns
    (["--time-scale", "1e8"], "--time-scale"),  # fits, but the replay would wait for years
    (["--rate", "1e-9"], "--rate"),
    (["--rate", "b=1e-9"], "--rate"),
])
def test_replay_refuses_schedules_that_would_wait_forever(tmp_path, trace_path, capsys, args,
                                                          key):
    run = tmp_path / "run"
    code, _, err = run_cli(["replay", trace_path, "-o", run, *args], capsys)
    assert_one_line_error(code, err, key)
    assert not run.exists()


def test_simulate_takes_rate_and_output(tmp_path, trace_path, capsys):
    run = tmp_path / "sim"
    code, _, err = run_cli(["simulate", trace_path, "--output", run, "--rate", "100"], capsys)
    assert code == 0, err
    sched = read_timeline(run).column("scheduled_ns").to_numpy()
    assert sched.max() == pytest.approx(0.95e9 * 0.25, rel=1e-6)  # 25/s -> 100/s


@pytest.mark.parametrize("argv", [
    ["-h"], ["trace", "-h"], ["trace", "gen", "-h"], ["trace", "import", "-h"],
    ["trace", "stats", "-h"], ["replay", "-h"], ["simulate", "-h"], ["report", "-h"],
    ["compare", "-h"], ["export", "perfetto", "-h"], ["demo", "-h"], ["profile", "-h"],
    ["zoo", "-h"],
])
def test_dash_h_is_help_everywhere(argv, capsys):
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "Usage" in out


@pytest.mark.parametrize("command", [["trace", "gen"], ["trace", "import"], ["replay"],
                                     ["simulate"], ["export", "perfetto"], ["demo"],
                                     ["profile"], ["report"], ["compare"], ["study"],
                                     ["trace", "stats"]])
def test_every_writing_command_takes_dash_o_and_output(command, capsys):
    _, out, _ = run_cli([*command, "--help"], capsys)
    assert "-o" in out and "--output" in out


# realtime: the worker runs at its replay priority (SCHED_IDLE), which gets no CPU while the
# parallel phase's other test processes keep both cores busy (103 s there, ~5 s alone)
@pytest.mark.realtime
def test_cpu_workers_yield_to_the_pacer_and_loading_reports_progress(monkeypatch):
    """CPU worker processes run niced (the pacer wins a core at once: issue 10's demo send lag)
    and each model's loading prints a status line."""
    import asyncio
    import os

    # the replay's defaults (conftest turns them off in the parallel phase)
    monkeypatch.delenv("TRACEFORGE_CPU_WORKER_NICE", raising=False)
    monkeypatch.delenv("TRACEFORGE_CPU_SCHED_IDLE", raising=False)

    from traceforge.backends.resident import CPU_WORKER_NICE, from_options
    from traceforge.clock import RunClock
    from traceforge.replay import ModelInfo

    lines: list[str] = []

    async def go():
        backend = from_options({"mode": "timeslice", "device": "cpu", "status": lines.append})
        await backend.start([ModelInfo("bert", "tiny-bert")], RunClock())
        try:
            pid = backend.worker_pids()["bert"]
            return os.getpriority(os.PRIO_PROCESS, pid), os.sched_getscheduler(pid)
        finally:
            await backend.stop()

    worker_nice, policy = asyncio.run(go())
    assert worker_nice == min(19, os.getpriority(os.PRIO_PROCESS, 0) + CPU_WORKER_NICE)
    import subprocess
    import sys

    can_idle = subprocess.run([sys.executable, "-c", "import os; os.sched_setscheduler("
                               "0, os.SCHED_IDLE, os.sched_param(0))"]).returncode == 0
    assert (policy == os.SCHED_IDLE) == can_idle  # where the machine permits it
    assert lines[0].startswith("loading 1 model(s) on cpu (timeslice): bert = tiny-bert")
    assert "bert (tiny-bert) ready in" in lines[1]


def test_self_check_names_what_limited_the_run():
    from traceforge.replay.selfcheck import self_check

    n = 100
    sched = np.arange(n, dtype=np.int64) * 10 * MS
    sent = sched + 5 * MS  # 5 ms late throughout
    check = self_check(scheduled_ns=sched, sent_ns=sent, ready_ns=sched,
                       sent_mask=np.ones(n, bool), slot_waits=0, closed_loop=False,
                       pacer="spin", event_loop="precise")
    assert check["generator_limited"]
    assert "load average" in check["cause"] and check["cause"] in check["warning"]
    assert check["warning"].count("limited this run") == 1


@pytest.mark.parametrize("argv", [["make", "--no-print-directory", "gpu-check"],
                                  ["bash", "benchmarks/gpu_check.sh"]])
def test_gpu_check_without_a_gpu_is_one_line_and_nonzero(argv, tmp_path):
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("nvidia-smi") and subprocess.run(["nvidia-smi", "-L"],
                                                     capture_output=True).returncode == 0:
        pytest.skip("this machine has a GPU")
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} is not installed")
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(argv, cwd=repo, capture_output=True, text=True, timeout=60,
                          env={**__import__("os").environ, "OUT": str(tmp_path / "out"),
                               "WORK": str(tmp_path / "work")})
    assert proc.returncode != 0
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and "NVIDIA GPU" in lines[0], lines
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


@pytest.mark.parametrize("command, args, key", [
    (["replay"], ["--warmup", "1e300"], "--warmup"),
    (["simulate"], ["--warmup", "1e300"], "--warmup"),
    (["simulate"], ["--time-scale", "1e300"], "--time-scale"),
    (["simulate"], ["--profile", "cpu-tiny", "--max-wait-ms", "1e308"], "--max-wait-ms"),
])
def test_other_time_flags_beyond_int64_are_bad_input(tmp_path, trace_path, capsys, command,
                                                     args, key):
    run = tmp_path / "run"
    code, _, err = run_cli([*command, trace_path, "-o", run, *args], capsys)
    assert_one_line_error(code, err, key)
    assert not run.exists()


@pytest.mark.parametrize("args, needles", [
    (["--rate", "5", "--concurrency", "2"], ["--rate", "closed loop"]),
    (["--rate", ""], ["--rate"]),
    (["--rate", "a=1,"], ["--rate"]),
    (["--max-concurrency", "0"], ["--max-inflight", "positive integer"]),  # the alias
])
def test_knob_misuse_is_one_line(tmp_path, trace_path, capsys, args, needles):
    code, _, err = run_cli(["replay", trace_path, "-o", tmp_path / "run", *args], capsys)
    assert_one_line_error(code, err, *needles)
