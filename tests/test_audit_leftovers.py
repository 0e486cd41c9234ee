"""The audit's left-over findings (closing note of 2026-12-01): each bad input is one line naming
the file, key and value, exit 2, nothing written; strict JSON; a flag the chosen backend would
ignore is refused."""

from __future__ import annotations

import json
import warnings

import pytest
from replay_helpers import two_model_trace
from trace_cli_helpers import assert_one_line_error, run_cli

SESSION_SPEC = """
seed = 1
duration_s = 10
[models.chat]
arrival = {{process = "poisson", rate = 2}}
seq_len = 64
max_new_tokens = 16
sessions = {{turns = 3, think_time_s = {think}}}
"""


@pytest.mark.parametrize("think", [
    '{dist = "lognormal", median = 1e300, sigma = 1}',  # overflows to inf
    '{dist = "lognormal", median = 1e300, sigma = 100}',  # inf - inf = nan in the cumsum
    "1e10",  # finite, but the second turn lies past 292 years
])
def test_session_think_times_out_of_range_name_the_key(tmp_path, capsys, think):
    spec = tmp_path / "s.toml"
    spec.write_text(SESSION_SPEC.format(think=think))
    out = tmp_path / "t.parquet"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow warnings reached stderr before
        code, _, err = run_cli(["trace", "gen", spec, "-o", out], capsys)
    assert_one_line_error(code, err, str(spec), "models.chat.sessions.think_time_s",
                          "int64-nanosecond range")
    assert "up to nan" not in err
    assert not out.exists()


