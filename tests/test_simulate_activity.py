"""The way back by the dispatcher's activity (profile ``outbound_by_activity_ms``): how many
sends and completions fell in the 10 ms before a request's service end
(measure.dispatcher_activity), measured per bin from the profile's open-loop phases and looked
up per request by the simulator on its own timeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_simulate import make_profile, make_trace, model_profile

from traceforge.errors import BadInput
from traceforge.record import read_timeline
from traceforge.simulate import simulate
from traceforge.simulate.measure import (
    ACTIVITY_BINS,
    back_activity_samples,
    dispatcher_activity,
    outbound_activity_bins,
    outbound_activity_spread,
)
from traceforge.simulate.profile import SPREAD_QUANTILES, ModeProfile

MS = 1_000_000


def test_activity_counts_sends_and_completions_in_the_window_before():
    """Events at 0, 3, 9.999 and 10 ms; the window is [at − 10 ms, at): at 10 ms it holds the
    first three (the event at 10 ms itself is not before it), at 13 ms the three from 3 ms on,
    at 20 ms only the one at 10 ms, 1 ns later none."""
    sent = np.array([0, 3 * MS])
    done = np.array([9_999_000, 10 * MS])
    at = np.array([10 * MS, 13 * MS, 20 * MS, 20 * MS + 1, 0])
    assert dispatcher_activity(sent, done, at).tolist() == [3, 3, 1, 0, 0]
    assert dispatcher_activity(sent, done, at, window_ms=2.0).tolist() == [1, 0, 0, 0, 0]


def test_bins_median_per_activity_and_the_lookup_takes_the_nearest_bin_beyond():
    """Two timelines: a quiet one (requests 30 ms apart: each sees only its own send) and a
    busy one (0.2 ms apart: ~100 events in 10 ms). The way backs are set by hand: 0.4 ms
    quiet, 0.1 ms busy; the bins are those medians, and bins with too few requests are left
    out."""
    n = 60
    quiet_sent = np.arange(n) * 30.0 * MS
    quiet_end = quiet_sent + 1.0 * MS
    busy_sent = np.arange(n) * 0.2 * MS
    busy_end = busy_sent + 0.05 * MS
    samples = [back_activity_samples(["a"] * n, quiet_sent, quiet_end, quiet_end + 0.4 * MS),
               back_activity_samples(["a"] * n, busy_sent, busy_end, busy_end + 0.1 * MS)]
    act_quiet = samples[0]["a"][0]
    assert set(act_quiet.tolist()) == {1}  # its own send, 1 ms before its end
    bins = outbound_activity_bins(samples)
    rows = {(lo, hi): (med, cnt) for lo, hi, med, cnt in bins["a"]}
    # the quiet requests and the busy run's first one (it too has seen only its own send)
    assert rows[(0.0, 2.0)] == (0.4, n + 1)
    assert rows[(20.0, None)][0] == pytest.approx(0.1)
    # the ramp-up of the busy run falls in the middle bins; fewer than 8: left out
    assert all(cnt >= 8 for _med, cnt in rows.values())
    assert sum(cnt for _med, cnt in rows.values()) <= 2 * n
    assert len(ACTIVITY_BINS) == 6
    mp = ModeProfile({}, {}, {}, {}, outbound_by_activity_ms={
        "a": [(lo, np.inf if hi is None else hi, med) for lo, hi, med, _ in bins["a"]]})
    assert mp.activity_outbound_ms("a", 1) == 0.4
    assert mp.activity_outbound_ms("a", 500) == pytest.approx(0.1)
    assert mp.activity_outbound_ms("b", 1) is None
    np.testing.assert_allclose(mp.activity_outbound_ms("a", np.array([0, 1, 40])),
                               [0.4, 0.4, 0.1])
    # the spread is measured around each request's own bin median: zero here
    spread = outbound_activity_spread(samples, bins)["a"]
    assert len(spread) == len(SPREAD_QUANTILES)
    assert max(abs(v) for v in spread) < 0.06  # only the sparse middle bins' rows deviate


def _profile(table, *, spreads: dict | None = None):
    ref = {"reference": {"batch_size": 1, "seq_len": 32, "max_new_tokens": 0}}
    mode = {"inbound_ms": {"enc": 0.05}, "outbound_ms": {"enc": 0.2}, **(spreads or {})}
    if table is not None:
        mode["outbound_by_activity_ms"] = {"enc": table}
    return make_profile({"enc": model_profile([[0.1]], batch_sizes=(1,), seq_lens=(32,),
                                              **ref)},
                        {"exclusive": {}, "mps": mode})


def _way_back_ms(run) -> np.ndarray:
    t = read_timeline(run)
    return (t.column("done_ns").to_numpy() - t.column("service_end_ns").to_numpy()) / 1e6


def test_the_simulator_looks_the_way_back_up_by_its_own_activity(tmp_path):
    """Alone on its worker, a request 30 ms after the last one sees 1 event (its own send):
    the quiet bin's 0.5 ms; in a burst 0.1 ms apart it sees ~2 × 100 events: the busy bin's
    0.15 ms. Without the table every request takes ``outbound_ms`` (0.2 ms)."""
    table = [[0, 2, 0.5, 40], [20, None, 0.15, 900]]
    quiet = np.arange(40) * 30 * MS
    burst = quiet[-1] + 30 * MS + np.arange(400) * MS // 10
    trace = make_trace(np.concatenate((quiet, burst)), models=["enc"] * 440,
                       seq_len=np.full(440, 32))
    simulate(trace, tmp_path / "by-activity", profile=_profile(table), mode="mps", seed=1)
    back = _way_back_ms(tmp_path / "by-activity")
    np.testing.assert_allclose(back[:40], 0.5, atol=1e-6)
    np.testing.assert_allclose(back[-300:], 0.15, atol=1e-6)  # past the burst's first 10 ms
    simulate(trace, tmp_path / "median", profile=_profile(None), mode="mps", seed=1)
    np.testing.assert_allclose(_way_back_ms(tmp_path / "median"), 0.2, atol=1e-6)
    # run.json says which way back was used, per trace model
    from traceforge.record import RunManifest

    info = RunManifest.load(tmp_path / "by-activity")["backend_info"]
    assert info["outbound_by_activity_ms"] == {"enc": [[0.0, 2.0, 0.5], [20.0, None, 0.15]]}
    assert RunManifest.load(tmp_path / "median")["backend_info"]["outbound_by_activity_ms"] == {}


@pytest.mark.parametrize("rows", [[[0, 2, -0.1, 5]], [[5, 2, 0.1, 5]], "fast", [[0]],
                                  [[0, None, "nan", 5]]])
def test_a_malformed_activity_table_is_refused_naming_its_key(rows):
    with pytest.raises(BadInput) as err:
        _profile(rows)
    assert err.value.key == "modes.mps.outbound_by_activity_ms.enc"


def test_simulate_cli_refuses_a_bad_table_with_exit_2(tmp_path, capsys):
    from traceforge.cli import main
    from traceforge.schema import write_trace

    profile = _profile([[0, 2, 0.5, 40]]).data
    profile["modes"]["mps"]["outbound_by_activity_ms"]["enc"] = [[0, 2, "slow", 4]]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(profile))
    trace_path = tmp_path / "t.parquet"
    write_trace(make_trace(np.arange(5) * MS, models=["enc"] * 5,
                           seq_len=np.full(5, 32)).table, trace_path, {})
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", str(trace_path), "--profile", str(path), "--mode", "mps",
              "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "p.json" in err and "modes.mps.outbound_by_activity_ms.enc" in err and "slow" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_each_way_back_draws_from_its_own_spread_and_pooled_way_back_drops_the_table(tmp_path):
    """A constant spread makes the draw visible: +0.3 ms around the activity bins
    (``outbound_by_activity_spread_ms``), +0.02 ms around the pooled median
    (``outbound_spread_ms``). With the table every way back is its bin's median + 0.3; through
    fidelity.pooled_way_back (``--pooled-way-back``) it is 0.2 + 0.02 for every request."""
    from traceforge.simulate.fidelity import pooled_way_back

    k = len(SPREAD_QUANTILES)
    profile = _profile([[0, 2, 0.5, 40], [20, None, 0.15, 900]], spreads={
        "outbound_spread_ms": {"enc": [0.02] * k},
        "outbound_by_activity_spread_ms": {"enc": [0.3] * k}})
    quiet = np.arange(40) * 30 * MS
    trace = make_trace(quiet, models=["enc"] * 40, seq_len=np.full(40, 32))
    simulate(trace, tmp_path / "table", profile=profile, mode="mps", seed=1)
    np.testing.assert_allclose(_way_back_ms(tmp_path / "table"), 0.8, atol=1e-6)
    simulate(trace, tmp_path / "pooled", profile=pooled_way_back(profile), mode="mps", seed=1)
    np.testing.assert_allclose(_way_back_ms(tmp_path / "pooled"), 0.22, atol=1e-6)
    # a profile without the activity spread: the bins' medians alone (never the pooled spread,
    # which is measured around another median)
    bare = _profile([[0, 2, 0.5, 40]], spreads={"outbound_spread_ms": {"enc": [0.02] * k}})
    simulate(trace, tmp_path / "bare", profile=bare, mode="mps", seed=1)
    np.testing.assert_allclose(_way_back_ms(tmp_path / "bare"), 0.5, atol=1e-6)
    # an empty table is no table: the pooled median and its spread
    empty = _profile([], spreads={"outbound_spread_ms": {"enc": [0.02] * k},
                                  "outbound_by_activity_spread_ms": {"enc": [0.3] * k}})
    simulate(trace, tmp_path / "empty", profile=empty, mode="mps", seed=1)
    np.testing.assert_allclose(_way_back_ms(tmp_path / "empty"), 0.22, atol=1e-6)
    with pytest.raises(BadInput) as err:
        _profile([[0, 2, 0.5, 40]], spreads={"outbound_by_activity_spread_ms": {"enc": [0.3]}})
    assert err.value.key == "modes.mps.outbound_by_activity_spread_ms.enc"


def test_fidelity_cli_pooled_way_back_refuses_the_oracle(capsys):
    from traceforge.simulate.fidelity import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--oracle", "--pooled-way-back", "somewhere"])
    assert exit_info.value.code == 2
    assert "--pooled-way-back" in capsys.readouterr().err
