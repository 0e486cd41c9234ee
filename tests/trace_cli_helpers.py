"""Run the real CLI entry point in-process (exit code, stdout, stderr) for the trace tests."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
# CI has the shared data folder beside the clone root (COMMON.md)
SHARED_DATA = Path(os.environ.get("TRACEFORGE_SHARED_DATA") or REPO.parent / "shared" / "data")


def shared_file(*parts: str) -> Path:
    """A real trace under SHARED_DATA; skips the calling test, naming the path, where absent."""
    import pytest

    path = SHARED_DATA.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{path} absent (real traces live in ../shared/data)")
    return path

def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from traceforge.cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("traceforge: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
