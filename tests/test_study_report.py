"""``traceforge report STUDY_DIR``: the JSON contract, intervals across repeats, the best
configuration's significance, cells that are not complete, simulated vs measured, the HTML page
(rendered in headless Chromium where installed) and the output guard.

The study directories are built by tests/study_helpers.py with ``simulate`` (virtual time), in
the layout the study engine writes (CONTRACT.md, "Studies")."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from chromium_helpers import CHROMIUM, assert_renders, chromium
from scipy import stats
from study_helpers import (
    Config,
    cell_name,
    issue_216_study,
    run_cells,
    write_study,
    write_study_json,
)

from traceforge.analyze.report import build_report
from traceforge.analyze.study import ALL, build_study_report
from traceforge.analyze.study_html import write_study_html
from traceforge.errors import BadInput

ROOT = Path(__file__).resolve().parents[1]
MIX = {"a": {"rate": 40.0, "slo_ms": 30.0}, "b": {"rate": 20.0, "slo_ms": 60.0}}
FAST = Config({"mode": "fast"}, {"servers": 2, "service_ms": 4.0})
SLOW = Config({"mode": "slow"}, {"servers": 1, "service_ms": 16.0})  # same trace seeds as FAST
FAILED = cell_name("m", {"load": 1.5, "mode": "slow"}, 2)
PENDING = [cell_name("m", {"load": 0.5, "mode": "slow"}, r) for r in (1, 2)]
CAPACITY = [{"mix": "m", "config": {"mode": "fast"}, "load": 1.4, "low": 1.4, "high": 1.43,
             "tolerance": 0.02, "slo": {"metric": "p99", "ms": 50.0},
             "probes": [{"load": 1.0, "cell": "c1", "met": True, "value": 30.0},
                        {"load": 2.0, "cell": "c2", "met": False, "value": 400.0}]},
            {"mix": "m", "config": {"mode": "slow"}, "load": None, "low": None, "high": 0.25,
             "tolerance": 0.02, "slo": {"metric": "p99", "ms": 50.0}, "probes": []}]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "traceforge", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                               "COLUMNS": "200"})


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """2 configs × 3 loads × 3 repeats of a two-model mix; 'fast' is clearly faster. One cell
    failed, two pending (so one group has 2 repeats and one has 1), and a 'complete' cell whose
    run directory is missing."""
    root = tmp_path_factory.mktemp("study") / "s"
    root.mkdir()
    cells = run_cells(root, mixes={"m": MIX}, configs=[FAST, SLOW], loads=[0.5, 1.0, 1.5],
                      repeats=3, requests=900,
                      statuses={FAILED: "failed", **{p: "pending" for p in PENDING}})
    cells.append({"name": "ghost", "mix": "m", "coords": {"load": 0.5, "mode": "fast"},
                  "repeat": 3, "status": "complete", "run_dir": "cells/ghost", "kind": "grid",
                  "backend": "simulate"})
    return write_study_json(root, cells, capacity=CAPACITY,
                            spec={"capacity": {"slo": {"metric": "p99", "ms": 50.0}}})


@pytest.fixture(scope="module")
def cli_outputs(study, tmp_path_factory) -> tuple[dict, Path]:
    """One `report --json --html` call: the JSON it printed and the page it wrote."""
    page = tmp_path_factory.mktemp("html") / "study.html"
    done = cli("report", str(study), "--json", "--html", str(page))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), page


@pytest.fixture(scope="module")
def report(cli_outputs) -> dict:
    return cli_outputs[0]


@pytest.fixture(scope="module")
def html_file(cli_outputs) -> Path:
    return cli_outputs[1]


def _agg(report: dict, mode: str, load: float, source: str = "simulated") -> dict:
    (agg,) = [a for a in report["aggregates"] if a["config"] == {"mode": mode}
              and a["load"] == load and a["source"] == source]
    return agg


def test_json_has_the_contract_keys(report, study):
    assert report["schema"] == "traceforge.study-report/1"
    assert len(report["cells"]) == 2 * 3 * 3 + 1
    checked = 0
    for cell in report["cells"]:
        assert {"name", "mix", "coords", "repeat", "status", "models"} <= set(cell)
        if cell["status"] == "complete" and cell["name"] != "ghost":
            checked += 1
            assert set(cell["models"]) == {"a", "b"}
            for m in cell["models"].values():
                assert {"p50_ms", "p99_ms", "attainment", "goodput_rps"} <= set(m)
                assert 0 < m["p50_ms"] < m["p99_ms"] and 0 <= m["attainment"] <= 1
    assert checked == 2 * 3 * 3 - 1 - len(PENDING)  # not vacuous: every cell with numbers
    assert [{k: c[k] for k in ("mix", "config", "load", "low", "high")}
            for c in report["capacity"]] == [
        {k: c[k] for k in ("mix", "config", "load", "low", "high")} for c in CAPACITY]
    # a cell's numbers are build_report's for its run directory
    cell = next(c for c in report["cells"] if c["name"].endswith("mode=fast__r1"))
    single = build_report(study / "cells" / cell["name"])
    for model in ("a", "b"):
        assert cell["models"][model]["p99_ms"] == pytest.approx(
            single["models"][model]["latency_ms"]["p99"])
        assert cell["models"][model]["goodput_rps"] == pytest.approx(
            single["models"][model]["slo"]["goodput_rps"])


def test_intervals_across_repeats_are_student_t(report):
    for agg, n in ((_agg(report, "fast", 1.0), 3), (_agg(report, "slow", 1.5), 2)):
        assert agg["repeats"] == n
        cells = {c["name"]: c for c in report["cells"]}
        for model in ("a", "b"):
            for metric in ("p50_ms", "p99_ms", "attainment", "goodput_rps"):
                s = agg["models"][model][metric]
                values = [cells[name]["models"][model][metric] for name in agg["cells"]]
                assert s["values"] == pytest.approx(values)
                mean, sd = np.mean(values), np.std(values, ddof=1)
                half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
                lo, hi = mean - half, mean + half
                if metric == "attainment":
                    hi = min(hi, 1.0)
                assert s["ci_method"] == "t" and s["n"] == n
                assert s["mean"] == pytest.approx(mean)
                assert s["ci95"] == pytest.approx([max(lo, 0.0), hi])


def test_one_repeat_uses_the_within_run_interval(report):
    agg = _agg(report, "slow", 0.5)
    assert agg["repeats"] == 1
    (name,) = agg["cells"]
    cell = next(c for c in report["cells"] if c["name"] == name)
    s = agg["models"]["a"]
    assert s["p99_ms"]["ci_method"] == "bootstrap"
    assert s["p99_ms"]["ci95"] == pytest.approx(cell["models"]["a"]["p99_ci95_ms"])
    assert s["attainment"]["ci_method"] == "wilson"
    lo, hi = s["attainment"]["ci95"]
    assert lo < cell["models"]["a"]["attainment"] < hi
    assert s["goodput_rps"]["ci_method"] == "poisson"
    assert any("one repeat" in n for n in report["notes"])


def test_best_config_clearly_faster_is_significant(report):
    best = {(b["load"], b["model"], b["metric"]): b for b in report["best"]}
    # model b's slow p99s are 228, 121 and 83 ms (a p99 of ~300 requests is noisy): its paired
    # test gives p = 0.017 — below 0.05, not below the report's 1 %
    assert best[(1.0, "b", "p99_ms")]["config"] == {"mode": "fast"}
    assert 0.001 < best[(1.0, "b", "p99_ms")]["lead"]["repeats"]["p"] < 0.05
    for model in ("a", ALL):
        b = best[(1.0, model, "p99_ms")]
        assert b["config"] == {"mode": "fast"} and b["runner_up"]["config"] == {"mode": "slow"}
        lead = b["lead"]
        assert lead["verdict"] == "faster" and lead["significant"], lead
        assert lead["reason"] is None
        # both configurations ran the same three trace seeds: the repeat test is paired
        assert lead["repeats"]["test"] == "paired t (same seeds)"
        assert lead["repeats"]["n"] == [3, 3] and lead["repeats"]["p"] < 0.01
        assert lead["ks_p"] < 0.01 and lead["p99_diff_ci_ms"][1] < 0
        assert lead["p_value"] == max(lead["repeats"]["p"], lead["ks_p"])
    # 3 repeats against 2 (one failed): unpaired, Welch
    lead = best[(1.5, "a", "p99_ms")]["lead"]
    assert lead["repeats"]["test"] == "Welch t" and lead["repeats"]["n"] == [3, 2]


def test_identical_configs_are_not_significant(tmp_path):
    twin_a = Config({"mode": "x"}, {"servers": 1, "service_ms": 5.0})
    twin_b = Config({"mode": "y"}, {"servers": 1, "service_ms": 5.0}, seed_offset=50)
    root = write_study(tmp_path / "twins", mixes={"m": {"a": {"rate": 100.0, "slo_ms": 30.0}}},
                       configs=[twin_a, twin_b], loads=[0.6], repeats=4, requests=1500)
    result = build_study_report(root)
    leads = [b["lead"] for b in result["best"]]
    assert len(leads) == 2  # p99 and goodput of model a (one model: no separate (all))
    for lead in leads:
        assert not lead["significant"], lead
        assert lead["p_value"] > 0.05, lead
        assert lead["reason"] in ("KS p >= alpha", "rate test p >= alpha",
                                  "no lead (equal means)")


def test_cells_not_complete_are_listed(report, study):
    incomplete = {c["name"]: c for c in report["incomplete"]}
    assert set(incomplete) == {FAILED, *PENDING, "ghost"}
    assert incomplete[FAILED]["status"] == "failed"
    assert "no such run directory" in incomplete["ghost"]["reason"]
    assert report["counts"]["by_status"] == {"complete": 16, "failed": 1, "pending": 2}
    assert report["counts"]["usable"] == 15
    done = cli("report", str(study))
    assert done.returncode == 0, done.stderr
    assert "cells not in the numbers" in done.stdout
    for name in (FAILED, *PENDING, "ghost"):
        assert name in done.stdout
    assert "best configuration per load" in done.stdout and "capacity" in done.stdout


def test_sim_vs_measured_side_by_side(tmp_path):
    root = tmp_path / "svm"
    mixes = {"m": {"a": {"rate": 50.0, "slo_ms": 40.0}}}
    sim = run_cells(root, mixes=mixes, configs=[Config({"mode": "x"}, {"service_ms": 5.0})],
                    loads=[0.5], repeats=2, requests=800, kind="prescreen", suffix="-sim")
    # the "measured" cells are simulated too, with 50 % longer service: the report must put
    # them beside the prescreen cells of the same coordinates, never average them together
    meas = run_cells(root, mixes=mixes, configs=[Config({"mode": "x"}, {"service_ms": 7.5})],
                     loads=[0.5], repeats=2, requests=800, backend="null")
    result = build_study_report(write_study_json(root, sim + meas))
    assert sorted((a["source"], a["repeats"]) for a in result["aggregates"]) == [
        ("measured", 2), ("simulated", 2)]
    (entry,) = [e for e in result["sim_vs_measured"] if e["model"] == "a"]
    assert entry["simulated"]["repeats"] == entry["measured"]["repeats"] == 2
    assert entry["p50_ratio"] > 1.2 and entry["p99_ratio"] > 1.2
    assert entry["compare"]["verdict"] == "slower"
    text = write_study_html(result, tmp_path / "svm.html").read_text()
    assert "Simulated vs measured" in text and 'alt="simulated vs measured"' in text


@pytest.mark.parametrize("target", ["study.json", "cells/x.html", "cells/{cell}/r.html",
                                    "cells"])
def test_html_inside_the_inputs_is_refused(study, target):
    cell = next(c.name for c in (study / "cells").iterdir())
    path = study / target.format(cell=cell)
    before = (study / "study.json").read_bytes()
    done = cli("report", str(study), "--html", str(path))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--html" in done.stderr
    assert (study / "study.json").read_bytes() == before
    assert not (study / "cells" / "x.html").exists()
    assert not (study / "cells" / cell / "r.html").exists()


def test_alpha_is_for_studies_only(study):
    cell = study / "cells" / cell_name("m", {"load": 0.5, "mode": "fast"}, 0)
    done = cli("report", str(cell), "--alpha", "0.05")
    assert done.returncode == 2 and "--alpha" in done.stderr and "study" in done.stderr
    done = cli("report", str(study), "--alpha", "0.7")
    assert done.returncode == 2 and "--alpha = 0.7" in done.stderr


def test_bad_study_json(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "study.json").write_text(json.dumps({"schema": "traceforge.study/9", "cells": []}))
    done = cli("report", str(bad), "--json")
    assert done.returncode == 2 and "schema = 'traceforge.study/9'" in done.stderr
    (bad / "study.json").write_text(json.dumps({"schema": "traceforge.study/1",
                                                "cells": [{"name": "c", "mix": "m"}]}))
    with pytest.raises(BadInput, match=r"cells\[0\]\.status"):
        build_study_report(bad)


def test_html_is_self_contained(html_file):
    text = html_file.read_text()
    assert text.startswith("<!DOCTYPE html>")
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', text)
    assert images == ["load curves m simulated", "capacity m"]
    assert "<script" not in text and not re.search(r'(src|href)="(https?:)?//', text)
    assert "Cells not in the numbers" in text and FAILED in text
    assert "Best configuration per load" in text and "significant" in text
    assert "bootstrap</span>" in text  # the pooled p99's within-run interval in each cell
    assert (html_file.stat().st_mode & 0o777) == 0o644


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install "
                    "chromium); .ci/run installs it")
def test_html_renders_inchromium(html_file, tmp_path):
    assert_renders(html_file, tmp_path, title="traceforge study report", images=2,
                   window_size="1100,1400")


def test_report_of_a_study_run_by_the_engine(tmp_path):
    """The layout `traceforge study` writes: grid cells, capacity probes (kind 'capacity') and
    searches; every cell of study.json is in the report, probes stay out of the grid."""
    from traceforge.study.engine import run_study
    from traceforge.study.spec import parse_study

    raw = {"name": "e", "backend": "simulate", "seed": 3, "requests": 600, "repeats": 3,
           "mixes": {"m": {"models": {"a": {"arrival": {"process": "poisson", "rate": 50.0},
                                            "slo_ms": 40.0}}}},
           "axes": {"load": [0.5, 1.0], "servers": [1, 2]},
           "options": {"service_ms": 8.0, "service_dist": "exp"},
           "capacity": {"slo": {"metric": "p99", "ms": 60.0}, "tolerance": 0.05}}
    result = run_study(parse_study(raw, source="test"), tmp_path / "study")
    report = build_study_report(tmp_path / "study")
    assert [c["name"] for c in report["cells"]] == [c["name"] for c in result["cells"]]
    assert report["counts"]["usable"] == len(result["cells"]) and not report["incomplete"]
    grid = [a for a in report["aggregates"] if a["kind"] == "grid"]
    assert sorted((a["config_label"], a["level"], a["repeats"]) for a in grid) == [
        ("servers=1", 0.5, 3), ("servers=1", 1.0, 3), ("servers=2", 0.5, 3),
        ("servers=2", 1.0, 3)]
    probes = [c for c in result["cells"] if c["kind"] == "capacity"]
    assert probes and all(a["kind"] == "search" for a in report["aggregates"]
                          if set(a["cells"]) & {c["name"] for c in probes})
    assert [{k: c[k] for k in ("mix", "config", "load", "low", "high")}
            for c in report["capacity"]] == [
        {k: c[k] for k in ("mix", "config", "load", "low", "high")} for c in result["capacity"]]
    for b in (b for b in report["best"] if b["metric"] == "p99_ms"):
        assert b["config"] == {"servers": 2}
        # repeat r of every configuration ran trace seed 3 + r: the repeat test is paired
        assert b["lead"]["repeats"]["test"] == "paired t (same seeds)"
    # The same spec and seeds elsewhere give the same report, path aside (fixed bootstrap seeds,
    # no set-order dependence): what a resumed study's report is compared against.
    run_study(parse_study(raw, source="test"), tmp_path / "again")
    from traceforge.analyze.jsonable import to_json

    again = to_json(build_study_report(tmp_path / "again"))
    assert again.replace(str(tmp_path / "again"), "X") == to_json(report).replace(
        str(tmp_path / "study"), "X")


def test_slo_option_applies_to_every_cell(study):
    from traceforge.analyze.study import StudyOptions

    result = build_study_report(study, StudyOptions(slo_ms={"a": 1e6}))
    cells = [c for c in result["cells"] if c["models"]]
    assert cells and all(c["models"]["a"]["attainment"] == 1.0 for c in cells)
    assert all(c["models"]["a"]["slo_ms"] == 1e6 and c["slo_source"] == "--slo" for c in cells)
    with pytest.raises(BadInput, match=r"--slo: zzz: no such model in any cell"):
        build_study_report(study, StudyOptions(slo_ms={"zzz": 5.0}))


def test_capacity_over_repeats_and_prescreen(tmp_path):
    def search(kind: str, repeat: int, load: float, step: float = 0.03) -> dict:
        return {"key": f"k{kind}{repeat}", "mix": "m", "config": {"mode": "fast"},
                "repeat": repeat, "kind": kind, "load": load, "low": load,
                "high": load + step, "tolerance": 0.02, "converged": True, "probes": []}

    loads = [1.40, 1.46, 1.43]
    capacity = ([search("prescreen", r, 1.6) for r in range(3)]
                + [search("capacity", r, x) for r, x in enumerate(loads)])
    root = tmp_path / "cap"
    root.mkdir()
    result = build_study_report(write_study_json(root, [], capacity=capacity))
    assert [c["load"] for c in result["capacity"]] == loads
    assert [c["load"] for c in result["capacity_prescreen"]] == [1.6] * 3
    (real,) = [s for s in result["capacity_summary"] if s["kind"] == "capacity"]
    half = stats.t.ppf(0.975, 2) * np.std(loads, ddof=1) / math.sqrt(3)
    assert real["load"]["mean"] == pytest.approx(np.mean(loads))
    assert real["load"]["ci95"] == pytest.approx([np.mean(loads) - half, np.mean(loads) + half])
    assert (real["low"], real["high"]) == (1.40, pytest.approx(1.49))
    pairs = result["sim_vs_measured_capacity"]
    assert [p["repeat"] for p in pairs] == [0, 1, 2]
    assert [p["ratio"] for p in pairs] == pytest.approx([x / 1.6 for x in loads])
    text = write_study_html(result, tmp_path / "cap.html").read_text()
    assert 'alt="capacity m"' in text and "simulated prescreen vs measured search" in text


def test_capacity_based_load_axis(tmp_path):
    """`load = [fractions]` of each configuration's capacity: coords hold `capacity`, the cell
    its actual multiplier as `load`; the report's x axis is the fraction."""
    root = tmp_path / "frac"
    cells = run_cells(root, mixes={"m": MIX}, configs=[FAST, SLOW], loads=[0.5, 1.0],
                      repeats=2, requests=400)
    for c in cells:
        fraction = c["coords"].pop("load")
        c["coords"] = {"capacity": fraction, **c["coords"]}
        c["load"] = fraction * (3.0 if c["coords"]["mode"] == "fast" else 1.2)
    result = build_study_report(write_study_json(root, cells))
    grid = [a for a in result["aggregates"] if a["kind"] == "grid"]
    assert sorted((a["config_label"], a["level"], a["repeats"]) for a in grid) == [
        ("mode=fast", 0.5, 2), ("mode=fast", 1.0, 2), ("mode=slow", 0.5, 2),
        ("mode=slow", 1.0, 2)]
    assert {a["level_axis"] for a in grid} == {"capacity"}
    assert {c["load"] for c in result["cells"]} == {1.5, 3.0, 0.6, 1.2}
    assert {b["level"] for b in result["best"]} == {0.5, 1.0}
    text = write_study_html(result, tmp_path / "frac.html").read_text()
    assert "capacity 0.5" in text and "Best configuration per capacity" in text


