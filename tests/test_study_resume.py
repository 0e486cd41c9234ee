"""Study directory life cycle: kill -9 in the middle, then --resume; a changed spec; a second
study into the same directory; Ctrl-C (SIGINT) exits 130 with study.json consistent."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from study_scale_helpers import two_mix_study
from trace_cli_helpers import REPO, assert_one_line_error, run_cli

from traceforge.errors import BadInput

STUDY_ARGS = dict(rate=60.0, cv=3.0, duration_s=4.0, seed=3, loads=[0.5, 1.0, 1.5],
                  capacity="""
slo = { metric = "p99", ms = 60.0 }
tolerance = 0.05
repeats = 1
""")
STUDY = two_mix_study("resume", **STUDY_ARGS)
# one repeat on one server: for the tests that need a finished study, not its size
SMALL_STUDY = two_mix_study("resume", repeats=1, servers=[1], **STUDY_ARGS)
STABLE = ("name", "kind", "mix", "coords", "repeat", "seed", "load", "status", "run_dir",
          "backend", "error", "outcome")


def cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "traceforge", "study", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def study_json(path: Path) -> dict:
    return json.loads((path / "study.json").read_text())


def stable(data: dict) -> tuple[list, list]:
    # in study.json's own order: a resumed study must list cells exactly as an uninterrupted one
    return [{k: c.get(k) for k in STABLE} for c in data["cells"]], data["capacity"]


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def wait_for_complete(path: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            done = study_json(path)["counts"].get("complete", 0)
        except (OSError, ValueError, KeyError):
            done = 0
        if done >= n:
            return
        time.sleep(0.05)
    raise AssertionError("study did not progress")


def test_kill_9_then_resume_matches_an_uninterrupted_study(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(STUDY)
    full = tmp_path / "full"
    proc = cli(str(spec), "-o", str(full))
    assert proc.wait(timeout=300) == 0, proc.communicate()

    killed = tmp_path / "killed"
    proc = cli(str(spec), "-o", str(killed))
    wait_for_complete(killed, 6, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = study_json(killed)
    assert before["status"] == "running"  # it really died mid-study
    complete = [c["name"] for c in before["cells"] if c["status"] == "complete"]
    assert 6 <= len(complete) < len(stable(study_json(full))[0])
    kept = {n: tree_hashes(killed / "cells" / n) for n in complete}

    proc = cli(str(spec), "-o", str(killed), "--resume")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    after = study_json(killed)
    assert after["status"] == "complete" and after["resumed"] == 1
    for name, hashes in kept.items():  # complete cells untouched, byte for byte
        assert tree_hashes(killed / "cells" / name) == hashes
    assert stable(after) == stable(study_json(full))
    assert not (killed / ".traceforge.lock").exists() and not (killed / ".scratch").exists()
    # every cell directory listed is there, and nothing else
    assert sorted(p.name for p in (killed / "cells").iterdir()) == sorted(
        c["name"] for c in after["cells"])


def finished_small_study(tmp_path: Path, capsys) -> tuple[Path, Path]:
    """SMALL_STUDY run to the end into tmp_path/o: (spec, study directory)."""
    spec = tmp_path / "s.toml"
    spec.write_text(SMALL_STUDY)
    out = tmp_path / "o"
    code, _, err = run_cli(["study", spec, "-o", out], capsys)
    assert code == 0, err
    return spec, out


def test_changed_spec_is_refused_naming_the_keys(tmp_path, capsys):
    spec, out = finished_small_study(tmp_path, capsys)
    snapshot = tree_hashes(out)
    changed = SMALL_STUDY.replace("ms = 60.0", "ms = 70.0")
    assert changed != SMALL_STUDY
    spec.write_text(changed)
    code, _, err = run_cli(["study", spec, "-o", out, "--resume"], capsys)
    assert_one_line_error(code, err, "spec changed", "capacity.slo.ms")
    code, _, err = run_cli(["study", spec, "-o", out], capsys)  # no --resume: non-empty dir
    assert_one_line_error(code, err, "not empty", "--resume")
    assert tree_hashes(out) == snapshot


def test_a_second_study_into_a_claimed_directory_exits_2(tmp_path, capsys):
    spec, out = finished_small_study(tmp_path, capsys)
    import socket

    from traceforge.paths import LOCK_NAME

    # A live owner (this test process) holds the lock: --resume must not take it over.
    (out / LOCK_NAME).write_text(f"{os.getpid()} {socket.gethostname()}\n")
    code, _, err = run_cli(["study", spec, "-o", out, "--resume"], capsys)
    assert_one_line_error(code, err, "being written by another study", str(os.getpid()))
    # An owner on another host (a shared file system) cannot be checked: never taken over.
    (out / LOCK_NAME).write_text("4242 some-other-host\n")
    code, _, err = run_cli(["study", spec, "-o", out, "--resume"], capsys)
    assert_one_line_error(code, err, "being written by another study", "some-other-host")
    # A dead owner's lock is taken over by --resume (nothing left to do: all complete).
    (out / LOCK_NAME).write_text(f"{2**22 + 12345} {socket.gethostname()}\n")
    code, _, err = run_cli(["study", spec, "-o", out, "--resume"], capsys)
    assert code == 0, err
    assert not (out / LOCK_NAME).exists()


def interrupt_after_three(spec: Path, out: Path, sig: signal.Signals) -> dict:
    """Start `study spec -o out`, send `sig` once 3 cells are complete; it must exit 130.
    Returns the study.json it left."""
    proc = cli(str(spec), "-o", str(out))
    wait_for_complete(out, 3, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    return study_json(out)


def test_sigint_exits_130_and_resume_finishes(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(STUDY)
    out = tmp_path / "o"
    data = interrupt_after_three(spec, out, signal.SIGINT)
    assert data["status"] == "interrupted"
    assert "running" not in data["counts"]
    assert not (out / ".traceforge.lock").exists()
    proc = cli(str(spec), "-o", str(out), "--resume")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert study_json(out)["counts"] == {"complete": len(study_json(out)["cells"])}


def test_sigterm_between_or_during_replay_cells_exits_130(tmp_path):
    # null backend: real-time replays, whose loop signal handlers come and go with each cell
    spec = tmp_path / "s.toml"
    spec.write_text("""
