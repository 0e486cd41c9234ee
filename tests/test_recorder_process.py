"""The process flusher (``flusher="process"``): same rows as the thread flusher, nothing
unscrubbed on disk, a killed dispatcher loses nothing, a dead child is replaced, a failed part
stops the run."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from traceforge.record import read_timeline
from traceforge.record.recorder import CANCELLED, DROPPED, ERROR, OK, TIMEOUT, TimelineRecorder
from traceforge.redact import Scrubber
from traceforge.replay import Outcome

REPO = Path(__file__).resolve().parents[1]


def make(run_dir, n=6, **kw):
    return TimelineRecorder(
        run_dir, request_id=np.arange(n) + 100, model_codes=np.array([0, 1] * n)[:n],
        model_names=["bert", "gpt"], batch_size=np.arange(n) + 1, seq_len=np.full(n, 32),
        max_new_tokens=np.full(n, 4), scheduled_ns=np.arange(n, dtype=np.int64) * 1000,
        session_id=np.array([7, 7, -2**63, -2**63, 9, 9][:n]), **kw)


def fill(rec) -> None:
    rec.sent_ns[:] = rec.scheduled_ns + 7
    rec.complete(3, OK, 9_000, Outcome(service_start_ns=3_100, first_token_ns=3_200,
                                       service_end_ns=3_900, tokens_out=4, worker="w1",
                                       itl_ns=[10, 20, 30], truncated=True))
    rec.complete(0, ERROR, 50, None, "ValueError: x")
    rec.complete(1, TIMEOUT, None, Outcome(worker="w2"), "no response")
    rec.complete(4, OK, 4_500, Outcome(gpu_ns=77, batch_id=5, batched_with=2, worker="w1"))
    rec.warmup_end_ns = 1_500  # set after construction, as the replay does
    rec.finalize_pending(np.array([True, True, True, True, True, False]),
                         cancelled_msg="cancelled: run interrupted", dropped_msg="not sent")


def rows(run_dir):
    return read_timeline(run_dir).sort_by("request_id").to_pydict()


def test_same_rows_as_the_thread_flusher(tmp_path):
    out = {}
    for mode in ("thread", "process"):
        rec = make(tmp_path / mode, flusher=mode)
        fill(rec)
        rec.close()
        out[mode] = rows(tmp_path / mode)
        assert not list((tmp_path / mode / "timeline").glob(".recorder-*"))  # scratch removed
    assert out["process"] == out["thread"]
    got = out["process"]
    assert got["request_id"] == [100, 101, 102, 103, 104]  # row 5 was not due: no row
    assert got["status"] == ["error", "timeout", "cancelled", "ok", "ok"]
    assert got["itl_ns"][3] == [10, 20, 30] and got["worker"] == [None, "w2", None, "w1", "w1"]
    assert got["warmup"] == [True, True, False, False, False]
    assert got["truncated"][3] is True and got["session_id"][:2] == [7, 7]


def test_rows_reach_disk_while_running_and_readers_skip_the_scratch(tmp_path):
    rec = make(tmp_path, flusher="process", flush_interval_s=0.05)
    rec.complete(0, OK, 10, None)
    rec.complete(2, OK, 30, None)
    deadline = time.monotonic() + 60  # a bound on a hang: it returns as soon as they are there
    while time.monotonic() < deadline and read_timeline(tmp_path).num_rows < 2:
        time.sleep(0.02)
    assert list((tmp_path / "timeline").glob(".recorder-*"))  # the child's maps, meanwhile
    assert ds.dataset(tmp_path / "timeline").to_table().num_rows == 2  # the contract's reader
    rec.close()
    assert rec.rows_written == 2 and rec.describe_flusher()["flusher"] == "process"


def test_no_secret_reaches_the_side_log_or_the_parts(tmp_path):
    secret = "sk-live-0123456789abcdef"
    rec = make(tmp_path, flusher="process", scrub=Scrubber([secret]))
    rec.complete(0, ERROR, 5, None, f"401 from server: bad key {secret}")
    scratch = next((tmp_path / "timeline").glob(".recorder-*"))
    assert secret.encode() not in (scratch / "side.log").read_bytes()
    assert b"401 from server" in (scratch / "side.log").read_bytes()
    rec.close()
    for path in (tmp_path / "timeline").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in rows(tmp_path)["error"][0]


def test_a_dead_child_is_replaced_and_every_row_lands_once(tmp_path):
    rec = make(tmp_path, n=6, flusher="process", flush_interval_s=0.05)
    rec.complete(0, OK, 10, None)
    # the child writes row 0 (0.3 s of sleep were not always enough on a loaded machine: the
    # fallback then wrote it, and the test no longer saw a row the child had written)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and read_timeline(tmp_path).num_rows < 1:
        time.sleep(0.02)
    assert read_timeline(tmp_path).num_rows == 1
    rec._proc.kill()
    rec._proc.wait()
    deadline = time.monotonic() + 60
    while rec.flusher_note is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "exited early" in rec.flusher_note
    rec.complete(1, ERROR, 20, None, "boom")
    rec.complete(2, OK, 30, Outcome(worker="w9"))
    rec.close()
    got = rows(tmp_path)
    assert got["request_id"] == [100, 101, 102]
    assert got["error"][1] == "boom" and got["worker"][2] == "w9"
    assert "fallback" in rec.describe_flusher()
    assert not list((tmp_path / "timeline").glob(".recorder-*"))


def test_a_killed_dispatcher_loses_no_finished_row(tmp_path):
    """SIGKILL right after the completions: the child writes them all and removes its scratch."""
    script = textwrap.dedent(f"""
        import os, signal, sys, numpy as np
        sys.path.insert(0, {str(REPO)!r})
        from traceforge.record.recorder import TimelineRecorder, OK, ERROR
        n = 2000
        rec = TimelineRecorder({str(tmp_path)!r}, request_id=np.arange(n),
            model_codes=np.zeros(n, np.int32), model_names=["m"], batch_size=np.ones(n),
            seq_len=np.ones(n), max_new_tokens=np.zeros(n), scheduled_ns=np.arange(n) * 1000,
            flusher="process", flush_interval_s=1.0)
        for i in range(n - 1):
            rec.complete(i, OK if i % 7 else ERROR, i + 5, None, None if i % 7 else "err")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (list((tmp_path / "timeline").glob(".recorder-*"))
                                           or not list((tmp_path / "timeline").glob("part-*"))):
        time.sleep(0.05)
    got = rows(tmp_path)
    assert got["request_id"] == list(range(1999))  # all finished rows, the pending one not
    assert got["error"][7] == "err" and got["error"][8] is None
    assert not list((tmp_path / "timeline").glob(".recorder-*"))


