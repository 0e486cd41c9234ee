"""Size-dependent co-run interference: a model's slowdown follows the size of the request
running beside it (profile ``slowdown_by_size``, engine.SizeInterference)."""

from __future__ import annotations

import numpy as np
import pytest
from test_simulate import make_profile, make_trace, model_profile, poisson_ns

from traceforge.errors import BadInput
from traceforge.record import read_timeline
from traceforge.schema import write_trace
from traceforge.simulate import simulate
from traceforge.simulate.engine import ModelQueue, SizeInterference, shared_workers
from traceforge.simulate.profile import PROFILE_SCHEMA_ID, profile_from_dict


def test_a_larger_request_beside_slows_the_other_worker_by_its_excess():
    """Worker 0 serves a reference request then a large one (work 10 each, both waiting at 0);
    worker 1 one request of work 30. Both busy: slowdowns 1.2 / 1.5; the large request adds
    0.5 to worker 1's. By hand: w0 ends at 12 (1.2 x 10) and 24; w1 does 12/1.5 = 8 of its
    work by 12, 12/2.0 = 6 by 24, and its last 16 alone: ends at 40 (38 size-blind)."""
    rates = {3: [1 / 1.2, 1 / 1.5]}
    sized = SizeInterference(classes=[[0, 1], [0]],
                             excess=[[[0.0, 0.0], [0.0, 0.5]], [[0.0, 0.0]]])
    for fast in (True, False):
        queues = [ModelQueue(np.array([0.0, 0.0]), np.array([10.0, 10.0])),
                  ModelQueue(np.array([0.0]), np.array([30.0]))]
        r = shared_workers(queues, exclusive=False, rates=rates, sized=sized, fast_path=fast)
        assert r[0].end_ns.tolist() == pytest.approx([12.0, 24.0])
        assert r[1].end_ns.tolist() == pytest.approx([40.0])
        blind = shared_workers(queues, exclusive=False, rates=rates, fast_path=fast)
        assert blind[1].end_ns.tolist() == pytest.approx([38.0])
    # exclusive mode: nothing runs beside, the sizes change nothing
    queues = [ModelQueue(np.array([0.0, 0.0]), np.array([10.0, 10.0])),
              ModelQueue(np.array([0.0]), np.array([30.0]))]
    ex = shared_workers(queues, exclusive=True, rates=rates, sized=sized)
    assert ex[1].end_ns.tolist() == pytest.approx([50.0])


@pytest.mark.parametrize("max_batch", [1, 4])
def test_sized_inlined_loops_match_the_general_loop(max_batch):
    rng = np.random.default_rng(19)
    rates = {3: [0.6, 0.8, 1.0], 5: [0.7, 1.0, 0.9], 6: [1.0, 0.5, 0.75],
             7: [0.4, 0.45, 0.6]}
    n = 2000
    queues = [ModelQueue(np.sort(rng.uniform(0, 1e9, n)), rng.exponential(4e5, n))
              for _ in range(3)]
    classes = [rng.integers(0, 3, n).tolist() for _ in range(3)]
    excess = [[rng.uniform(-0.1, 0.8, 3).tolist() for _ in range(3)] for _ in range(3)]
    for u in range(3):
        for c in range(3):
            excess[u][c][u] = 0.0

    def batch_class(m: int, i: int, j: int) -> int:  # the largest class of the batch's rows
        return max(classes[m][i:j])

    sized = SizeInterference(classes=classes, excess=excess,
                             batch_class=batch_class if max_batch > 1 else None)
    kwargs = dict(exclusive=False, rates=rates, max_batch=max_batch, max_wait_ns=2e5,
                  sized=sized)
    fast = shared_workers(queues, **kwargs)
    general = shared_workers(queues, **kwargs, fast_path=False)
    blind = shared_workers(queues, exclusive=False, rates=rates, max_batch=max_batch,
                           max_wait_ns=2e5)
    for f, g in zip(fast, general, strict=True):
        np.testing.assert_allclose(f.start_ns, g.start_ns, rtol=0, atol=1e-3)
        np.testing.assert_allclose(f.end_ns, g.end_ns, rtol=0, atol=1e-3)
        np.testing.assert_array_equal(f.batched_with, g.batched_with)
    # and the sizes did change the timelines
    assert any(np.abs(f.end_ns - b.end_ns).max() > 1e3 for f, b in zip(fast, blind, strict=True))


def _profile(by_size: dict | None, *, slowdown_gen: float = 1.2):
    grid = dict(batch_sizes=(1, 8), seq_lens=(32, 256))
    ref = {"reference": {"batch_size": 1, "seq_len": 32, "max_new_tokens": 0}}
    mps = {"slowdown": {"enc+gen": {"enc": 1.1, "gen": slowdown_gen}}}
    if by_size is not None:
        mps["slowdown_by_size"] = by_size
    return make_profile({"enc": model_profile([[0.2, 1.6], [1.6, 12.8]], **grid, **ref),
                         "gen": model_profile([[4.0, 4.0], [4.0, 4.0]], **grid, **ref)},
                        {"mps": mps, "exclusive": {}})


