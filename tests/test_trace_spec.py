"""Workload spec validation: every bad input is one line with file, key and value; exit 2;
no trace written. Plus the embedded demo spec and the spec round trip through the metadata."""

from __future__ import annotations

from pathlib import Path

import pytest
from trace_cli_helpers import FIXTURES, REPO, assert_one_line_error, run_cli

from traceforge.errors import BadInput
from traceforge.generate import DEMO_SPEC, generate_trace, load_spec, parse_spec

GOOD_MODEL = """
[models.m]
arrival = { process = "poisson", rate = 5.0 }
"""

# (spec text, substrings the one-line error must contain)
BAD_SPECS = {
    "unknown top-level key": ("duration_s = 5\nrate = 3\n" + GOOD_MODEL,
                              ["rate = 3", "unknown key", "allowed: name"]),
    "unknown model key": ("duration_s = 5\n" + GOOD_MODEL + "speed = 2\n",
                          ["models.m.speed = 2", "unknown key"]),
    "unknown arrival parameter": (
        'duration_s = 5\n[models.m]\narrival = { process = "poisson", rate = 5.0, cv = 2 }\n',
        ["models.m.arrival.cv = 2", "unknown key"]),
    "wrong type": ('duration_s = 5\n[models.m]\narrival = { process = "poisson", rate = "x" }\n',
                   ["models.m.arrival.rate = 'x'", "must be a number"]),
    "bool is not a number": (
        'duration_s = 5\n[models.m]\narrival = { process = "poisson", rate = true }\n',
        ["models.m.arrival.rate = True", "must be a number"]),
    "rate zero": ('duration_s = 5\n[models.m]\narrival = { process = "poisson", rate = 0 }\n',
                  ["models.m.arrival.rate = 0.0", "must be > 0"]),
    "rate negative": (
        'duration_s = 5\n[models.m]\narrival = { process = "constant", rate = -2.5 }\n',
        ["models.m.arrival.rate = -2.5", "must be > 0"]),
    "cv zero": (
        'duration_s = 5\n[models.m]\narrival = { process = "gamma", rate = 1, cv = 0 }\n',
        ["models.m.arrival.cv = 0.0", "must be > 0"]),
    "missing cv": ('duration_s = 5\n[models.m]\narrival = { process = "gamma", rate = 1 }\n',
                   ["models.m.arrival.cv", "missing required key"]),
    "unknown process": (
        'duration_s = 5\n[models.m]\narrival = { process = "hawkes", rate = 1 }\n',
        ["models.m.arrival.process = 'hawkes'", "allowed: constant, poisson, gamma"]),
    "process not a string": (
        'duration_s = 5\n[models.m]\narrival = { process = ["poisson"], rate = 1 }\n',
        ["models.m.arrival.process = ['poisson']", "unknown arrival process"]),
    "dist a table": ("duration_s = 5\n" + GOOD_MODEL + 'seq_len = { dist = { a = 1 } }\n',
                     ["models.m.seq_len.dist = {'a': 1}", "unknown distribution"]),
    "weights length": (
        "duration_s = 5\n" + GOOD_MODEL
        + 'batch_size = { dist = "choice", values = [1, 8], weights = [1.0] }\n',
        ["models.m.batch_size.weights = [1.0]", "one weight per value"]),
    "weights all zero": (
        "duration_s = 5\n" + GOOD_MODEL
        + 'batch_size = { dist = "choice", values = [1, 8], weights = [0, 0] }\n',
        ["models.m.batch_size.weights", "must not all be 0"]),
    "empty models": ("duration_s = 5\n[models]\n", ["models = {}", "at least one model"]),
    "no models": ("duration_s = 5\n", ["models", "missing required key"]),
    "both duration and requests": ("duration_s = 5\nrequests = 10\n" + GOOD_MODEL,
                                   ["requests = 10", "either duration_s or requests"]),
    "negative duration": ("duration_s = -1\n" + GOOD_MODEL, ["duration_s = -1.0", "> 0"]),
    "requests zero": ("requests = 0\n" + GOOD_MODEL, ["requests = 0", ">= 1"]),
    "unknown dist": ("duration_s = 5\n" + GOOD_MODEL + 'seq_len = { dist = "pareto" }\n',
                     ["models.m.seq_len.dist = 'pareto'", "allowed: const, uniform"]),
    "uniform high below low": (
        "duration_s = 5\n" + GOOD_MODEL + 'seq_len = { dist = "uniform", low = 9, high = 3 }\n',
        ["models.m.seq_len.high = 3", "must be >= low"]),
    "batch size zero": ("duration_s = 5\n" + GOOD_MODEL + "batch_size = 0\n",
                        ["models.m.batch_size = 0", "must be >= 1"]),
    "seq_len not integer": ("duration_s = 5\n" + GOOD_MODEL + "seq_len = 12.5\n",
                            ["models.m.seq_len = 12.5", "must be an integer"]),
    "max_new_tokens negative": ("duration_s = 5\n" + GOOD_MODEL + "max_new_tokens = -1\n",
                                ["models.m.max_new_tokens = -1", ">= 0"]),
    "lognormal max below min": (
        "duration_s = 5\n" + GOOD_MODEL
        + 'seq_len = { dist = "lognormal", median = 5, sigma = 1, min = 10, max = 4 }\n',
        ["models.m.seq_len.max = 4", "must be >= 10"]),
    "zipf a zero": ("duration_s = 5\n" + GOOD_MODEL
                    + 'seq_len = { dist = "zipf", a = 0, max = 100 }\n',
                    ["models.m.seq_len.a = 0.0", "> 0"]),
    "mmpp length mismatch": (
        'duration_s = 5\n[models.m]\n'
        'arrival = { process = "mmpp", rates = [1, 2], mean_dwell_s = [1, 2, 3] }\n',
        ["models.m.arrival.mean_dwell_s = [1, 2, 3]", "one entry per state"]),
    "mmpp all rates zero": (
        'duration_s = 5\n[models.m]\n'
        'arrival = { process = "mmpp", rates = [0, 0], mean_dwell_s = [1, 2] }\n',
        ["models.m.arrival.rates", "at least one rate must be > 0"]),
    "diurnal amplitude above 1": (
        'duration_s = 5\n[models.m]\n'
        'arrival = { process = "diurnal", rate = 3, amplitude = 1.5, period_s = 60 }\n',
        ["models.m.arrival.amplitude = 1.5", "must be <= 1"]),
    "zoo not a string": ("duration_s = 5\n" + GOOD_MODEL + "zoo = 5\n",
                         ["models.m.zoo = 5", "non-empty string"]),
    "slo negative": ("duration_s = 5\n" + GOOD_MODEL + "slo_ms = -3\n",
                     ["models.m.slo_ms = -3.0", "> 0"]),
    "unknown modulation": ("duration_s = 5\n" + GOOD_MODEL + 'modulation = "surge"\n',
                           ["models.m.modulation = 'surge'", "no such modulation"]),
    "modulation multipliers mismatch": (
        "duration_s = 5\n[modulations.s]\nmean_dwell_s = [1, 2]\nmultipliers = [1, 2, 3]\n"
        + GOOD_MODEL + 'modulation = "s"\n',
        ["modulations.s.multipliers = [1, 2, 3]", "one entry per state"]),
    "modulation unused": (
        "duration_s = 5\n[modulations.s]\nmean_dwell_s = [1, 2]\nmultipliers = [1, 2]\n"
        + GOOD_MODEL, ["modulations.s = 's'", "no model uses it"]),
    "empirical missing file": (
        "duration_s = 5\n" + GOOD_MODEL
        + 'seq_len = { dist = "empirical", path = "nope.csv", column = "x" }\n',
        ["models.m.seq_len.path", "nope.csv", "no such file"]),
    "invalid toml": ("duration_s = = 5\n", ["not valid TOML"]),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys):
    text, needles = BAD_SPECS[case]
    spec = tmp_path / "bad.toml"
    spec.write_text(text)
    out = tmp_path / "out.parquet"
    code, _, err = run_cli(["trace", "gen", spec, "-o", out], capsys)
    assert_one_line_error(code, err, str(spec), *needles)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [spec]  # not even a temporary file is left


