"""The executor's pipelining of launched (graph-captured) requests, against a fake device.

``FakeDevice`` stands in for a CUDA stream: launched requests run one after another on a device
thread, each for ``GPU_S``. The closed loop re-submits from a timer thread a few ms after each
result (the event loop's hop), so the next request arrives while the one in flight still runs:
the executor must launch it behind the one in flight instead of blocking on that one first
(which left the GPU idle between requests). Assertions are on the order of events, not on times.
"""

from __future__ import annotations

import asyncio
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
    """``estimate_s``: the GPU time each request reports, from which the executor estimates when
    the request in flight ends (and waits for the next one until shortly before)."""

    def __init__(self, estimate_s: float = GPU_S) -> None:
        self.estimate_ns = int(estimate_s * 1e9)
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

    def finish(self, handle, anchor=None) -> RunStats:
        handle.start_ev.wait()
        self.note("finish", handle.end_ev)
        end = time.monotonic_ns()
        return RunStats(end - self.estimate_ns, None, end, self.estimate_ns, 0, 8, 1)


def _closed_loop(concurrency: int, total: int, *, hop_s: float = 0.005,
                 estimate_s: float = GPU_S) -> tuple[FakeDevice, dict]:
    """``estimate_s`` longer than GPU_S: the last request (nobody is sent behind it) is completed
    by ``stop()`` once it was launched, not after the executor waited out its estimate."""
    dev = FakeDevice(estimate_s)
    results: dict[int, dict] = {}
    all_done = threading.Event()
    all_but_last = threading.Event()
    next_id = [concurrency]
    lock = threading.Lock()

    def submit(rid: int) -> None:
        executor.put(Job(rid, "m", 1, 8, 0))

    def on_result(rid: int, fields: dict) -> None:
        with lock:
            results[rid] = fields
            if len(results) == total:
                all_done.set()
            if len(results) == total - 1:
                all_but_last.set()
            if next_id[0] < total:
                threading.Timer(hop_s, submit, args=(next_id[0],)).start()
                next_id[0] += 1

    executor = Executor({"m": dev}, t0_ns=0, on_result=on_result, worker="test")
    executor.start_thread()
    for rid in range(concurrency):
        submit(rid)
    if estimate_s > GPU_S:
        assert all_but_last.wait(60), f"only {len(results)} of {total} results"
        deadline = time.monotonic() + 60
        while ("launch", total - 1) not in dev.log and time.monotonic() < deadline:
            time.sleep(0.001)
        assert executor.stop() == []
    assert all_done.wait(60), f"only {len(results)} of {total} results"
    assert executor.stop() == []
    executor.thread.join(5)
    return dev, results


def test_next_request_is_launched_behind_the_one_in_flight():
    # The executor waits for the next request until shortly before the one in flight is
    # expected to end, from the GPU time reported: 0.1 s left the timer thread's 5 ms hop too
    # little room on a loaded machine (a hop late by ~95 ms had the executor block on k-1
    # first, rightly). A 30 s estimate makes the hop always arrive within the wait.
    dev, results = _closed_loop(concurrency=2, total=6, estimate_s=30.0)
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



# -- inline requests: launched and completed on the event loop's thread ------------------------
class TimedDevice:
    """A launchable fake whose "GPU" is the clock: a launch ends ``gpu_s`` after the previous
    one ended or after its own launch (one stream: FIFO). ``poll`` never blocks."""

    device = _Device("cpu")

    def __init__(self, gpu_s: float = 0.002, *, fail_launch=False, fail_poll=False) -> None:
        self.gpu_ns = int(gpu_s * 1e9)
        self.fail_launch, self.fail_poll = fail_launch, fail_poll
        self.launches: list[tuple[int, int]] = []  # (request id, thread id)
        self.finishes: list[tuple[int, int]] = []
        self._busy_until = 0

    def can_launch(self, batch_size, seq_len, max_new_tokens) -> bool:
        return max_new_tokens == 0  # a decode waits for its first token: never launched

    def launch(self, batch_size, seq_len, max_new_tokens, *, label=None):
        if self.fail_launch:
            raise RuntimeError("launch failed")
        rid = int(label.split()[-1])
        self.launches.append((rid, threading.get_ident()))
        now = time.monotonic_ns()
        end = max(now, self._busy_until) + self.gpu_ns
        self._busy_until = end
        return Launched(None, rid, end, now, None)

    def poll(self, handle) -> bool:
        if self.fail_poll:
            raise RuntimeError("event query failed")
        return time.monotonic_ns() >= handle.end_ev

    def finish(self, handle, anchor=None) -> RunStats:
        while not self.poll(handle):
            time.sleep(0.0002)
        self.finishes.append((handle.start_ev, threading.get_ident()))
        return RunStats(handle.end_ev - self.gpu_ns, None, time.monotonic_ns(), self.gpu_ns, 0,
                        8, 1)

    def run(self, batch_size, seq_len, max_new_tokens, *, label=None) -> RunStats:
        rid = int(label.split()[-1])
        self.launches.append((rid, threading.get_ident()))
        start = time.monotonic_ns()
        time.sleep(self.gpu_ns / 1e9)
        self.finishes.append((rid, threading.get_ident()))
        return RunStats(start, None, time.monotonic_ns(), self.gpu_ns, 0, 8, 1)