def _sized_table(slowdowns: list[float], sizes: list[float] = (1.0, 4.0, 16.0)) -> dict:
    return {"enc+gen": {"gen": {"aggressor": "enc", "size": list(sizes),
                                "slowdown": list(slowdowns)}}}


def _mixed_trace(tmp_path, n: int = 4000):
    # encoder shapes of sizes 1, 2, 4 and 16 over the 1 x 32 reference: one size per class
    shapes = np.array([(1, 32), (2, 32), (1, 64), (4, 32), (1, 128), (8, 64), (2, 256)])
    rng = np.random.default_rng(8)
    models = rng.choice(["enc", "gen"], n, p=[0.7, 0.3])
    pick = shapes[rng.integers(0, len(shapes), n)]
    bs = np.where(models == "enc", pick[:, 0], 1)
    seq = np.where(models == "enc", pick[:, 1], 32)
    trace = make_trace(poisson_ns(0.25, n, 9), models=models, batch_size=bs, seq_len=seq)
    path = tmp_path / "t.parquet"
    write_trace(trace.table, path, {})
    return path


def test_the_fit_recovers_the_profiles_slowdown_by_size(tmp_path):
    """A simulated MPS run whose decoder slowdown grows with the encoder request beside it
    (1.2 at the 1 x 32 reference, 1.4 at 4x, 2.0 at 16x and beyond, linear between): the
    independent fit (fidelity.slowdown_by_corunner_size, which knows nothing of the table)
    finds the decoder slower beside larger encoder requests, class by class, at the table's
    values (each class holds one size here); the encoder's own slowdown stays flat at 1.1. A
    table flat at the pair's slowdown gives exactly the size-blind run."""
    from traceforge.simulate.fidelity import SIZE_CLASS_LABELS, slowdown_by_corunner_size

    path = _mixed_trace(tmp_path)
    sized = _profile(_sized_table([1.2, 1.4, 2.0]))
    simulate(path, tmp_path / "sized", profile=sized, mode="mps")
    got = slowdown_by_corunner_size(tmp_path / "sized", sized)
    assert SIZE_CLASS_LABELS == ("<= 1.5x", "1.5-3x", "3-6x", "> 6x")
    gen = got["gen"]["slowdown"]
    # encoder sizes 1 (<= 1.5x), 2 (1.5-3x: a third of the way from 1 to 4), 4, 16 (> 6x)
    assert gen == pytest.approx([1.2, 1.2 + 0.2 / 3, 1.4, 2.0], abs=1e-3)
    # the profile's own slowdown per class (overlap-weighted) says the same
    assert got["gen"]["profile_by_class"] == pytest.approx([1.2, 1.2 + 0.2 / 3, 1.4, 2.0],
                                                           abs=1e-3)
    assert got["enc"]["profile_by_class"] == [None] * 4  # no table that way round
    from traceforge.simulate.fidelity import render_corunner_size

    row = next(r for r in render_corunner_size({"sized": got}).splitlines() if "| gen |" in r)
    assert "| 1.40 / 1.40 (" in row and "| 2.00 / 2.00 (" in row
    # the decoder's requests are all at its reference size: one class, at the pair's 1.1
    assert got["enc"]["slowdown"][0] == pytest.approx(1.1, abs=0.01)
    assert got["enc"]["slowdown"][1:] == [None, None, None]
    # flat tables change nothing: the same timeline as a profile without them
    simulate(path, tmp_path / "flat", profile=_profile(_sized_table([1.2, 1.2, 1.2])),
             mode="mps")
    simulate(path, tmp_path / "blind", profile=_profile(None), mode="mps")
    for col in ("service_start_ns", "service_end_ns", "done_ns"):
        assert (read_timeline(tmp_path / "flat").column(col).to_pylist()
                == read_timeline(tmp_path / "blind").column(col).to_pylist())
    # run.json says which tables the interference used; none for the size-blind run
    from traceforge.record import RunManifest

    info = RunManifest.load(tmp_path / "sized")["backend_info"]
    assert info["slowdown_by_size"] == {"gen": {"enc": [[1.0, 1.2], [4.0, 1.4], [16.0, 2.0]]}}
    assert RunManifest.load(tmp_path / "blind")["backend_info"]["slowdown_by_size"] == {}
    sized_end = np.asarray(read_timeline(tmp_path / "sized").column("service_end_ns"))
    blind_end = np.asarray(read_timeline(tmp_path / "blind").column("service_end_ns"))
    assert (sized_end >= blind_end).all() and (sized_end > blind_end).any()