def test_empirical_column_checks(tmp_path, capsys):
    spec = tmp_path / "w.toml"
    lengths = FIXTURES / "prompt_lengths.csv"
    spec.write_text("duration_s = 5\n" + GOOD_MODEL
                    + f'seq_len = {{ dist = "empirical", path = "{lengths}", column = "nope" }}\n')
    code, _, err = run_cli(["trace", "gen", spec, "-o", tmp_path / "o.parquet"], capsys)
    assert_one_line_error(code, err, "models.m.seq_len.column = 'nope'",
                          "allowed: prompt_tokens, output_tokens")
    # max_new_tokens may be 0, seq_len may not: output_tokens holds zeros
    spec.write_text("duration_s = 5\n" + GOOD_MODEL
                    + f'seq_len = {{ dist = "empirical", path = "{lengths}", '
                      f'column = "output_tokens" }}\n')
    code, _, err = run_cli(["trace", "gen", spec, "-o", tmp_path / "o.parquet"], capsys)
    assert_one_line_error(code, err, "values must be integers >= 1")


def test_empirical_path_is_relative_to_the_spec(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "len.csv").write_text("n\n17\n128\n17\n")
    spec = tmp_path / "w.toml"
    spec.write_text("duration_s = 20\n" + GOOD_MODEL
                    + 'seq_len = { dist = "empirical", path = "data/len.csv", column = "n" }\n')
    trace = generate_trace(load_spec(spec), seed=1)
    assert set(trace.table.column("seq_len").to_pylist()) == {17, 128}
    assert trace.meta["spec"]["models"]["m"]["seq_len"] == {
        "dist": "empirical", "path": "data/len.csv", "column": "n"}


