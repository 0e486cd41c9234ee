"""Every backend option of the CLI is a typed option field, so it can be a study axis; and the
demo study runs end to end into ordinary run directories."""

from __future__ import annotations

import json

import typer
from trace_cli_helpers import REPO, run_cli

from traceforge.backends.options import BACKEND_OPTIONS, option_fields

# CLI parameters that are not options of a run (inputs, outputs, display) and CLI spellings
# that differ from the field name.
# --workers/--shard-by/--executor/--address shard one replay over processes or Ray actors; a
# study runs each cell unsharded and places whole groups with its own --executor instead.
# --rate rescales the trace itself; in a study the `load` axis is that knob (per mix).
NOT_OPTIONS = {"trace", "out", "backend", "progress", "workers", "shard_by", "executor",
               "address", "rate"}
RENAMED = {"timeout": "timeout_s", "warmup": "warmup_s", "header": "headers", "compile_": "compile",
           "scrape": "scrape_url", "scrape_interval": "scrape_interval_s",
           "duration": "duration_s", "drain_timeout": "drain_timeout_s"}


def command_params(name: str) -> set[str]:
    from traceforge.cli import app

    group = typer.main.get_command(app)
    return {p.name for p in group.commands[name].params}


def test_every_replay_and_simulate_flag_is_an_option_field():
    fields = set()
    for backend in ("null", "http", "resident"):
        fields |= set(option_fields(backend))
    missing = {RENAMED.get(p, p) for p in command_params("replay") - NOT_OPTIONS} - fields
    assert not missing, f"add these replay flags to traceforge/backends/options.py: {missing}"
    sim = {RENAMED.get(p, p) for p in command_params("simulate") - NOT_OPTIONS}
    assert not sim - set(option_fields("simulate")), sim - set(option_fields("simulate"))
    assert set(BACKEND_OPTIONS) == {"null", "http", "resident", "simulate"}


def test_list_and_optional_fields_are_type_checked():
    from traceforge.backends.options import coerce_options
    from traceforge.errors import BadInput

    out = coerce_options("resident", {"seq_buckets": [16, 32], "compile": None},
                         source="s", keys={})
    assert out == {"seq_buckets": [16, 32], "compile": None}
    for bad in ([16, "x"], 16, [1.5]):
        try:
            coerce_options("resident", {"seq_buckets": bad}, source="s",
                           keys={"seq_buckets": "axes.seq_buckets[0]"})
        except BadInput as exc:
            assert "axes.seq_buckets[0]" in str(exc) and "a list of integers" in str(exc)
        else:
            raise AssertionError(bad)


def test_demo_study_cells_are_ordinary_run_directories(tmp_path, capsys):
    out = tmp_path / "demo"
    code, _, err = run_cli(["study", REPO / "studies" / "demo-study.toml", "-o", out], capsys)
    assert code == 0, err
    data = json.loads((out / "study.json").read_text())
    assert data["schema"] == "traceforge.study/1" and data["status"] == "complete"
    grid = [c for c in data["cells"] if c["kind"] == "grid"]
    assert len(grid) == 2 * 3 * 3 * 2  # mixes × loads × modes × repeats
    assert {c["repeat"]: c["seed"] for c in grid} == {0: 11, 1: 12}
    caps = [c for c in data["capacity"] if c["kind"] == "capacity"]
    assert len(caps) == 2 * 3 and all(c["converged"] for c in caps)
    # a cell is what `simulate` writes: `report` reads it like any run
    cell = out / grid[0]["run_dir"]
    code, stdout, err = run_cli(["report", cell, "--json"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert set(report["models"]) == {"tiny-bert", "tiny-gpt2"}
    # the busier mode has the lower capacity in both mixes: exclusive > timeslice > streams
    for mix in ("steady", "bursty"):
        by_mode = {c["config"]["mode"]: c["load"] for c in caps if c["mix"] == mix}
        assert by_mode["exclusive"] > by_mode["timeslice"] > by_mode["streams"], by_mode


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, err = run_cli(["study", REPO / "studies" / "demo-study.toml", "-o", out,
                                 "--dry-run"], capsys)
    assert code == 0, err
    assert not out.exists()
    assert "6 groups, 36 grid cells; traces 360 s" in stdout
    assert "group bursty__mode=streams: 6 grid cells, 1 capacity searches" in stdout


def test_simulate_zoo_option_in_a_study(tmp_path):
    """``[options] zoo`` on the simulate backend (as simulate --zoo): the cells simulate the
    workload's models as those profile entries; an override naming a model the workload lacks,
    or an entry the profile lacks, is refused naming ``options.zoo`` before anything is
    written."""
    import pytest

    from traceforge.errors import BadInput
    from traceforge.record import RunManifest
    from traceforge.study.engine import run_study
    from traceforge.study.spec import load_study

    def spec(zoo: str) -> object:
        path = tmp_path / f"s{len(list(tmp_path.glob('s*.toml')))}.toml"
        path.write_text(f"""name = "z"
backend = "simulate"
[mixes.m]
duration_s = 2
[mixes.m.models.a]
arrival = {{ process = "poisson", rate = 40 }}
seq_len = 32
[mixes.m.models.b]
arrival = {{ process = "poisson", rate = 5 }}
seq_len = 32
max_new_tokens = 8
[axes]
mode = ["exclusive", "mps"]
[options]
profile = "h200-fidelity"
zoo = {zoo}
""")
        return load_study(path)

    result = run_study(spec('{ a = "distilbert-base", b = "distilgpt2" }'), tmp_path / "ok")
    assert result["status"] == "complete"
    cells = list((tmp_path / "ok" / "cells").iterdir())
    assert len(cells) == 2
    for run in cells:
        info = RunManifest.load(run)["backend_info"]
        assert info["models"] == {"a": "distilbert-base", "b": "distilgpt2"}
    for zoo, value in (('{ c = "distilbert-base" }', "c"),
                       ('{ a = "resnet-50", b = "distilgpt2" }', "a=resnet-50")):
        with pytest.raises(BadInput) as err:
            run_study(spec(zoo), tmp_path / "bad")
        assert err.value.key == "options.zoo" and value in str(err.value)
        assert not (tmp_path / "bad").exists()
