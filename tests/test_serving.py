"""Serving-grade resident workers (issue 13): buckets and masks, pre-warm coverage, the static
KV cache against eager decode, ``--compile graphs`` on the CPU; GPU tests for CUDA graphs."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from traceforge.errors import BadInput
from traceforge.zoo import ZOO
from traceforge.zoo.buckets import Bucket, BucketPolicy, default_seq_buckets, parse_buckets

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]


# -- buckets (pure) -----------------------------------------------------------------------------
def test_default_buckets_are_powers_of_two_to_the_max():
    assert default_seq_buckets(512) == [16, 32, 64, 128, 256, 512]
    assert default_seq_buckets(300) == [16, 32, 64, 128, 256, 300]


def test_policy_pads_seq_and_batch_only_when_batching():
    p = BucketPolicy.for_entry(ZOO["distilgpt2"])
    assert p.bucket(3, 17, 20) == Bucket(3, 32, 32)  # batch kept, seq 17 -> 32, KV room 32
    # A padded prompt must leave room for the new tokens: 1000 pads only to 1024 - 24.
    assert p.bucket(1, 1000, 24) == Bucket(1, 1000, 24)
    assert p.bucket(1, 900, 24) == Bucket(1, 1000, 24)
    with pytest.raises(ValueError, match="positions"):
        p.bucket(1, 1000, 30)  # 1000 + 30 > 1024 positions
    pb = BucketPolicy.for_entry(ZOO["distilbert-base"], batch_buckets=True)
    assert pb.bucket(3, 100, 0) == Bucket(4, 128, 0)
    custom = BucketPolicy.for_entry(ZOO["distilbert-base"], [64, 1000])
    assert custom.seq_buckets == (64, 512)  # beyond the model's positions -> its last position
    with pytest.raises(ValueError, match="largest bucket"):
        BucketPolicy.for_entry(ZOO["tiny-bert"], [32]).bucket(1, 33, 0)


def test_buckets_for_batching_cover_every_sum():
    p = BucketPolicy.for_entry(ZOO["tiny-bert"], batch_buckets=True)
    got = p.buckets_for([(1, 20, 0), (2, 100, 0)], max_batch=4)
    batches = sorted({b.batch for b in got})
    assert batches == [1, 2, 4, 8]  # up to 4 requests x batch 2
    assert {b.seq for b in got} == {32, 128}


def test_parse_buckets_rejects_bad_lists():
    assert parse_buckets("16,32") == [16, 32]
    assert parse_buckets(None) is None
    for bad in ("32,16", "0,4", "a,b", "16,16"):
        with pytest.raises(BadInput):
            parse_buckets(bad)


# -- masks: padded tokens never reach real results ----------------------------------------------
@pytest.mark.parametrize("name", ["tiny-bert", "tiny-gpt2"])
def test_padding_keeps_real_token_outputs(name):
    from traceforge.zoo import build_model
    from traceforge.zoo.serving import ForwardRunner

    m = build_model(name, "cpu", seed=2)
    ids = torch.randint(0, m.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = m.model(input_ids=ids)[0]
        runner = ForwardRunner(m, Bucket(4, 32), graphs=False)  # batch and seq padded
        runner.fill(2, 11)
        runner.ids[:2, :11] = ids
        out = runner.run()[0][:2, :11] if name == "tiny-bert" else None
        if name == "tiny-bert":
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        else:  # causal LM: the last real token's logits, right padding
            full = m.model(input_ids=runner.ids, attention_mask=runner._mask())
            torch.testing.assert_close(full.logits[:2, 10], ref[:, 10], rtol=1e-5, atol=1e-5)
    # The eager path's 2-D mask gives the same real-token outputs too.
    mask = torch.zeros((2, 32), dtype=torch.long)
    mask[:, :11] = 1
    padded = torch.cat([ids, torch.zeros((2, 21), dtype=torch.long)], dim=1)
    with torch.inference_mode():
        eager = m.model(input_ids=padded, attention_mask=mask)[0][:, :11]
    torch.testing.assert_close(eager, ref, rtol=1e-5, atol=1e-5)


# -- static KV cache == eager decode, token for token --------------------------------------------
@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_static_cache_decode_equals_eager(name):
    from traceforge.zoo import build_model

    m = build_model(name, "cpu", seed=3)
    ids = torch.randint(0, m.vocab_size, (2, 13), generator=torch.Generator().manual_seed(4))
    eager = m.greedy_ids(ids, 20)
    with torch.inference_mode():
        reference = m.model.generate(ids, max_new_tokens=20, min_new_tokens=20,
                                     do_sample=False)[:, 13:]
    assert torch.equal(eager, reference)
    assert torch.equal(m.greedy_ids(ids, 20, pad_to=32), eager)  # left padding, eager path
    assert torch.equal(m.static_greedy_ids(ids, 20), eager)  # static cache, no padding
    assert torch.equal(m.static_greedy_ids(ids, 20, bucket_seq=64), eager)  # padded bucket


def test_compile_graphs_on_cpu_exits_2(tmp_path):
    trace = tmp_path / "t.parquet"
    _small_trace(trace)
    out = subprocess.run([sys.executable, "-m", "traceforge", "replay", str(trace), "-o",
                          str(tmp_path / "run"), "--backend", "resident", "--compile", "graphs"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    assert "--compile = 'graphs'" in out.stderr and "CUDA" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()


def _small_trace(path: Path, shapes=None, gap_ns: int = 20_000_000) -> None:
    from traceforge.schema import conform_trace_table, write_trace

    shapes = shapes or [("enc", 1, 20, 0), ("enc", 2, 70, 0), ("dec", 1, 9, 5),
                        ("enc", 1, 33, 0), ("dec", 1, 40, 3), ("enc", 2, 20, 0)]
    n = len(shapes)
    table = conform_trace_table(pa.table({
        "request_id": np.arange(n, dtype=np.int64),
        "arrival_ns": np.arange(n, dtype=np.int64) * gap_ns,
        "model": [s[0] for s in shapes],
        "batch_size": np.array([s[1] for s in shapes], np.int32),
        "seq_len": np.array([s[2] for s in shapes], np.int32),
        "max_new_tokens": np.array([s[3] for s in shapes], np.int32)}))
    spec = {"models": {"enc": {"zoo": "tiny-bert", "seq_buckets": [32, 64, 128]},
                       "dec": {"zoo": "tiny-gpt2"}}}
    write_trace(table, path, {"spec": spec})


# -- pre-warm coverage ---------------------------------------------------------------------------
def test_prewarm_covers_every_bucket_before_the_first_request(tmp_path):
    import pyarrow.dataset as ds

    trace = tmp_path / "t.parquet"
    _small_trace(trace)
    run = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "traceforge", "replay", str(trace), "-o",
                          str(run), "--backend", "resident", "--no-progress"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    info = json.loads((run / "run.json").read_text())["backend_info"]
    pre = info["prewarm"]
    assert pre["enabled"] and pre["compile"] == "eager"
    t = ds.dataset(run / "timeline").to_table().to_pylist()
    assert all(r["status"] == "ok" for r in t)
    # The spec's per-model buckets win over the defaults: enc pads 20 -> 32, 70 -> 128.
    enc = {(r["seq_len"], r["bucket_seq_len"]) for r in t if r["model"] == "enc"}
    assert enc == {(20, 32), (70, 128), (33, 64)}
    dec = {(r["seq_len"], r["bucket_seq_len"]) for r in t if r["model"] == "dec"}
    assert dec == {(9, 16), (40, 64)}
    for r in t:
        assert r["bucket_batch_size"] == r["batch_size"]  # no batching: batch kept
        new_cap = 16 if r["max_new_tokens"] else 0
        label = Bucket(r["bucket_batch_size"], r["bucket_seq_len"], new_cap).label()
        assert label in pre["buckets"][r["model"]], (label, pre["buckets"])
        assert r["sent_ns"] > pre["ready_ns"]  # warm before the first scheduled request
    assert pre["seconds"]["enc"] > 0
    # The report's bucket statistics: rows per bucket that ran, and how much was padding.
    from traceforge.analyze.report import build_report

    stats = build_report(run)["models"]["enc"]["buckets"]
    assert {k: v["count"] for k, v in stats["by_bucket"].items()} == {
        "b1s32": 1, "b1s64": 1, "b2s32": 1, "b2s128": 1}
    real = 20 + 2 * 70 + 33 + 2 * 20
    assert stats["padding_token_share"] == pytest.approx(1 - real / (32 + 2 * 128 + 64 + 2 * 32))
    assert stats["padded_share"] == 1.0


def test_prewarm_progress_lines(tmp_path):
    """A slow pre-warm says what it is doing: with the slow-bucket threshold at 0 every bucket
    is a line on stderr, here from a worker process over its socket (timeslice); the lines of
    the dispatcher's own process (exclusive) are read by
    test_ctrl_c_during_prewarm_stops_it_and_records_nothing."""
    import os

    mode = "timeslice"

    trace = tmp_path / "t.parquet"
    # one model (one worker process in timeslice: each costs a torch import and a build)
    _small_trace(trace, [("dec", 1, 9, 5), ("dec", 1, 40, 3), ("dec", 2, 20, 4)])
    out = subprocess.run([sys.executable, "-m", "traceforge", "replay", str(trace), "-o",
                          str(tmp_path / "run"), "--backend", "resident", "--mode", mode,
                          "--no-progress"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "TRACEFORGE_PREWARM_SLOW_S": "0"})
    assert out.returncode == 0, out.stderr
    info = json.loads((tmp_path / "run" / "run.json").read_text())["backend_info"]
    for model in ("dec",):
        buckets = info["prewarm"]["buckets"][model]
        lines = [ln for ln in out.stderr.splitlines() if f"{model} (tiny-" in ln
                 and "pre-warm" in ln]
        assert len(lines) == len(buckets), out.stderr
        assert lines[-1].strip().startswith(f"{model} (tiny-")
        assert f"pre-warm {len(buckets)}/{len(buckets)} buckets" in lines[-1]


def test_prewarm_reporter_throttles():
    """Fast buckets are reported at most every PREWARM_EVERY_S, slow ones always."""
    from traceforge.backends.resident import worker

    lines: list[str] = []
    report = worker._prewarm_reporter("m", "tiny-bert", lines.append)
    for i in range(1, 6):
        report(i, 5, f"b1s{16 * i}", 0.01)
    assert lines == []
    report(3, 5, "b1s64n32", worker.PREWARM_SLOW_S + 1)
    assert len(lines) == 1 and "(compiling)" in lines[0] and "3/5" in lines[0]


def test_compiled_decode_step_is_compiled_once_for_all_buckets():
    """``compiled`` (zoo.COMPILE_DYNAMIC): the Inductor-compiled decode step of one model serves
    every bucket from one or two Dynamo graphs (Dynamo may first compile static and then once
    with dynamic shapes), not one per bucket (past Dynamo's limit of 8 a bucket silently ran
    uncompiled), and its greedy tokens equal the eager path's (Inductor on the CPU; the GPU
    path also captures the compiled step: benchmarks/gpu_compiled_buckets.py)."""
    import torch._dynamo
    import torch._dynamo.utils

    from traceforge.zoo import _raise_recompile_limit, build_model

    torch._dynamo.reset()
    m = build_model("tiny-llama", "cpu", dtype="float32", seed=3)
    assert m.compile_dynamic
    ids = torch.randint(0, m.vocab_size, (1, 13), generator=torch.Generator().manual_seed(1))
    eager = m.greedy_ids(ids, 6)
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for seq in (16, 64, 256):
        assert torch.equal(m.static_greedy_ids(ids, 6, bucket_seq=seq, inductor=True), eager)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - before <= 2
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    old = getattr(config, name)
    try:
        _raise_recompile_limit(300)
        assert getattr(config, name) == max(old, 300)
    finally:
        setattr(config, name, old)


def test_no_prewarm_keeps_shapes_cold(tmp_path):
    trace = tmp_path / "t.parquet"
    _small_trace(trace)
    run = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "traceforge", "replay", str(trace), "-o",
                          str(run), "--backend", "resident", "--no-prewarm",
                          "--seq-buckets", "16,64,256", "--no-progress"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    info = json.loads((run / "run.json").read_text())["backend_info"]
    assert info["prewarm"]["enabled"] is False
    assert info["prewarm"]["buckets"] == {"enc": None, "dec": None}
    assert info["models"]["dec"]["seq_buckets"] == [16, 64, 256]
    assert info["models"]["enc"]["seq_buckets"] == [32, 64, 128]  # the spec's override


def test_spec_seq_buckets_validated(tmp_path):
    from traceforge.generate.spec import load_spec

    p = tmp_path / "w.toml"
    p.write_text('duration_s = 1\n[models.a]\nzoo = "tiny-bert"\n'
                 'arrival = { process = "poisson", rate = 5.0 }\nseq_buckets = [64, 32]\n')
    with pytest.raises(BadInput, match=r"models\.a\.seq_buckets"):
        load_spec(p)


def test_fused_projections_decode_equals_eager():
    # `compiled` fuses q/k/v and gate/up into one matmul each; the parts slice the shared
    # output. Same tokens as the unfused model, eager and static-cache paths; idempotent.
    from traceforge.zoo import build_model
    from traceforge.zoo.serving import fuse_projections

    m = build_model("tiny-llama", "cpu", seed=3)
    ids = torch.randint(0, m.vocab_size, (2, 13), generator=torch.Generator().manual_seed(4))
    before = m.greedy_ids(ids, 12)
    layers = len(m.model.model.layers)
    assert fuse_projections(m.model) == 2 * layers
    assert fuse_projections(m.model) == 0
    attn = m.model.model.layers[0].self_attn
    assert type(attn.q_proj).__name__ == "Part"
    assert attn.q_proj.shared is attn.v_proj.shared  # one weight for the three
    assert torch.equal(m.greedy_ids(ids, 12), before)
    assert torch.equal(m.static_greedy_ids(ids, 12, bucket_seq=32), before)
    gpt = build_model("tiny-gpt2", "cpu", seed=3)
    assert fuse_projections(gpt.model) == 0  # not a Llama-family layout: left alone


def test_compiled_fuses_projections_before_any_runner_is_captured(monkeypatch):
    # A prefill-only forward bucket is warmed before the decode buckets: fusing only when the
    # first DecodeRunner is made would leave that forward's graph reading the replaced weights.
    from traceforge.zoo import build_model, serving

    m = build_model("tiny-llama", "cpu", seed=3)
    seen = []

    class Probe:
        def __init__(self, lm, key, **kwargs):
            seen.append(type(lm.model.model.layers[0].self_attn.q_proj).__name__)

    monkeypatch.setattr(serving, "ForwardRunner", Probe)
    m.compile, m.fuse_projections = "compiled", True
    m._runner(m.bucket(1, 13, 0), 0)
    assert seen == ["Part"]


# -- GPU: CUDA graphs ----------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_graph_decode_equals_eager_on_gpu(name):
    from traceforge.zoo import build_model

    m = build_model(name, "cuda", dtype="float32", seed=3)
    ids = torch.randint(0, m.vocab_size, (2, 13), device="cuda")
    eager = m.greedy_ids(ids, 20)
    assert torch.equal(m.static_greedy_ids(ids, 20, bucket_seq=32, graphs=True), eager)
    if name == "tiny-llama":  # `compiled`: fused projections, Inductor, captured
        m.fuse_projections = True
        assert torch.equal(m.static_greedy_ids(ids, 20, bucket_seq=32, graphs=True,
                                               inductor=True), eager)


@pytest.mark.gpu
def test_pipelined_decode_equals_run_on_gpu():
    """begin_decode + resume_decode + finish (the executor's pipelined decode) generate the same
    tokens as run() from the same inputs, with a first token inside the service interval; a
    second decode begun behind the first on the same bucket (its inputs refilled on the stream
    while the first still runs) changes neither's tokens."""
    from traceforge.zoo import build_model

    m = build_model("tiny-gpt2", "cuda", dtype="float32", seed=3)
    m.configure(compile="graphs")
    runner = m._runner(m.bucket(2, 13, 9), 9)
    m.generator.manual_seed(7)
    ref = []
    for _ in range(2):
        m.run(2, 13, 9)
        ref.append(runner.generated(9))
    assert not torch.equal(ref[0], ref[1])
    m.generator.manual_seed(7)
    h = m.begin_decode(2, 13, 9)
    m.resume_decode(h)
    st = m.finish(h)
    assert torch.equal(h.runner.generated(9), ref[0])
    assert st.service_start_ns <= st.first_token_ns <= st.service_end_ns
    assert st.gpu_ns > 0 and st.tokens_out == 18
    assert (st.bucket_batch_size, st.bucket_seq_len) == (2, 16)
    m.generator.manual_seed(7)
    first = m.begin_decode(2, 13, 9)
    m.resume_decode(first)
    first_tokens = first.runner.generated(9)  # a copy, ordered on the stream before the next
    second = m.begin_decode(2, 13, 9)  # enqueued behind the first's steps
    m.finish(first)
    m.resume_decode(second)
    m.finish(second)
    assert torch.equal(first_tokens, ref[0])
    assert torch.equal(second.runner.generated(9), ref[1])


@pytest.mark.gpu
def test_graph_forward_equals_eager_on_gpu():
    from traceforge.zoo import build_model
    from traceforge.zoo.serving import ForwardRunner

    m = build_model("tiny-bert", "cuda", dtype="float32", seed=1)
    m.configure(compile="graphs")
    ids = torch.randint(0, m.vocab_size, (2, 20), device="cuda")
    with torch.inference_mode():
        ref = m.model(input_ids=ids).last_hidden_state
        r = ForwardRunner(m, Bucket(2, 32), graphs=True, pool=m._pool)
        r.fill(2, 20)
        r.ids[:, :20] = ids
        out = r.run().last_hidden_state[:, :20]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    st = m.run(2, 20, 0)
    assert (st.bucket_batch_size, st.bucket_seq_len) == (2, 32) and st.gpu_ns > 0


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["exclusive", "streams"])
def test_inline_requests_on_gpu(tmp_path, mode):
    """Graph-captured requests that find their executor idle are launched and completed by the
    event loop's thread (executor.try_inline); decodes still go to the executor thread. Every
    row ok with its GPU time, and the ones served inline counted in run.json."""
    import pyarrow.dataset as ds

    trace = tmp_path / "t.parquet"
    _small_trace(trace, [("enc", 1, 20, 0), ("dec", 1, 9, 5), ("enc", 2, 70, 0)] * 6)
    for inline in (True, False):
        run = tmp_path / f"run-{inline}"
        out = subprocess.run([sys.executable, "-m", "traceforge", "replay", str(trace), "-o",
                              str(run), "--backend", "resident", "--device", "cuda",
                              "--mode", mode, "--no-progress",
                              "--inline" if inline else "--no-inline"],
                             capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        t = ds.dataset(run / "timeline").to_table().to_pylist()
        assert len(t) == 18 and all(r["status"] == "ok" and r["gpu_ns"] > 0 for r in t)
        assert all(r["sent_ns"] <= r["service_start_ns"] <= r["service_end_ns"] <= r["done_ns"]
                   for r in t)
        dec = [r for r in t if r["model"] == "dec"]  # pipelined decodes: TTFT inside service
        assert all(r["service_start_ns"] < r["first_token_ns"] < r["service_end_ns"]
                   and r["tokens_out"] == 5 for r in dec)
        info = json.loads((run / "run.json").read_text())["backend_info"]["inline"]
        assert info["enabled"] is inline
        # 12 encoder requests 20 ms apart, each alone on its executor: all inline
        assert info["requests"] == (12 if inline else 0), info


@pytest.mark.gpu
def test_back_to_back_requests_never_overlap_on_one_stream_on_gpu(tmp_path):
    """Exclusive mode, one stream: 60 requests sent 50 µs apart queue up and run back to back,
    each launched behind the one before. Their recorded service intervals come from the device's
    events (LoadedModel.finish's anchors), so none starts before the one before it ended (0.5 µs
    event resolution, 2 µs allowed). Recorded from the host's view of each end, they overlapped
    (H200, 2026-12-01 02:45 UTC, a held-out steady exclusive replay: 170 of 1,028 consecutive
    pairs, by up to 7.0 ms; p10 of waiting enc→enc gaps −81 µs)."""
    import pyarrow.dataset as ds

    trace = tmp_path / "t.parquet"
    _small_trace(trace, [("enc", 1, 20, 0), ("enc", 2, 70, 0), ("dec", 1, 9, 5)] * 20,
                 gap_ns=50_000)
    run = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "traceforge", "replay", str(trace), "-o",
                          str(run), "--backend", "resident", "--device", "cuda", "--mode",
                          "exclusive", "--no-progress"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    t = sorted(ds.dataset(run / "timeline").to_table().to_pylist(),
               key=lambda r: r["service_start_ns"])
    assert len(t) == 60 and all(r["status"] == "ok" for r in t)
    gaps = [b["service_start_ns"] - a["service_end_ns"] for a, b in itertools.pairwise(t)]
    assert min(gaps) >= -2_000, sorted(gaps)[:5]
    assert all(r["sent_ns"] <= r["service_start_ns"] <= r["service_end_ns"] <= r["done_ns"]
               for r in t)


# -- simulator: a request's service is its bucket's ----------------------------------------------
def _bucketed_profile(tmp_path: Path, buckets) -> Path:
    prof = {"schema": "traceforge.profile/1", "device": {"name": "test"},
            "models": {"enc": {"zoo": "tiny-bert", "kind": "encoder", "generative": False,
                               "batch_sizes": [1, 4], "seq_lens": [32, 64, 128],
                               "service_ms": [[1.0, 2.0, 4.0], [3.0, 6.0, 12.0]],
                               "service_cv": 0.0,
                               "cold_extra_ms": [[50.0] * 3, [50.0] * 3]}},
            "modes": {"exclusive": {"alone_scale": {}, "inbound_ms": {}, "outbound_ms": {},
                                    "slowdown": {}}}}
    if buckets is not None:
        prof["models"]["enc"]["buckets"] = {"seq_buckets": buckets}
    path = tmp_path / f"p{buckets is not None}.json"
    path.write_text(json.dumps(prof))
    return path


def test_simulator_uses_the_bucket_service_time(tmp_path):
    import pyarrow.dataset as ds

    from traceforge.schema import conform_trace_table, write_trace
    from traceforge.simulate import simulate

    seqs = [20, 33, 64, 100]
    table = conform_trace_table(pa.table({"request_id": np.arange(4, dtype=np.int64),
                      "arrival_ns": np.arange(4, dtype=np.int64) * 10**9,  # never queued
                      "model": ["enc"] * 4, "batch_size": np.ones(4, np.int32),
                      "seq_len": np.array(seqs, np.int32),
                      "max_new_tokens": np.zeros(4, np.int32)}))
    write_trace(table, tmp_path / "t.parquet", {})
    svc = {}
    for buckets in ([32, 64, 128], None):
        run = tmp_path / f"sim{buckets is not None}"
        simulate(tmp_path / "t.parquet", run, profile=_bucketed_profile(tmp_path, buckets),
                 mode="exclusive")
        t = ds.dataset(run / "timeline").to_table().to_pylist()
        svc[buckets is not None] = [(r["service_end_ns"] - r["service_start_ns"]) / 1e6
                                    for r in t]
        if buckets:
            assert [r["bucket_seq_len"] for r in t] == [32, 64, 64, 128]
            assert [r["bucket_batch_size"] for r in t] == [1, 1, 1, 1]
    # Bucketed: exactly the bucket's grid time, and warm (pre-warmed backend: no cold extra).
    assert svc[True] == pytest.approx([1.0, 2.0, 2.0, 4.0])
    # An older profile without buckets: interpolated at the request's own seq_len, cold first.
    assert svc[False][0] == pytest.approx(1.0 + 50.0)
    assert svc[False][1] == pytest.approx(1.0 + 1.0 / 32 + 50.0)  # its own shape: cold too


def test_ctrl_c_during_prewarm_stops_it_and_records_nothing(tmp_path):
    """Ctrl-C while the models pre-warm in the dispatcher's process (exclusive, streams) ends the
    replay after the bucket being warmed -- the loader ran every remaining bucket first (all 40
    here; a long GPU pre-warm held the signal for minutes) -- exit 130, no run directory left.
    Worker processes (timeslice, mps) are terminated: tests/test_safety_kill.py."""
    mode = "exclusive"
    import os
    import signal

    trace = tmp_path / "t.parquet"
    # 8 batch sizes x 5 seq_len buckets: 40 buckets of eager tiny-gpt2 decode
    _small_trace(trace, [("dec", b, s, 16) for b in range(1, 9) for s in (9, 20, 40, 70, 130)],
                 gap_ns=1_000_000)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "traceforge", "replay", str(trace), "-o",
                             str(run), "--backend", "resident", "--mode", mode,
                             "--no-progress"], stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "TRACEFORGE_PREWARM_SLOW_S": "0"})
    lines: list[str] = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if "pre-warm 2/" in line:
                proc.send_signal(signal.SIGINT)
                break
        rest = proc.stderr.read()
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = "".join(lines) + rest
    assert proc.returncode == 130, err
    assert "nothing recorded" in err, err
    warmed = [ln for ln in err.splitlines() if "pre-warm" in ln and "buckets" in ln]
    total = int(warmed[0].split("/")[1].split()[0])
    assert total == 40, warmed[0]
    # stopped after the bucket in progress (one or two more lines), far from all 40
    assert len(warmed) <= 4, err
    assert not run.exists(), list(run.iterdir())