async def _inline_executor(dev) -> tuple[Executor, dict, asyncio.AbstractEventLoop]:
    results: dict[int, asyncio.Future] = {}
    loop = asyncio.get_running_loop()
    executor = Executor({"m": dev}, t0_ns=0, worker="test", on_result=lambda rid, f: (
        loop.call_soon_threadsafe(results[rid].set_result, (f, threading.get_ident()))))
    executor.start_thread()
    deadline = time.monotonic() + 60  # until its thread waits for work (a bound, not a time)
    while not executor._idle and time.monotonic() < deadline:
        await asyncio.sleep(0.001)
    assert executor._idle, "the executor thread never waited for work"
    return executor, results, loop


def _with_inline_executor(dev, body) -> None:
    """Run ``await body(executor, results, loop)`` against an idle executor on ``dev``, then
    stop it (``stop()`` must leave nothing unreported)."""
    async def main():
        executor, results, loop = await _inline_executor(dev)
        await body(executor, results, loop)
        assert executor.stop() == []
        executor.thread.join(5)

    asyncio.run(main())


def _submit(executor, results, loop, rid, new=0) -> bool:
    results[rid] = loop.create_future()
    job = Job(rid, "m", 1, 8, new)

    def resolve(r, fields):
        results[r].set_result((fields, threading.get_ident()))

    if executor.try_inline(job, loop, resolve):
        return True
    executor.put(job)
    return False


def test_idle_executor_serves_inline_without_its_thread():
    dev = TimedDevice()

    async def body(executor, results, loop):
        me = threading.get_ident()
        for rid in range(5):  # closed loop, concurrency 1: every request inline
            assert _submit(executor, results, loop, rid)
            fields, tid = await asyncio.wait_for(results[rid], 30)
            assert fields["status"] == "ok" and tid == me
            assert fields["service_start_ns"] <= fields["service_end_ns"]
            # the row carries the device's times: at least its GPU time from start to end
            assert fields["gpu_ns"] == dev.gpu_ns
            assert fields["service_end_ns"] - fields["service_start_ns"] >= dev.gpu_ns
        assert executor.inline_count == 5
        assert [r for r, _ in dev.launches] == list(range(5))
        assert {t for _, t in dev.launches} == {me} and {t for _, t in dev.finishes} == {me}

    _with_inline_executor(dev, body)


class FifoDevice(TimedDevice):
    """Request k is not seen ended before request k-1 was: the service ends are when a thread
    saw a request end, and on a loaded machine the loop thread saw the inline request 0 end
    later than the executor thread saw request 1 (20 ms behind it) end."""

    def __init__(self, *a, **k) -> None:
        super().__init__(*a, **k)
        self.reported: set[int] = set()  # requests whose end time (service_end_ns) was taken

    def poll(self, handle) -> bool:
        rid = handle.start_ev
        return (rid == 0 or rid - 1 in self.reported) and super().poll(handle)

    def finish(self, handle, anchor=None) -> RunStats:
        stats = super().finish(handle, anchor)
        self.reported.add(handle.start_ev)
        return stats


def test_request_during_inline_one_is_queued_and_runs_behind_it():
    dev = FifoDevice(gpu_s=0.02)

    async def body(executor, results, loop):
        me = threading.get_ident()
        assert _submit(executor, results, loop, 0)
        assert not _submit(executor, results, loop, 1)  # one inline request at a time
        assert not _submit(executor, results, loop, 2)  # the executor has one queued/in flight
        out = [await asyncio.wait_for(results[r], 30) for r in range(3)]
        assert all(f["status"] == "ok" for f, _ in out)
        assert [r for r, _ in dev.launches] == [0, 1, 2]  # the device's (stream's) order
        ends = [f["service_end_ns"] for f, _ in out]
        assert ends == sorted(ends)
        # 0 was launched and resolved on the loop's thread, 1 and 2 by the executor's thread
        threads = dict(dev.launches)
        assert threads[0] == me and threads[1] != me and threads[2] != me
        assert out[0][1] == me and out[1][1] != me and out[2][1] != me
        assert executor.inline_count == 1

    _with_inline_executor(dev, body)


