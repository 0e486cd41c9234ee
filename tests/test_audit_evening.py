"""Defects found by the evening audit of 2026-12-01 (trace stats, report/compare/export inputs,
spec parsing): each is one line naming file, key and value with exit 2 and nothing written,
or -- for a long but valid trace -- a result instead of a 37 GiB allocation."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trace_cli_helpers import assert_one_line_error, run_cli

from traceforge.generate.stats import index_of_dispersion

TWO_MODELS = """
duration_s = 3
[models.a]
arrival = { process = "poisson", rate = 30.0 }
[models.b]
arrival = { process = "poisson", rate = 20.0 }
"""


def _dense_idc(arrival_s, duration_s, window_s):
    """The definition, one count per window (what index_of_dispersion computed before)."""
    n = int(duration_s // window_s)
    if n < 2:
        return None
    inside = arrival_s[arrival_s < n * window_s]
    counts = np.bincount((inside / window_s).astype(np.int64), minlength=n)
    return float(counts.var(ddof=1) / counts.mean()) if counts.mean() > 0 else None


@settings(max_examples=60, deadline=None)
@given(times=st.lists(st.floats(0, 500, allow_nan=False), max_size=300),
       duration=st.floats(0.5, 600), window=st.sampled_from([1.0, 10.0, 0.7]))
def test_sparse_index_of_dispersion_equals_the_dense_definition(times, duration, window):
    arrival = np.sort(np.asarray(times, dtype=np.float64))
    got, want = (index_of_dispersion(arrival, duration, window),
                 _dense_idc(arrival, duration, window))
    assert (got is None) == (want is None)
    if want is not None:
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_stats_and_plot_of_a_five_billion_second_trace(tmp_path, capsys):
    """One window count per second of the trace was a 37 GiB array (and the plot one bin per
    second): now the sparse form and at most MAX_PLOT_BINS bins."""
    spec = tmp_path / "long.toml"
    spec.write_text('duration_s = 5e9\n[models.m]\narrival = { process = "poisson", '
                    'rate = 2e-6 }\n')
    trace = tmp_path / "long.parquet"
    assert run_cli(["trace", "gen", spec, "-o", trace], capsys)[0] == 0
    code, out, err = run_cli(["trace", "stats", trace, "--json", "--plot", tmp_path / "p.png"],
                             capsys)
    assert code == 0, err
    entry = json.loads(out)["models"]["m"]
    assert entry["idc_1s"] == pytest.approx(1.0, abs=0.01)  # Poisson: variance = mean
    assert (tmp_path / "p.png").stat().st_size > 0


def _trace_with_meta(path, meta: dict) -> None:
    n = 4
    table = pa.table({"request_id": pa.array(range(n), pa.int64()),
                      "arrival_ns": pa.array([0, 10**9, 2 * 10**9, 3 * 10**9], pa.int64()),
                      "model": ["m"] * n, "batch_size": pa.array([1] * n, pa.int32()),
                      "seq_len": pa.array([8] * n, pa.int32()),
                      "max_new_tokens": pa.array([0] * n, pa.int32())})
    pq.write_table(table.replace_schema_metadata({"traceforge": json.dumps(meta)}), path)


@pytest.mark.parametrize("model", [
    5,  # TypeError: argument of type 'int' is not iterable
    {"arrival": {"process": "poisson", "rate": 0}},  # ZeroDivisionError
    {"arrival": {"process": "poisson", "rate": "x"}},  # TypeError
    {"arrival": "poisson"},  # AttributeError
])
def test_stats_fits_the_realised_rate_where_the_metadata_spec_does_not_parse(tmp_path, capsys,
                                                                             model):
    trace = tmp_path / "t.parquet"
    _trace_with_meta(trace, {"schema": "traceforge.trace/1", "spec": {"models": {"m": model}}})
    code, out, err = run_cli(["trace", "stats", trace, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["models"]["m"]["fit"]["reference"] is True  # the realised rate


def test_all_poisson_metadata_without_a_generate_source_still_has_a_target(tmp_path, capsys):
    trace = tmp_path / "t.parquet"
    _trace_with_meta(trace, {"schema": "traceforge.trace/1", "spec": {"models": {
        "m": {"arrival": {"process": "poisson", "rate": 5.0}}}}})
    code, out, err = run_cli(["trace", "stats", trace, "--json"], capsys)
    assert code == 0, err  # was: unsupported operand type(s) for /: 'int' and 'NoneType'
    assert json.loads(out)["aggregate"]["fit"]["law"] == "exponential(rate=5.0)"


def test_plot_of_an_empty_trace_prints_no_warning(tmp_path, capsys):
    spec = tmp_path / "z.toml"
    spec.write_text('duration_s = 10\n[models.a]\narrival = { process = "onoff", rate = 10, '
                    'mean_on_s = 1e-9, mean_off_s = 9e9, off_rate = 0 }\n')
    trace = tmp_path / "z.parquet"
    assert run_cli(["trace", "gen", spec, "-o", trace], capsys)[0] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "No artists with labels found to put in legend."
        code, _, err = run_cli(["trace", "stats", trace, "--plot", tmp_path / "z.png"], capsys)
    assert code == 0, err


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small simulated run directory (copied before each corruption)."""
    import contextlib
    import io

    from traceforge.cli import main

    root = tmp_path_factory.mktemp("runs")
    (root / "w.toml").write_text(TWO_MODELS)
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        for argv in (["trace", "gen", root / "w.toml", "-o", root / "w.parquet"],
                     ["simulate", root / "w.parquet", "-o", root / "run", "--service-ms", "2"]):
            with contextlib.suppress(SystemExit):
                main([str(a) for a in argv])
    assert (root / "run" / "run.json").exists()
    return root / "run"


