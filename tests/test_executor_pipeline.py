"""The executor's pipelining of launched (graph-captured) requests, against a fake device.

``FakeDevice`` stands in for a CUDA stream: launched requests run one after another on a device
thread, each for ``GPU_S``. The closed loop re-submits from a timer thread a few ms after each
result (the event loop's hop), so the next request arrives while the one in flight still runs:
the executor must launch it behind the one in flight instead of blocking on that one first
(which left the GPU idle between requests). Assertions are on the order of events, not on times.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import NamedTuple

from traceforge.backends.resident.executor import Executor, Job
from traceforge.zoo import Launched, RunStats


class _Device(NamedTuple):  # hashable, like torch.device
    type: str


GPU_S = 0.1  # each fake request's device time; the re-submit hop is 5 ms, far below it


class FakeDevice:
    def __init__(self) -> None:
        self.log: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._q: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, daemon=True).start()

    def note(self, what: str, rid: int) -> None:
        with self._lock:
            self.log.append((what, rid))

    def _run(self) -> None:
        while True:
            _rid, done = self._q.get()
            time.sleep(GPU_S)
            done.set()

    # the LoadedModel surface the executor uses
    device = _Device("cpu")

    def launch(self, batch_size, seq_len, max_new_tokens, *, label=None):
        rid = int(label.split()[-1])
        self.note("launch", rid)
        done = threading.Event()
        self._q.put((rid, done))
        return Launched(None, done, rid, time.monotonic_ns(), None)

    def finish(self, handle) -> RunStats:
        handle.start_ev.wait()
        self.note("finish", handle.end_ev)
        end = time.monotonic_ns()
        return RunStats(end - int(GPU_S * 1e9), None, end, int(GPU_S * 1e9), 0, 8, 1)


def _closed_loop(concurrency: int, total: int, *,
                 hop_s: float = 0.005) -> tuple[FakeDevice, dict]:
    dev = FakeDevice()
    results: dict[int, dict] = {}
    all_done = threading.Event()
    next_id = [concurrency]
    lock = threading.Lock()

    def submit(rid: int) -> None:
        executor.put(Job(rid, "m", 1, 8, 0))

    def on_result(rid: int, fields: dict) -> None:
        with lock:
            results[rid] = fields
            if len(results) == total:
                all_done.set()
            if next_id[0] < total:
                threading.Timer(hop_s, submit, args=(next_id[0],)).start()
                next_id[0] += 1

    executor = Executor({"m": dev}, t0_ns=0, on_result=on_result, worker="test")
    executor.start_thread()
    for rid in range(concurrency):
        submit(rid)
    assert all_done.wait(30), f"only {len(results)} of {total} results"
    assert executor.stop() == []
    executor.thread.join(5)
    return dev, results


def test_next_request_is_launched_behind_the_one_in_flight():
    dev, results = _closed_loop(concurrency=2, total=6)
    assert all(r["status"] == "ok" for r in results.values())
    order = dev.log
    # From the third request on (the first result gives the GPU-time estimate), request k
    # is launched while k-1 is still in flight: before the executor waited on k-1.
    for k in range(2, 6):
        assert order.index(("launch", k)) < order.index(("finish", k - 1)), order


def test_concurrency_one_completes_every_request_in_order():
    dev, results = _closed_loop(concurrency=1, total=4)
    assert sorted(results) == [0, 1, 2, 3]
    assert [e for e in dev.log if e[0] == "finish"] == [("finish", k) for k in range(4)]
    # one in flight at a time: every launch after the previous finish
    for k in range(1, 4):
        assert dev.log.index(("launch", k)) > dev.log.index(("finish", k - 1))