@pytest.mark.parametrize("argv, needles", [
    (["--duration", "-1"], ["--duration = -1.0", "must be > 0"]),
    (["--seed", "-4"], ["--seed = -4", ">= 0"]),
])
def test_bad_gen_flags(argv, needles, tmp_path, capsys):
    out = tmp_path / "o.parquet"
    code, _, err = run_cli(["trace", "gen", DEMO_SPEC, "-o", out, *argv], capsys)
    assert_one_line_error(code, err, *needles)
    assert not out.exists()


def test_missing_duration_needs_flag(tmp_path, capsys):
    spec = tmp_path / "w.toml"
    spec.write_text(GOOD_MODEL)
    code, _, err = run_cli(["trace", "gen", spec, "-o", tmp_path / "o.parquet"], capsys)
    assert_one_line_error(code, err, "duration_s", "--duration")
    code, out, _ = run_cli(["trace", "gen", spec, "-o", tmp_path / "o.parquet",
                            "--duration", "3"], capsys)
    assert code == 0 and "3 s" in out


def test_demo_spec_is_embedded_and_copied():
    assert DEMO_SPEC.is_file()
    assert (REPO / "workloads" / "demo.toml").read_bytes() == DEMO_SPEC.read_bytes()
    spec = load_spec(DEMO_SPEC)
    assert set(spec.models) == {"tiny-bert", "tiny-gpt2", "tiny-llama"}
    assert {m.zoo for m in spec.models.values()} == {"tiny-bert", "tiny-gpt2", "tiny-llama"}
    assert 10 <= spec.duration_s <= 30
    assert {m.arrival.process for m in spec.models.values()} & {"gamma", "mmpp"}


def test_every_example_workload_loads():
    examples = sorted((REPO / "workloads").glob("*.toml"))
    assert len(examples) >= 3
    for path in examples:
        assert load_spec(path).models


def test_metadata_spec_is_a_valid_spec_that_regenerates_the_trace():
    trace = generate_trace(load_spec(DEMO_SPEC))
    spec = trace.meta["spec"]
    import tomllib

    raw = tomllib.loads(Path(DEMO_SPEC).read_text())
    assert spec["models"]["tiny-bert"]["slo_ms"] == raw["models"]["tiny-bert"]["slo_ms"]
    assert spec["models"]["tiny-gpt2"]["zoo"] == "tiny-gpt2"
    again = generate_trace(parse_spec(spec))
    assert again.table.equals(trace.table)


def test_bad_input_str_is_the_cli_line():
    with pytest.raises(BadInput) as info:
        parse_spec({"duration_s": 1, "models": {"m": {"arrival": {"process": "poisson",
                                                                    "rate": -1}}}},
                   source="w.toml")
    assert str(info.value) == "w.toml: models.m.arrival.rate = -1.0: must be > 0"