def test_216_cell_study_report_renders(tmp_path):
    """The issue's study (3 mixes × 6 loads × 4 modes × 3 repeats on the simulator, the
    benchmarks/bench_study.py spec, plus SLOs): `report --json --html` covers every cell, and the page
    renders in headless Chromium where installed. Timings: benchmarks/bench_study_report.py."""
    from traceforge.study.engine import run_study
    from traceforge.study.spec import load_study

    spec = tmp_path / "issue.toml"
    spec.write_text(issue_216_study("issue-216", slo=True))
    result = run_study(load_study(spec), tmp_path / "study")
    assert result["status"] == "complete" and len(result["cells"]) == 216
    page = tmp_path / "study.html"
    done = cli("report", str(tmp_path / "study"), "--json", "--html", str(page), timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["counts"] == {"cells": 216, "usable": 216, "by_status": {"complete": 216}}
    grid = [a for a in report["aggregates"] if a["kind"] == "grid"]
    assert len(grid) == 3 * 6 * 4 and {a["repeats"] for a in grid} == {3}
    # per mix and load: p99 and goodput, for each of the 3 models and (all), against a runner-up
    assert len(report["best"]) == 3 * 6 * 4 * 2
    assert all(b["runner_up"] and b["lead"] for b in report["best"])
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 3  # one curve figure per mix
    if CHROMIUM is None:
        pytest.skip("chromium is not installed: the page was written but not rendered")
    dom = chromium("--dump-dom", page.as_uri(), profile=tmp_path / "p")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<img") == 3 and "Mix weibull (simulated)" in dom.stdout


def test_configuration_without_ok_requests(tmp_path):
    """Every request of one configuration timed out: it has no p99 (never 'best', named in
    without_value), attainment 0, and it still runs for goodput (and loses)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "to"
    mixes = {"m": {"a": {"rate": 50.0, "slo_ms": 40.0}}}
    cells = run_cells(root, mixes=mixes, configs=[FAST, SLOW], loads=[1.0], repeats=2,
                      requests=300)
    for part in root.glob("cells/*mode=slow*/timeline/*.parquet"):
        t = pq.read_table(part)
        for column, values in (("status", pa.array(["timeout"] * t.num_rows)),
                               ("done_ns", pa.nulls(t.num_rows, pa.int64()))):
            i = t.schema.get_field_index(column)
            t = t.set_column(i, t.schema.field(i), values.cast(t.schema.field(i).type))
        pq.write_table(t, part)
    result = build_study_report(write_study_json(root, cells))
    slow = _agg(result, "slow", 1.0)["models"]["a"]
    assert slow["p99_ms"] is None and slow["attainment"]["values"] == [0.0, 0.0]
    best = {b["metric"]: b for b in result["best"]}
    assert best["p99_ms"]["config"] == {"mode": "fast"} and best["p99_ms"]["lead"] is None
    assert best["p99_ms"]["without_value"] == ["mode=slow"]
    assert best["goodput_rps"]["runner_up"]["value"] == 0.0
    assert "no value for mode=slow" in write_study_html(result, tmp_path / "t.html").read_text()


def test_a_p99_lead_needs_the_p99_interval_not_a_p50_shift():
    """compare's verdict also moves on a p50 shift; a p99 lead must not ride on it. Here the
    best config's body is 20 % faster but its tail is the same: no significant p99 lead."""
    from traceforge.analyze.study import _lead_p99

    rng = np.random.default_rng(3)
    body = rng.uniform(10e6, 20e6, 4000)
    tail = rng.uniform(100e6, 110e6, 200)
    one_repeat = {"_by_seed": {"p99_ms": [(1, 105.0)]}}  # one repeat: no repeat-level test
    runner = {**one_repeat, "_pooled_ns": np.sort(np.concatenate([body, tail]))}
    best = {**one_repeat, "_pooled_ns": np.sort(np.concatenate([body * 0.8, tail]))}
    lead = _lead_p99(best, runner, alpha=0.01, seed=0)
    assert lead["ks_p"] < 1e-6 and lead["verdict"] == "faster"  # the p50 moved
    assert not lead["significant"]
    assert lead["reason"] == "bootstrap CI of the p99 difference includes 0"


def test_the_best_table_is_whole_in_a_pipe_and_on_a_narrow_terminal(study, report):
    """Piped (COLUMNS unset) rich drew 80 columns: the best-configuration table came out as
    "mode=ti…" and "[0.79–3…" -- numbers cut. Now a pipe gets PIPE_WIDTH columns and the
    table's cells fold on a narrow terminal instead of losing characters."""
    import io

    from rich.console import Console

    from traceforge.analyze.render import PIPE_WIDTH
    from traceforge.analyze.study_render import render_study

    done = subprocess.run([sys.executable, "-m", "traceforge", "report", str(study)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    best = done.stdout[done.stdout.index("best configuration"):]
    assert "…" not in best
    assert max(len(line) for line in done.stdout.splitlines()) <= PIPE_WIDTH
    for b in report["best"]:
        assert b["config_label"] in best and b["model"] in best
    narrow = io.StringIO()
    render_study(report, Console(file=narrow, width=80, force_terminal=True, color_system=None))
    text = narrow.getvalue()
    assert "…" not in text[text.index("best configuration"):]