def test_busy_executor_and_decode_requests_are_not_inlined():
    release = threading.Event()

    class HeldDevice(TimedDevice):
        """Request 0 runs until request 1 was submitted: its 20 ms could end (and the executor
        go idle again) before a loaded loop thread looked."""

        def poll(self, handle) -> bool:
            return (handle.start_ev != 0 or release.is_set()) and super().poll(handle)

    dev = HeldDevice(gpu_s=0.02)

    async def body(executor, results, loop):
        me = threading.get_ident()
        assert not _submit(executor, results, loop, 0, new=4)  # decode: the executor runs it
        deadline = time.monotonic() + 60  # its thread took it and runs it
        while executor._idle and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        assert not executor._idle, "the executor thread never took the decode request"
        assert not _submit(executor, results, loop, 1)  # executor busy: queued
        release.set()
        for r in (0, 1):
            fields, tid = await asyncio.wait_for(results[r], 30)
            assert fields["status"] == "ok" and tid != me
        assert executor.inline_count == 0
        assert [r for r, _ in dev.launches] == [0, 1]
        assert me not in {t for _, t in dev.launches}

    _with_inline_executor(dev, body)


def test_inline_failures_become_error_rows():
    for dev, text in ((TimedDevice(fail_launch=True), "launch failed"),
                      (TimedDevice(fail_poll=True), "event query failed")):
        async def body(executor, results, loop, dev=dev, text=text):
            assert _submit(executor, results, loop, 0)
            fields, _ = await asyncio.wait_for(results[0], 30)
            assert fields["status"] == "error" and text in fields["error"]
            assert not executor.inline_in_flight
            dev.fail_launch = dev.fail_poll = False  # the executor serves the next one
            assert _submit(executor, results, loop, 1)
            fields, _ = await asyncio.wait_for(results[1], 30)
            assert fields["status"] == "ok"

        _with_inline_executor(dev, body)


def test_gpu_time_estimate_is_per_bucket_not_per_raw_shape():
    """The lookahead and the inline poll's start use the shortest GPU time seen for the bucket a
    request runs at: prompt lengths that pad to the same bucket share one estimate (a real
    trace's lengths are mostly distinct); another bucket, or a model without buckets, does not."""
    from traceforge.backends.resident.executor import _shape_key
    from traceforge.zoo.buckets import Bucket

    def handle(bucket):
        return Launched(bucket, None, None, 0, None)

    b32 = Bucket(1, 32)
    assert _shape_key(Job(1, "m", 1, 20, 0), handle(b32)) == _shape_key(
        Job(2, "m", 1, 30, 0), handle(b32))
    assert _shape_key(Job(1, "m", 1, 20, 0), handle(b32)) != _shape_key(
        Job(2, "m", 1, 40, 0), handle(Bucket(1, 64)))
    assert _shape_key(Job(1, "m", 1, 20, 0), handle(None)) != _shape_key(
        Job(2, "m", 1, 30, 0), handle(None))
    assert _shape_key(Job(1, "m", 1, 20, 0), handle(b32)) != _shape_key(
        Job(1, "other", 1, 20, 0), handle(b32))


# -- decodes: begun behind the request in flight, the next request enqueued behind their steps ---
class _Decode:
    """What LoadedModel.begin_decode returns, for DecodeDevice (clock-based like TimedDevice)."""

    def __init__(self, rid, new, launched, prefill_end) -> None:
        self.rid, self.new, self.launched_ns, self.prefill_end = rid, new, launched, prefill_end
        self.bucket = None
        self.first_token_ns = None
        self.end_ns = None
        self.steps_pending = True


