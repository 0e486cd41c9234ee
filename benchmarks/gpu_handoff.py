"""Exclusive-mode executor hand-off against the dispatcher's GIL settings, on a GPU.

    python benchmarks/gpu_handoff.py WORK [--passes 2] [--variants base,syncdec,sw20,sw5,m03]

One process, the models loaded once (distilbert-base ``enc`` + distilgpt2 ``gen``, exclusive,
graphs, pre-warmed for both mixes' buckets); the held-out mixes of fidelity_heldout.py (seeds
21/22 + MIX_SEED_OFFSET) replayed under each variant of ReplayOptions, variants alternating
within each pass. Per run: send lag p50/p99, each model's latency p50/p99 and mean service, and
the executor's hand-off gap by class (finished model, next model, whether the next had reached
the worker before the finished one started; simulate/measure.handoff_classes). Prints a table
last; every number goes to WORK/handoff.json, the runs stay under WORK/runs.

Why: the dispatcher's spin pacer holds the GIL while it waits for a send (``await
asyncio.sleep(0)`` releases it only around a zero-timeout poll, and takes it straight back), so
the executor thread, which gives up the GIL in every CUDA wait, gets it back only when its
switch-interval timeout forces a switch. A hand-off with k such waits costs ~k x
``switch_interval_us`` whenever the dispatcher happens to be spinning, which depends on the send
rate: a cost that moves with the workload.

``syncdec`` runs graph-captured decodes synchronously, as the executor did before it pipelined
them (executor.PIPELINE_DECODES): the hand-off after a decode against the default's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = {
    "base": {},
    "sw20": {"switch_interval_us": 20.0},
    "sw5": {"switch_interval_us": 5.0},
    "m03": {"spin_margin_ms": 0.3},
    # decodes run synchronously, as before the executor pipelined them (2026-12-01)
    "syncdec": {"pipeline_decodes": False},
}
# time scales of the 18:02 UTC call (55 % / 70 % exclusive utilisation from its profile)
SCALES = {"bursty": 0.942, "steady": 0.437}


def make_traces(work: Path, duration: float) -> dict[str, Path]:
    from fidelity_heldout import MIXES, write_mix

    return {name: write_mix(name, work, duration) for name in MIXES}


def metrics(run_dir: Path) -> dict:
    from traceforge.record import read_timeline
    from traceforge.simulate.fidelity import latencies_by_model
    from traceforge.simulate.measure import timeline_gaps

    t = read_timeline(run_dir)
    manifest = json.loads((run_dir / "run.json").read_text())
    out = {"status": manifest.get("status"),
           "send_lag_us": manifest.get("self_check", {}).get("send_lag_us"), "rows": t.num_rows}
    out["latency"] = {m: {"n": int(v["latency_ms"].size),
                          "p50_ms": float(np.percentile(v["latency_ms"], 50)),
                          "p99_ms": float(np.percentile(v["latency_ms"], 99)),
                          "service_ms": float(np.mean(v["service_ms"]))}
                      for m, v in latencies_by_model(run_dir).items() if v["latency_ms"].size}
    classes = timeline_gaps(t, classes=True)
    out["handoff_us"] = {f"{a}>{b}:{'early' if e else 'late'}":
                         {"n": int(v.size), "mean": float(np.mean(v) / 1e3),
                          "p50": float(np.median(v) / 1e3)}
                         for (a, b, e), v in sorted(classes.items())}
    return out


async def main_async(args) -> dict:
    from traceforge.backends import resident
    from traceforge.backends.resident import executor as executor_mod
    from traceforge.clock import RunClock
    from traceforge.replay import ModelInfo, ReplayOptions, replay_async
    from traceforge.replay.run import trace_shapes
    from traceforge.schema import read_trace
    from traceforge.simulate.measure import _KeepStarted

    work = Path(args.work)
    traces = {name: read_trace(path) for name, path in make_traces(work, args.mix_s).items()}
    shapes: dict[str, set] = {}
    for trace in traces.values():
        for m, s in trace_shapes(trace).items():
            shapes.setdefault(m, set()).update(s)
    infos = [ModelInfo(name="enc", zoo="distilbert-base", shapes=sorted(shapes["enc"])),
             ModelInfo(name="gen", zoo="distilgpt2", shapes=sorted(shapes["gen"]))]
    backend = resident.from_options({
        "mode": "exclusive", "device": args.device, "sm_percent": {}, "max_batch": 1,
        "max_wait_ms": 0.0, "zoo": {"enc": "distilbert-base", "gen": "distilgpt2"},
        "telemetry": False})
    clock = RunClock()
    t = time.perf_counter()
    await backend.start(infos, clock)
    print(f"backend ready in {time.perf_counter() - t:.1f} s", flush=True)
    results = []
    try:
        for p in range(args.passes):
            order = list(args.variants) if p % 2 == 0 else list(reversed(args.variants))
            for variant in order:
                for mix, trace in traces.items():
                    run_dir = work / "runs" / f"p{p}-{variant}-{mix}"
                    kwargs = dict(VARIANTS[variant])
                    executor_mod.PIPELINE_DECODES = kwargs.pop("pipeline_decodes", True)
                    opts = ReplayOptions(time_scale=SCALES[mix], models=infos, warmup_s=0.5,
                                         **kwargs)
                    await replay_async(trace, run_dir, _KeepStarted(backend, clock), opts)
                    row = {"pass": p, "variant": variant, "mix": mix, **metrics(run_dir)}
                    results.append(row)
                    lag = row["send_lag_us"] or {}
                    print(f"pass {p} {variant:5s} {mix:6s} lag p99 {lag.get('p99')} "
                          + " ".join(f"{m} p50 {v['p50_ms']:.2f}" for m, v in
                                     row["latency"].items()), flush=True)
    finally:
        await backend.stop()
    return {"variants": {k: VARIANTS[k] for k in args.variants}, "scales": SCALES,
            "runs": results}


def table(doc: dict) -> str:
    lines = ["variant mix    | lag p99 us | enc p50/p99 ms | gen p50/p99 ms | "
             "ee:E ee:L eg:E ge:E ge:L gg:E hand-off mean us"]
    keys = ["enc>enc:early", "enc>enc:late", "enc>gen:early", "gen>enc:early", "gen>enc:late",
            "gen>gen:early"]
    by: dict[tuple, list] = {}
    for r in doc["runs"]:
        by.setdefault((r["variant"], r["mix"]), []).append(r)
    for (variant, mix), rows in by.items():
        def med(f, rows=rows):
            vals = []
            for r in rows:
                try:
                    vals.append(f(r))
                except (KeyError, TypeError):
                    continue
            vals = [v for v in vals if v is not None]
            return float(np.median(vals)) if vals else float("nan")
        lag = med(lambda r: (r["send_lag_us"] or {}).get("p99"))
        lat = {m: (med(lambda r, m=m: r["latency"][m]["p50_ms"]),
                   med(lambda r, m=m: r["latency"][m]["p99_ms"])) for m in ("enc", "gen")}
        hand = [med(lambda r, k=k: r["handoff_us"].get(k, {}).get("mean")) for k in keys]
        lines.append(f"{variant:7s} {mix:6s} | {lag:10.0f} | {lat['enc'][0]:6.2f}/{lat['enc'][1]:7.2f}"
                     f" | {lat['gen'][0]:6.2f}/{lat['gen'][1]:7.2f} | "
                     + " ".join(f"{h:4.0f}" for h in hand))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--variants", default="base,syncdec",
                    help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--mix-s", type=float, default=12.0)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke test of the script")
    args = ap.parse_args()
    args.variants = args.variants.split(",")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    from traceforge.replay.loop import new_event_loop

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        doc = runner.run(main_async(args))
    (Path(args.work) / "handoff.json").write_text(json.dumps(doc, indent=1))
    print(table(doc))


if __name__ == "__main__":
    main()
