"""Audit classes found by trying bad values on every command (issue 10): each is one line
naming the flag and value, exit 2, no traceback, nothing written."""

from __future__ import annotations

import pytest
from replay_helpers import MS, make_trace, two_model_trace
from trace_cli_helpers import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    return two_model_trace(tmp_path_factory.mktemp("t"), 20)


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
    # a profile-model flag on the null model was ignored silently
    ("simulate", "--cold-start", None),
    ("simulate", "--warm-start", None),
])
def test_bad_numbers_are_one_line_and_write_nothing(trace, tmp_path, capsys, command, flag,
                                                    value):
    out = tmp_path / "run"
    args = [flag] if value is None else [flag, value]
    code, _, err = run_cli([command, trace, "-o", out, *args]
                           + (["--no-progress"] if command == "replay" else []), capsys)
    assert_one_line_error(code, err, flag)
    assert not out.exists()


STUDY = """
name = "s"
backend = "{backend}"
duration_s = {duration}
[mixes.a.models.m]
arrival = {{ process = "poisson", rate = {rate} }}
[axes]
load = [1.0, {top}]
[options]
service_ms = {service}
{extra}
"""


@pytest.mark.parametrize("values, key", [
    # each made every cell fail at run time (study "failed", exit 1, study.json written)
    ({"service": "1e300"}, "options.service_ms"),
    ({"service": "1e13", "backend": "null"}, "options.service_ms"),
    ({"duration": "1e300"}, "duration_s"),
    # the memory guard at the grid's highest load (1000 × 1e6/s × 1e4 s)
    ({"rate": "1e6", "duration": "1e4", "top": "1000"}, "mixes.a.duration_s"),
    # simulate's --duration is an option too (a study axis), checked like the flag
    ({"extra": "duration_s = 0"}, "options.duration_s"),
    # cold_start without a profile: every cell failed in simulate()
    ({"extra": "cold_start = true"}, "options.cold_start"),
])
def test_study_values_no_cell_could_run_are_refused_up_front(tmp_path, capsys, values, key):
    fields = {"backend": "simulate", "duration": "1.0", "rate": "50.0", "top": "2.0",
              "service": "5.0", "extra": "", **values}
    spec = tmp_path / "s.toml"
    spec.write_text(STUDY.format(**fields))
    out = tmp_path / "out"
    for extra in ([], ["--dry-run"]):
        code, _, err = run_cli(["study", spec, "-o", out, *extra], capsys)
        assert_one_line_error(code, err, f"{key} = ")
        assert not out.exists()


def test_demo_output_inside_a_run_directory_is_refused(tmp_path, capsys, trace):
    run = tmp_path / "run"
    code, _, err = run_cli(["simulate", trace, "-o", run], capsys)
    assert code == 0, err
    before = sorted(p.name for p in run.rglob("*"))
    for out in (run, run / "timeline" / "demo"):
        code, _, err = run_cli(["demo", "-o", out, "--duration", "0.5"], capsys)
        assert_one_line_error(code, err, "-o", "run or study directory")
    assert sorted(p.name for p in run.rglob("*")) == before


@pytest.mark.parametrize("argv", [
    ["trace", "gen", "{d}", "-o", "{o}"],
    ["trace", "import", "csv", "{d}", "-o", "{o}", "--columns", "time=t"],
    ["study", "{d}", "-o", "{o}"],
])
def test_a_directory_given_as_an_input_file_says_so(tmp_path, capsys, argv):
    d = tmp_path / "adir"
    d.mkdir()
    out = tmp_path / "out.parquet"
    code, _, err = run_cli([a.format(d=d, o=out) for a in argv], capsys)
    assert_one_line_error(code, err, "is a directory, not a file")
    assert not out.exists()


def test_run_json_counts_shapes_instead_of_listing_them(tmp_path, capsys):
    """Found on a 200 kB disk: run.json listed every distinct request shape per model (26 kB of
    JSON for 12 k rows, 147 kB indented), so the final write of run.json failed first."""
    import json

    import numpy as np

    trace = tmp_path / "t.parquet"
    make_trace(np.arange(300) * MS, path=trace)  # seq_len 16: one shape per model
    code, _, err = run_cli(["replay", trace, "-o", tmp_path / "run", "--no-progress",
                            "--time-scale", "0.01", "--service-ms", "0.01"], capsys)
    assert code == 0, err
    models = json.loads((tmp_path / "run" / "run.json").read_text())["options"]["models"]
    assert models == [{"name": "m", "zoo": None, "shapes": 1, "seq_buckets": None}]