class DecodeDevice(TimedDevice):
    """TimedDevice plus graph-captured decodes: a prefill of ``prefill_s`` and ``new - 1`` steps
    of ``step_s`` on the same one-stream clock. ``log``: (event, request id) in host order."""

    def __init__(self, gpu_s=0.002, prefill_s=0.004, step_s=0.003, fail_resume=False) -> None:
        super().__init__(gpu_s)
        self.prefill_ns, self.step_ns = int(prefill_s * 1e9), int(step_s * 1e9)
        self.fail_resume = fail_resume
        self.log: list[tuple[str, int]] = []

    def launch(self, batch_size, seq_len, max_new_tokens, *, label=None):
        if max_new_tokens:
            return None
        handle = super().launch(batch_size, seq_len, max_new_tokens, label=label)
        self.log.append(("launch", handle.start_ev))
        return handle

    def can_pipeline_decode(self, batch_size, seq_len, max_new_tokens) -> bool:
        return max_new_tokens > 0

    def begin_decode(self, batch_size, seq_len, max_new_tokens, *, label=None):
        rid = int(label.split()[-1])
        self.log.append(("begin", rid))
        now = time.monotonic_ns()
        self._busy_until = max(now, self._busy_until) + self.prefill_ns
        return _Decode(rid, max_new_tokens, now, self._busy_until)

    def resume_decode(self, handle) -> None:
        if self.fail_resume:
            raise RuntimeError("resume failed")
        while time.monotonic_ns() < handle.prefill_end:
            time.sleep(0.0002)
        self.log.append(("resume", handle.rid))
        handle.first_token_ns = time.monotonic_ns()
        handle.end_ns = (max(handle.first_token_ns, self._busy_until)
                         + self.step_ns * (handle.new - 1))
        self._busy_until = handle.end_ns
        handle.steps_pending = False

    def finish(self, handle, anchor=None) -> RunStats:
        if not isinstance(handle, _Decode):
            stats = super().finish(handle, anchor)
            self.log.append(("finish", handle.start_ev))
            return stats
        while time.monotonic_ns() < handle.end_ns:
            time.sleep(0.0002)
        self.log.append(("finish", handle.rid))
        gpu = handle.end_ns - handle.prefill_end + self.prefill_ns
        return RunStats(handle.end_ns - gpu, handle.first_token_ns, time.monotonic_ns(), gpu,
                        handle.new, 8, 1)


def _run_jobs(dev, jobs, *, gap_s=0.0) -> dict[int, dict]:
    results: dict[int, dict] = {}
    done = threading.Event()

    def on_result(rid, fields):
        results[rid] = fields
        if len(results) == len(jobs):
            done.set()

    executor = Executor({"m": dev}, t0_ns=0, on_result=on_result, worker="test")
    # The jobs before the first callable are queued before the thread starts, so the order the
    # executor finds them in does not depend on how fast this thread puts them.
    lead = next((k for k, job in enumerate(jobs) if callable(job)), len(jobs))
    for job in jobs[:lead]:
        executor.put(job)
    executor.start_thread()
    for job in jobs[lead:]:
        if callable(job):
            job(executor)
        else:
            executor.put(job)
    assert done.wait(60), f"only {len(results)} of {len(jobs)} results"
    assert executor.stop() == []
    executor.thread.join(5)
    return results


def test_decode_is_begun_behind_the_request_in_flight_and_the_next_queued_behind_it():
    """Queued decode 0, forward 1, decode 2: forward 1 is enqueued behind decode 0's steps
    before the executor waits for 0; decode 2's prefill is enqueued behind forward 1 before
    the executor waits for 1, and 2 is resumed (its first token awaited) only after 1 was
    completed, so 1's end is read when it happens, not after 2's prefill."""
    dev = DecodeDevice()
    results = _run_jobs(dev, [Job(0, "m", 1, 8, 5), Job(1, "m", 1, 8, 0), Job(2, "m", 1, 8, 4)])
    assert dev.log == [("begin", 0), ("resume", 0), ("launch", 1), ("finish", 0),
                       ("begin", 2), ("finish", 1), ("resume", 2), ("finish", 2)], dev.log
    assert all(r["status"] == "ok" for r in results.values())
    for rid, new in ((0, 5), (2, 4)):
        r = results[rid]
        assert r["service_start_ns"] < r["first_token_ns"] < r["service_end_ns"]
        assert r["tokens_out"] == new
    assert results[1]["first_token_ns"] is None and results[1]["tokens_out"] == 0
    ends = [results[k]["service_end_ns"] for k in range(3)]
    assert ends == sorted(ends)


