"""SIGINT / SIGTERM while a replay sets up (after the run directory is claimed, before the
schedule starts): exit 130, one line that says what is on disk, and the disk agrees — nothing
recorded, so no run directory left (it used to hold run.json "interrupted by cancelled" with 0
rows and a timeline/ under the line "nothing recorded"). A second signal during that cleanup is
only noted (it used to cut the cleanup short: an empty timeline/, no run.json, a directory a
later run refused as "already holds a run").

Deterministic: the backend itself sends the signal at a chosen point of the setup."""

from __future__ import annotations

import asyncio
import os
import signal

import numpy as np
import pytest
from replay_helpers import children_of, make_trace

from traceforge.backends.null import NullBackend
from traceforge.cli import main

MS = 1_000_000


class SignalInSetup(NullBackend):
    """Sends ``sig`` to this process from ``describe()`` — the synchronous setup after
    ``start`` (recorder, manifest) — or from ``start`` itself; ``again`` sends a second one
    while the interrupted setup stops the backend."""

    def __init__(self, sig=signal.SIGINT, *, where="describe", again=False) -> None:
        super().__init__(service_ms=1.0)
        self.sig, self.where, self.again = sig, where, again
        self.stopped = False

    async def start(self, models, clock) -> None:
        await super().start(models, clock)
        if self.where == "start":
            os.kill(os.getpid(), self.sig)
            await asyncio.sleep(5)  # the signal ends this wait

    def describe(self):
        if self.where == "describe":
            os.kill(os.getpid(), self.sig)
        return super().describe()

    async def stop(self) -> None:
        if self.again:
            os.kill(os.getpid(), self.sig)
            await asyncio.sleep(0.05)  # the second signal is delivered during the cleanup
        await super().stop()
        self.stopped = True


@pytest.fixture
def trace_path(tmp_path):
    path = tmp_path / "trace.parquet"
    make_trace(np.arange(200) * 10 * MS, models=["a", "b"] * 100, path=path)
    return path


def _cli(monkeypatch, capsys, backend, argv):
    import traceforge.backends

    monkeypatch.setattr(traceforge.backends, "make_backend", lambda name, opts: backend)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("where", ["describe", "start"])
