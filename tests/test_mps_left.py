"""python -m traceforge.gpu.mps_left: live MPS processes count, zombies are reported apart."""

from __future__ import annotations

import traceforge.gpu.mps_left as mps_left


def test_none_left(monkeypatch, capsys):
    monkeypatch.setattr(mps_left, "mps_processes", lambda: [])
    monkeypatch.setattr(mps_left, "mps_zombies", lambda: [])
    assert mps_left.main() == 0
    assert capsys.readouterr().out.strip() == "none"


def test_zombie_is_not_a_live_daemon(monkeypatch, capsys):
    monkeypatch.setattr(mps_left, "mps_processes", lambda: [])
    monkeypatch.setattr(mps_left, "mps_zombies", lambda: [1092])
    assert mps_left.main() == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("none") and "zombie" in out and "1092" in out


def test_live_daemon_fails(monkeypatch, capsys):
    live = [{"pid": 77, "name": "nvidia-cuda-mps-control", "pipe_dir": "/tmp/x/pipe"}]
    monkeypatch.setattr(mps_left, "mps_processes", lambda: live)
    monkeypatch.setattr(mps_left, "mps_zombies", lambda: [])
    assert mps_left.main() == 1
    assert "77 nvidia-cuda-mps-control (pipe /tmp/x/pipe)" in capsys.readouterr().out


def test_scans_this_machine():
    from traceforge.gpu.mps import mps_zombies

    assert all(isinstance(p, int) for p in mps_zombies())
