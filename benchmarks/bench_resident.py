"""CPU benchmark of the resident backend's own overhead (the GPU numbers: gpu_check.sh).

Against a baseline measured in the same run: a bare loop calling tiny-bert's forward. Reports
closed-loop throughput through the backend (exclusive: in-process executor thread; timeslice:
worker process over the socketpair) as a ratio to the bare loop, the per-request time outside
the model (``done − sent − service``) and the transport's ping round trip.
"""

from __future__ import annotations

import asyncio
import time

N = 300


def _bare_rps(n: int) -> float:
    import torch

    from traceforge.zoo import build_model

    m = build_model("tiny-bert", "cpu")
    ids = torch.randint(0, m.vocab_size, (2, 16))
    with torch.inference_mode():
        for _ in range(20):
            m.model(input_ids=ids)
        t = time.perf_counter()
        for _ in range(n):
            m.model(input_ids=ids)
    return n / (time.perf_counter() - t)


async def _harness(mode: str, n: int) -> dict:
    import numpy as np

    from traceforge.backends.resident import from_options
    from traceforge.clock import RunClock
    from traceforge.replay import ModelInfo, Request

    backend = from_options({"mode": mode, "device": "cpu"})
    clock = RunClock()
    await backend.start([ModelInfo("bert", "tiny-bert")], clock)
    outside = []
    try:
        for i in range(20):
            await backend.submit(Request(i, "bert", 2, 16, 0, 0))
        t = time.perf_counter()
        for i in range(n):
            sent = clock.now()
            out = await backend.submit(Request(100 + i, "bert", 2, 16, 0, 0))
            outside.append(clock.now() - sent - (out.service_end_ns - out.service_start_ns))
        rps = n / (time.perf_counter() - t)
    finally:
        await backend.stop()
    info = backend.describe()
    return {"rps": rps, "outside_p50_us": float(np.percentile(outside, 50)) / 1e3,
            "ping_rtt_us": info.get("transport", {}).get("ping_rtt_us")}


def main() -> dict:
    import torch

    # One intra-op thread everywhere: a tiny model gains nothing from more, and on a shared
    # machine an OpenMP team spinning on busy cores makes either side's number meaningless.
    torch.set_num_threads(1)
    bare_runs = [_bare_rps(N)]
    result: dict = {}
    for mode in ("exclusive", "timeslice"):
        h = asyncio.run(_harness(mode, N))
        result[mode] = h
        bare_runs.append(_bare_rps(N))
    bare = max(bare_runs)
    result["bare_rps_runs"] = bare_runs
    result["bare_rps"] = bare
    for mode in ("exclusive", "timeslice"):
        result[mode]["ratio_to_bare"] = result[mode]["rps"] / bare
    print(f"{'loop':<12}{'req/s':>10}{'vs bare':>10}{'outside p50 us':>16}{'ping p50/p99 us':>18}")
    print(f"{'bare (best)':<12}{bare:>10.0f}{1.0:>10.3f}")
    for mode in ("exclusive", "timeslice"):
        h = result[mode]
        ping = h["ping_rtt_us"] or {}
        ping_s = f"{ping.get('p50', '—')}/{ping.get('p99', '—')}" if ping else "—"
        print(f"{mode:<12}{h['rps']:>10.0f}{h['ratio_to_bare']:>10.3f}"
              f"{h['outside_p50_us']:>16.0f}{ping_s:>18}")
    return result


if __name__ == "__main__":
    main()
