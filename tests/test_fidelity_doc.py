"""The held-out fidelity doc's explanation of a p50 miss (benchmarks/fidelity_heldout.py)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np


def _module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fidelity_heldout.py"
    spec = importlib.util.spec_from_file_location("fidelity_heldout", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_p50_between_two_modes_is_placed_and_its_steepness_stated():
    quantile_position = _module().quantile_position
    # half the requests at 1 ms (free GPU), half at 10 ms (behind a decode): the measured p50 is
    # 5.5 ms, p45 1 ms, p55 10 ms; a simulated p50 of 1 ms sits at the measured p25 (mean rank
    # of a value tied with the lower half), and one percentile point moves the p50 by
    # (10 - 1) / 5.5 / 10 = 16.4 %
    lat = np.r_[np.full(50, 1.0), np.full(50, 10.0)]
    text = quantile_position(lat, 1.0)
    assert "measured p25.0" in text and "1.00-10.00 ms" in text and "~16.4%" in text
    # a smooth distribution: the simulated p50 at the measured median sits at p50
    smooth = np.linspace(1.0, 2.0, 101)
    assert "measured p50.0" in quantile_position(smooth, 1.5)
    assert quantile_position(lat[:19], 1.0) == ""  # too few requests to say