def test_trace_gen_never_writes_over_a_file_the_spec_reads(tmp_path, capsys):
    data = tmp_path / "lengths.csv"
    data.write_text("prompt\n10\n20\n30\n")
    spec = tmp_path / "w.toml"
    spec.write_text('name = "x"\nduration_s = 2\n[models.a]\n'
                    'arrival = { process = "poisson", rate = 10 }\n'
                    'seq_len = { dist = "empirical", path = "lengths.csv", column = "prompt" }\n')
    code, _, err = run_cli(["trace", "gen", spec, "-o", data], capsys)
    assert_one_line_error(code, err, "-o", "a file the workload spec reads")
    assert data.read_text() == "prompt\n10\n20\n30\n"
    code, _, err = run_cli(["trace", "gen", spec, "-o", tmp_path / "t.parquet"], capsys)
    assert code == 0, err


def test_profile_keep_runs_must_be_new_or_empty(tmp_path, capsys, trace):
    run = tmp_path / "run"
    code, _, err = run_cli(["simulate", trace, "-o", run], capsys)
    assert code == 0, err
    before = sorted(str(p) for p in run.rglob("*"))
    code, _, err = run_cli(["profile", "--models", "tiny-bert", "--device", "cpu", "-o",
                            tmp_path / "p.json", "--keep-runs", run], capsys)
    assert_one_line_error(code, err, "--keep-runs", "already holds a run")
    assert sorted(str(p) for p in run.rglob("*")) == before
    assert not (tmp_path / "p.json").exists()


def test_workers_beyond_rows_or_cpus_are_refused_before_any_process_starts(tmp_path, capsys,
                                                                        trace):
    """1000 local workers for a 20-row trace spawned 1000 interpreters (load average 140)."""
    import os

    small = tmp_path / "three.parquet"
    make_trace([0, MS, 2 * MS], path=small)
    for path, workers, why in ((small, "4", "more workers than the trace has rows"),
                               (trace, str(4 * len(os.sched_getaffinity(0)) + 1), "per CPU"),
                               (trace, "1000", "per CPU")):
        code, _, err = run_cli(["replay", path, "-o", tmp_path / "run", "--workers", workers,
                                "--no-progress"], capsys)
        assert_one_line_error(code, err, "--workers", workers, why)
        assert not (tmp_path / "run").exists()


