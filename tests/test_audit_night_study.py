"""Audit (night): a study's [options] and axis values are checked with the CLI's own validators
for every configuration before the study directory exists; a simulate profile whose ``device``
is not a table, or whose service CV underflows when squared, is refused naming the key. Each is
one line naming the file, key and value, exit 2, nothing written — where they used to fail every
cell (exit 1, study directory left behind) or raise AttributeError / ZeroDivisionError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trace_cli_helpers import assert_one_line_error, run_cli

SHIPPED = Path(__file__).resolve().parents[1] / "traceforge" / "data" / "profiles"

STUDY = """
name = "night"
backend = "simulate"
repeats = 1
seed = 5
duration_s = 1.0
[mixes.a.models.m]
arrival = {{ process = "poisson", rate = 10.0 }}
zoo = "tiny-bert"
[options]
profile = "cpu-tiny"
mode = "exclusive"
{extra}
"""


@pytest.mark.parametrize("extra, key, needles", [
    ("warmup_s = -1.0", "options.warmup_s = -1.0", ["must be >= 0"]),
    ("warmup_s = 1e300", "options.warmup_s", ["int64-nanosecond range"]),
    ("time_scale = nan", "options.time_scale = nan", ["must be a positive number"]),
    ("time_scale = inf", "options.time_scale = inf", ["must be a positive number"]),
    ("time_scale = 1e300", "options.time_scale", ["int64-nanosecond range"]),
    ("seed = -1", "options.seed = -1", ["must be an integer >= 0"]),
    ("max_wait_ms = -1.0", "options.max_wait_ms = -1.0", ["must be >= 0"]),
    ("max_wait_ms = 1e300", "options.max_wait_ms", ["int64-nanosecond range"]),
    ("[axes]\ntime_scale = [0.0]", "axes.time_scale = 0.0", ["must be a positive number"]),
    ("[axes]\ntime_scale = [1e300]", "axes.time_scale", ["int64-nanosecond range"]),
    ("[axes]\nmax_wait_ms = [-1.0]", "axes.max_wait_ms = -1.0", ["must be >= 0"]),
    ("[axes]\nseed = [1, -1]", "axes.seed = -1", ["must be an integer >= 0"]),
    ("[axes]\nwarmup_s = [0.0, -1.0]", "axes.warmup_s = -1.0", ["must be >= 0"]),
])
def test_bad_study_option_or_axis_value_is_refused_before_anything_is_written(
        tmp_path, capsys, extra, key, needles):
    spec = tmp_path / "s.toml"
    spec.write_text(STUDY.format(extra=extra))
    out = tmp_path / "out"
    code, _, err = run_cli(["study", spec, "-o", out], capsys)
    assert_one_line_error(code, err, f"{spec}: {key}", *needles)
    assert not out.exists()


@pytest.mark.parametrize("backend, extra, key", [
    ("null", "time_scale = 1e300", "options.time_scale"),
    ("null", "warmup_s = -1.0", "options.warmup_s = -1.0"),
    ("null", "seed = -1", "options.seed = -1"),
])
def test_replay_backends_check_the_same_options_up_front(tmp_path, capsys, backend, extra, key):
    text = (STUDY.replace('backend = "simulate"', f'backend = "{backend}"')
            .replace('profile = "cpu-tiny"\n', "").replace('mode = "exclusive"\n', "")
            .replace('zoo = "tiny-bert"\n', ""))
    spec = tmp_path / "s.toml"
    spec.write_text(text.format(extra=extra))
    out = tmp_path / "out"
    code, _, err = run_cli(["study", spec, "-o", out], capsys)
    assert_one_line_error(code, err, f"{spec}: {key}")
    assert not out.exists()


def test_good_study_option_values_still_run(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text(STUDY.format(extra="warmup_s = 0.1\nseed = 3\nmax_wait_ms = 1.0\n"
                                       "[axes]\ntime_scale = [0.5, 2.0]"))
    code, out, err = run_cli(["study", spec, "-o", tmp_path / "out"], capsys)
    assert code == 0, err
    assert "complete 2" in out + err


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    root = tmp_path_factory.mktemp("t")
    spec = root / "w.toml"
    spec.write_text('seed = 1\nduration_s = 2\n'
                    '[models.bert]\narrival = {process = "poisson", rate = 5}\nzoo = "tiny-bert"\n'
                    '[models.gpt]\narrival = {process = "poisson", rate = 5}\nzoo = "tiny-gpt2"\n')
    path = root / "t.parquet"
    from traceforge.cli import main

    try:
        main(["trace", "gen", str(spec), "-o", str(path)])
    except SystemExit as exc:
        assert not exc.code
    return path


@pytest.mark.parametrize("text_edit, key", [
    (lambda s: s.replace('"device": {', '"device": "cpu", "x": {', 1), "device = 'cpu'"),
    (lambda s: s.replace('"device": {', '"device": NaN, "x": {', 1), "device = nan"),
    (lambda s: s.replace('"device": {', '"device": null, "x": {', 1), "device = None"),
    (lambda s: s.replace('"device": {', '"device": [1], "x": {', 1), "device = '[1]'"),
    (lambda s: json.dumps(_cv(json.loads(s), 1e-300)),
     "models.tiny-bert.service_cv = 1e-300"),
    (lambda s: json.dumps(_cv(json.loads(s), 1e-7)), "models.tiny-bert.service_cv = 1e-07"),
])
def test_a_profile_device_not_a_table_or_an_underflowing_cv_is_refused(
        trace, tmp_path, capsys, text_edit, key):
    text = (SHIPPED / "cpu-tiny.json").read_text()
    bad = tmp_path / "p.json"
    bad.write_text(text_edit(text))
    assert bad.read_text() != text
    out = tmp_path / "run"
    code, _, err = run_cli(["simulate", trace, "-o", out, "--profile", bad, "--mode",
                            "exclusive"], capsys)
    assert_one_line_error(code, err, "p.json", key)
    assert "Traceback" not in err
    assert not out.exists()


def _cv(d: dict, cv: float) -> dict:
    d["models"]["tiny-bert"]["service_cv"] = cv
    return d


@pytest.mark.parametrize("cv", [0.0, 1e-6, 0.3])
def test_a_zero_or_reasonable_cv_still_simulates(trace, tmp_path, capsys, cv):
    d = _cv(json.loads((SHIPPED / "cpu-tiny.json").read_text()), cv)
    good = tmp_path / "p.json"
    good.write_text(json.dumps(d))
    code, _, err = run_cli(["simulate", trace, "-o", tmp_path / "run", "--profile", good,
                            "--mode", "exclusive"], capsys)
    assert code == 0, err