def test_signal_during_setup_leaves_no_run_dir(tmp_path, trace_path, monkeypatch, capsys,
                                               sig, where):
    run_dir = tmp_path / "run"
    backend = SignalInSetup(sig, where=where)
    code, err = _cli(monkeypatch, capsys, backend,
                     ["replay", str(trace_path), "-o", str(run_dir), "--no-progress",
                      "--flusher", "thread"])
    assert code == 130, err
    # what is on disk first: the line says "nothing recorded"
    assert not run_dir.exists(), sorted(p.name for p in run_dir.rglob("*"))
    assert backend.stopped
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert f"interrupted ({sig.name}) before the replay started; nothing recorded" in lines[0]
    # the process's handlers are given back: SIGTERM is the CLI's again, SIGINT Python's
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_signal_during_setup_keeps_an_empty_dir_it_found(tmp_path, trace_path, monkeypatch,
                                                         capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    code, err = _cli(monkeypatch, capsys, SignalInSetup(),
                     ["replay", str(trace_path), "-o", str(run_dir), "--no-progress",
                      "--flusher", "thread"])
    assert code == 130, err
    assert f"nothing recorded ({run_dir} left empty)" in err, err
    assert sorted(run_dir.iterdir()) == []


def test_second_signal_during_setup_cleanup_is_only_noted(tmp_path, trace_path, monkeypatch,
                                                          capsys):
    run_dir = tmp_path / "run"
    backend = SignalInSetup(again=True)
    code, err = _cli(monkeypatch, capsys, backend,
                     ["replay", str(trace_path), "-o", str(run_dir), "--no-progress",
                      "--flusher", "thread"])
    assert code == 130, err
    assert len(err.strip().splitlines()) == 1, err
    assert "nothing recorded" in err and "Unclosed" not in err, err
    assert backend.stopped  # the cleanup ran to its end
    assert not run_dir.exists()
    # a later run to the same path is not refused
    code, err = _cli(monkeypatch, capsys, NullBackend(service_ms=1.0),
                     ["replay", str(trace_path), "-o", str(run_dir), "--no-progress",
                      "--flusher", "thread"])
    assert code == 0, err
    assert (run_dir / "run.json").is_file()


def test_run_replay_raises_keyboard_interrupt_naming_the_signal(tmp_path, trace_path):
    from traceforge.replay import ReplayOptions, run_replay
    from traceforge.replay.run import SetupInterrupted
    from traceforge.schema import read_trace

    with pytest.raises(KeyboardInterrupt) as info:
        run_replay(read_trace(trace_path), tmp_path / "run", SignalInSetup(signal.SIGTERM),
                   ReplayOptions(flusher="thread"))
    assert isinstance(info.value, SetupInterrupted) and info.value.signal == "SIGTERM"
    assert not (tmp_path / "run").exists()


# -- --workers: the driver spawning its workers ----------------------------------------------
def _jobs(tmp_path, n=2):
    from traceforge.clock import RunClock
    from traceforge.replay import ReplayOptions
    from traceforge.replay.workers import ShardJob, table_to_ipc

    trace = make_trace(np.arange(40) * 10 * MS)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    clock = RunClock()
    table = table_to_ipc(trace.table)
    jobs = [ShardJob(index=k, workers=n, table_ipc=table, trace_meta=trace.meta,
                     trace_info={"rows": 40}, backend="null",
                     backend_options={"service_ms": 1.0},
                     options=ReplayOptions(flusher="thread", progress=False),
                     run_dir=str(run_dir), t0_ns=0, wall_t0_ns=clock.wall_t0_ns)
            for k in range(n)]
    return jobs, clock


class SignalWhenPickled:
    """Sends SIGINT to this process while the driver writes the job to its worker (which
    reads back a plain 1.0)."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGINT)
        return (float, (1.0,))


def test_a_signal_while_workers_are_spawned_waits_until_all_are_started(tmp_path):
    """SIGTERM / SIGINT at the driver while it wrote a job to its child cut the pickle short
    (the child printed ``UnpicklingError: pickle data was truncated``): the signal is noted and
    raised once every worker has its whole job."""
    from traceforge.replay.workers import LocalPool

    jobs, clock = _jobs(tmp_path)
    jobs[0].backend_options = {"service_ms": SignalWhenPickled()}
    pool = LocalPool()
    try:
        with pytest.raises(KeyboardInterrupt):
            pool.start(jobs, clock)
        assert len(pool.procs) == 2  # both started, each with its whole job
        ready = pool.wait_ready()
        assert [msg[0] for msg in ready.values()] == ["ready", "ready"], ready
    finally:
        pool.abort(list(range(len(pool.procs))))
        pool.results()
        pool.close()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_workers_start_with_sigint_and_sigterm_ignored(tmp_path):
    """A Ctrl-C to the process group while a spawned worker imported printed a 32-line
    KeyboardInterrupt traceback per worker: they are born with both signals ignored (the
    driver stops them before the start barrier over their pipe)."""

    from multiprocessing import util as mp_util

    from traceforge.replay.workers import _spawn_ignoring_signals

    out = tmp_path / "status"
    spawn = _spawn_ignoring_signals(mp_util.spawnv_passfds, [signal.SIGINT, signal.SIGTERM],
                                    signal.default_int_handler)
    pid = spawn(b"/bin/sh", [b"/bin/sh", b"-c", f"grep SigIgn /proc/self/status > {out}".encode()],
                [])
    os.waitpid(pid, 0)
    ignored = int(out.read_text().split()[1], 16)
    assert ignored & (1 << (signal.SIGINT - 1)) and ignored & (1 << (signal.SIGTERM - 1))
    # and this process's handler is back
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _spawned_children(pid: int) -> list[int]:
    return children_of(pid, b"spawn_main")


@pytest.mark.realtime
def test_ctrl_c_to_the_group_while_workers_import(tmp_path):
    """``--workers 2``: Ctrl-C to the process group as the spawned workers start (importing):
    exit 130, one line, no traceback from a child, and no half-written run directory."""
    import json
    import subprocess
    import sys
    import time

    from trace_cli_helpers import REPO

    trace = tmp_path / "t.parquet"
    make_trace(np.arange(400) * 10 * MS, models=["a", "b"] * 200, path=trace)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "traceforge", "replay", str(trace), "-o", str(run_dir),
         "--backend", "null", "--workers", "2", "--no-progress"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(_spawned_children(proc.pid)) < 2:
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Error" not in err, err
    assert "interrupted" in err and len(err.strip().splitlines()) == 1, err
    if run_dir.exists():  # either nothing, or a run.json that says interrupted
        assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    else:
        assert "nothing recorded" in err, err


def test_a_spawn_from_another_thread_passes_through_the_signal_wrapper():
    """While LocalPool.start has multiprocessing's spawn swapped, another thread's spawn goes
    straight through (signal.signal from that thread raised ValueError: its spawn failed)."""
    import threading

    from traceforge.replay.workers import _spawn_ignoring_signals

    calls, errors = [], []

    def spawn(path, args, passfds):
        calls.append(signal.getsignal(signal.SIGINT))
        return 4242

    wrapped = _spawn_ignoring_signals(spawn, [signal.SIGINT], signal.default_int_handler)

    def other() -> None:
        try:
            assert wrapped("/bin/true", ["true"], []) == 4242
        except BaseException as exc:  # reported below
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join(10)
    assert errors == [] and len(calls) == 1
    assert calls[0] is signal.getsignal(signal.SIGINT)  # untouched from that thread
