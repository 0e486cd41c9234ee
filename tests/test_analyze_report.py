"""build_report and `traceforge report`: every number checked against plain numpy on the timeline."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from traceforge.analyze.report import build_report, parse_slo
from traceforge.analyze.synthetic import SyntheticModel, synthetic_timeline, write_synthetic_run
from traceforge.errors import BadInput
from traceforge.record import read_timeline

REPO = Path(__file__).resolve().parents[1]
MODELS = [SyntheticModel("bert", rate=80, service_ms=8, slo_ms=20.0),
          SyntheticModel("gpt", rate=20, service_ms=40, max_new_tokens=12, gpu=True)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return write_synthetic_run(tmp_path_factory.mktemp("runs") / "r", MODELS, requests=3000,
                               seed=3, error_rate=0.02)


def _np(table: pa.Table, name: str) -> np.ndarray:
    return pc.fill_null(pc.cast(table.column(name), pa.float64()), np.nan).to_numpy()


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process (the same ``main`` as the console script) and capture output."""
    from traceforge.cli import main

    def run(*args: str) -> Result:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


def test_console_script_exit_code():
    """The real process: bad input exits 2 with one line and no traceback."""
    result = subprocess.run([sys.executable, "-m", "traceforge", "report", "/nonexistent/run"],
                            capture_output=True, text=True, cwd=REPO, timeout=60,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert result.stderr.strip() == "traceforge: error: /nonexistent/run: no such run directory"


def test_report_numbers_equal_numpy(run_dir):
    report = build_report(run_dir)
    table = read_timeline(run_dir)
    status = table.column("status").to_numpy(zero_copy_only=False)
    model = table.column("model").to_numpy(zero_copy_only=False)
    scheduled, done = _np(table, "scheduled_ns"), _np(table, "done_ns")
    sent = _np(table, "sent_ns")
    start, end = _np(table, "service_start_ns"), _np(table, "service_end_ns")
    window_s = (np.nanmax(done) - scheduled.min()) / 1e9
    assert report["window"]["duration_s"] == pytest.approx(window_s, rel=1e-12)
    for name in ("bert", "gpt"):
        rows = model == name
        ok = rows & (status == "ok")
        latency_ms = (done[ok] - scheduled[ok]) / 1e6
        stats = report["models"][name]
        assert stats["count"] == rows.sum()
        assert stats["ok"] == ok.sum()
        assert stats["errors"] == (rows & (status == "error")).sum() > 0
        assert stats["throughput_rps"] == pytest.approx(ok.sum() / window_s, rel=1e-12)
        expected = np.percentile(latency_ms, [50, 90, 95, 99, 99.9])
        got = [stats["latency_ms"][k] for k in ("p50", "p90", "p95", "p99", "p999")]
        np.testing.assert_allclose(got, expected, rtol=1e-12)
        assert stats["latency_ms"]["mean"] == pytest.approx(latency_ms.mean(), rel=1e-12)
        d = stats["decomposition_ms"]
        assert d["send_lag"]["mean"] == pytest.approx(((sent - scheduled)[ok] / 1e6).mean())
        assert d["queue_wait"]["p99"] == pytest.approx(np.percentile((start - sent)[ok] / 1e6, 99))
        assert d["service"]["p50"] == pytest.approx(np.percentile((end - start)[ok] / 1e6, 50))
        assert d["transport_other"]["mean"] == pytest.approx(((done - end)[ok] / 1e6).mean())
        # The decomposition identity: the stage means add up to the mean latency.
        total = sum(d[k]["mean"] for k in ("send_lag", "queue_wait", "service", "transport_other"))
        assert total == pytest.approx(stats["latency_ms"]["mean"], rel=1e-9)
        # CIs are ordered and contain their point estimate.
        for key, (lo, hi) in stats["latency_ci95_ms"].items():
            assert lo <= stats["latency_ms"][key] <= hi
        slo = stats["slo"]
        if name == "bert":
            assert slo["slo_ms"] == 20.0
            assert slo["attained"] == (latency_ms <= 20.0).sum()
            assert slo["attainment"] == pytest.approx((latency_ms <= 20.0).sum() / rows.sum())
        else:
            assert slo is None
    assert report["overall"]["count"] == 3000
    assert report["slo_source"] == "trace spec"


def test_generative_metrics_equal_numpy(run_dir):
    gen = build_report(run_dir)["models"]["gpt"]["generative"]
    table = read_timeline(run_dir)
    ok = (table.column("status").to_numpy(zero_copy_only=False) == "ok") & (
        table.column("model").to_numpy(zero_copy_only=False) == "gpt")
    first, done = _np(table, "first_token_ns")[ok], _np(table, "done_ns")[ok]
    ttft = (first - _np(table, "scheduled_ns")[ok]) / 1e6
    tpot = (done - first) / (_np(table, "tokens_out")[ok] - 1) / 1e6
    itl = np.concatenate(table.column("itl_ns").filter(pa.array(ok)).to_pylist()) / 1e6
    assert gen["count"] == ok.sum()
    assert gen["ttft_ms"]["p99"] == pytest.approx(np.percentile(ttft, 99), rel=1e-12)
    assert gen["tpot_ms"]["p50"] == pytest.approx(np.percentile(tpot, 50), rel=1e-12)
    assert gen["itl_ms"]["p90"] == pytest.approx(np.percentile(itl, 90), rel=1e-12)
    assert gen["itl_ms"]["count"] == itl.size == ok.sum() * 11
    assert build_report(run_dir)["models"]["bert"]["generative"] is None


def test_warmup_trim_and_flagged_rows(tmp_path):
    table = synthetic_timeline(MODELS, requests=2000, seed=5)
    scheduled = table.column("scheduled_ns").to_numpy()
    flagged = scheduled < scheduled[0] + 2e9
    table = table.set_column(table.schema.get_field_index("warmup"), "warmup", pa.array(flagged))
    run = write_synthetic_run(tmp_path / "w", MODELS, requests=0, table=table)
    default = build_report(run)
    assert default["overall"]["count"] == 2000 - flagged.sum()
    assert default["window"]["excluded_warmup_flagged"] == flagged.sum()
    assert build_report(run, include_warmup_rows=True)["overall"]["count"] == 2000
    trimmed = build_report(run, warmup_s=5.0)
    late = scheduled >= scheduled[0] + 5e9
    assert trimmed["overall"]["count"] == late.sum()
    assert trimmed["window"]["start_s"] == pytest.approx(scheduled[late].min() / 1e9)
    with pytest.raises(BadInput, match="--warmup"):
        build_report(run, warmup_s=-1.0)


def test_interrupted_run(tmp_path, cli):
    """Ctrl-C: the last rows are cancelled with no done time; the report still works."""
    table = synthetic_timeline(MODELS, requests=1500, seed=9)
    n_cut = 200
    cut = np.arange(table.num_rows) >= table.num_rows - n_cut
    columns = {name: table.column(name) for name in table.column_names}
    for name in ("service_end_ns", "done_ns", "first_token_ns"):
        columns[name] = pc.if_else(pa.array(cut), pa.nulls(table.num_rows, pa.int64()),
                                   table.column(name))
    columns["status"] = pa.array(np.where(cut, "cancelled", "ok"), pa.string())
    table = pa.table(columns, schema=table.schema)
    run = write_synthetic_run(tmp_path / "i", MODELS, requests=0, table=table,
                              status="interrupted")
    report = build_report(run)
    assert report["status"] == "interrupted"
    assert any("interrupted" in note for note in report["notes"])
    assert report["overall"]["cancelled"] == n_cut
    assert report["overall"]["ok"] == 1500 - n_cut
    slo = report["models"]["bert"]["slo"]
    assert slo["eligible"] == report["models"]["bert"]["count"] - report["models"]["bert"][
        "cancelled"]
    result = cli("report", str(run))
    assert result.returncode == 0, result.stderr
    assert "interrupted" in result.stdout


def test_empty_run(tmp_path):
    run = write_synthetic_run(tmp_path / "e", MODELS, requests=0,
                              table=synthetic_timeline(MODELS, requests=1).slice(0, 0))
    report = build_report(run)
    assert report["models"] == {}
    assert report["overall"]["count"] == 0
    assert report["overall"]["latency_ms"]["p99"] is None


def test_slo_sources(run_dir, tmp_path):
    forced = build_report(run_dir, slo_ms={"gpt": 1e6})
    assert forced["slo_source"] == "--slo"
    assert forced["models"]["gpt"]["slo"]["attainment"] == pytest.approx(
        forced["models"]["gpt"]["ok"] / forced["models"]["gpt"]["count"])
    assert forced["models"]["bert"]["slo"] is None  # --slo replaces the spec's SLOs
    baseline = build_report(run_dir, slo_from=run_dir, slo_factor=1.0)
    # SLO = 1 × the p50 of the same run: about half the ok requests attain it.
    for stats in baseline["models"].values():
        assert stats["slo"]["slo_ms"] == pytest.approx(stats["latency_ms"]["p50"])
        assert stats["slo"]["attained"] == pytest.approx(stats["ok"] / 2, abs=1)
    with pytest.raises(BadInput, match="no such model"):
        build_report(run_dir, slo_ms={"nope": 10})


@pytest.mark.parametrize("text", ["bert", "bert=", "bert=x", "bert=-3", "=5", ",", "bert=nan"])
def test_parse_slo_rejects(text):
    with pytest.raises(BadInput):
        parse_slo(text)


def test_parse_slo_accepts():
    assert parse_slo("bert=50, gpt=400.5") == {"bert": 50.0, "gpt": 400.5}


LIMITED_CHECK = {"send_lag_us": {"p50": 900.0, "p99": 25000.0, "max": 80000.0},
                 "achieved_rate_ratio": 0.71, "generator_limited": True,
                 "warning": "dispatcher fell behind"}


def test_generator_limited_is_flagged(tmp_path, cli):
    lagging = [SyntheticModel("bert", send_lag_ms=8.0)]  # p99 of Exp(8 ms) ≈ 37 ms
    run = write_synthetic_run(tmp_path / "l", lagging, requests=300, self_check=LIMITED_CHECK)
    report = build_report(run)
    assert report["self_check"]["generator_limited"] is True
    assert report["self_check"]["limits_this_report"] is True
    assert report["self_check"]["source"] == "run.json"
    result = cli("report", str(run))
    assert result.returncode == 0
    head = result.stdout[:result.stdout.index("requests")]
    assert "LIMITED" in head  # shown first, before the tables


def test_lag_only_in_excluded_warmup_rows_is_not_red(tmp_path, cli):
    """run.json says limited, but every lagging row is a flagged warm-up row."""
    table = synthetic_timeline(MODELS, requests=1000, seed=8)
    flagged = np.arange(1000) < 20
    sent = table.column("sent_ns").to_numpy() + np.where(flagged, 200_000_000, 0)
    columns = {n: table.column(n) for n in table.column_names}
    columns.update(sent_ns=pa.array(sent), warmup=pa.array(flagged))
    for name in ("service_start_ns", "service_end_ns", "done_ns", "first_token_ns"):
        columns[name] = pc.add(table.column(name), pa.array(np.where(flagged, 200_000_000, 0)))
    run = write_synthetic_run(tmp_path / "w", MODELS, requests=0, self_check=LIMITED_CHECK,
                              table=pa.table(columns, schema=table.schema))
    check = build_report(run)["self_check"]
    assert check["generator_limited"] is True and check["limits_this_report"] is False
    assert check["from_timeline"]["send_lag_us"]["p99"] < 1000
    result = cli("report", str(run))
    assert "LIMITED" not in result.stdout and "only in rows this report leaves out" in (
        " ".join(result.stdout.split()))
    assert build_report(run, include_warmup_rows=True)["self_check"]["limits_this_report"]


def test_cli_json_contract_keys(run_dir, cli):
    result = cli("report", str(run_dir), "--json", "--slo", "bert=15")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    stats = report["models"]["bert"]
    for key in ("count", "ok", "errors", "throughput_rps", "latency_ms"):
        assert key in stats
    assert set(stats["latency_ms"]) >= {"mean", "p50", "p90", "p95", "p99", "p999"}
    assert set(report["self_check"]["send_lag_us"]) == {"p50", "p99", "max"}
    assert "achieved_rate_ratio" in report["self_check"]
    assert report["overall"]["count"] == 3000
    assert stats["slo"]["slo_ms"] == 15.0


@pytest.mark.parametrize("args, needle", [
    (["report", "/nonexistent/run"], "no such run directory"),
    (["report", "{run}", "--slo", "bert=fast"], "--slo: bert = 'fast': not a number"),
    (["report", "{run}", "--slo", "bogus=5"], "no such model"),
    (["report", "{run}", "--warmup", "-2"], "--warmup"),
    (["report", "{run}", "--html", "/nonexistent/dir/r.html"], "parent directory"),
    (["report", "{run}", "--slo-from", "/nonexistent/base"], "no such run directory"),
    (["compare", "{run}"], "at least two"),
    (["export", "perfetto", "/nonexistent/run", "-o", "/tmp/x.json"], "no such run directory"),
])
def test_bad_input_exits_2(run_dir, tmp_path, args, needle, cli):
    args = [a.replace("{run}", str(run_dir)) for a in args]
    result = cli(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_not_a_run_dir(tmp_path, cli):
    (tmp_path / "x").mkdir()
    result = cli("report", str(tmp_path / "x"))
    assert result.returncode == 2 and "run.json" in result.stderr
    (tmp_path / "x" / "run.json").write_text("{not json")
    result = cli("report", str(tmp_path / "x"))
    assert result.returncode == 2 and "not JSON" in result.stderr


@pytest.mark.parametrize("key, value, needle", [
    ("trace", "x", "trace = 'x': must be a JSON object"),
    ("options", 5, "options = 5: must be a JSON object"),
    ("options", {"warmup_s": "x"}, "options.warmup_s = 'x': must be a number"),
])
def test_run_json_of_the_wrong_shape_is_one_line(tmp_path, cli, key, value, needle):
    # report and compare read these keys: a wrong type was a traceback (exit 1)
    base = write_synthetic_run(tmp_path / "a", MODELS[:1], requests=50, seed=1)
    bad = write_synthetic_run(tmp_path / "b", MODELS[:1], requests=50, seed=2)
    manifest = json.loads((bad / "run.json").read_text())
    manifest[key] = value
    (bad / "run.json").write_text(json.dumps(manifest))
    for args in (["report", str(bad), "--html", str(tmp_path / "r.html")],
                 ["compare", str(base), str(bad)]):
        result = cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.strip() == f"traceforge: error: {bad / 'run.json'}: {needle}"
    assert not (tmp_path / "r.html").exists()


def test_timeline_nulls_in_a_required_column_are_one_line(tmp_path, cli):
    # every latency is measured from scheduled_ns: a null one was a traceback in the plots
    run = write_synthetic_run(tmp_path / "r", MODELS[:1], requests=50, seed=1)
    part = sorted((run / "timeline").glob("part-*.parquet"))[0]
    table = pq.read_table(part)
    i = table.schema.get_field_index("scheduled_ns")
    pq.write_table(table.set_column(i, "scheduled_ns", pa.nulls(table.num_rows, pa.int64())),
                   part)
    result = cli("report", str(run), "--html", str(tmp_path / "r.html"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (f"traceforge: error: {run / 'timeline'}: scheduled_ns = "
                                     "None: null value (row 0); the column must be complete")
    assert not (tmp_path / "r.html").exists()


def test_real_null_and_simulated_runs(tmp_path, cli):
    """The same report on a null-backend replay and a simulation of one generated trace."""
    pytest.importorskip("traceforge.generate")
    pytest.importorskip("traceforge.simulate")
    pytest.importorskip("traceforge.backends.null")
    spec = REPO / "workloads" / "demo.toml"
    trace = tmp_path / "t.parquet"
    assert cli("trace", "gen", str(spec), "-o", str(trace), "--duration", "1").returncode == 0
    assert cli("replay", str(trace), "-o", str(tmp_path / "null"), "--backend", "null",
               "--service-ms", "2").returncode == 0
    assert cli("simulate", str(trace), "-o", str(tmp_path / "sim"),
               "--service-ms", "2").returncode == 0
    rows = pq.read_metadata(trace).num_rows
    for name in ("null", "sim"):
        result = cli("report", str(tmp_path / name), "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["overall"]["count"] == rows
        assert report["overall"]["ok"] == rows
        assert report["slo_source"] == "trace spec"
        assert set(report["models"]) == {"tiny-bert", "tiny-gpt2", "tiny-llama"}
    result = cli("compare", str(tmp_path / "null"), str(tmp_path / "sim"), "--json")
    assert result.returncode == 0
    assert set(json.loads(result.stdout)["models"]) == {"tiny-bert", "tiny-gpt2", "tiny-llama"}


def test_http_like_run_without_worker_times(tmp_path):
    """An HTTP backend knows no service start/end: queue and service are unknown, and
    transport/other is everything after the send (done − sent), so the identity still holds."""
    table = synthetic_timeline(MODELS, requests=800, seed=6)
    columns = {n: table.column(n) for n in table.column_names}
    for name in ("service_start_ns", "service_end_ns", "gpu_ns"):
        columns[name] = pa.nulls(table.num_rows, pa.int64())
    run = write_synthetic_run(tmp_path / "h", MODELS, requests=0,
                              table=pa.table(columns, schema=table.schema), backend="http")
    stats = build_report(run)["models"]["bert"]
    d = stats["decomposition_ms"]
    assert d["queue_wait"]["known"] == d["service"]["known"] == 0
    assert d["queue_wait"]["mean"] is None
    model = table.column("model").to_numpy(zero_copy_only=False) == "bert"
    after_send = (_np(table, "done_ns") - _np(table, "sent_ns"))[model] / 1e6
    assert d["transport_other"]["mean"] == pytest.approx(after_send.mean(), rel=1e-9)
    assert d["send_lag"]["mean"] + d["transport_other"]["mean"] == pytest.approx(
        stats["latency_ms"]["mean"], rel=1e-9)
