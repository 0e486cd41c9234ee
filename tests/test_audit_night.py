"""The night audit's replay / simulate flag findings (2026-12-01): one line naming the flag,
exit 2, nothing written, never a traceback."""

from __future__ import annotations

import pytest
from replay_helpers import MS, make_trace, two_model_trace
from trace_cli_helpers import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    return two_model_trace(tmp_path_factory.mktemp("t"), 6)


@pytest.mark.parametrize("args, flag, needle", [
    # ValueError: Invalid IPv6 URL (a traceback)
    (["--backend", "http", "--url", "http://[::1"], "--url", "not a URL"),
    (["--scrape", "http://[::1/metrics"], "--scrape", "not a URL"),
    # CR/LF in a header: every request failed in aiohttp, exit 0 with only error rows
    (["--backend", "http", "--url", "http://127.0.0.1:9", "--header", "X-A: a\r\nInjected: 1"],
     "--header", "control character"),
    (["--backend", "http", "--url", "http://127.0.0.1:9", "--header", "X-\nA: 1"],
     "--header", "control character"),
    # silently ignored before
    (["--shard-by", "model"], "--shard-by", "--workers"),
    (["--scrape-interval", "1"], "--scrape-interval", "--scrape"),
])
def test_replay_flag_defects(trace, tmp_path, capsys, args, flag, needle):
    out = tmp_path / "run"
    code, _, err = run_cli(["replay", trace, "-o", out, *args, "--no-progress"], capsys)
    assert_one_line_error(code, err, flag, needle)
    assert "Injected" not in err  # a header value is never shown (it may be a credential)
    assert not out.exists()


@pytest.mark.parametrize("flag, value", [("--servers", "7"), ("--service-ms", "5000"),
                                         ("--service-dist", "const")])
def test_simulate_refuses_null_model_flags_beside_a_profile(trace, tmp_path, capsys, flag,
                                                            value):
    out = tmp_path / "sim"
    code, _, err = run_cli(["simulate", trace, "-o", out, "--profile", "cpu-tiny", "--mode",
                            "exclusive", "--zoo", "a=tiny-bert,b=tiny-gpt2", flag, value],
                           capsys)
    assert_one_line_error(code, err, flag, "ignored with --profile")
    assert not out.exists()


def test_an_output_through_a_symlink_and_dotdot_is_the_kernel_s_path(tmp_path, capsys):
    """``-o link/../p/run`` where link -> ../p: os.path.abspath dropped "link/.." lexically, so
    the checks and the temp files named <parent>/p/run while mkdir made p/run: exit 2 with a
    timeline/ left behind (or temp files in another folder). And an output that names the
    input through the link is refused."""
    import os

    home = tmp_path / "p"
    home.mkdir()
    make_trace([k * MS for k in range(4)], path=home / "t.parquet")
    (home / "link").symlink_to("../p")
    cwd = os.getcwd()
    os.chdir(home)
    try:
        code, _, err = run_cli(["replay", "t.parquet", "-o", "link/../p/run", "--no-progress"],
                               capsys)
        assert code == 0, err
        assert (home / "run" / "run.json").exists() and not (home / "p").exists()
        code, _, err = run_cli(["trace", "import", "csv", "t.parquet", "--columns", "time=t",
                                "-o", "link/../p/t.parquet"], capsys)
        assert_one_line_error(code, err, "link/../p/t.parquet", "a source being imported")
    finally:
        os.chdir(cwd)


def test_study_json_never_holds_url_credentials():
    """``[options] scrape_url = "http://u:pw@..."`` was copied into study.json as written."""
    from traceforge.study.spec import parse_study

    spec = parse_study({
        "name": "s", "backend": "null", "duration_s": 1.0,
        "mixes": {"m": {"models": {"a": {"arrival": {"process": "poisson", "rate": 5.0}}}}},
        "axes": {"load": [1.0]},
        "options": {"scrape_url": "http://u:STUDYPW@127.0.0.1:9/metrics?token=STUDYTOKEN"}})
    text = str(spec.to_dict())
    assert "STUDYPW" not in text and "STUDYTOKEN" not in text
    assert "http://***@127.0.0.1:9/metrics?token=***" in text
