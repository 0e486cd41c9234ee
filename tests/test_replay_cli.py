"""`traceforge replay` end to end: exit codes, nothing written on bad input, and what SIGINT,
SIGTERM and SIGKILL of a real `python -m traceforge replay` process leave behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from replay_helpers import make_trace, poisson_arrivals

from traceforge.cli import main
from traceforge.record import read_timeline

ROOT = Path(__file__).resolve().parents[1]
MS = 1_000_000


def cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out = capsys.readouterr()
    return exit_info.value.code, out.err


@pytest.fixture
def trace_path(tmp_path):
    path = tmp_path / "trace.parquet"
    make_trace(np.arange(20) * 2 * MS, models=["a", "b"] * 10, path=path)
    return path


def test_replay_null_writes_a_complete_run(tmp_path, trace_path, capsys):
    run_dir = tmp_path / "run"
    code, err = cli(["replay", str(trace_path), "-o", str(run_dir), "--backend", "null",
                     "--service-ms", "1", "--servers", "2", "--warmup", "0.01"], capsys)
    assert code in (0, None)
    assert "self-check: send lag p50" in err
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["counts"] == {"ok": 20}
    assert manifest["backend"] == "null" and manifest["backend_info"]["servers"] == 2
    assert len(manifest["trace"]["sha256"]) == 64
    assert set(manifest["self_check"]["send_lag_us"]) == {"p50", "p99", "max"}
    tl = read_timeline(run_dir).to_pydict()
    assert tl["request_id"] == list(range(20))
    assert sum(tl["warmup"]) == 5  # arrivals 0, 2, 4, 6, 8 ms < 10 ms


@pytest.mark.parametrize("args", [
    ["--time-scale", "-1"],
    ["--time-scale", "nan"],
    ["--concurrency", "0"],
    ["--max-inflight", "4", "--concurrency", "4"],
    ["--timeout", "0"],
    ["--warmup", "-2"],
    ["--backend", "grpc"],
    ["--servers", "0"],
    ["--service-dist", "pareto"],
    ["--service-ms", "-3"],
    ["--pacer", "busy"],
    ["--zoo", "nomodel=tiny-bert"],
    ["--zoo", "a"],
    ["--backend", "http"],  # no --url
    ["--backend", "http", "--url", "http://127.0.0.1:9/"],  # unreachable: nothing listens on 9
    ["--backend", "http", "--url", "http://x", "--model-name", "a"],
    ["--servers", "two"],  # typer's own usage error, also exit 2
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, trace_path, capsys, args):
    run_dir = tmp_path / "run"
    code, err = cli(["replay", str(trace_path), "-o", str(run_dir), *args], capsys)
    assert code == 2, err
    assert "Traceback" not in err
    assert not run_dir.exists()


def test_missing_trace_and_existing_run_dir_exit_2(tmp_path, trace_path, capsys):
    code, err = cli(["replay", str(tmp_path / "nope.parquet"), "-o", str(tmp_path / "r")],
                    capsys)
    assert code == 2 and "no such file" in err and not (tmp_path / "r").exists()
    run_dir = tmp_path / "run"
    assert cli(["replay", str(trace_path), "-o", str(run_dir)], capsys)[0] in (0, None)
    before = sorted(p.name for p in (run_dir / "timeline").iterdir())
    code, err = cli(["replay", str(trace_path), "-o", str(run_dir)], capsys)
    assert code == 2 and "already holds a run" in err
    assert sorted(p.name for p in (run_dir / "timeline").iterdir()) == before


def start_replay(tmp_path) -> tuple[subprocess.Popen, Path]:
    """A 60 s replay at 200 req/s into a single 20 ms server: requests pile up in flight."""
    trace = tmp_path / "long.parquet"
    make_trace(poisson_arrivals(200, 12_000, seed=3), path=trace)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "traceforge", "replay", str(trace), "-o", str(run_dir),
         "--service-ms", "20", "--service-dist", "const", "--no-progress"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    deadline = time.monotonic() + 20
    while not list((run_dir / "timeline").glob("part-*.parquet")):  # running and recording
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"replay did not start: {proc.communicate()}")
        time.sleep(0.05)
    time.sleep(0.5)
    return proc, run_dir


@pytest.mark.realtime
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_exits_130_with_cancelled_rows(tmp_path, sig):
    proc, run_dir = start_replay(tmp_path)
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["status"] == "interrupted"
    assert manifest["interrupted_by"] == signal.Signals(sig).name
    tl = read_timeline(run_dir)
    statuses = tl.column("status").to_pylist()
    assert statuses.count("ok") > 10
    assert statuses.count("cancelled") > 0  # the single server had a queue in flight
    assert manifest["counts"]["cancelled"] == statuses.count("cancelled")
    assert tl.num_rows + manifest["not_due"] == 12_000
    assert tl.column("request_id").to_pylist() == list(range(tl.num_rows))  # no gaps


@pytest.mark.realtime
def test_sigkill_keeps_all_but_the_last_second(tmp_path):
    proc, run_dir = start_replay(tmp_path)
    time.sleep(1.0)
    killed_at_ns = time.monotonic_ns()
    proc.kill()
    proc.wait(timeout=10)
    tl = read_timeline(run_dir)  # every part on disk is whole and readable
    assert tl.num_rows > 0
    assert set(tl.column("status").to_pylist()) == {"ok"}
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["status"] == "running"  # never finalised: a reader can tell
    # Rows finished more than 1 s before the kill are on disk (parts close every 0.5 s).
    t0 = manifest["run_clock"]["t0_monotonic_ns"]
    done = np.array(tl.column("done_ns").to_pylist())
    assert killed_at_ns - (t0 + done.max()) < 1.5e9


def test_progress_bar_reports_the_final_count(tmp_path, trace_path, capsys):
    code, err = cli(["replay", str(trace_path), "-o", str(tmp_path / "run"), "--progress",
                     "--service-ms", "1"], capsys)
    assert code in (0, None)
    assert "20/20" in err  # rich's M/N column, refreshed one last time at the end