name = "term"
backend = "null"
duration_s = 0.4
[mixes.a.models.m]
arrival = { process = "poisson", rate = 50.0 }
[axes]
load = [0.5, 1.0, 1.5, 2.0]
servers = [1, 2, 3]
[options]
service_ms = 2.0
pacer = "sleep"
""")
    out = tmp_path / "o"
    data = interrupt_after_three(spec, out, signal.SIGTERM)
    assert data["status"] == "interrupted"
    assert data["counts"].get("complete", 0) >= 3 and "running" not in data["counts"]
    assert data["counts"].get("complete", 0) < len(data["cells"])


def test_a_study_that_finished_before_this_one_got_the_lock_is_not_overwritten(tmp_path,
                                                                                monkeypatch):
    """The emptiness check runs before the claim; a study that filled the directory in between
    (and released it) must not be overwritten: checked again under the lock."""
    from traceforge.study import engine
    from traceforge.study.spec import parse_study

    out = tmp_path / "o"
    real_claim = engine.claim

    def claim_after_another_study(study_dir):
        (study_dir / "study.json").write_text("{}")  # the other study, done meanwhile
        return real_claim(study_dir)

    monkeypatch.setattr(engine, "claim", claim_after_another_study)
    spec = parse_study(tomllib.loads(STUDY), source="s.toml")
    with pytest.raises(BadInput, match="not empty"):
        engine.run_study(spec, out)
    assert (out / "study.json").read_text() == "{}"
