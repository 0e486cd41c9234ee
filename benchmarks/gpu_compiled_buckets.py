"""``--compile compiled`` across many buckets (issue 13): one Inductor compile of the decode step
for all of a model's buckets (dynamic shapes, zoo.COMPILE_DYNAMIC) against one per bucket.

Per model and variant (graphs; compiled with dynamic shapes; compiled per bucket): the
pre-warm time of a list of decode buckets (LoadedModel.prewarm, as a replay's pre-warm), the
number of Dynamo compiles it took, and ms/token at batch 1 x 128 (median of 5, the
difference of 65 and 1 new tokens, as gpu_serving_check.py decode). Token equality: tiny-llama
float32 greedy ids of the dynamic compiled path on several buckets and batches against the
eager path. Writes OUT/compiled-buckets.json and prints a table last.

    python benchmarks/gpu_compiled_buckets.py --out DIR [--models llama-1b,mistral-7b]
Env: STATIC_BUCKETS (how many buckets the per-bucket variant warms; default 2: each is a full
compile), DEVICE (default cuda; cpu runs tiny-llama eager-only plumbing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_serving_check import _ms_per_token

DEVICE = os.environ.get("DEVICE", "cuda")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def compiles() -> int:
    import torch._dynamo.utils as u

    counters = u.counters
    return int(sum(counters["stats"].get(k, 0) for k in ("unique_graphs",)))


def equality() -> dict:
    import torch

    from traceforge.zoo import build_model

    m = build_model("tiny-llama", DEVICE, dtype="float32", seed=3)
    m.fuse_projections = True
    m.compile_dynamic = True
    res = {}
    for b in (1, 2, 3):
        ids = torch.randint(0, m.vocab_size, (b, 13), device=DEVICE,
                            generator=torch.Generator(DEVICE).manual_seed(b))
        eager = m.greedy_ids(ids, 20)
        for s in (16, 64, 256):
            got = m.static_greedy_ids(ids, 20, bucket_seq=s, graphs=DEVICE == "cuda",
                                      inductor=DEVICE == "cuda")
            res[f"b{b}s{s}"] = bool(torch.equal(got, eager))
    return res


def variant(name: str, model: str, buckets: list, out: dict) -> None:
    import torch
    import torch._dynamo

    from traceforge.zoo import build_model
    from traceforge.zoo.buckets import Bucket

    torch._dynamo.reset()
    m = build_model(model, DEVICE, seed=0)
    compile_ = "graphs" if name == "graphs" else "compiled"
    m.compile_dynamic = name == "compiled-dynamic"
    m.configure(compile=compile_)
    warm = [Bucket(b, s, n) for b, s, n in buckets]
    if name == "compiled-static":
        warm = warm[:int(os.environ.get("STATIC_BUCKETS", "2"))]
    c0 = compiles()
    t = time.perf_counter()
    per = m.prewarm(warm, {k: k.new_cap for k in warm})
    prewarm_s = time.perf_counter() - t
    r = {"buckets": list(per), "per_bucket_s": per, "prewarm_s": round(prewarm_s, 2),
         "dynamo_graphs": compiles() - c0}
    log(f"{model} {name}: pre-warm {len(warm)} buckets {prewarm_s:.1f} s "
        f"({r['dynamo_graphs']} Dynamo graphs): {per}")
    vals = []
    t = time.perf_counter()
    for _ in range(5):
        vals.append(_ms_per_token(m, 128, reps=3)["ms_per_token"])
    r["ms_per_token"] = statistics.median(vals)
    r["ms_per_token_all"] = vals
    r["timing_s_incl_new_buckets"] = round(time.perf_counter() - t, 2)
    log(f"{model} {name}: {r['ms_per_token']:.3f} ms/token (median of 5: "
        f"{', '.join(f'{v:.3f}' for v in vals)})")
    out.setdefault(model, {})[name] = r
    del m
    torch.cuda.empty_cache()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", default="llama-1b,mistral-7b")
    ap.add_argument("--variants", default="graphs,compiled-dynamic,compiled-static")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    res: dict = {"device": DEVICE}
    path = a.out / "compiled-buckets.json"
    res["tokens_equal_dynamic_compiled_vs_eager"] = equality()
    log(f"tiny-llama dynamic compiled == eager: {res['tokens_equal_dynamic_compiled_vs_eager']}")
    path.write_text(json.dumps(res, indent=1))
    buckets = {"llama-1b": [(1, s, 32) for s in (16, 32, 64, 128, 256, 512)] + [(2, 128, 32)],
               "mistral-7b": [(1, s, 32) for s in (64, 128, 256, 512)]}
    for model in a.models.split(","):
        for v in a.variants.split(","):
            try:
                variant(v, model, buckets[model], res)
            except Exception as exc:  # reported, not fatal
                res.setdefault(model, {})[v] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
                log(f"{model} {v}: FAILED {res[model][v]['error']}")
            path.write_text(json.dumps(res, indent=1))
    print("| model | variant | buckets warmed | pre-warm s | Dynamo graphs | ms/token (1x128) |")
    print("|---|---|---:|---:|---:|---:|")
    for model in a.models.split(","):
        for v, r in res.get(model, {}).items():
            if "error" in r:
                print(f"| {model} | {v} | — | — | — | {r['error'][:80]} |")
            else:
                print(f"| {model} | {v} | {len(r['buckets'])} | {r['prewarm_s']:.1f} | "
                      f"{r['dynamo_graphs']} | {r['ms_per_token']:.3f} |")
    print(f"tiny-llama dynamic compiled == eager: {res['tokens_equal_dynamic_compiled_vs_eager']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
