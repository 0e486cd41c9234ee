"""The command-line frame: every command registered, usage errors as one line with exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from traceforge.cli import COMMAND_MODULES


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "traceforge", *args], capture_output=True,
                          text=True, timeout=60)


def test_every_command_group_is_registered():
    import typer

    from traceforge.cli import app

    # the registered names themselves: the help text mentions most of these words anyway
    assert set(typer.main.get_command(app).commands) == {
        "trace", "replay", "simulate", "profile", "report", "compare", "export", "demo", "zoo",
        "study"}
    assert len(COMMAND_MODULES) == 9
    assert run("--help").returncode == 0


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("trace", "gen"), "Missing argument"),
        (("trace", "gen", "x.toml", "-o", "y.parquet", "--seed", "abc"), "--seed"),
        (("no-such-command",), "No such command"),
        (("report",), "Missing argument"),
    ],
)
def test_usage_errors_are_one_line_exit_2(tmp_path, args, fragment):
    out = subprocess.run([sys.executable, "-m", "traceforge", *args], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("traceforge: error:") and fragment in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_version():
    from traceforge import __version__

    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == __version__
