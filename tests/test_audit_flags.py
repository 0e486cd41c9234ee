"""Audit classes found by trying bad values on every command (issue 10): each is one line
naming the flag and value, exit 2, no traceback, nothing written."""

from __future__ import annotations

import pytest
from replay_helpers import MS, make_trace
from trace_cli_helpers import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "t.parquet"
    make_trace([k * MS for k in range(20)], models=["a", "b"] * 10, path=path)
    return path


@pytest.mark.parametrize("command, flag, value", [
    # negative seeds reached numpy (a ValueError traceback)
    ("simulate", "--seed", "-1"),
    ("replay", "--seed", "-1"),
    # times beyond int64 ns: an OverflowError from the event loop's timer, or wrapped values
    ("replay", "--duration", "1e300"),
    ("replay", "--timeout", "1e300"),
    ("replay", "--drain-timeout", "1e300"),
    ("simulate", "--duration", "1e300"),
    ("simulate", "--drain-timeout", "1e300"),
    # service times whose sum leaves int64 ns: a numpy cast warning and garbage times
    ("simulate", "--service-ms", "1e300"),
    ("simulate", "--service-ms", "1e13"),
    ("replay", "--service-ms", "1e300"),
])
def test_bad_numbers_are_one_line_and_write_nothing(trace, tmp_path, capsys, command, flag,
                                                    value):
    out = tmp_path / "run"
    code, _, err = run_cli([command, trace, "-o", out, flag, value, "--no-progress"]
                           if command == "replay" else [command, trace, "-o", out, flag, value],
                           capsys)
    assert_one_line_error(code, err, flag)
    assert not out.exists()