def test_session_think_times_in_range_still_generate(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text(SESSION_SPEC.format(think="1.5"))
    code, _, err = run_cli(["trace", "gen", spec, "-o", tmp_path / "t.parquet"], capsys)
    assert code == 0, err


@pytest.mark.parametrize("csv, columns, key, lines", [
    # turn 2 (line 4) arrives after turn 3 (line 3) of session "a"
    ("ts,s,t\n0.0,a,1\n1.0,a,3\n2.0,a,2\n3.0,b,1\n", "time=ts,session=s,turn=t", "t = 2",
     ("line 4", "line 3")),
    # the id/parent chain 1 <- 2 <- 3: row 3 (depth 3) arrives before row 2 (depth 2)
    ("ts,id,parent\n0.0,1,\n2.0,2,1\n1.0,3,2\n", "time=ts,id=id,parent=parent",
     "turn (depth in its id/parent chain) = 2", ("line 3", "line 4")),
])
def test_csv_turns_out_of_order_name_the_file_and_line(tmp_path, capsys, csv, columns, key,
                                                       lines):
    src = tmp_path / "log.csv"
    src.write_text(csv)
    out = tmp_path / "t.parquet"
    code, _, err = run_cli(["trace", "import", "csv", src, "--columns", columns, "-o", out],
                           capsys)
    assert_one_line_error(code, err, f"{src}: {key}", "must increase with arrival time",
                          *lines)
    assert "SRC" not in err and "row " not in err
    assert not out.exists()


def test_csv_turns_out_of_order_in_the_second_file_of_a_model_column(tmp_path, capsys):
    """With model=COL, records are filtered by model and span files: the line still points at
    the right file."""
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text("ts,m,s,t\n0.0,x,a,1\n0.5,y,q,1\n")
    second.write_text("ts,m,s,t\n1.0,y,q,2\n1.5,x,a,3\n2.0,x,a,2\n")
    code, _, err = run_cli(["trace", "import", "csv", first, second, "--columns",
                            "time=ts,model=m,session=s,turn=t", "-o", tmp_path / "t.parquet"],
                           capsys)
    assert_one_line_error(code, err, f"{second}: t = 2", "turn 2 (line 4)", "turn 3 (line 3)")


def test_stats_json_is_strict_for_a_zero_length_trace(tmp_path, capsys):
    src = tmp_path / "one.csv"
    src.write_text("ts\n5.0\n")
    trace = tmp_path / "t.parquet"
    code, _, err = run_cli(["trace", "import", "csv", src, "--columns", "time=ts",
                            "--time-scale", "1e-300", "-o", trace], capsys)
    assert code == 0, err
    code, out, err = run_cli(["trace", "stats", trace, "--json"], capsys)
    assert code == 0, err
    assert "Infinity" not in out and "NaN" not in out
    report = json.loads(out)  # strict: no non-finite tokens
    assert report["models"]["one"]["rate"] is None  # 1 arrival over 0 s: no rate


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    return two_model_trace(tmp_path_factory.mktemp("t"), 10)


@pytest.mark.parametrize("backend, args, flag", [
    ("null", ["--max-batch", "0"], "--max-batch"),
    ("null", ["--device", "cuda"], "--device"),
    ("null", ["--no-prewarm"], "--prewarm/--no-prewarm"),
    ("null", ["--url", "http://127.0.0.1:1"], "--url"),
    ("null", ["--tokenizer", "tiny-bpe"], "--tokenizer"),
    ("resident", ["--seed", "3"], "--seed"),
    ("resident", ["--service-ms", "2"], "--service-ms"),
    ("resident", ["--api", "json"], "--api"),
    ("http", ["--mode", "mps"], "--mode"),
    ("http", ["--servers", "4"], "--servers"),
])
def test_a_flag_the_backend_would_ignore_is_refused(trace, tmp_path, capsys, backend, args,
                                                    flag):
    out = tmp_path / "run"
    extra = ["--url", "http://127.0.0.1:1"] if backend == "http" and "--url" not in args else []
    code, _, err = run_cli(["replay", trace, "-o", out, "--backend", backend, *extra, *args,
                            "--no-progress"], capsys)
    assert_one_line_error(code, err, flag, "only")
    assert not out.exists()


def test_an_unknown_zoo_entry_is_refused_whatever_the_backend(trace, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(["replay", trace, "-o", out, "--zoo", "a=nope", "--no-progress"],
                           capsys)
    assert_one_line_error(code, err, "--zoo", "nope", "unknown model-zoo entry")
    assert not out.exists()


def test_the_null_backend_still_takes_its_own_flags_and_a_zoo(trace, tmp_path, capsys):
    code, _, err = run_cli(["replay", trace, "-o", tmp_path / "run", "--servers", "2",
                            "--service-ms", "1", "--seed", "4", "--zoo", "a=tiny-bert",
                            "--no-progress"], capsys)
    assert code == 0, err


@pytest.mark.parametrize("value", ["abc", "-1", "20"])
def test_a_bad_cpu_worker_nice_is_one_line(trace, tmp_path, capsys, monkeypatch, value):
    monkeypatch.setenv("TRACEFORGE_CPU_WORKER_NICE", value)
    out = tmp_path / "run"
    code, _, err = run_cli(["replay", trace, "-o", out, "--backend", "resident",
                            "--zoo", "a=tiny-bert,b=tiny-bert", "--no-progress"], capsys)
    assert_one_line_error(code, err, "TRACEFORGE_CPU_WORKER_NICE", value)
    assert not out.exists()


SERVEGEN_STUDY = """
name = "sg"
backend = "simulate"
duration_s = 60
[mixes.sg.models.r1]
arrival = {process = "servegen", pool = "pool", clients = 3}
[axes]
load = [0.5, 1.0]
[options]
service_ms = 5
"""


def test_a_servegen_mix_in_a_study_scales_with_load_and_finds_its_pool(tmp_path, monkeypatch,
                                                                       capsys):
    """A relative pool lies beside the study file (it resolved against the current directory),
    and a load multiplies the pool's rate_scale (the mix was refused: "no rate")."""
    import shutil

    from conftest import REPO

    from traceforge.schema import read_trace

    home = tmp_path / "studies"
    home.mkdir()
    shutil.copytree(REPO / "traces" / "servegen-deepseek-r1-2h", home / "pool")
    (home / "sg.toml").write_text(SERVEGEN_STUDY)
    monkeypatch.chdir(tmp_path)  # not the study's folder
    out = tmp_path / "out"
    code, _, err = run_cli(["study", home / "sg.toml", "-o", out], capsys)
    assert code == 0, err
    half, full = (read_trace(out / "cells" / f"sg__load={x}__r0" / "trace.parquet")
                  for x in ("0.5", "1"))
    scale = [t.meta["spec"]["models"]["r1"]["arrival"]["rate_scale"] for t in (half, full)]
    assert scale == [0.5, 1.0]
    # common random numbers: half the load is about half the requests (the pool's rates are
    # time-varying, so not exactly; 2 x 0.5 = 1.0 within 30 %)
    ratio = half.table.num_rows / full.table.num_rows
    assert 0.35 < ratio < 0.65, (half.table.num_rows, full.table.num_rows)
