"""compare_runs: 'same' for two seeds of one config, a 20 % shift found at n = 5000."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from traceforge.analyze.compare import compare_model, compare_runs
from traceforge.analyze.synthetic import SyntheticModel, write_synthetic_run
from traceforge.errors import BadInput

BASE = [SyntheticModel("bert", rate=100, service_ms=10, queue_ms=2),
        SyntheticModel("gpt", rate=100, service_ms=30, queue_ms=5)]


def slowed(models, factor):
    """Every stage of every model ``factor`` times longer: the latency distribution scaled."""
    return [replace(m, service_ms=m.service_ms * factor, queue_ms=m.queue_ms * factor,
                    send_lag_ms=m.send_lag_ms * factor, transport_ms=m.transport_ms * factor)
            for m in models]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    return {
        "a": write_synthetic_run(root / "a", BASE, requests=10_000, seed=11),
        "a2": write_synthetic_run(root / "a2", BASE, requests=10_000, seed=12),
        "slow": write_synthetic_run(root / "slow", slowed(BASE, 1.2), requests=10_000, seed=13),
        "other": write_synthetic_run(root / "other", [BASE[0], SyntheticModel("vit")],
                                     requests=4_000, seed=14),
    }


def test_two_seeds_of_one_config_are_same(runs):
    result = compare_runs([runs["a"], runs["a2"]])
    for name, m in result["models"].items():
        assert m["verdict"] == "same", (name, m)
        assert m["p99_diff_ci_ms"][0] < 0 < m["p99_diff_ci_ms"][1]
        assert 0.9 < m["p50_ratio"] < 1.1


def test_20_percent_shift_is_found(runs):
    """About 5000 requests per model, latencies scaled by 1.2: 'slower' both ways round."""
    result = compare_runs([runs["a"], runs["slow"]])
    for m in result["models"].values():
        assert m["n_a"] > 4500 and m["n_b"] > 4500
        assert m["verdict"] == "slower"
        assert m["p99_ratio"] == pytest.approx(1.2, abs=0.1)
        assert m["ks_p"] < 1e-6 and m["mw_p"] < 1e-6
        assert m["wasserstein_ms"] > 0
    back = compare_runs([runs["slow"], runs["a"]])
    assert {m["verdict"] for m in back["models"].values()} == {"faster"}


def test_verdict_counts_a_median_shift():
    """A body shift with an unchanged tail is 'slower' (issue 10: a 20 % p50 shift with KS
    p << 0.01 is not 'same'); the p99 CI alone would have said 'same'."""
    rng = np.random.default_rng(0)
    a = rng.exponential(10e6, size=5000)
    b = a.copy()
    body = b < np.percentile(b, 90)
    b[body] *= 1.2  # the body moves 20 %, the slowest 10 % do not
    m = compare_model(np.sort(a), np.sort(b))
    assert m["ks_p"] < 0.01
    assert m["p99_diff_ci_ms"][0] <= 0 <= m["p99_diff_ci_ms"][1]  # the tail did not move
    assert m["p50_diff_ci_ms"][0] > 0
    assert m["verdict"] == "slower"
    back = compare_model(np.sort(b), np.sort(a))
    assert back["verdict"] == "faster"


def test_verdict_mixed_when_median_and_tail_move_apart():
    rng = np.random.default_rng(1)
    a = rng.exponential(10e6, size=5000)
    b = a.copy()
    cut = np.percentile(b, 90)
    b[b < cut] *= 0.7  # the median gets faster
    b[b >= cut] *= 1.5  # the tail slower
    m = compare_model(np.sort(a), np.sort(b))
    assert m["verdict"] == "mixed"


def test_verdict_stays_same_without_ks():
    """Two samples of one distribution: KS does not reject, so neither CI can make a verdict."""
    rng = np.random.default_rng(2)
    same = [compare_model(np.sort(rng.exponential(10e6, 2000)),
                          np.sort(rng.exponential(10e6, 2000)), seed=i)["verdict"]
            for i in range(5)]
    assert same == ["same"] * 5


def test_different_model_sets_and_many_runs(runs):
    result = compare_runs([runs["a"], runs["other"], runs["a2"]])
    assert result["only_in_a"] == ["gpt"] and result["only_in_b"] == ["vit"]
    assert list(result["models"]) == ["bert"]
    assert len(result["comparisons"]) == 2
    assert set(result["comparisons"][1]["models"]) == {"bert", "gpt"}
    assert result["comparisons"][1]["b"] == str(runs["a2"])


def test_compare_cli_json(runs, capsys):
    from traceforge.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(runs["a"]), str(runs["slow"]), "--json"])
    assert exit_info.value.code in (0, None)
    out = json.loads(capsys.readouterr().out)
    for m in out["models"].values():
        assert set(m) >= {"p50_ratio", "p99_ratio", "ks_p", "verdict"}
        assert m["verdict"] in ("faster", "slower", "same")


def test_compare_rejects_bad_alpha(runs):
    with pytest.raises(BadInput, match="--alpha"):
        compare_runs([runs["a"], runs["a2"]], alpha=0.7)
