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
from replay_helpers import make_trace

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
