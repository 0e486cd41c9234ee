"""Where a request's harness time goes at concurrency 1, measured on the CPU (no GPU needed).

The resident backend in exclusive mode with its model swapped for a fake device: ``launch``
returns at once and the "GPU" finishes ``--gpu-ms`` later (a timer), so only the harness's own
path is measured: the dispatcher stamps ``sent``, the event loop hands the job to the executor
thread (``put`` -> that thread has it: a condition-variable wake-up plus the GIL), the executor
launches; after the device ends, the executor reports (``call_soon_threadsafe``), the loop wakes
and resolves the request's future, and the request's task resumes one loop iteration later and
stamps ``done``. Prints the medians per closed-loop pass (400 requests).

    PYTHONPATH=. python benchmarks/harness_hops.py [--gpu-ms 0.5] [--passes 3]

Timer-based device times overshoot (the ``late`` column) and this machine may be shared: read
the hops, not the throughput. docs/results/serving-h200.md has the H200 numbers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import closed_trace, ok_rows, replay

STAMPS: dict[str, list[int]] = {"put": [], "taken": [], "report": [], "resolve": []}


class FakeDevice:
    """The LoadedModel surface the executor uses, with a timer as the GPU."""

    def __init__(self, real, gpu_s: float) -> None:
        self.real, self.gpu_s = real, gpu_s
        self.device, self.entry = real.device, real.entry

    def bucket(self, *shape):
        return self.real.bucket(*shape)

    def can_launch(self, *shape):
        return True

    def launch(self, batch_size, seq_len, max_new_tokens, *, label=None):
        from traceforge.zoo import Launched

        launched = time.monotonic_ns()
        return Launched(None, None, launched + int(self.gpu_s * 1e9), launched, None)

    def poll(self, handle):
        return time.monotonic_ns() >= handle.end_ev

    def finish(self, handle):
        from traceforge.zoo import RunStats

        while not self.poll(handle):  # the executor thread blocks here, as on end_ev
            time.sleep(max(0.0, (handle.end_ev - time.monotonic_ns()) / 1e9))
        return RunStats(handle.launched_ns, None, time.monotonic_ns(), int(self.gpu_s * 1e9),
                        0, None, None)


def instrument() -> None:
    from traceforge.backends.resident import executor as ex

    put, take, report = ex.Executor.put, ex.Executor._next_batch_jobs, ex.Executor._report

    def put_(self, job):
        put(self, job)
        STAMPS["put"].append(job.enqueued_ns)

    def take_(self, wait=True):
        batch = take(self, wait)
        if batch:
            STAMPS["taken"].append(time.monotonic_ns())
        return batch

    def report_(self, batch, common, stats, on_result=None):
        STAMPS["report"].append(time.monotonic_ns())
        report(self, batch, common, stats, on_result)

    ex.Executor.put, ex.Executor._next_batch_jobs, ex.Executor._report = put_, take_, report_


def med(a) -> float:
    return float(np.median(a)) if len(a) else float("nan")


async def main(gpu_ms: float, passes: int, out: Path) -> None:
    from traceforge.backends.resident import from_options
    from traceforge.clock import RunClock
    from traceforge.replay import ModelInfo

    instrument()
    name, shape = "distilbert-base", (8, 128, 0)
    backend = from_options({"mode": "exclusive", "device": "cpu", "telemetry": False,
                            "zoo": {name: "tiny-bert"}})
    clock = RunClock()
    await backend.start([ModelInfo(name, "tiny-bert", shapes=[shape])], clock)
    executor = backend._executors[name]
    executor.models[name] = FakeDevice(executor.models[name], gpu_ms / 1e3)
    resolve = backend._resolve

    def resolve_(rid, fields):
        STAMPS["resolve"].append(time.monotonic_ns())
        resolve(rid, fields)

    backend._resolve = resolve_
    print("pass inline   in: sent->launch (put->taken)   out: end->done (report->resolve)   "
          "done-sent-gpu   late (device)")
    rows: dict[bool, list] = {True: [], False: []}
    for p in range(passes):
        for inline in (False, True):  # alternating: the machine drifts between passes
            backend.inline = inline  # on the CPU the backend would never inline by itself
            for v in STAMPS.values():
                v.clear()
            run = out / f"pass{p}-{int(inline)}"
            await replay(backend, clock, closed_trace(name, 400, shape), run, concurrency=1)
            ok = ok_rows(run)
            n = min(len(v) for v in STAMPS.values())
            s = {k: np.array(v[-n:], dtype=float) for k, v in STAMPS.items()}
            r = {"in": med((ok.service_start_ns - ok.sent_ns) / 1e3),
                 "put_taken": med((s["taken"] - s["put"]) / 1e3),
                 "out": med((ok.done_ns - ok.service_end_ns) / 1e3),
                 "report_resolve": med((s["resolve"] - s["report"]) / 1e3),
                 "dsg": med((ok.done_ns - ok.sent_ns - ok.gpu_ns) / 1e3),
                 "late": med((ok.service_end_ns - ok.service_start_ns - ok.gpu_ns) / 1e3)}
            rows[inline].append(r)
            print(f"{p:>4} {'on' if inline else 'off':>6} {r['in']:>8.1f} us ({r['put_taken']:.1f})"
                  f" {r['out']:>22.1f} us ({r['report_resolve']:.1f}) {r['dsg']:>20.1f} us "
                  f"{r['late']:>10.1f} us")
    await backend.stop()
    for inline, rs in rows.items():
        m = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        print(f"median, inline {'on' if inline else 'off'}: "
              + ", ".join(f"{k} {v:.1f} us" for k, v in m.items()))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu-ms", type=float, default=0.5)
    ap.add_argument("--passes", type=int, default=3)
    a = ap.parse_args()
    from traceforge.replay.loop import new_event_loop

    with tempfile.TemporaryDirectory() as tmp:
        loop = new_event_loop()  # the loop `traceforge replay` runs on (timerfd waits)
        try:
            loop.run_until_complete(main(a.gpu_ms, a.passes, Path(tmp)))
        finally:
            loop.close()
