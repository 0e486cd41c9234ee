"""Serving-grade checks of the resident backend on one GPU (issue 13), behind
``benchmarks/gpu_serving_check.sh``. Each subcommand is its own process (a clean GPU each):

    bandwidth   device-to-device copy bandwidth (bytes read + written / time, median of 20)
    decode      greedy decode ms/token: mistral-7b bf16 batch 1 (graphs, and eager for
                reference) against the weight-streaming floor; distilgpt2 (graphs); token-for-
                token equality of the graph path and the eager path (float32 tiny models and
                distilgpt2)
    overhead    the yardstick: >= 5 alternating passes of a bare loop (the same bucket runner,
                dtype and fresh inputs, no harness) and the harness (exclusive mode, closed loop,
                concurrency 1 and 2), distilbert-base bs 8 x 128; medians and spread; NVML
                utilisation of the saturated closed loop; done - sent - gpu_ns at c=1
    stability   one trace (distilbert-base + distilgpt2, Poisson, ~60 % load) replayed twice by
                the CLI, then ``traceforge compare``: p50/p99 ratios and verdicts
Card settings and clocks are never changed. Results: JSON per subcommand under --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import DRY, log  # GPU_CHECK_DRY and its tiny stand-ins live there
from gpu_check import zoo_of as zoo

DEVICE = "cpu" if DRY else "cuda"
COMPILE = "eager" if DRY else "graphs"


def sync() -> None:
    if DEVICE == "cuda":
        import torch

        torch.cuda.synchronize()


def spread(values: list[float]) -> dict:
    v = sorted(values)
    return {"median": statistics.median(v), "min": v[0], "max": v[-1],
            "spread_pct": 100.0 * (v[-1] - v[0]) / statistics.median(v) if v[0] else None,
            "passes": v}


# -- bandwidth ----------------------------------------------------------------------------------
def cmd_bandwidth(out: Path) -> dict:
    import torch

    n = (1 << 30) if not DRY else (1 << 22)  # 1 GiB of bf16 each way: far beyond the L2
    a = torch.empty(n, dtype=torch.bfloat16, device=DEVICE).normal_()
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    sync()
    rates = []
    for _ in range(20):
        if DEVICE == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            b.copy_(a)
            e.record()
            e.synchronize()
            sec = s.elapsed_time(e) / 1e3
        else:
            t = time.perf_counter()
            b.copy_(a)
            sec = time.perf_counter() - t
        rates.append(2 * a.numel() * a.element_size() / sec)  # read + write
    res = {"bytes_each_way": a.numel() * a.element_size(), "d2d_bytes_per_s": spread(rates)}
    log(f"d2d copy: {res['d2d_bytes_per_s']['median'] / 1e12:.2f} TB/s (read+write)")
    return res


# -- decode -------------------------------------------------------------------------------------
def _ms_per_token(model, seq: int, reps: int = 3) -> dict:
    # Service time of 1 and of 65 new tokens (median of reps each, same bucket: new-token
    # buckets 16 and 128 differ only in cache length); per token = the difference / 64.
    t = {}
    for new in (1, 65):
        model.run(1, seq, new)  # this shape warm (graphs: captured)
        vals = []
        for _ in range(reps):
            st = model.run(1, seq, new)
            vals.append((st.service_end_ns - st.service_start_ns) / 1e6)
        t[new] = statistics.median(vals)
    return {"service_ms_new1": t[1], "service_ms_new65": t[65],
            "ms_per_token": (t[65] - t[1]) / 64}


# Decode variants beyond graphs/eager: ``compiled`` with these TorchInductor options.
# freezing: parameters become constants, which lets Inductor's freezing patterns concatenate
# the q/k/v projections (3 matmuls -> 1) and gate/up (2 -> 1) of each layer; coordinate
# descent tuning: gpt-fast's setting, tunes the block sizes of the fused (norm/rotary/...)
# kernels.
# Keys starting with "_" are not Inductor's: _fuse fuses q/k/v and gate/up projections first
# (zoo/serving.py fuse_projections; permanent for the model object, so fused variants go
# last); _cudnn_sdp False disables cuDNN attention (SDPA then picks memory-efficient attention
# for the masked decode step). On 2026-11-30 freezing did not concatenate the projections
# (still 7 GEMVs a layer) and did not change ms/token (5.345 vs 5.33).
INDUCTOR_VARIANTS = {
    "compiled": {},
    "compiled-freeze": {"freezing": True},
    "compiled-cdt": {"coordinate_descent_tuning": True},
    "compiled-freeze-cdt": {"freezing": True, "coordinate_descent_tuning": True},
    "compiled-fused": {"_fuse": True},
    "compiled-fused-nocudnn": {"_fuse": True, "_cudnn_sdp": False},
    "compiled-fused-autotune": {"_fuse": True, "max_autotune": True,
                                "max_autotune_gemm_backends": "ATEN,TRITON"},
}


def _profile_step(model, seq: int, new: int, steps: int = 8) -> dict:
    """Per-kernel GPU time of the decode step, run uncaptured (the same kernels as the graph;
    launch gaps aside): the top kernels and the kernel count per step."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    bucket = model.bucket(1, seq, new)
    runner = model._runners[bucket]
    with torch.inference_mode():
        runner.prefill()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                runner._step_fn()
            torch.cuda.synchronize()
    rows = []
    total = 0.0
    count = 0
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t <= 0:
            continue
        total += t
        count += e.count
        rows.append((t / steps, e.count / steps, e.key[:90]))
    rows.sort(reverse=True)
    res = {"gpu_us_per_step": total / steps, "kernels_per_step": count / steps,
           "top": [{"us_per_step": round(a, 2), "calls_per_step": b, "kernel": k}
                   for a, b, k in rows[:25]]}
    log(f"profile: {res['gpu_us_per_step']:.0f} us GPU/step in {res['kernels_per_step']:.0f} "
        f"kernels; top: " + "; ".join(f"{r['kernel'][:40]} {r['us_per_step']:.0f}"
                                      for r in res["top"][:6]))
    return res


