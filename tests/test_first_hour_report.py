"""Report and compare fixes of issue 10: offered/s over the arrival window, overloaded models
named, compare warnings when runs differ in warm-up handling or request counts. Runs come from
the simulator (virtual time: fast and exact)."""

from __future__ import annotations

import pytest
from replay_helpers import make_trace, poisson_arrivals

from traceforge.analyze.compare import compare_runs
from traceforge.analyze.report import build_report
from traceforge.simulate import simulate


def sim(tmp_path, name, arrival_ns, **kw):
    trace = make_trace(arrival_ns, path=tmp_path / f"{name}.parquet")
    return simulate(trace, tmp_path / name, **kw).run_dir


@pytest.fixture
def arrivals():
    return poisson_arrivals(100.0, 2000, seed=4)  # ~20 s at 100 req/s


def test_offered_rate_excludes_the_drain(tmp_path, arrivals):
    # 1 server at 20 ms/request serves 50/s: offered 100/s, a long drain after the last arrival
    run = sim(tmp_path, "over", arrivals, service_ms=20.0, service_dist="const")
    report = build_report(run)
    window = report["window"]
    arrival_s = (arrivals[-1] - arrivals[0]) / 1e9
    assert window["arrival_window_s"] == pytest.approx(arrival_s)
    assert window["duration_s"] > 1.5 * arrival_s  # the drain: the queue empties at 50/s
    m = report["models"]["m"]
    assert m["offered_rps"] == pytest.approx(2000 / arrival_s)  # not 2000 / duration
    assert m["offered_rps"] == pytest.approx(100, rel=0.1)


def test_overloaded_model_is_named(tmp_path, arrivals):
    report = build_report(sim(tmp_path, "over", arrivals, service_ms=20.0,
                              service_dist="const"))
    over = report["models"]["m"]["overload"]
    assert over["overloaded"]
    assert over["served_in_window_rps"] == pytest.approx(50, rel=0.05)
    assert over["queue_trend"]["kendall_tau"] > 0.9
    assert any("m is OVERLOADED" in n for n in report["notes"])


@pytest.mark.parametrize("service_ms", [1.0, 8.0])  # utilisation 10 % and 80 %: stable queues
def test_stable_model_is_not_called_overloaded(tmp_path, arrivals, service_ms):
    report = build_report(sim(tmp_path, "ok", arrivals, service_ms=service_ms))
    assert not report["models"]["m"]["overload"]["overloaded"]
    assert not any("OVERLOADED" in n for n in report["notes"])


def test_compare_warns_on_warmup_and_request_count_differences(tmp_path, arrivals):
    a = sim(tmp_path, "a", arrivals, service_ms=2.0)
    b = sim(tmp_path, "b", arrivals, service_ms=2.0, warmup_s=1.0)
    c = sim(tmp_path, "c", arrivals[:1000], service_ms=2.0)
    result = compare_runs([a, b, c])
    warn_b, warn_c = (p["warnings"] for p in result["comparisons"])
    assert len(warn_b) == 1 and "warm-up" in warn_b[0]
    assert any("different numbers of requests" in w for w in warn_c)
    assert compare_runs([a, a])["comparisons"][0]["warnings"] == []


def test_compare_cli_prints_the_warning(tmp_path, arrivals, capsys):
    from trace_cli_helpers import run_cli

    a = sim(tmp_path, "a", arrivals, service_ms=2.0)
    b = sim(tmp_path, "b", arrivals, service_ms=2.0, warmup_s=1.0)
    code, out, err = run_cli(["compare", a, b], capsys)
    assert code == 0, err
    assert "warning: the runs differ in warm-up handling" in " ".join(out.split())