def test_batched_workers_take_the_batchs_bucket_as_its_size(tmp_path):
    """With dynamic batching a batch runs as one shape: eight 1 x 32 encoder requests batched
    are one 8 x 32 execution (8x the reference), so the decoder beside it slows as beside an
    8x request, not a 1x one."""
    ms = 1_000_000
    # eight encoder requests at once (one batch), one decoder request beside them
    models = ["enc"] * 8 + ["gen"]
    trace = make_trace([0] * 9, models=models, seq_len=[32] * 9)
    path = tmp_path / "t.parquet"
    write_trace(trace.table, path, {})
    sized = _profile(_sized_table([1.2, 1.2, 2.0], sizes=[1.0, 4.0, 8.0]))
    simulate(path, tmp_path / "b", profile=sized, mode="mps", max_batch=8, max_wait_ms=0.0)
    t = read_timeline(tmp_path / "b")
    rows = {m: [r for r in t.to_pylist() if r["model"] == m] for m in ("enc", "gen")}
    assert {r["batched_with"] for r in rows["enc"]} == {8}
    # the 8 x 32 batch: grid (1->8, 32) = 1.6 ms alone at slowdown 1.1 -> ends at 1.76 ms; the
    # decoder (4 ms alone) runs at 1/2.0 meanwhile (0.88 ms of work), then alone: 1.76 + 3.12
    enc_end = rows["enc"][0]["service_end_ns"] / ms
    gen_end = rows["gen"][0]["service_end_ns"] / ms
    assert enc_end == pytest.approx(1.76, abs=1e-3)
    assert gen_end == pytest.approx(1.76 + (4.0 - 1.76 / 2.0), abs=1e-3)


@pytest.mark.parametrize(("entry", "bad"), [
    ({"aggressor": "gen", "size": [1, 4], "slowdown": [1.2, 1.4]}, "aggressor"),  # itself
    ({"aggressor": "enc", "size": [4, 1], "slowdown": [1.2, 1.4]}, "size"),
    ({"aggressor": "enc", "size": [1, 4], "slowdown": [1.2]}, "size"),
    ({"aggressor": "enc", "size": [1, 4], "slowdown": [1.2, "x"]}, "size"),
    ({"aggressor": "enc", "size": [1, 4], "slowdown": [1.2, -1]}, "size"),
    ({"aggressor": "enc", "size": [0, 4], "slowdown": [1.2, 1.4]}, "size"),
    ("1.2", "aggressor"),
])
def test_malformed_slowdown_by_size_is_refused_naming_the_key(entry, bad):
    data = {"schema": PROFILE_SCHEMA_ID, "models": {"enc": model_profile([[1.0]]),
                                                     "gen": model_profile([[1.0]])},
            "modes": {"mps": {"slowdown": {"enc+gen": {"enc": 1.1, "gen": 1.2}},
                              "slowdown_by_size": {"enc+gen": {"gen": entry}}}}}
    with pytest.raises(BadInput) as err:
        profile_from_dict(data, source="p.json")
    assert "modes.mps.slowdown_by_size.enc+gen.gen" in str(err.value)
    assert bad in str(err.value)


def test_size_excess_is_linear_between_sizes_and_flat_beyond():
    p = _profile(_sized_table([1.2, 1.5, 2.1], sizes=[1.0, 4.0, 16.0]))
    got = p.size_excess("mps", "gen", "enc", [0.25, 1.0, 2.5, 4.0, 10.0, 16.0, 64.0])
    assert got.tolist() == pytest.approx([0.0, 0.0, 0.15, 0.3, 0.6, 0.9, 0.9])
    assert p.size_excess("mps", "enc", "gen", [4.0]) is None  # no table that way round
    # a table that starts above size 1 still measures excess from its value at 1 (flat)
    p = _profile(_sized_table([1.5, 2.1], sizes=[4.0, 16.0]))
    assert p.size_excess("mps", "gen", "enc", [1.0, 16.0]).tolist() == pytest.approx([0, 0.6])


def test_measured_size_candidates_take_grid_shapes_within_sqrt2():
    from traceforge.simulate.measure import size_candidates

    p = _profile(None)
    pm = p.models["enc"]
    grid = ([1, 2, 4, 8], [32, 64, 128, 256], 0)
    got = size_candidates(pm, grid, 4.0)
    assert [(b, s) for b, s, _ in got] == [(4, 32), (2, 64), (1, 128)]
    assert {r for _, _, r in got} == {4.0}
    assert [(b, s) for b, s, _ in size_candidates(pm, grid, 64.0)] == [(8, 256)]
    assert size_candidates(pm, grid, 1000.0) == []


