"""Where a GPU worker process's start goes (the multi-GPU study's fixed cost, docs/scale.md).

Each variant runs in fresh processes (``spawn``) and reports seconds per phase:

    serial      import torch; CUDA context + a cuBLAS matmul; import transformers.modeling_utils
    threaded    the same, with transformers imported on a thread while the CUDA context starts
    pair        two ``serial`` processes at once on different GPUs (or the same one if only one
                is visible): whether concurrent CUDA starts serialise in the driver
    nvml        pynvml's init and device count alone (what a driver-side check would cost)

``python benchmarks/gpu_startup_probe.py [--rounds 2]``; prints one line per process and a table
of medians last. Card settings are never changed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import time


def _phases(gpu: int | None, threaded: bool, q) -> None:
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    out: dict = {"gpu": gpu, "threaded": threaded}
    t0 = t = time.perf_counter()

    def mark(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        out[name] = round(now - t, 3)
        t = now

    import torch

    mark("import_torch")
    th = None
    if threaded:
        import threading

        def imp() -> None:
            s = time.perf_counter()
            import transformers.modeling_utils  # noqa: F401

            out["thread_transformers"] = round(time.perf_counter() - s, 3)

        th = threading.Thread(target=imp)
        th.start()
    torch.cuda.init()
    mark("cuda_init")
    x = torch.ones((64, 64), device="cuda")
    mark("first_tensor")
    (x @ x).sum().item()
    mark("cublas_matmul")
    if th is not None:
        th.join()
        mark("join_transformers")
    else:
        import transformers.modeling_utils  # noqa: F401

        mark("import_transformers")
    out["total"] = round(time.perf_counter() - t0, 3)
    q.put(out)


def _nvml(q) -> None:
    t = time.perf_counter()
    import pynvml

    pynvml.nvmlInit()
    n = pynvml.nvmlDeviceGetCount()
    q.put({"nvml_init_and_count": round(time.perf_counter() - t, 3), "count": n})


def run(target, argsets) -> list[dict]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, q)) for a in argsets]
    t = time.perf_counter()
    for p in procs:
        p.start()
    res = [q.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    for r in res:
        r["wall_from_spawn"] = round(time.perf_counter() - t, 3)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    import subprocess

    n = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.count("GPU ")
    second = 1 if n > 1 else 0
    results: dict[str, list[dict]] = {"serial": [], "threaded": [], "pair": [], "nvml": []}
    for r in range(a.rounds):  # alternate the variants: the host's state moves between runs
        for name in ("serial", "threaded", "pair", "nvml"):
            if name == "nvml":
                got = run(_nvml, [()])
            elif name == "pair":
                got = run(_phases, [(0, False), (second, False)])
            else:
                got = run(_phases, [(0, name == "threaded")])
            for g in got:
                print(f"round {r} {name}: {json.dumps(g)}", flush=True)
            results[name] += got
    print("==== worker start, medians (s) ====")
    for name, rows in results.items():
        keys = [k for k in rows[0] if isinstance(rows[0][k], float)]
        print(f"{name:<9}" + "  ".join(
            f"{k} {statistics.median(x[k] for x in rows if k in x):.2f}" for k in keys))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
