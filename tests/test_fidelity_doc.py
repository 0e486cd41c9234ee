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


def test_corunner_size_table_has_a_row_per_model_of_each_sharing_replay(tmp_path):
    """The doc's "Co-run slowdown by the size of the request beside it" table: one row per model
    of each first replay in a sharing mode (none for exclusive), the profile's slowdown, and the
    fitted slowdown with its overlap per size class; a shape-blind simulated co-run gives the
    profile's value back where there was overlap."""
    import pyarrow as pa

    from traceforge.schema import conform_trace_table, write_trace
    from traceforge.simulate import simulate
    from traceforge.simulate.profile import PROFILE_SCHEMA_ID, profile_from_dict

    def model(grid):
        return {"kind": "encoder", "generative": False, "batch_sizes": [1, 8],
                "seq_lens": [32, 256], "service_ms": grid, "service_cv": 0.0,
                "reference": {"batch_size": 1, "seq_len": 32, "max_new_tokens": 0}}

    profile = profile_from_dict({
        "schema": PROFILE_SCHEMA_ID, "device": {"name": "test"},
        "models": {"enc": model([[1.0, 2.0], [3.0, 6.0]]), "gen": model([[0.5, 1.0], [1.5, 3.0]])},
        "modes": {"exclusive": {}, "mps": {"slowdown": {"enc+gen": {"enc": 1.5, "gen": 1.2}}}}})
    rng = np.random.default_rng(3)
    n = 600
    table = conform_trace_table(pa.table({
        "request_id": np.arange(n, dtype=np.int64),
        "arrival_ns": np.cumsum(rng.exponential(2.5e6, n)).astype(np.int64),
        "model": rng.choice(["enc", "gen"], n).tolist(),
        "batch_size": rng.choice([1, 8], n).astype(np.int32),
        "seq_len": np.full(n, 32, np.int32), "max_new_tokens": np.zeros(n, np.int32)}))
    write_trace(table, tmp_path / "t.parquet", {})
    for mode in ("exclusive", "mps"):
        simulate(tmp_path / "t.parquet", tmp_path / "runs" / f"bursty-{mode}", profile=profile,
                 mode=mode)
    rows = _module().corunner_size_rows(tmp_path, profile)
    assert len(rows) == 2
    enc = next(r for r in rows if r.startswith("| bursty | mps | enc |"))
    cells = [c.strip() for c in enc.strip("|").split("|")]
    assert cells[3] == "1.500"
    assert cells[4].startswith("1.50 (") and cells[5] == "— (0)" and cells[7].startswith("1.50 (")


def test_the_profiles_size_table_is_listed_with_its_repeats_and_shapes():
    from traceforge.simulate.profile import PROFILE_SCHEMA_ID, profile_from_dict

    model = {"kind": "encoder", "generative": False, "batch_sizes": [1], "seq_lens": [32],
             "service_ms": [[1.0]], "service_cv": 0.0}
    profile = profile_from_dict({
        "schema": PROFILE_SCHEMA_ID, "models": {"enc": model, "gen": model},
        "modes": {"mps": {"slowdown": {"enc+gen": {"enc": 1.2, "gen": 1.16}},
                          "slowdown_by_size": {"enc+gen": {"gen": {
                              "aggressor": "enc", "size": [1.0, 4.0], "slowdown": [1.16, 1.31],
                              "repeats": [[1.15, 1.16, 1.17], [1.3, 1.32]],
                              "shapes": [["1x128"], ["4x128", "2x256"]]}}}}}})
    rows = _module().size_table_rows(profile)
    assert rows == ["| mps | gen | enc | 1x (1x128): 1.160 [1.15, 1.16, 1.17]; "
                    "4x (4x128, 2x256): 1.310 [1.30, 1.32] |"]


def test_size_ab_rows_compare_every_sharing_replay_with_and_without_the_tables(tmp_path):
    """A run simulated with a size table (the decoder 1.2 beside the encoder's reference 1 x 32,
    2.0 beside 8 x 32): against that profile every cell is exact; size-blind the decoder is
    simulated faster than it ran. One row per model of each sharing-mode replay (repeats
    too), none for exclusive or for a profile without tables."""
    import pyarrow as pa

    from traceforge.schema import conform_trace_table, write_trace
    from traceforge.simulate import simulate
    from traceforge.simulate.profile import PROFILE_SCHEMA_ID, profile_from_dict

    def model(grid):
        return {"kind": "encoder", "generative": False, "batch_sizes": [1, 8],
                "seq_lens": [32, 256], "service_ms": grid, "service_cv": 0.0,
                "reference": {"batch_size": 1, "seq_len": 32, "max_new_tokens": 0}}

    data = {
        "schema": PROFILE_SCHEMA_ID, "device": {"name": "test"},
        "models": {"enc": model([[0.5, 1.0], [2.0, 4.0]]), "gen": model([[4.0, 4.0], [4.0, 4.0]])},
        "modes": {"exclusive": {}, "mps": {
            "slowdown": {"enc+gen": {"enc": 1.1, "gen": 1.2}},
            "slowdown_by_size": {"enc+gen": {"gen": {"aggressor": "enc", "size": [1.0, 8.0],
                                                     "slowdown": [1.2, 2.0]}}}}}}
    profile = profile_from_dict(data)
    rng = np.random.default_rng(4)
    n = 800
    models = rng.choice(["enc", "gen"], n, p=[0.7, 0.3])
    table = conform_trace_table(pa.table({
        "request_id": np.arange(n, dtype=np.int64),
        "arrival_ns": np.cumsum(rng.exponential(2e6, n)).astype(np.int64),
        "model": models.tolist(),
        "batch_size": np.where(models == "enc", rng.choice([1, 8], n), 1).astype(np.int32),
        "seq_len": np.full(n, 32, np.int32), "max_new_tokens": np.zeros(n, np.int32)}))
    write_trace(table, tmp_path / "t.parquet", {})
    for name, mode in (("bursty-mps", "mps"), ("bursty-mps-r2", "mps"),
                       ("bursty-exclusive", "exclusive")):
        simulate(tmp_path / "t.parquet", tmp_path / "runs" / name, profile=profile, mode=mode)
    rows = _module().size_ab_rows(tmp_path, profile)
    assert [r.split("|")[3].strip() + r.split("|")[4].strip() for r in rows] == [
        "1enc", "1gen", "2enc", "2gen"]
    gen = next(r for r in rows if r.startswith("| bursty | mps | 1 | gen |"))
    cells = [c.strip() for c in gen.strip("|").split("|")]
    assert cells[4] == "+0.0% / +0.0% yes"
    blind_p50 = float(cells[5].split("%")[0])
    assert blind_p50 < -1.0  # size-blind: the decoder beside 8 x 32 batches runs too fast
    measured, simulated, blind = (float(x) for x in cells[6].split(" / "))
    assert simulated == measured and blind < measured
    del data["modes"]["mps"]["slowdown_by_size"]
    assert _module().size_ab_rows(tmp_path, profile_from_dict(data)) == []
