"""A dispatcher killed while its resident worker processes are still loading models: no worker
survives it by more than a second (SIGKILL: PR_SET_PDEATHSIG; SIGTERM: the Ctrl-C path, exit
130, lock released). Tiny CPU models, so this runs anywhere torch is installed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from replay_helpers import children_of, make_trace
from trace_cli_helpers import REPO

pytest.importorskip("torch")
pytest.importorskip("transformers")

MS = 1_000_000


def _children(pid: int) -> list[int]:
    return children_of(pid, b"traceforge.backends.resident.worker")


def _tmpdir(tmp_path: Path) -> Path:
    """The replay's TMPDIR: it must hold nothing once the dispatcher is gone, however it died
    (worker logs used to live in a traceforge-workers-* directory a SIGKILL left behind)."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir(exist_ok=True)
    return tmp


def _ours(tmp: Path) -> list[str]:
    # torch keeps its own caches there (torchinductor_*): only traceforge's are checked
    return [p.name for p in tmp.iterdir() if p.name.startswith("traceforge")]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def _start(tmp_path: Path) -> tuple[subprocess.Popen, list[int]]:
    trace = tmp_path / "t.parquet"
    make_trace([k * 10 * MS for k in range(50)], models=["a"] * 25 + ["b"] * 25, path=trace)
    proc = subprocess.Popen(
        [sys.executable, "-m", "traceforge", "replay", str(trace), "-o", str(tmp_path / "run"),
         "--backend", "resident", "--mode", "timeslice", "--device", "cpu",
         "--zoo", "a=tiny-bert,b=tiny-bert", "--no-progress", "--no-telemetry"],
        env={**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(_tmpdir(tmp_path))},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while time.monotonic() < deadline and len(workers) < 2:
        workers = _children(proc.pid)
        time.sleep(0.02)
    if len(workers) < 2:
        proc.kill()
        pytest.fail(f"workers did not start: {proc.communicate()[1][-2000:]}")
    return proc, workers


def _assert_gone(workers: list[int], within_s: float = 1.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.02)
    survivors = [w for w in workers if _alive(w)]
    for w in survivors:  # never leave them behind, even when failing
        os.kill(w, signal.SIGKILL)
    assert not survivors, f"workers outlived the dispatcher: {survivors}"


@pytest.mark.realtime
def test_sigkill_while_loading_kills_the_workers(tmp_path):
    proc, workers = _start(tmp_path)
    proc.kill()  # the workers are still importing torch / building models
    proc.wait(10)
    _assert_gone(workers)
    assert _ours(_tmpdir(tmp_path)) == []


@pytest.mark.realtime
def test_sigterm_while_loading_exits_130_and_cleans_up(tmp_path):
    proc, workers = _start(tmp_path)
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    # a worker's start stopped by the interrupt: no "Future exception was never retrieved"
    assert "never retrieved" not in err and "RunFailure" not in err, err[-2000:]
    _assert_gone(workers)
    assert not (tmp_path / "run" / ".traceforge.lock").exists()
    assert _ours(_tmpdir(tmp_path)) == []