def test_a_failed_part_in_the_child_stops_the_run(tmp_path):
    rec = make(tmp_path, flusher="process", flush_interval_s=0.05)
    # Once the child runs: a directory where its first part must go; the rename fails (as root
    # too), as a full disk would.
    (tmp_path / "timeline" / "part-000001.parquet" / "x").mkdir(parents=True)
    called = []
    rec.on_error = called.append
    rec.complete(0, OK, 10, None)
    deadline = time.monotonic() + 60
    while not called and time.monotonic() < deadline:
        time.sleep(0.02)
    assert called and "timeline flusher process" in str(called[0])
    assert rec.write_error is not None
    with pytest.raises(OSError, match="timeline flusher process"):
        rec.close()


def test_unknown_flusher_is_refused():
    with pytest.raises(ValueError, match="flusher"):
        make("/nonexistent", flusher="fork")
    from traceforge.errors import BadInput
    from traceforge.replay import ReplayOptions

    with pytest.raises(BadInput, match="--flusher") as info:  # the CLI's one line
        ReplayOptions(flusher="fork").validate()
    assert "process" in str(info.value) and "thread" in str(info.value)


def test_sparse_values_live_in_the_side_log_only(tmp_path):
    """While the child writes, this process keeps no per-row error text or inter-token list:
    at overload (every row a timeout) or in a long streamed run those dicts would grow with
    every row."""
    rec = make(tmp_path, n=6, flusher="process")
    rec.complete(0, TIMEOUT, None, None, "no response in 5 s")
    rec.complete(1, OK, 20, Outcome(itl_ns=[1, 2, 3], worker="w1"))
    rec.sent_ns[2] = 5  # sent, never answered: cancelled; the rest were never sent: dropped
    rec.finalize_pending(np.ones(6, bool), cancelled_msg="cancelled: run interrupted",
                         dropped_msg="not sent")
    assert rec.error == {} and rec.itl_ns == {}
    assert rec.status[2] == CANCELLED and rec.status[3] == DROPPED and rec.status[0] == TIMEOUT
    rec.close()
    got = rows(tmp_path)
    assert got["error"][:4] == ["no response in 5 s", None, "cancelled: run interrupted",
                                "not sent"]
    assert got["itl_ns"][1] == [1, 2, 3] and got["worker"][1] == "w1"