def test_slo_given_twice_for_a_model_is_refused(tmp_path, capsys, trace):
    code, _, err = run_cli(["simulate", trace, "-o", tmp_path / "run"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["report", tmp_path / "run", "--slo", "a=5,a=6"], capsys)
    assert_one_line_error(code, err, "model given twice")


def test_a_failed_study_says_why_on_its_one_line(tmp_path, capsys, monkeypatch):
    """Found on a full disk: "study failed: failed 2 -> DIR" and nothing about the cause."""
    from traceforge.study import runner

    def no_space(cell, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runner, "build_trace", no_space)
    spec = tmp_path / "s.toml"
    spec.write_text(STUDY.format(backend="simulate", duration="1.0", rate="5.0", top="2.0",
                                 service="1.0", extra=""))
    code, _, err = run_cli(["study", spec, "-o", tmp_path / "out", "--no-progress"], capsys)
    assert code == 1
    line = err.strip().splitlines()[-1]
    assert line.startswith("study failed: failed 2 (first: ") and "No space left" in line


@pytest.mark.parametrize("where", ["input", "output", "loop-in", "loop-out"])
def test_impossible_paths_are_bad_input_not_a_failure(tmp_path, capsys, trace, where):
    """A name longer than the file system allows (Path.exists raises on it) or a symlink loop:
    exit 2 and one line (was exit 1 "failed", or a RuntimeError traceback from resolve())."""
    long = "y" * 300
    loop = tmp_path / "loop.parquet"
    loop.symlink_to(loop)
    source, out = {"input": (tmp_path / f"{long}.parquet", tmp_path / "run"),
                   "output": (trace, tmp_path / long),
                   "loop-in": (loop, tmp_path / "run"),
                   "loop-out": (trace, loop)}[where]
    code, _, err = run_cli(["simulate", source, "-o", out], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("traceforge: error: ")
    assert not (tmp_path / "run").exists()


def test_a_huge_server_count_costs_nothing_and_changes_nothing(tmp_path, capsys, trace):
    """--servers 10**9 allocated a billion heap entries / labels (killed by the OOM killer);
    servers are now opened on first use, and the timeline equals that of exactly as many
    servers as rows (row i takes server i either way)."""
    import json

    from traceforge.record import read_timeline

    for name, servers in (("huge", "1000000000"), ("rows", "20")):
        code, _, err = run_cli(["simulate", trace, "-o", tmp_path / name, "--servers", servers],
                               capsys)
        assert code == 0, err
    huge, rows = (read_timeline(tmp_path / n).to_pydict() for n in ("huge", "rows"))
    assert huge == rows
    code, _, err = run_cli(["replay", trace, "-o", tmp_path / "replay", "--servers",
                            "1000000000", "--no-progress", "--time-scale", "0.01"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "replay" / "run.json").read_text())["counts"] == {"ok": 20}


@pytest.mark.parametrize("flag, value", [("--repeats", "1000000000000"),
                                         ("--warmup", "1000000000"),
                                         ("--corun-repeats", "100000"),
                                         ("--corun-seconds", "1e12")])
def test_profile_counts_that_would_run_for_days_are_refused(tmp_path, capsys, flag, value):
    code, _, err = run_cli(["profile", "--models", "tiny-bert", "--device", "cpu", "-o",
                            tmp_path / "p.json", flag, value], capsys)
    assert_one_line_error(code, err, flag)
    assert not (tmp_path / "p.json").exists()


def test_a_duration_too_long_for_memory_names_the_flag_and_writes_nothing(tmp_path, capsys):
    """demo --duration 1e9 made its output folder before the memory guard refused; and the
    refusal named the spec's duration_s (with the shipped spec's path), not --duration."""
    from traceforge.generate import DEMO_SPEC

    for argv, out in ((["demo", "-o", tmp_path / "d"], tmp_path / "d"),
                      (["trace", "gen", DEMO_SPEC, "-o", tmp_path / "t.parquet"],
                       tmp_path / "t.parquet")):
        code, _, err = run_cli([*argv, "--duration", "1e9"], capsys)
        assert_one_line_error(code, err, "--duration = 1000000000.0: ", "of memory")
        assert not out.exists()


def test_a_schedule_too_short_to_judge_a_rate_does_not_blame_the_generator():
    """Two rows 1 ns apart, sent 0.3 ms apart: "achieved 0.0 % of the target rate" was a
    generator-limited WARNING; over so short a schedule only send lag can say."""
    import numpy as np

    from traceforge.replay.selfcheck import self_check

    def check(sched, sent):
        sched, sent = np.asarray(sched, np.int64), np.asarray(sent, np.int64)
        return self_check(scheduled_ns=sched, sent_ns=sent, ready_ns=sched,
                          sent_mask=np.ones(len(sched), bool), slot_waits=0,
                          closed_loop=False, pacer="spin", event_loop="precise")

    short = check([0, 1], [100_000, 400_000])
    assert short["achieved_rate_ratio"] < 0.01 and not short["generator_limited"]
    # a long schedule sent at half speed is still flagged
    slow = check(np.arange(100) * 10 * MS, np.arange(100) * 20 * MS)
    assert slow["generator_limited"] and "of the target rate" in slow["warning"]


@pytest.mark.parametrize("command", ["report", "compare", "export"])
def test_an_existing_file_of_another_kind_is_never_replaced(tmp_path, capsys, trace, command):
    """`report RUN --html t.parquet` replaced the trace the run was made from with HTML."""
    import shutil

    copy = tmp_path / "t.parquet"
    shutil.copy(trace, copy)
    run = tmp_path / "run"
    code, _, err = run_cli(["simulate", copy, "-o", run], capsys)
    assert code == 0, err
    before = copy.read_bytes()
    argv = {"report": ["report", run, "--html", copy],
            "compare": ["compare", run, run, "--html", copy],
            "export": ["export", "perfetto", run, "-o", copy]}[command]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "exists and is not a")
    assert copy.read_bytes() == before
    # a new file of any name is still written
    code, _, err = run_cli([*argv[:-1], tmp_path / "new.out"], capsys)
    assert code == 0, err