def test_request_arriving_during_a_decode_is_enqueued_behind_its_steps():
    """Once a decode's step time is known for its bucket, the executor waits for new work until
    shortly before the decode is expected to end: a forward that arrives meanwhile is launched
    before the executor waits for the decode (the GPU does not idle while it reports)."""
    # Real time, with room for a loaded machine: forward 1 must come after the executor began
    # waiting for decode 0 (the executor thread goes there at once; 20 ms of room were once
    # all there was), forward 3 before the executor's wait for new work ends ~350 ms after
    # decode 2's first token (the test thread puts it 100 ms in; 50 ms of 70 were spare).
    dev = DecodeDevice(step_s=0.05)  # decode of 8 tokens: 350 ms of steps

    def during(rid):  # put forward `rid` 100 ms into the steps of decode `rid - 1`
        def put(executor):
            deadline = time.monotonic() + 60
            while ("resume", rid - 1) not in dev.log and time.monotonic() < deadline:
                time.sleep(0.0005)
            time.sleep(0.1)
            executor.put(Job(rid, "m", 1, 8, 0))
        return put

    results = _run_jobs(dev, [Job(0, "m", 1, 8, 8), during(1), Job(2, "m", 1, 8, 8), during(3)])
    assert all(r["status"] == "ok" for r in results.values())
    log = dev.log
    # the first decode of the bucket has no step estimate: the executor waits for it at once
    assert log.index(("finish", 0)) < log.index(("launch", 1)), log
    # the second has one: forward 3 is launched while decode 2 is still in flight
    assert log.index(("resume", 2)) < log.index(("launch", 3)) < log.index(("finish", 2)), log


def test_failed_decode_resume_is_an_error_row_and_the_executor_goes_on():
    dev = DecodeDevice(fail_resume=True)
    results = _run_jobs(dev, [Job(0, "m", 1, 8, 5), Job(1, "m", 1, 8, 0)])
    assert results[0]["status"] == "error" and "resume failed" in results[0]["error"]
    assert results[1]["status"] == "ok"
    assert ("finish", 0) not in dev.log


# -- where a launched request's GPU interval lands on the host clock (LoadedModel.finish) -------
class _Ev:
    """A CUDA timing event stand-in: ``t`` ms on the device clock."""

    def __init__(self, t: float) -> None:
        self.t = t

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, other) -> float:
        return other.t - self.t


def _finish(monkeypatch, handle, anchor, seen_ns):
    import collections
    from types import SimpleNamespace

    import traceforge.zoo as zoo

    model = SimpleNamespace(_retired=collections.deque(), _events=[], _prefill_events=[])
    monkeypatch.setattr(zoo.time, "monotonic_ns", lambda: seen_ns)
    return zoo.LoadedModel.finish(model, handle, anchor), model


def test_finish_places_a_request_issued_behind_another_by_device_time(monkeypatch):
    """Issued behind a request that ended at host 1.000 ms (its end event at device 10 ms), with
    its start event 5 µs and its end 405 µs after that end on the device, and seen ending 300 µs
    late by the host: it ran 1.005-1.405 ms, not 1.305-1.705 ms (the host's late view)."""
    from traceforge.zoo import IDLE_STREAM, Launched
    from traceforge.zoo.buckets import Bucket

    prev_end = _Ev(10.0)
    h = Launched(Bucket(1, 32), _Ev(10.005), _Ev(10.405), 900_000, None, 950_000)
    seen = 1_000_000 + 405_000 + 300_000
    st, _ = _finish(monkeypatch, h, (1_000_000, prev_end), seen)
    assert (st.service_start_ns, st.service_end_ns, st.gpu_ns) == (1_005_000, 1_405_000, 400_000)
    # without an anchor: ended when seen (the behaviour before 2026-12-01)
    st, _ = _finish(monkeypatch, h, None, seen)
    assert (st.service_start_ns, st.service_end_ns) == (seen - 400_000, seen)
    # on an idle stream: started when its start event was issued
    st, _ = _finish(monkeypatch, h, IDLE_STREAM, seen)
    assert (st.service_start_ns, st.service_end_ns) == (950_000, 1_350_000)
    # never before it was issued, never after the host saw it end
    st, _ = _finish(monkeypatch, h, (800_000, prev_end), seen)
    assert st.service_start_ns == 950_000
    st, _ = _finish(monkeypatch, h, (2_000_000, prev_end), seen)
    assert (st.service_start_ns, st.service_end_ns) == (seen - 400_000, seen)