def test_a_dead_child_s_unwritten_rows_keep_their_error_text(tmp_path):
    # The child scans once a second: row 0 finishes, then the child dies before writing it.
    rec = make(tmp_path, n=6, flusher="process", flush_interval_s=1.0)
    rec.complete(0, ERROR, 10, None, "ValueError: before the crash")
    rec._proc.kill()
    rec._proc.wait()
    deadline = time.monotonic() + 60
    while rec.flusher_note is None and time.monotonic() < deadline:
        time.sleep(0.01)
    rec.complete(1, ERROR, 20, None, "ValueError: after the crash")
    rec.close()
    got = rows(tmp_path)
    assert got["request_id"] == [100, 101]
    assert got["error"] == ["ValueError: before the crash", "ValueError: after the crash"]


def test_no_space_for_the_maps_falls_back_to_the_thread(tmp_path, monkeypatch):
    import errno

    import traceforge.record.recorder as recorder_mod

    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(recorder_mod.os, "posix_fallocate", full)
    rec = make(tmp_path, flusher="process")
    assert rec.flusher == "thread" and "No space left" in rec.flusher_note
    assert not list((tmp_path / "timeline").glob(".recorder-*"))  # nothing half-made left
    rec.complete(0, OK, 10, None)
    rec.close()
    assert rows(tmp_path)["request_id"] == [100]
    assert "No space left" in rec.describe_flusher()["fallback"]


def test_a_child_that_cannot_start_leaves_the_thread_in_charge(tmp_path, monkeypatch):
    import traceforge.record.recorder as recorder_mod

    monkeypatch.setattr(recorder_mod.sys, "executable", str(tmp_path / "no-such-python"))
    rec = make(tmp_path, flusher="process")
    assert "did not start" in rec.flusher_note
    rec.complete(0, ERROR, 10, None, "boom")
    rec.complete(1, OK, 20, None)
    rec.close()
    got = rows(tmp_path)
    assert got["request_id"] == [100, 101] and got["error"][0] == "boom"
    assert not list((tmp_path / "timeline").glob(".recorder-*"))  # scratch removed


def test_a_child_that_says_something_else_is_stopped(tmp_path, monkeypatch):
    """A child whose first line is not 'ready' is killed before the thread takes over, so no
    row can be written twice."""
    import traceforge.record.recorder as recorder_mod

    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\necho hello\nsleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setattr(recorder_mod.sys, "executable", str(fake))
    rec = make(tmp_path / "run", flusher="process")
    assert "did not start" in rec.flusher_note and "hello" in rec.flusher_note
    assert rec._proc.poll() is not None  # killed
    rec.complete(0, OK, 10, None)
    rec.close()
    assert rows(tmp_path / "run")["request_id"] == [100]