def test_profile_cli_refuses_bad_corun_sizes(tmp_path):
    import subprocess
    import sys

    for value in ("1", "4,2", "x", "-2", "nan"):
        out = subprocess.run([sys.executable, "-m", "traceforge", "profile", "--models",
                              "tiny-bert", "--device", "cpu", "--corun-sizes", value, "-o",
                              str(tmp_path / "p.json")], capture_output=True, text=True)
        assert out.returncode == 2, (value, out.stderr)
        assert "--corun-sizes" in out.stderr and not (tmp_path / "p.json").exists()


def test_interference_note_counts_from_the_largest_measured_size():
    """With a size table up to 16x beside the encoder, its requests up to 32x its reference
    are within 2x of what was measured: no note; without the table they are flagged."""
    import pyarrow as pa

    from traceforge.simulate.simulator import interference_note, interference_shapes

    table = pa.table({"batch_size": [1, 8, 1], "seq_len": [32, 128, 32],
                      "max_new_tokens": [0, 0, 0]})
    codes = np.array([0, 0, 1])
    names = ["enc", "gen"]
    mapping = {"enc": "enc", "gen": "gen"}
    sized = interference_shapes(table, codes, names, mapping,
                                _profile(_sized_table([1.2, 1.4, 2.0])), "mps")
    assert sized["enc"] == {"reference": "1x32", "measured_up_to": 16.0,
                            "above_2x_share": 0.0, "max_ratio": 32.0}
    assert interference_note(sized) is None
    blind = interference_shapes(table, codes, names, mapping, _profile(None), "mps")
    assert blind["enc"]["measured_up_to"] == 1.0 and blind["enc"]["above_2x_share"] == 0.5
    assert "enc 50% (up to 32x its 1x32 reference, measured up to 1x)" in interference_note(blind)


def test_fidelity_cli_size_blind_simulates_without_the_size_tables(tmp_path, capsys):
    """A run simulated with a size table is matched exactly by the same profile (0 % error)
    and missed by ``--size-blind`` for the model the table slows (the decoder); the encoder,
    with no table beside it, is matched either way."""
    import json as json_

    from traceforge.simulate.fidelity import main

    path = _mixed_trace(tmp_path, n=1500)
    prof = _profile(_sized_table([1.2, 1.4, 2.0]))
    simulate(path, tmp_path / "run", profile=prof, mode="mps")
    (tmp_path / "p.json").write_text(json_.dumps(prof.data))
    errors = {}
    for flag in ([], ["--size-blind"]):
        assert main(["--profile", str(tmp_path / "p.json"), "--json", *flag,
                     str(tmp_path / "run")]) == 0
        models = json_.loads(capsys.readouterr().out)[0]["models"]
        errors[bool(flag)] = {m: (v["error_p50"], v["error_p99"]) for m, v in models.items()}
    assert errors[False] == {"enc": (0.0, 0.0), "gen": (0.0, 0.0)}
    assert errors[True]["gen"][0] < -0.02 and errors[True]["gen"][1] < 0
    assert abs(errors[True]["enc"][0]) < 0.02  # only the decoder's co-runs changed


def test_fidelity_cli_by_corunner_size_writes_out_and_honours_size_blind(tmp_path, capsys):
    """``--by-corunner-size -o FILE`` writes the table there (it printed to stdout and
    ignored -o before); with ``--size-blind`` the profile's per-class column is gone;
    ``--size-blind --oracle`` is refused (the oracle uses no profile)."""
    import json as json_

    from traceforge.simulate.fidelity import main

    path = _mixed_trace(tmp_path, n=600)
    prof = _profile(_sized_table([1.2, 1.4, 2.0]))
    simulate(path, tmp_path / "run", profile=prof, mode="mps")
    (tmp_path / "p.json").write_text(json_.dumps(prof.data))
    base = ["--profile", str(tmp_path / "p.json"), "--by-corunner-size", "--json"]
    out = tmp_path / "by-size.json"
    assert main([*base, "-o", str(out), str(tmp_path / "run")]) == 0
    assert capsys.readouterr().out == ""
    sized = json_.loads(out.read_text())[str(tmp_path / "run")]["gen"]
    assert sized["profile_by_class"][0] == pytest.approx(1.2, abs=1e-3)
    assert main([*base, "--size-blind", str(tmp_path / "run")]) == 0
    blind = json_.loads(capsys.readouterr().out)[str(tmp_path / "run")]["gen"]
    assert blind["profile_by_class"] == [None] * 4
    assert blind["slowdown"] == sized["slowdown"]  # the fit reads the run, not the table
    # -o onto an input (the run directory) is refused, nothing written
    assert main([*base, "-o", str(tmp_path / "run"), str(tmp_path / "run")]) == 2
    assert (tmp_path / "run" / "run.json").is_file()
    with pytest.raises(SystemExit) as exc:
        main(["--oracle", "--size-blind", str(tmp_path / "run")])
    assert exc.value.code == 2