def test_finish_keeps_an_end_event_out_of_the_pool_until_the_next_finish_read_it(monkeypatch):
    from traceforge.zoo import DecodeLaunched
    from traceforge.zoo.buckets import Bucket

    h = DecodeLaunched(Bucket(2, 16, 8), _Ev(1.0), _Ev(1.2), _Ev(3.0), 100, None, 4, 2, "d", issued_ns=200,
                       first_token_ns=5_000_000, steps_pending=False)
    st, model = _finish(monkeypatch, h, (0, _Ev(0.999)), 10_000_000)
    assert model._events == [] and list(model._retired) == [(h.start_ev, h.end_ev)]
    # the first token, read by the host after the prefill, is clamped into the interval
    assert st.service_start_ns == 1_000 and st.service_end_ns == 2_001_000
    assert st.first_token_ns == st.service_end_ns and st.tokens_out == 8
    import traceforge.zoo as zoo

    later = DecodeLaunched(Bucket(2, 16, 8), _Ev(4.0), _Ev(4.2), _Ev(6.0), 100, None, 4, 2,
                           "d", first_token_ns=0, steps_pending=False)
    zoo.LoadedModel.finish(model, later, None)
    assert model._events == []  # the next finish may still read its end event
    zoo.LoadedModel.finish(model, later, None)
    assert model._events == [(h.start_ev, h.end_ev)]  # two finishes later: reusable


class AnchorDevice(TimedDevice):
    def __init__(self, *a, fail_finish=(), **k) -> None:
        super().__init__(*a, **k)
        self.anchors: dict[int, object] = {}
        self.end_evs: dict[int, object] = {}
        self.fail_finish = set(fail_finish)

    def finish(self, handle, anchor=None) -> RunStats:
        self.anchors[handle.start_ev] = anchor  # TimedDevice: start_ev is the request id
        self.end_evs[handle.start_ev] = handle.end_ev
        if handle.start_ev in self.fail_finish:
            raise RuntimeError("finish failed")
        return super().finish(handle, anchor)


def test_executor_anchors_each_request_to_the_one_it_was_issued_behind():
    """Three queued requests: the first is issued on an idle stream (IDLE_STREAM), each later
    one behind the one before (that one's reported end and end event); behind a request whose
    completion failed there is no anchor (its end is unknown). A timeslice executor never
    claims an idle stream."""
    from traceforge.zoo import IDLE_STREAM

    dev = AnchorDevice(gpu_s=0.01, fail_finish={2})
    results = _run_jobs(dev, [Job(k, "m", 1, 8, 0) for k in range(4)])
    assert dev.anchors[0] == IDLE_STREAM
    for k in (1, 2):
        end_ns, end_ev = dev.anchors[k]
        assert end_ev == dev.end_evs[k - 1]
        assert end_ns == results[k - 1]["service_end_ns"]
    assert results[2]["status"] == "error" and dev.anchors[3] is None

    dev = AnchorDevice(gpu_s=0.01)
    results: dict[int, dict] = {}
    done = threading.Event()

    def on_result(rid, fields):
        results[rid] = fields
        done.set()

    executor = Executor({"m": dev}, t0_ns=0, on_result=on_result, worker="ts",
                        idle_start_exact=False)
    executor.start_thread()
    executor.put(Job(0, "m", 1, 8, 0))
    assert done.wait(60)
    executor.stop()
    executor.thread.join(5)
    assert dev.anchors[0] is None


def test_request_issued_behind_an_inline_one_is_anchored_to_its_start():
    """The loop thread's inline request was issued on an idle stream (finished with
    IDLE_STREAM); one the executor thread issues behind it is placed from that request's start
    event and issue time, not from when the executor thread happened to see it end."""
    from traceforge.zoo import IDLE_STREAM

    class HeldDevice(AnchorDevice):
        """The inline request 0 does not end before request 1 is launched: on a loaded machine
        the executor thread woke more than its 20 ms GPU time after the put (CI), found the
        inline request already ended and (rightly) issued request 1 on an idle stream."""

        def poll(self, handle) -> bool:
            if handle.start_ev == 0 and not any(rid == 1 for rid, _ in self.launches):
                return False
            return super().poll(handle)

    dev = HeldDevice(gpu_s=0.02)

    async def body(executor, results, loop):
        assert _submit(executor, results, loop, 0)
        assert not _submit(executor, results, loop, 1)
        out = [await asyncio.wait_for(results[r], 30) for r in range(2)]
        assert all(f["status"] == "ok" for f, _ in out)
        assert dev.anchors[0] == IDLE_STREAM
        host_ns, event = dev.anchors[1]
        assert event == 0  # TimedDevice: the inline request's start event is its id
        assert 0 < host_ns <= out[0][0]["service_start_ns"] + 1  # its issue (launch) time

    _with_inline_executor(dev, body)