def cmd_decode(out: Path, bandwidth: float | None) -> dict:
    import torch

    from traceforge.zoo import build_model

    res: dict = {}
    # Token-for-token: graph path vs the eager dynamic-cache path.
    eq = {}
    for name in ([] if os.environ.get("SKIP_EQ") == "1" else
                 ["tiny-gpt2", "tiny-llama", "distilgpt2"]):
        m = build_model(name, DEVICE, dtype="float32", seed=1)
        ids = torch.randint(0, m.vocab_size, (2, 37), device=DEVICE,
                            generator=torch.Generator(DEVICE).manual_seed(5))
        a = m.greedy_ids(ids, 24)
        b = m.static_greedy_ids(ids, 24, bucket_seq=64, graphs=DEVICE == "cuda")
        eq[name] = bool((a == b).all().item())
        if name == "tiny-llama" and DEVICE == "cuda":  # compiled: projections fused, Inductor
            m.fuse_projections = True
            c = m.static_greedy_ids(ids, 24, bucket_seq=64, graphs=True, inductor=True)
            eq[f"{name} compiled-fused"] = bool((a == c).all().item())
        del m
        torch.cuda.empty_cache() if DEVICE == "cuda" else None
    res["tokens_equal_graphs_vs_eager"] = eq
    log(f"greedy tokens graphs == eager: {eq}")
    wanted = os.environ.get("DECODE_VARIANTS", "graphs,compiled,eager").split(",")
    for name in ("distilgpt2", "mistral-7b"):
        variants = [v for v in wanted if v in ("graphs", "eager") or v in INDUCTOR_VARIANTS]
        if name not in os.environ.get("DECODE_MODELS", "distilgpt2,mistral-7b").split(","):
            continue
        m = build_model(zoo(name), DEVICE, seed=0)
        r: dict = {"dtype": m.dtype, "weight_bytes": m.entry.weight_bytes(m.dtype)}
        for v in variants:
            if v != "eager" and DRY:
                continue
            opts = INDUCTOR_VARIANTS.get(v, {})
            m.inductor_options = {k: x for k, x in opts.items() if not k.startswith("_")}
            m.fuse_projections = bool(opts.get("_fuse"))
            if not DRY:
                torch.backends.cuda.enable_cudnn_sdp(opts.get("_cudnn_sdp", True))
            m.configure(compile="compiled" if v in INDUCTOR_VARIANTS else v)
            t = time.perf_counter()
            try:
                r[v] = _ms_per_token(m, 128, reps=1 if v == "eager" else 3)
            except Exception as exc:  # a variant that fails is reported, not fatal
                r[v] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
                log(f"{name} {v}: FAILED {r[v]['error']}")
                continue
            r[v]["wall_s_incl_capture"] = time.perf_counter() - t
            r[v]["inductor_options"] = m.inductor_options
            log(f"{name} {v}: {r[v]['ms_per_token']:.3f} ms/token "
                f"({r[v]['wall_s_incl_capture']:.0f} s incl. compile/capture)")
            prof = os.environ.get("DECODE_PROFILE", "")
            if (prof == "1" or v in prof.split(",")) and v != "eager" and not DRY:
                try:
                    r[v]["step_kernels"] = _profile_step(m, 128, 65)
                except Exception as exc:
                    r[v]["step_kernels"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            # partial results survive a step killed by its time limit
            if bandwidth:
                r["floor_ms_per_token"] = r["weight_bytes"] / bandwidth * 1e3
                r[f"ratio_to_floor_{v}"] = r[v]["ms_per_token"] / r["floor_ms_per_token"]
            res[name] = r
            (out / "decode.json").write_text(json.dumps(res, indent=1, default=str))
        if bandwidth:
            r["floor_ms_per_token"] = r["weight_bytes"] / bandwidth * 1e3
            for v in [k for k in r if isinstance(r[k], dict) and k != "eager"]:
                if "ms_per_token" in r.get(v, {}):
                    r[f"ratio_to_floor_{v}"] = r[v]["ms_per_token"] / r["floor_ms_per_token"]
                    log(f"{name}: floor {r['floor_ms_per_token']:.3f} ms, {v} / floor "
                        f"{r[f'ratio_to_floor_{v}']:.2f}")
        res[name] = r
        del m
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    return res


# -- overhead / yardstick -----------------------------------------------------------------------
async def _overhead(out: Path, n: int, passes: int) -> dict:
    from gpu_check import closed_trace, ok_rows, pct, replay

    from traceforge.backends.resident import from_options
    from traceforge.clock import RunClock
    from traceforge.replay import ModelInfo

    name = "distilbert-base"
    shape = (8, 128, 0)
    backend = from_options({"mode": "exclusive", "device": DEVICE, "telemetry": True,
                            "compile": COMPILE, "zoo": {name: zoo(name)}})
    clock = RunClock()
    info = ModelInfo(name, zoo(name), shapes=[shape])
    await backend.start([info], clock)
    model = backend._executors[name].models[name]
    bucket = model.bucket(*shape)
    res: dict = {"model": name, "shape": shape, "bucket": bucket.label(), "compile": COMPILE,
                 "requests_per_pass": n, "passes": passes}

    def bare() -> float:
        # The bare loop: the same bucket runner (graphs) or forward (eager), fresh inputs every
        # iteration, one synchronisation per request, as the harness does; no queue, no events.
        import torch

        t = time.perf_counter()
        with torch.inference_mode():
            for _ in range(n):
                if COMPILE == "graphs":
                    r = model._runner(bucket, 0)
                    r.fill(*shape[:2])
                    r.run()
                    r.result()  # the harness copies the output out too
                else:
                    model.model(input_ids=model.synthesise(*shape[:2]))
                sync()
        return n / (time.perf_counter() - t)

    # Warm-up: both loops, untimed.
    bare()
    await replay(backend, clock, closed_trace(name, n // 2, shape), out / "runs" / "warm",
                 concurrency=2)
    # (concurrency, inline): the default path, and c=1 with every request handed to the
    # executor thread (--no-inline), alternating in each pass
    variants = {"c1": (1, True), "c2": (2, True), "c1_noinline": (1, False)}
    inline_default = backend.inline
    rates: dict = {"bare": [], **{k: [] for k in variants}}
    over: dict = {k: [] for k in variants if variants[k][0] == 1}
    hops: dict = {k: {"in": [], "window_minus_gpu": [], "out": []} for k in over}
    util: list = []
    for p in range(passes):
        rates["bare"].append(bare())
        for key, (c, inline) in variants.items():
            run_dir = out / "runs" / f"pass{p}-{key}"
            backend.inline = inline and inline_default
            await replay(backend, clock, closed_trace(name, n, shape), run_dir, concurrency=c)
            backend.inline = inline_default
            ok = ok_rows(run_dir)
            span = (ok.done_ns.max() - ok.sent_ns.min()) / 1e9
            rates[key].append(ok.n / span)
            if c == 1:
                over[key] += list((ok.done_ns - ok.sent_ns - ok.gpu_ns) / 1e3)
                # where it goes: sent -> executor took it (service_start: the launch), the
                # service window beyond the GPU's own time (launch before the GPU starts, the
                # wake-up after it ends), executor's end -> the harness's done stamp
                h = hops[key]
                h["in"] += list((ok.service_start_ns - ok.sent_ns) / 1e3)
                h["window_minus_gpu"] += list(
                    (ok.service_end_ns - ok.service_start_ns - ok.gpu_ns) / 1e3)
                h["out"] += list((ok.done_ns - ok.service_end_ns) / 1e3)
            tel = run_dir / "telemetry.parquet"
            if c == 2 and tel.exists():
                import pyarrow.parquet as pq

                u = pq.read_table(tel).column("util_gpu_pct").to_numpy(zero_copy_only=False)
                u = u[~np.isnan(u.astype(float))]
                if u.size > 4:  # drop the first/last samples (ramp)
                    util.append(float(np.mean(u[2:-2])))
        log(f"pass {p}: bare {rates['bare'][-1]:.1f} rps, "
            + ", ".join(f"{k} {rates[k][-1]:.1f}" for k in variants))
    # Utilisation of the saturated closed loop: one long run (NVML averages over up to 1 s).
    n_long = int(statistics.median(rates["c2"]) * 6)
    run_dir = out / "runs" / "util-c2"
    await replay(backend, clock, closed_trace(name, n_long, shape), run_dir, concurrency=2)
    res["util_run"] = {"requests": n_long, **_util(run_dir)}
    await backend.stop()
    res["rps"] = {k: spread(v) for k, v in rates.items()}
    for k in variants:
        res[f"ratio_{k}"] = spread([h / b for h, b in zip(rates[k], rates["bare"], strict=True)])
    res["ratio_of_medians"] = {k: res["rps"][k]["median"] / res["rps"]["bare"]["median"]
                               for k in variants}
    for key in over:
        suffix = key[2:]  # "" or "_noinline"
        res[f"done_sent_minus_gpu_us_c1{suffix}"] = {"p50": pct(over[key], 50),
                                                      "p99": pct(over[key], 99)}
        res[f"hops_us_c1{suffix}"] = {k: {"p50": pct(v, 50), "p99": pct(v, 99)}
                                      for k, v in hops[key].items()}
    res["inline"] = backend.describe().get("inline")

    res["nvml_util_c2_pct"] = spread(util) if util else None
    res["prewarm"] = backend.describe().get("prewarm")
    return res


def _util(run_dir: Path) -> dict:
    tel = run_dir / "telemetry.parquet"
    if not tel.exists():
        return {"mean_util_gpu_pct": None}
    import pyarrow.parquet as pq

    u = pq.read_table(tel).column("util_gpu_pct").to_numpy(zero_copy_only=False).astype(float)
    u = u[~np.isnan(u)]
    inner = u[10:-4] if u.size > 20 else u  # NVML's average lags the start by up to 1 s
    return {"mean_util_gpu_pct": float(inner.mean()) if inner.size else None,
            "samples": int(u.size)}


async def _util_decode(out: Path, seconds: float) -> dict:
    from gpu_check import closed_trace, ok_rows, replay

    from traceforge.backends.resident import from_options
    from traceforge.clock import RunClock
    from traceforge.replay import ModelInfo

    name, shape = "mistral-7b", (1, 128, 64)
    backend = from_options({"mode": "exclusive", "device": DEVICE, "telemetry": True,
                            "compile": COMPILE, "zoo": {name: zoo(name)}})
    clock = RunClock()
    await backend.start([ModelInfo(name, zoo(name), shapes=[shape])], clock)
    n = max(4, int(seconds / 0.5))
    run_dir = out / "runs" / "util-mistral"
    await replay(backend, clock, closed_trace(name, n, shape), run_dir, concurrency=1)
    await backend.stop()
    ok = ok_rows(run_dir)
    return {"model": name, "shape": shape, "requests": ok.n,
            "span_s": float((ok.done_ns.max() - ok.sent_ns.min()) / 1e9), **_util(run_dir)}


def cmd_util(out: Path, seconds: float) -> dict:
    res = asyncio.run(_util_decode(out, seconds))
    log(f"util mistral-7b decode closed loop: {res['mean_util_gpu_pct']}% over "
        f"{res['span_s']:.1f} s")
    return res


def cmd_overhead(out: Path, n: int, passes: int) -> dict:
    from traceforge.replay.loop import new_event_loop

    loop = new_event_loop()  # the loop `traceforge replay` runs on (timerfd waits)
    try:
        res = loop.run_until_complete(_overhead(out, n, passes))
    finally:
        loop.close()
    log(f"harness / bare (median of {passes} alternating passes): c1 "
        f"{res['ratio_of_medians']['c1']:.3f}, c2 {res['ratio_of_medians']['c2']:.3f}, "
        f"c1 --no-inline {res['ratio_of_medians']['c1_noinline']:.3f}; "
        f"done-sent-gpu p50 {res['done_sent_minus_gpu_us_c1']['p50']:.0f} us (hops p50 "
        + ", ".join(f"{k} {v['p50']:.0f}" for k, v in res["hops_us_c1"].items())
        + f" us), --no-inline {res['done_sent_minus_gpu_us_c1_noinline']['p50']:.0f} us "
        "(hops p50 "
        + ", ".join(f"{k} {v['p50']:.0f}" for k, v in res["hops_us_c1_noinline"].items())
        + f" us); util "
        f"{(res['nvml_util_c2_pct'] or {}).get('median')} (short passes); long c2 run "
        f"{res['util_run']['mean_util_gpu_pct']}")
    return res


# -- stability ----------------------------------------------------------------------------------
def cmd_stability(out: Path, duration: float, rate_scale: float) -> dict:
    spec = out / "stability.toml"
    spec.write_text(f"""name = "stability"
duration_s = {duration}
seed = 11
[models.bert]
zoo = "{zoo('distilbert-base')}"
arrival = {{ process = "poisson", rate = {200.0 * rate_scale} }}
batch_size = {{ dist = "choice", values = [1, 4, 8], weights = [0.5, 0.3, 0.2] }}
seq_len = {{ dist = "uniform", low = 16, high = 256 }}
[models.gpt]
zoo = "{zoo('distilgpt2')}"
arrival = {{ process = "poisson", rate = {20.0 * rate_scale} }}
seq_len = {{ dist = "uniform", low = 16, high = 128 }}
max_new_tokens = {{ dist = "uniform", low = 8, high = 32 }}
""")
    tf = [sys.executable, "-m", "traceforge"]
    trace = out / "stability.parquet"
    subprocess.run([*tf, "trace", "gen", str(spec), "-o", str(trace)], check=True)
    # STAB_VARIANTS="inline,no-inline": each variant replayed twice, interleaved (A B A B),
    # and each variant's pair compared; the first variant's comparison is the check's verdict.
    # A variant "V+pin" replays V with the whole replay (dispatcher, flusher, workers) confined
    # by taskset to the CPUs sharing one L3 cache with CPU 2 (at most 8; see l3_group), for
    # the A/B of host-side placement. STAB_REPEATS (default 2): replays per variant; pairs
    # 1-2 give the verdict, every replay's p50/p99 is logged.
    variants = [v for v in os.environ.get("STAB_VARIANTS", "inline").split(",") if v]
    repeats = max(2, int(os.environ.get("STAB_REPEATS", "2")))
    runs: dict[str, list[str]] = {v: [] for v in variants}
    group = l3_group()
    log(f"stability: L3 group of CPU 2: {group} (of {sorted(os.sched_getaffinity(0))})")
    for i in range(1, repeats + 1):
        for v in variants:
            flag, _, pin = v.partition("+")
            run = out / "runs" / (f"stability-{i}" if len(variants) == 1 else f"{v}-{i}")
            t = time.perf_counter()
            wrap = ["taskset", "-c", ",".join(map(str, group))] if pin == "pin" else []
            subprocess.run([*wrap, *tf, "replay", str(trace), "-o", str(run), "--backend",
                            "resident", "--device", DEVICE, "--mode", "exclusive",
                            "--compile", COMPILE, "--warmup", "1", "--no-progress",
                            f"--{flag}"], check=True)
            runs[v].append(str(run))
            log(f"stability replay {i} ({v}): {time.perf_counter() - t:.1f} s; "
                + "; ".join(f"{m} p50 {q[0]:.3f} p99 {q[1]:.3f} ms"
                            for m, q in latency_quantiles(run).items()))
    res: dict = {"runs": runs[variants[0]], "variants": variants, "compare_by_variant": {}}
    for v in variants:
        cmp = subprocess.run([*tf, "compare", *runs[v], "--json"], check=True,
                             capture_output=True, text=True)
        result = json.loads(cmp.stdout)
        res["compare_by_variant"][v] = result
        for m, c in result.get("models", {}).items():
            log(f"stability ({v}) {m}: p50 ratio {c.get('p50_ratio'):.3f} p99 ratio "
                f"{c.get('p99_ratio'):.3f} verdict {c.get('verdict')}")
    res["compare"] = res["compare_by_variant"][variants[0]]
    res["p50_ms"] = {v: [latency_quantiles(Path(r)) for r in runs[v]] for v in variants}
    for v in variants:
        for m in res["p50_ms"][v][0]:
            p50 = [q[m][0] for q in res["p50_ms"][v]]
            log(f"stability ({v}) {m}: p50 over {len(p50)} replays "
                + " ".join(f"{x:.3f}" for x in p50)
                + f" ms, max/min {max(p50) / min(p50):.3f}")
    res["breakdown"] = {run: breakdown(Path(run)) for v in variants for run in runs[v]}
    for run, b in res["breakdown"].items():
        clk = b.get("telemetry", {})
        log(f"stability {Path(run).name}: sm clock median {clk.get('sm_clock_mhz_p50')} MHz "
            f"(p10 {clk.get('sm_clock_mhz_p10')}), power {clk.get('power_w_p50')} W; "
            + "; ".join(f"{m}: " + " ".join(f"{k} {v:.0f}" for k, v in parts.items())
                        for m, parts in b["models"].items()))
    return res


def l3_group(cpu: int = 2, limit: int = 8) -> list[int]:
    """The CPUs (of this process's affinity) sharing an L3 cache with ``cpu``, at most
    ``limit``; the affinity's first ``limit`` when the topology is not readable."""
    allowed = sorted(os.sched_getaffinity(0))
    try:
        text = Path(f"/sys/devices/system/cpu/cpu{cpu}/cache/index3/shared_cpu_list").read_text()
        cpus = []
        for part in text.strip().split(","):
            lo, _, hi = part.partition("-")
            cpus += range(int(lo), int(hi or lo) + 1)
        group = [c for c in cpus if c in allowed]
    except (OSError, ValueError):
        group = []
    return (group or allowed)[:limit]


def latency_quantiles(run: Path) -> dict[str, tuple[float, float]]:
    """Per model: p50 and p99 (ms) of the ok latencies, with the report's warm-up rules (as
    ``traceforge compare`` reads them)."""
    from traceforge.analyze.compare import ok_latencies_by_model

    return {m: (float(np.percentile(v, 50)) / 1e6, float(np.percentile(v, 99)) / 1e6)
            for m, v in ok_latencies_by_model(run).items() if v.size}


# breakdown's names for the report's decomposition (analyze/rundata.py): p50 of each, µs
PARTS = {"lag": "send_lag", "to_start": "queue_wait", "gpu": "gpu", "end_to_done": "transport_other"}


def breakdown(run: Path) -> dict:
    """Where a run's p50 latency goes, per model (µs): the p50 of each part of the report's
    decomposition (ok rows, warm-up rows dropped; ``traceforge report``), and the card's SM
    clock and power over the run (telemetry.parquet): what tells a GPU-side shift (clock,
    gpu_ns) from a host-side one (send lag, hand-offs) between replays."""
    import pyarrow.parquet as pq

    from traceforge.analyze.report import build_report

    report = build_report(run)
    out: dict = {"models": {}}
    for m, r in report["models"].items():
        dec = r["decomposition_ms"]
        parts = {k: dec[v]["p50"] for k, v in PARTS.items()}
        parts["latency"] = r["latency_ms"]["p50"]
        out["models"][m] = {k: float("nan") if v is None else v * 1e3 for k, v in parts.items()}
    tel = run / "telemetry.parquet"
    if tel.exists():
        d = pq.read_table(tel)
        clk = d["sm_clock_mhz"].to_numpy(zero_copy_only=False).astype(float)
        pw = d["power_w"].to_numpy(zero_copy_only=False).astype(float)
        out["telemetry"] = {"sm_clock_mhz_p50": float(np.nanmedian(clk)),
                            "sm_clock_mhz_p10": float(np.nanpercentile(clk, 10)),
                            "power_w_p50": round(float(np.nanmedian(pw)), 1),
                            "samples": len(clk)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("bandwidth", "decode", "overhead", "util", "stability"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--rate-scale", type=float, default=1.0)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.what == "bandwidth":
        res = cmd_bandwidth(a.out)
    elif a.what == "decode":
        bw = None
        p = a.out / "bandwidth.json"
        if p.exists():
            bw = json.loads(p.read_text())["d2d_bytes_per_s"]["median"]
        res = cmd_decode(a.out, bw)
    elif a.what == "overhead":
        res = cmd_overhead(a.out, a.n, a.passes)
    elif a.what == "util":
        res = cmd_util(a.out, a.duration)
    else:
        res = cmd_stability(a.out, a.duration, a.rate_scale)
    res["date_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    (a.out / f"{a.what}.json").write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
