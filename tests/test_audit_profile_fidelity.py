"""Audit of 2026-12-01 (simulate, profile, fidelity): each case is one line naming the key and
the value, exit 2, nothing written — where each used to simulate garbage marked ``complete``,
hang, print a traceback, or overwrite an input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from trace_cli_helpers import assert_one_line_error, run_cli

from traceforge.errors import BadInput
from traceforge.schema import conform_trace_table, write_trace
from traceforge.simulate import load_profile

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "traceforge" / "data" / "profiles"


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    import numpy as np
    import pyarrow as pa

    path = tmp_path_factory.mktemp("t") / "h.parquet"
    n = 120
    rng = np.random.default_rng(1)
    arrival = np.cumsum(rng.exponential(2e7, n)).astype(np.int64)
    models = ["bert" if i % 4 else "gpt" for i in range(n)]
    table = conform_trace_table(pa.table({
        "request_id": np.arange(n, dtype=np.int64), "arrival_ns": arrival - arrival[0],
        "model": models, "batch_size": np.ones(n, np.int32),
        "seq_len": np.full(n, 64, np.int32),
        "max_new_tokens": np.asarray([8 if m == "gpt" else 0 for m in models], np.int32)}))
    write_trace(table, path, {"spec": {"models": {"bert": {"zoo": "distilbert-base"},
                                                  "gpt": {"zoo": "distilgpt2"}}}, "seed": 1})
    return path


MUTATIONS = [
    # NaN / negative / huge numbers used to be simulated into garbage (done_ns = INT64_MIN, ok)
    ("d['modes']['mps']['outbound_ms']['distilbert-base'] = float('nan')",
     "modes.mps.outbound_ms.distilbert-base"),
    ("d['modes']['mps']['inbound_ms']['distilbert-base'] = float('nan')",
     "modes.mps.inbound_ms.distilbert-base"),
    ("d['modes']['mps']['alone_scale']['distilbert-base'] = -1",
     "modes.mps.alone_scale.distilbert-base"),
    ("d['models']['distilgpt2']['decode_ms_per_token'][0][0] = -1",
     "models.distilgpt2.decode_ms_per_token"),
    ("d['modes']['mps']['send_lag_ms'] = 1e300", "modes.mps.send_lag_ms"),
    ("d['models']['distilbert-base']['service_cv'] = None", "models.distilbert-base.service_cv"),
    # wrong types used to be tracebacks
    ("d['models'] = [1, 2]", "models"),
    ("d['modes']['mps'] = None", "modes.mps"),
    ("d['modes']['mps']['slowdown'] = [1]", "modes.mps.slowdown"),
    ("d['modes']['mps']['inbound_ms'] = {'distilbert-base': 'x'}",
     "modes.mps.inbound_ms.distilbert-base"),
    ("d['models']['distilgpt2']['new_tokens'] = 'abc'", "models.distilgpt2.new_tokens"),
    ("d['models']['distilbert-base']['reference'] = [1, 2, 3]",
     "models.distilbert-base.reference"),
    ("d['models']['distilbert-base']['seq_lens'] = [[1, 2]]", "models.distilbert-base.seq_lens"),
]


@pytest.mark.parametrize("mutation, key", MUTATIONS)
def test_a_bad_profile_number_or_type_names_its_key(trace, tmp_path, capsys, mutation, key):
    d = json.loads((SHIPPED / "h200.json").read_text())
    exec(mutation, {"d": d})  # the test's own mutation strings
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps(d))
    out = tmp_path / "run"
    code, _, err = run_cli(["simulate", trace, "-o", out, "--profile", bad, "--mode", "mps"],
                           capsys)
    assert_one_line_error(code, err, "p.json", key)
    assert not out.exists()


def test_a_profile_time_slice_below_a_microsecond_or_under_its_switch_is_refused(tmp_path):
    d = json.loads((SHIPPED / "h200-timeslice-streams.json").read_text())
    for slice_, key in (({"quantum_ms": 1e-300, "switch_ms": 0}, "quantum_ms"),
                        ({"quantum_ms": 1.0, "switch_ms": 1e6}, "switch_ms")):
        d["modes"]["timeslice"]["time_slice"] = slice_
        (tmp_path / "p.json").write_text(json.dumps(d))
        with pytest.raises(BadInput, match=f"time_slice.{key}"):
            load_profile(tmp_path / "p.json")


@pytest.mark.parametrize("args, needle", [
    (["--time-slice", "1e-300"], "between 0.001 ms"),  # the engine's clock never moved: a hang
    (["--time-slice", "0.001"], "switch cost (0.05 ms)"),  # the profile's switch > the slice
    (["--time-slice", "2", "--max-batch", "4"], "unbatched"),  # was silently ignored
])
def test_time_slice_what_ifs_that_cannot_run(trace, tmp_path, capsys, args, needle):
    out = tmp_path / "run"
    code, _, err = run_cli(["simulate", trace, "-o", out, "--profile", "h200-timeslice-streams",
                            "--mode", "timeslice", *args], capsys)
    assert_one_line_error(code, err, "--time-slice", needle)
    assert not out.exists()


@pytest.mark.parametrize("args, needle", [
    (["--zoo", "bert=distilbert-base,bert=distilgpt2,gpt=distilgpt2"], "given twice"),
    (["--zoo", ""], "expected MODEL=VALUE"),
    # two trace models as one profile entry: no interference between them was simulated
    (["--mode", "mps", "--zoo", "bert=distilgpt2,gpt=distilgpt2"], "beside itself"),
])
def test_zoo_overrides_that_cannot_be_simulated(trace, tmp_path, capsys, args, needle):
    out = tmp_path / "run"
    mode = [] if "--mode" in args else ["--mode", "exclusive"]
    code, _, err = run_cli(["simulate", trace, "-o", out, "--profile", "h200-fidelity", *mode,
                            *args], capsys)
    assert_one_line_error(code, err, needle)
    assert not out.exists()


@pytest.mark.parametrize("rate", ["1e-300", "bert=1e-300"])
def test_a_tiny_rate_names_the_rate_flag(trace, tmp_path, capsys, rate):
    out = tmp_path / "run"
    code, _, err = run_cli(["simulate", trace, "-o", out, "--rate", rate], capsys)
    assert_one_line_error(code, err, "--rate")
    assert "--time-scale" not in err and not out.exists()


@pytest.mark.parametrize("args, key", [
    (["--reference", "tiny-bert=1x128,tiny-bert=2x64"], "--reference"),
    (["--modes", "exclusive,exclusive"], "--modes"),
    (["--compile", "foo"], "--compile"),  # refused after a "starting backend" line
    (["--compile", "graphs"], "--compile"),
])
def test_profile_flags_refused_before_anything_starts(tmp_path, capsys, args, key):
    out = tmp_path / "p.json"
    code, _, err = run_cli(["profile", "--device", "cpu", "--models", "tiny-bert", "-o", out,
                            *args], capsys)
    assert_one_line_error(code, err, key)
    assert not out.exists()


def _fidelity(*args, capsys) -> subprocess.CompletedProcess:
    """``python -m traceforge.simulate.fidelity ARGS`` in this process (a subprocess per case
    cost ~1.5 s of imports each)."""
    from traceforge.simulate.fidelity import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def test_fidelity_never_overwrites_inputs_and_refuses_bad_runs_in_one_line(trace, tmp_path,
                                                                            capsys):
    from traceforge.simulate import simulate

    run = tmp_path / "r_ex"
    simulate(trace, run, profile="h200-fidelity", mode="exclusive")
    profile = tmp_path / "hf.json"
    profile.write_text((SHIPPED / "h200-fidelity.json").read_text())
    before = {p: p.read_bytes() for p in (profile, trace, run / "run.json")}
    notes = tmp_path / "notes.txt"
    notes.write_text("keep")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "run.json").write_text("[1, 2]")
    (corrupt / "timeline").mkdir()
    for args, needle in [
        ([run, "--profile", profile, "-o", profile], "the profile"),
        ([run, "--profile", profile, "-o", trace], "a run's trace"),
        ([run, "--profile", profile, "-o", run / "run.json"], "a run directory"),
        ([run, "--profile", profile, "-o", notes], "not a .md file"),
        ([corrupt, "--profile", profile], "not a JSON object"),
        ([run, "--profile", profile, "--handoff-from", tmp_path / "missing"], "--handoff-from"),
        ([run], "--profile is required"),
        ([run, "--profile", profile, "--seed", "nan"], "--seed"),
        ([run, "--profile", profile, "--oracle-handoff", "exact"], "needs --oracle"),
        ([run, "--profile", profile, "--warm", "nosuchrun"], "nosuchrun"),
    ]:
        done = _fidelity(*args, capsys=capsys)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("fidelity: error: "), done.stderr
        assert needle in lines[0], (needle, lines[0])
    assert {p: p.read_bytes() for p in before} == before
    assert notes.read_text() == "keep"
    done = _fidelity(run, "--profile", profile, "-o", tmp_path / "ok.md", capsys=capsys)
    assert done.returncode == 0, done.stderr
    assert "| r_ex | exclusive |" in (tmp_path / "ok.md").read_text()


def test_a_corrupted_time_beyond_2_53_ns_is_no_traceback(trace, tmp_path, capsys):
    """report, compare and export read a timeline row whose time is far outside float64's exact
    range (a corrupted part; simulate once wrote INT64_MIN there from a NaN profile) without a
    traceback (pyarrow's checked cast raised ArrowInvalid)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from traceforge.simulate import simulate

    good, bad = tmp_path / "good", tmp_path / "bad"
    simulate(trace, good, profile="h200-fidelity", mode="exclusive")
    simulate(trace, bad, profile="h200-fidelity", mode="exclusive")
    part = sorted((bad / "timeline").glob("*.parquet"))[0]
    t = pq.read_table(part)
    done = t.column("done_ns").to_pylist()
    done[0] = -9223372036777749714
    pq.write_table(t.set_column(t.schema.get_field_index("done_ns"), t.schema.field("done_ns"),
                                pa.array(done, pa.int64())), part)
    for argv in (["report", bad], ["compare", good, bad],
                 ["export", "perfetto", bad, "-o", tmp_path / "e.json"]):
        code, _, err = run_cli(argv, capsys)
        assert code == 0 and "Traceback" not in err and "Warning" not in err, (argv, err)


def _spec_trace(tmp_path, text: str, name: str = "w") -> Path:
    spec = tmp_path / f"{name}.toml"
    spec.write_text(text)
    out = tmp_path / f"{name}.parquet"
    done = subprocess.run([sys.executable, "-m", "traceforge", "trace", "gen", str(spec), "-o",
                           str(out)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.parametrize("args, key", [
    (["--seq-buckets", "4"], "--seq-buckets"),  # were 25 error rows and exit 0
    (["--seq-buckets", "99999999999"], "--seq-buckets"),
    (["--max-batch", "99999999999"], "--max-batch"),  # pre-warmed to b524288, 16.6 GB
])
def test_resident_buckets_and_batches_the_trace_cannot_use(tmp_path, capsys, args, key):
    trace = _spec_trace(tmp_path, 'duration_s = 2\n[models.a]\nzoo = "tiny-bert"\n'
                        'arrival = { process = "poisson", rate = 5.0 }\n'
                        'seq_len = { dist = "uniform", low = 8, high = 40 }\n')
    out = tmp_path / "run"
    code, _, err = run_cli(["replay", trace, "-o", out, "--backend", "resident", "--no-progress",
                            *args], capsys)
    assert_one_line_error(code, err, key)
    assert not out.exists()


def test_sharded_run_json_says_the_drain_expired(tmp_path, capsys):
    trace = _spec_trace(tmp_path, 'duration_s = 2\n[models.a]\n'
                        'arrival = { process = "poisson", rate = 20.0 }\n')
    out = tmp_path / "run"
    code, _, err = run_cli(["replay", trace, "-o", out, "--workers", "2", "--service-ms", "300",
                            "--duration", "1", "--drain-timeout", "0", "--no-progress"], capsys)
    assert code == 0, err
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["drain_expired"] is True and manifest["counts"].get("cancelled", 0) > 0


def test_a_study_with_sessions_and_concurrency_is_refused_up_front(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text('name = "x"\nbackend = "null"\nrepeats = 1\nrequests = 5\n'
                    '[mixes.m.models.a]\narrival = { process = "poisson", rate = 20.0 }\n'
                    '[mixes.m.models.a.sessions]\nturns = 2\nthink_time_s = 0.1\n'
                    '[options]\nconcurrency = 2\n')
    out = tmp_path / "out"
    code, _, err = run_cli(["study", spec, "-o", out], capsys)
    assert_one_line_error(code, err, "options.concurrency")
    assert not out.exists()


POOL = ROOT / "traces" / "servegen-deepseek-r1-2h"


@pytest.mark.skipif(not POOL.is_dir(), reason="the shipped ServeGen pool slice is absent")
@pytest.mark.parametrize("extra, key", [("start_s = 1e300", "start_s"),
                                        ("window_s = 1e-6", "window_s")])
def test_servegen_values_that_cannot_be_sampled(tmp_path, capsys, extra, key):
    spec = tmp_path / "sg.toml"
    spec.write_text(f'duration_s = 60\n[models.ds]\narrival = {{ process = "servegen", '
                    f'pool = "{POOL}", {extra} }}\n')
    out = tmp_path / "sg.parquet"
    code, _, err = run_cli(["trace", "gen", spec, "-o", out], capsys)
    assert_one_line_error(code, err, f"models.ds.arrival.{key}")
    assert not out.exists()
    code, _, err = run_cli(["trace", "import", "servegen", POOL, "--duration", "60",
                            "--rate-scale", "1e12", "-o", out], capsys)
    assert_one_line_error(code, err, "--rate-scale", "memory")
    assert not out.exists()