def _copy(run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(run, out)
    return out


@pytest.mark.parametrize("value", [float("nan"), -5, True, "fast", float("inf"), None])
def test_a_bad_slo_in_trace_metadata_is_refused(tmp_path, capsys, run, value):
    """NaN / negative / boolean SLOs gave 'attained 0 %' (or 100 %) tables with exit 0. An
    explicit null (never written by ``trace gen``) is refused in both files alike: the trace's
    check took it as unset while run.json's refused it."""
    src = pq.read_table(run.parent / "w.parquet")
    meta = json.loads(src.schema.metadata[b"traceforge"])
    meta["spec"]["models"]["a"]["slo_ms"] = value
    bad = tmp_path / "bad.parquet"
    pq.write_table(src.replace_schema_metadata({b"traceforge": json.dumps(meta)}), bad)
    out = tmp_path / "sim"
    code, _, err = run_cli(["simulate", bad, "-o", out, "--service-ms", "2"], capsys)
    assert_one_line_error(code, err, "bad.parquet", "traceforge.spec.models.a.slo_ms",
                          "milliseconds > 0")
    assert not out.exists()
    # ... and the same in a run.json
    copy = _copy(run, tmp_path)
    manifest = json.loads((copy / "run.json").read_text())
    manifest["trace"]["meta"]["spec"]["models"]["a"]["slo_ms"] = value
    (copy / "run.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(["report", copy], capsys)
    assert_one_line_error(code, err, "run.json", "trace.meta.spec.models.a.slo_ms")


def test_duplicated_timeline_rows_are_refused_not_counted_twice(tmp_path, capsys, run):
    copy = _copy(run, tmp_path)
    part = sorted((copy / "timeline").glob("*.parquet"))[0]
    shutil.copy(part, copy / "timeline" / "part-copy.parquet")
    for argv in (["report", copy], ["compare", run, copy],
                 ["export", "perfetto", copy, "-o", tmp_path / "x.json"]):
        code, _, err = run_cli(argv, capsys)
        assert_one_line_error(code, err, "timeline", "appear more than once")
    assert not (tmp_path / "x.json").exists()


def _write(path, columns: dict):
    pq.write_table(pa.table(columns), path)


@pytest.mark.parametrize("name, columns, needle", [
    ("telemetry.parquet", {"t_ns": pa.array([1000, None, 3000], pa.int64()),
                           "gpu_index": pa.array([0, 0, 0], pa.int32()),
                           "util_gpu_pct": [10.0, 20.0, 30.0]}, "t_ns = None"),
    ("telemetry.parquet", {"t_ns": ["a", "b"], "util_gpu_pct": ["x", "y"]}, "t_ns"),
    ("telemetry.parquet", {"t_ns": pa.array([1, 2, 3], pa.int64()),
                           "gpu_index": pa.array([0, None, 0], pa.int32()),
                           "util_gpu_pct": [1.0, 2.0, 3.0]}, "gpu_index = None"),
    ("server_metrics.parquet", {"t": [1, 2]}, "t_ns: missing column"),
])
def test_a_malformed_side_file_is_one_line_for_report_and_export(tmp_path, capsys, run, name,
                                                                 columns, needle):
    """Before: tracebacks, or (a null t_ns) a Perfetto file with "ts":nan and exit 0."""
    copy = _copy(run, tmp_path)
    _write(copy / name, columns)
    out = tmp_path / "x.json"
    for argv in (["report", copy, "--html", tmp_path / "r.html"],
                 ["export", "perfetto", copy, "-o", out]):
        code, _, err = run_cli(argv, capsys)
        if code == 0 and name == "server_metrics.parquet" and argv[0] == "export":
            continue  # the Perfetto export does not read server metrics
        assert_one_line_error(code, err, name, needle)
    assert not out.exists() or name == "server_metrics.parquet"
    assert not (tmp_path / "r.html").exists()


def test_a_torn_server_metrics_file_and_a_non_finite_sample(tmp_path, capsys, run):
    copy = _copy(run, tmp_path)
    (copy / "server_metrics.parquet").write_bytes(b"PAR1garbage")
    code, _, err = run_cli(["report", copy], capsys)
    assert_one_line_error(code, err, "server_metrics.parquet", "not a readable Parquet file")
    _write(copy / "server_metrics.parquet", {
        "t_ns": pa.array([1000, 2000], pa.int64()), "name": ["vllm:num_requests_running"] * 2,
        "labels": ["{}"] * 2, "value": [1.0, float("inf")]})
    code, out, err = run_cli(["report", copy], capsys)
    assert code == 0, err
    assert "inf" not in out  # the infinite sample is no measurement: left out


def test_run_json_edge_cases(tmp_path, capsys, run):
    copy = _copy(run, tmp_path)
    text = (copy / "run.json").read_text()
    (copy / "run.json").write_text(text.rstrip().rstrip("}") + ', "x": 1' + "0" * 5000 + "}")
    code, _, err = run_cli(["report", copy], capsys)  # ValueError: Exceeds the limit (4300 ...)
    assert_one_line_error(code, err, "run.json", "not JSON")
    (copy / "run.json").unlink()
    (copy / "run.json").mkdir()
    code, _, err = run_cli(["report", copy], capsys)  # exit 1 "Is a directory" before
    assert_one_line_error(code, err, "run.json", "cannot read")
    # NaN / Infinity tokens (a hand edit) read as unknown, never printed as numbers
    (copy / "run.json").rmdir()
    manifest = json.loads(text)
    manifest["self_check"] = {"send_lag_us": {"p99": float("nan")},
                              "achieved_rate_ratio": float("inf")}
    (copy / "run.json").write_text(json.dumps(manifest))
    code, out, err = run_cli(["report", copy], capsys)
    assert code == 0, err
    assert " nan " not in out and " inf" not in out


def test_run_json_is_written_as_strict_json(tmp_path):
    from traceforge.record.manifest import RunManifest

    manifest = RunManifest(tmp_path, name="run.json", backend="null", backend_info={},
                           options={"x": float("nan")}, trace={}, models=[])
    manifest.update(self_check={"ratio": float("inf"), "n": np.int64(3)})
    manifest.write()
    data = json.loads((tmp_path / "run.json").read_text(),
                      parse_constant=lambda c: pytest.fail(f"non-strict token {c}"))
    assert data["options"]["x"] is None and data["self_check"] == {"ratio": None, "n": 3}


def test_a_spec_integer_beyond_python_s_digit_limit_is_one_line(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text("duration_s = 10\nseed = 1" + "0" * 5000 +
                    '\n[models.a]\narrival = { process = "poisson", rate = 10 }\n')
    code, _, err = run_cli(["trace", "gen", spec, "-o", tmp_path / "t.parquet"], capsys)
    assert_one_line_error(code, err, "s.toml", "not valid TOML")


def test_a_rare_huge_session_length_is_refused_before_allocating(tmp_path, capsys):
    """The estimate probes 4,096 draws of the turns law and missed a 1-in-30,001 value of
    2**31 - 1: np.repeat then asked for 32 GiB. The sampled total is checked as well now."""
    spec = tmp_path / "s.toml"
    spec.write_text('duration_s = 100\n[models.chat]\narrival = { process = "poisson", '
                    'rate = 1000.0 }\nseq_len = 10\n[models.chat.sessions]\nturns = { dist = '
                    '"choice", values = [1, 2147483647], weights = [30000.0, 1.0] }\n'
                    'think_time_s = 1.0\ncontext_growth = "none"\n')
    out = tmp_path / "t.parquet"
    code, _, err = run_cli(["trace", "gen", spec, "-o", out], capsys)
    assert_one_line_error(code, err, "s.toml", "models.chat.sessions.turns", "of memory")
    assert not out.exists()
