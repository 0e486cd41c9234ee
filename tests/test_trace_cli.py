"""``traceforge trace gen|stats|import`` end to end through the real CLI entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from trace_cli_helpers import FIXTURES, REPO, assert_one_line_error, run_cli

from traceforge.generate import DEMO_SPEC
from traceforge.schema import read_trace


def test_same_seed_is_byte_identical_across_processes(tmp_path):
    outs = []
    for i, hash_seed in enumerate(("1", "2")):  # set/dict order must not leak into the file
        out = tmp_path / f"t{i}.parquet"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO)}
        subprocess.run([sys.executable, "-m", "traceforge", "trace", "gen", str(DEMO_SPEC),
                        "-o", str(out), "--seed", "42"], check=True, env=env, timeout=60,
                       capture_output=True, cwd=tmp_path if i else REPO)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_gen_then_stats_json_and_plot(tmp_path, capsys):
    out = tmp_path / "demo.parquet"
    code, stdout, err = run_cli(["trace", "gen", DEMO_SPEC, "-o", out, "--duration", "30"],
                                capsys)
    assert code == 0, err
    assert "30 s" in stdout
    trace = read_trace(out)
    assert trace.meta["schema"] == "traceforge.trace/1"
    assert trace.meta["spec"]["duration_s"] == 30.0 and trace.meta["seed"] == 7
    assert trace.meta["source"]["spec_file"] == "demo.toml"
    other = tmp_path / "other.parquet"
    run_cli(["trace", "gen", DEMO_SPEC, "-o", other, "--duration", "30", "--seed", "8"], capsys)
    assert other.read_bytes() != out.read_bytes()

    png = tmp_path / "arrivals.png"
    code, stdout, err = run_cli(["trace", "stats", out, "--json", "--plot", png], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert set(report["models"]) == {"tiny-bert", "tiny-gpt2", "tiny-llama"}
    bert = report["models"]["tiny-bert"]
    for key in ("count", "rate", "rate_ci", "rate_ci_poisson", "cv", "idc_1s", "idc_10s",
                "target_rate", "fit", "shapes"):
        assert key in bert
    # stats carry the spec's zoo entry and SLO through unchanged
    spec_bert = trace.meta["spec"]["models"]["tiny-bert"]
    assert bert["zoo"] == spec_bert["zoo"] == "tiny-bert"
    assert bert["slo_ms"] == spec_bert["slo_ms"] > 0
    assert report["aggregate"]["count"] == trace.table.num_rows
    assert sum(m["count"] for m in report["models"].values()) == trace.table.num_rows
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    code, stdout, _ = run_cli(["trace", "stats", out], capsys)
    assert code == 0 and "tiny-llama" in stdout and "IDC 10s" in stdout


def test_stats_bad_inputs(tmp_path, capsys):
    not_parquet = tmp_path / "x.parquet"
    not_parquet.write_text("hello")
    code, _, err = run_cli(["trace", "stats", not_parquet], capsys)
    assert_one_line_error(code, err, str(not_parquet), "not a readable Parquet file")
    code, _, err = run_cli(["trace", "stats", tmp_path / "missing.parquet"], capsys)
    assert_one_line_error(code, err, "no such file")
    code, _, err = run_cli(["trace", "stats", not_parquet, "--plot", tmp_path / "p.jpg"], capsys)
    assert_one_line_error(code, err, "--plot", "must end in .png")


def test_import_cli_writes_provenance(tmp_path, capsys):
    out = tmp_path / "b.parquet"
    code, stdout, err = run_cli(["trace", "import", "burstgpt", FIXTURES / "BurstGPT_fixture.csv",
                                 "-o", out, "--rate-scale", "4", "--models", "ChatGPT=chat"],
                                capsys)
    assert code == 0, err
    trace = read_trace(out)
    src = trace.meta["source"]
    assert src["kind"] == "import" and src["format"] == "burstgpt"
    assert src["options"]["rate_scale"] == 4.0 and src["options"]["models"] == "ChatGPT=chat"
    assert trace.meta["spec"]["models"] == {"chat": {"arrival": {"process": "imported"}}}
    code, stdout, _ = run_cli(["trace", "stats", out, "--json"], capsys)
    fit = json.loads(stdout)["models"]["chat"]["fit"]
    assert fit["reference"] is True


def test_output_is_a_directory(tmp_path, capsys):
    code, _, err = run_cli(["trace", "gen", DEMO_SPEC, "-o", tmp_path], capsys)
    assert_one_line_error(code, err, "-o", "is a directory")
