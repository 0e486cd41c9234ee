"""No silent corruption (issue 10): every time checked against int64 ns, memory refused before it
is allocated, degenerate parameters handled or refused, and whatever `trace gen` / `trace import`
accept, their own reader reads back. Hypothesis fuzzes the spec and importer parameters."""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trace_cli_helpers import assert_one_line_error, run_cli

from traceforge import limits
from traceforge.errors import BadInput
from traceforge.generate import generate_trace, parse_spec
from traceforge.schema import TRACE_SCHEMA, read_trace, write_trace

SMALL_BUDGET = 40e6  # bytes: keeps every fuzzed trace below ~0.5 M requests, so the test is fast


@pytest.fixture
def small_memory(monkeypatch):
    monkeypatch.setattr(limits, "memory_budget", lambda: SMALL_BUDGET)


def gen_roundtrip(raw: dict, tmp_path) -> int | None:
    """Generate ``raw``; None if refused (BadInput), else the row count read back. Any numpy or
    Python warning fails the test (warnings are errors here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            trace = generate_trace(parse_spec(raw, source="fuzz.toml"))
        except BadInput as exc:
            assert "\n" not in str(exc)
            return None
        out = tmp_path / "t.parquet"
        write_trace(trace.table, out, trace.meta)
        back = read_trace(out)  # the reader must accept what the generator wrote
    assert back.table.num_rows == trace.table.num_rows
    return back.table.num_rows


# -- hypothesis: spec parameters --------------------------------------------------------------
extreme = st.one_of(
    st.floats(min_value=1e-300, max_value=1e300, allow_nan=False, allow_infinity=False),
    st.sampled_from([1e-300, 1e-12, 1e-9, 1e-3, 0.5, 1.0, 2.0, 1e3, 1e9, 1e12, 1e300]))
unit = st.floats(min_value=0.0, max_value=1.0)
arrivals = st.one_of(
    st.builds(lambda r: {"process": "poisson", "rate": r}, extreme),
    st.builds(lambda r: {"process": "constant", "rate": r}, extreme),
    st.builds(lambda r, cv: {"process": "gamma", "rate": r, "cv": cv}, extreme, extreme),
    st.builds(lambda r, k: {"process": "weibull", "rate": r, "shape": k}, extreme, extreme),
    st.builds(lambda a, b, d1, d2: {"process": "mmpp", "rates": [a, b],
                                    "mean_dwell_s": [d1, d2]}, extreme, extreme, extreme, extreme),
    st.builds(lambda r, on, off: {"process": "onoff", "rate": r, "mean_on_s": on,
                                  "mean_off_s": off}, extreme, extreme, extreme),
    st.builds(lambda r, a, p, ph: {"process": "diurnal", "rate": r, "amplitude": a,
                                   "period_s": p, "phase_s": ph}, extreme, unit, extreme, extreme),
)
shapes = st.one_of(
    st.just(128),
    st.builds(lambda m, s: {"dist": "lognormal", "median": m, "sigma": s, "max": 4096},
              extreme, extreme),
    st.builds(lambda a, lo: {"dist": "zipf", "a": a, "min": lo, "max": lo + 1000},
              extreme, st.integers(1, 10**6)),
    st.builds(lambda w1, w2: {"dist": "choice", "values": [1, 8], "weights": [w1, w2]},
              st.one_of(st.just(0.0), extreme), extreme),
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(arrival=arrivals, seq_len=shapes,
       horizon=st.one_of(st.builds(lambda d: {"duration_s": d}, extreme),
                         st.builds(lambda n: {"requests": n}, st.integers(1, 10**19))),
       modulation=st.one_of(st.none(), st.tuples(extreme, extreme, extreme, unit)))
def test_fuzzed_specs_generate_readable_traces_or_refuse(arrival, seq_len, horizon, modulation,
                                                          tmp_path, small_memory):
    raw = {"name": "fuzz", "seed": 1, **horizon,
           "models": {"m": {"arrival": arrival, "seq_len": seq_len},
                      "p": {"arrival": {"process": "poisson", "rate": 5.0}}}}
    if modulation is not None:  # a shared modulation on the second model
        d1, d2, m1, m2 = modulation
        raw["modulations"] = {"s": {"mean_dwell_s": [d1, d2], "multipliers": [m1, m2]}}
        raw["models"]["p"]["modulation"] = "s"
    gen_roundtrip(raw, tmp_path)


# -- named degenerate cases --------------------------------------------------------------------
def spec(arrival: dict, duration_s: float = 10.0, **model) -> dict:
    return {"name": "x", "duration_s": duration_s, "seed": 3,
            "models": {"a": {"arrival": arrival, **model}}}


@pytest.mark.parametrize("raw, key", [
    (spec({"process": "constant", "rate": 1e-8}, duration_s=1e10), "duration_s"),
    ({"name": "x", "requests": 5, "models": {"a": {"arrival": {"process": "poisson",
                                                                "rate": 1e-300}}}}, "requests"),
    (spec({"process": "gamma", "rate": 10, "cv": 1e100}), "models.a.arrival.cv"),
    (spec({"process": "weibull", "rate": 10, "shape": 1e-3}), "models.a.arrival.shape"),
    (spec({"process": "mmpp", "rates": [1, 2], "mean_dwell_s": [1e-9, 1e-9]}, duration_s=100),
     "models.a.arrival.mean_dwell_s"),
    ({"name": "x", "duration_s": 100, "modulations": {"s": {"mean_dwell_s": [1e-9, 1e-9],
                                                            "multipliers": [1, 2]}},
      "models": {"a": {"arrival": {"process": "poisson", "rate": 1}, "modulation": "s"}}},
     "modulations.s.mean_dwell_s"),
    (spec({"process": "poisson", "rate": 1e300}), "models.a.arrival.rate"),
    (spec({"process": "poisson", "rate": 1e6}, duration_s=1e4), "duration_s"),  # memory
    (spec({"process": "poisson", "rate": 1}, zoo="no-such-model"), "models.a.zoo"),
])
def test_impossible_specs_are_refused_naming_the_key(raw, key, small_memory):
    with pytest.raises(BadInput) as err:
        generate_trace(parse_spec(raw, source="w.toml"))
    assert err.value.key == key, str(err.value)
    assert str(err.value).split(" = ")[0].endswith(key)  # the one line leads with the key


@pytest.mark.parametrize("arrival, model, rows", [
    # cv -> 0 is the exact limit: constant gaps of 1/rate starting one gap after 0
    ({"process": "gamma", "rate": 10, "cv": 1e-200}, {}, 99),
    ({"process": "weibull", "rate": 10, "shape": 1e300}, {}, None),  # also constant gaps
    ({"process": "diurnal", "rate": 10, "amplitude": 1, "period_s": 1e-9, "phase_s": 9e9},
     {}, None),
    ({"process": "poisson", "rate": 10},
     {"seq_len": {"dist": "lognormal", "median": 1e300, "sigma": 100, "max": 100}}, None),
    ({"process": "poisson", "rate": 10}, {"seq_len": {"dist": "zipf", "a": 1e300, "min": 5,
                                                      "max": 100}}, None),
    ({"process": "poisson", "rate": 10},
     {"seq_len": {"dist": "choice", "values": [1, 2], "weights": [1e308, 1e308]}}, None),
])
def test_degenerate_limits_are_handled_without_warnings(arrival, model, rows, tmp_path):
    n = gen_roundtrip(spec(arrival, **model), tmp_path)
    assert n is not None and n > 0
    if rows is not None:
        assert n == rows
    t = pq.read_table(tmp_path / "t.parquet")
    if "cv" in arrival:  # every gap exactly 100 ms
        assert set(np.diff(t.column("arrival_ns").to_numpy()).tolist()) == {100_000_000}
    if model.get("seq_len", {}).get("dist") == "zipf":  # all mass on min when a is huge
        assert set(t.column("seq_len").to_numpy().tolist()) == {5}
    if model.get("seq_len", {}).get("dist") == "lognormal":  # overflow clips to max, not garbage
        assert set(t.column("seq_len").to_numpy().tolist()) <= {1, 100}


def test_memory_guard_refuses_before_allocating(monkeypatch):
    monkeypatch.setattr(limits, "memory_budget", lambda: 1e6)  # 1 MB: ~13k requests
    with pytest.raises(BadInput, match=r"needs about .* of memory"):
        generate_trace(parse_spec(spec({"process": "poisson", "rate": 10_000}), source="w"))
    # the same spec fits a little lower
    assert generate_trace(parse_spec(spec({"process": "poisson", "rate": 1_000}),
                                     source="w")).table.num_rows > 0


def test_available_memory_reads_the_system():
    avail = limits.available_memory()
    assert avail is None or avail > 0
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():  # Linux: MemAvailable in bytes, never more than the machine has
        total_kib = next(int(line.split()[1]) for line in meminfo.read_text().splitlines()
                         if line.startswith("MemTotal:"))
        assert isinstance(avail, int) and 0 < avail <= total_kib * 1024


def test_available_memory_reads_memavailable_in_kib(monkeypatch):
    meminfo = "MemTotal:  900 kB\nMemFree:  100 kB\nMemAvailable:     123 kB\n"
    monkeypatch.setattr(limits, "open", lambda *a, **k: io.StringIO(meminfo), raising=False)
    assert limits.available_memory() == 123 * 1024


# -- the reader refuses what the contract forbids ---------------------------------------------
def write_raw(path, ids, models):
    n = len(ids)
    table = pa.table({"request_id": pa.array(ids, pa.int64()),
                      "arrival_ns": pa.array(range(n), pa.int64()),
                      "model": pa.array(models, pa.string()),
                      "batch_size": pa.array([1] * n, pa.int32()),
                      "seq_len": pa.array([8] * n, pa.int32()),
                      "max_new_tokens": pa.array([0] * n, pa.int32())})
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize("ids, models, key", [
    ([0, 1, 1], ["a", "a", "a"], "request_id"),  # duplicate
    ([0, 2, 3], ["a", "a", "a"], "request_id"),  # a gap
    ([1, 0, 2], ["a", "a", "a"], "request_id"),  # out of order
    ([0, 1, 2], ["a", None, "a"], "model"),  # null model
    ([0, 1, 2], ["a", "", "a"], "model"),  # empty model name
])
def test_read_trace_refuses_bad_ids_and_models(tmp_path, ids, models, key):
    path = write_raw(tmp_path / "bad.parquet", ids, models)
    with pytest.raises(BadInput) as err:
        read_trace(path)
    assert err.value.key == key and str(path) in str(err.value)


def test_read_trace_accepts_a_valid_table(tmp_path):
    path = write_raw(tmp_path / "ok.parquet", [0, 1, 2], ["a", "b", "a"])
    assert read_trace(path).table.schema.names[:6] == TRACE_SCHEMA.names[:6]


# -- importers ----------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(times=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=1,
                      max_size=6),
       unit=st.sampled_from(["s", "ms", "us", "ns"]),
       time_scale=st.sampled_from([1.0, 1e-30, 1e-9, 1e6, 1e12, 1e300]),
       rate_scale=st.sampled_from([1.0, 1e-300, 1e-6, 1e9]),
       start=st.sampled_from([0.0, 1.0, 1e9, 1e300]),
       duration=st.sampled_from([None, 1e-9, 1.0, 1e6, 1e300]))
def test_fuzzed_imports_read_back_or_refuse(tmp_path, times, unit, time_scale, rate_scale,
                                            start, duration):
    from traceforge.importers import import_trace

    src = tmp_path / "src.csv"
    src.write_text("t\n" + "".join(f"{t!r}\n" for t in times))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            trace = import_trace("csv", [src], columns="time=t", time_unit=unit,
                                 time_scale=time_scale, rate_scale=rate_scale, start_s=start,
                                 duration_s=duration)
        except BadInput as exc:
            assert "\n" not in str(exc)
            return
        out = tmp_path / "t.parquet"
        write_trace(trace.table, out, trace.meta)
        back = read_trace(out)
    assert back.table.num_rows == trace.table.num_rows > 0
    assert math.isfinite(trace.meta["duration_s"]) and trace.meta["duration_s"] >= 0


@pytest.mark.parametrize("content, args, needles", [
    ("t\n1e300\n", [], ["src.csv:2", "int64-nanosecond"]),
    ("t\n1\n9.3e9\n", [], ["src.csv:3", "int64-nanosecond"]),
    ("t\n-9e9\n9e9\n", [], ["src.csv", "time span"]),
    ("t\n1\n2\n", ["--time-scale", "1e12"], ["--time-scale", "int64-nanosecond"]),
    ("t\n1\n2\n", ["--rate-scale", "1e-12"], ["--rate-scale", "int64-nanosecond"]),
    ("t\n1\n2\n", ["--start", "1e300"], ["--start", "int64-nanosecond"]),
    ("t\n1\n2\n", ["--duration", "1e300"], ["--duration", "int64-nanosecond"]),
    ("", [], ["src.csv", "empty file"]),
    ("t\n", [], ["src.csv", "no requests"]),
])
def test_import_refusals_name_the_file_or_key(tmp_path, capsys, content, args, needles):
    src = tmp_path / "src.csv"
    src.write_text(content)
    out = tmp_path / "out.parquet"
    code, _, err = run_cli(["trace", "import", "csv", src, "--columns", "time=t", *args,
                            "-o", out], capsys)
    assert_one_line_error(code, err, *needles)
    assert not out.exists()


def test_import_duration_past_the_data_is_clipped_not_padded(tmp_path, capsys):
    src = tmp_path / "src.csv"
    src.write_text("t\n1\n2\n3\n")
    out = tmp_path / "out.parquet"
    code, stdout, _ = run_cli(["trace", "import", "csv", src, "--columns", "time=t",
                               "--duration", "100", "-o", out], capsys)
    assert code == 0 and "clipped" in stdout
    trace = read_trace(out)
    assert trace.meta["duration_s"] == 2.0  # first to last arrival, not 100 s of silence
    assert trace.meta["source"]["duration_clipped_from_s"] == 100.0
    code, stdout, _ = run_cli(["trace", "stats", out, "--json"], capsys)
    import json

    agg = json.loads(stdout)["aggregate"]
    assert agg["rate"] == pytest.approx(1.5)  # 3 requests over 2 s, not 3 over 100 s
    assert agg["rate_ci"] is None or agg["rate_ci"][0] >= 0
    # the intervals are over the clipped 2 s too (over 100 s: about [0.006, 0.09] /s)
    assert agg["rate_ci"] is None or agg["rate_ci"][0] <= 1.5 <= agg["rate_ci"][1]
    assert agg["rate_ci_poisson"][0] < 1.5 < agg["rate_ci_poisson"][1]


def test_gen_unknown_zoo_names_the_key(tmp_path, capsys):
    spec_path = tmp_path / "w.toml"
    spec_path.write_text('duration_s = 1\n[models.a]\nzoo = "nope"\n'
                         'arrival = { process = "poisson", rate = 1 }\n')
    code, _, err = run_cli(["trace", "gen", spec_path, "-o", tmp_path / "t.parquet"], capsys)
    assert_one_line_error(code, err, "models.a.zoo", "'nope'", "tiny-bert")


def test_import_scaling_below_a_nanosecond_is_refused(tmp_path, capsys):
    src = tmp_path / "src.csv"
    src.write_text("t\n1\n2\n3\n")
    code, _, err = run_cli(["trace", "import", "csv", src, "--columns", "time=t", "--time-unit",
                            "ns", "--time-scale", "1e-30", "-o", tmp_path / "o.parquet"], capsys)
    assert_one_line_error(code, err, "--time-scale", "under 1 ns")


def test_rate_ci_lower_bound_is_never_negative():
    from traceforge.generate.stats import rate_ci_batch_means

    arrivals = np.array([0.1, 0.2, 0.3])  # all in the first of 20 batches: huge spread
    lo, hi = rate_ci_batch_means(arrivals, 100.0)
    assert lo == 0.0 and hi > 0.03


def test_the_fuzzed_paths_accept_ordinary_inputs(tmp_path, small_memory):
    """The two fuzz tests above pass whenever an input is refused; this keeps a validator that
    refuses everything from passing them: the same paths, with ordinary values, must accept."""
    from traceforge.importers import import_trace

    raw = {"name": "fuzz", "seed": 1, "duration_s": 10.0,
           "models": {"m": {"arrival": {"process": "gamma", "rate": 5.0, "cv": 2.0},
                            "seq_len": {"dist": "uniform", "low": 16, "high": 64}},
                      "p": {"arrival": {"process": "poisson", "rate": 5.0}}}}
    assert gen_roundtrip(raw, tmp_path) > 0
    src = tmp_path / "src.csv"
    src.write_text("t\n0.0\n0.5\n1.0\n")
    trace = import_trace("csv", [src], columns="time=t", time_unit="s", time_scale=1.0,
                         rate_scale=1.0, start_s=0.0, duration_s=None)
    assert trace.table.num_rows == 3


def session_spec(turns, *, rate: float, duration_s: float = 10.0) -> dict:
    return {"name": "x", "duration_s": duration_s, "seed": 1,
            "models": {"a": {"arrival": {"process": "poisson", "rate": rate},
                             "sessions": {"turns": turns, "think_time_s": 0.1}}}}


@pytest.mark.parametrize("turns, rate, key", [
    # 10 sessions of a million turns: the turns drive it (the guard counted 10 rows before)
    (10**6, 1.0, "models.a.sessions.turns"),
    ({"dist": "uniform", "low": 1, "high": 2 * 10**6}, 1.0, "models.a.sessions.turns"),
    # 2000 sessions x 1000 turns = 2 M rows x 210 B > 40 MB: the duration drives it
    (1000, 200.0, "duration_s"),
])
def test_memory_guard_counts_session_turns(turns, rate, key, small_memory, tmp_path):
    path = tmp_path / "w.toml"
    with pytest.raises(BadInput) as err:
        generate_trace(parse_spec(session_spec(turns, rate=rate), source=path))
    assert err.value.key == key and "of memory" in str(err.value)
    assert "\n" not in str(err.value)


def test_memory_guard_session_estimate_allows_what_fits(small_memory):
    # 100 sessions x 100 turns = 10k rows x 210 B = 2.1 MB: well inside the 40 MB budget
    trace = generate_trace(parse_spec(session_spec(100, rate=10.0), source="w.toml"))
    assert 9_000 < trace.table.num_rows < 11_000


def test_requests_with_sessions_sample_a_horizon_for_rows_not_sessions(monkeypatch):
    """`requests = N` counts rows (turns): the first horizon holds ~N rows, not N sessions'
    worth of turns (which the memory guard would have to pay for)."""
    from traceforge.generate import build

    horizons = []
    real = build.sample_columns
    monkeypatch.setattr(build, "sample_columns",
                        lambda spec, seed, h: horizons.append(h) or real(spec, seed, h))
    raw = session_spec(50, rate=2.0)
    raw.pop("duration_s")
    raw["requests"] = 5000
    trace = generate_trace(parse_spec(raw, source="w.toml"))
    assert trace.table.num_rows == 5000
    assert horizons[0] < 5000 / 2.0 / 10  # 5000 rows / (2 sessions/s x 50 turns) x 1.1 + 1
