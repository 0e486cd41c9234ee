"""The executor: one thread that owns a FIFO of requests and runs them on resident models.

The same class serves every mode: ``exclusive`` runs one executor for all models in the
dispatcher's process; ``streams`` runs one per model there, each on its own CUDA stream;
``timeslice`` and ``mps`` run one per model inside a worker process (worker.py). So the CPU tests
exercise the code that runs on the GPU.

Dynamic batching: the executor takes the oldest request, then gathers later requests *for the
same model* until ``max_batch`` requests or until ``max_wait_ms`` after the oldest one reached
the executor, and runs them as one batch (batch sizes summed, the longest seq_len and
max_new_tokens: shorter members are padded, as in static batching). Every member gets the
batch's times; ``tokens_out`` is its own ``batch_size × max_new_tokens``. The model then pads
the batch's shape up to its bucket (zoo/buckets.py); ``bucket_seq_len`` / ``bucket_batch_size``
record the shape that ran.

Inline requests (:meth:`Executor.try_inline`): when the executor is idle — nothing queued,
nothing in flight, its thread waiting — a graph-captured request is launched by the event loop's
own thread, which then polls the request's end event from loop callbacks and resolves it there.
Neither thread hand-off (condition variable + GIL in; ``call_soon_threadsafe`` + the loop's
wake-up out; ~90 µs each on the lent H200 host, docs/results/serving-h200.md) is paid. At most one
inline request is in flight per executor; a request that comes meanwhile is queued for the
executor thread, which launches it behind on the same stream, so the GPU order is still FIFO.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from traceforge.zoo import IDLE_STREAM


@dataclass(slots=True)
class Job:
    request_id: int
    model: str
    batch_size: int
    seq_len: int
    max_new_tokens: int
    enqueued_ns: int = 0  # monotonic, set by put()


# Pipelining: stop waiting for the next job this long before the request in flight is expected
# to end, and block on it (a timed condition wait can overshoot by the kernel's timer slack,
# 50 us by default, plus the wake-up).
LOOKAHEAD_MARGIN_NS = 200_000
# Inline requests: the event loop polls the end event every loop iteration from this long before
# the request is expected to end (a loop timer wakes ~60 µs late at p50 on the lent H200 host)
# and sleeps until then: a loop that spins holds the GIL the executor thread needs, and the
# other models' work there delayed sends (H200, 2026-11-30, spinning from the launch: send-lag
# p99 603 / 712 µs vs 295 / 307 µs with --no-inline). The stock asyncio loop rounds its epoll
# timeout up to whole ms: there the margin is the spin pacer's (ReplayOptions.spin_margin_ms).
INLINE_SPIN_NS = 250_000
INLINE_SPIN_COARSE_NS = 1_500_000

# Graph-captured decodes pipelined (Executor._loop: begun, the request in flight completed, then
# resumed). False runs them synchronously, as before 2026-12-01: only for measuring the two in
# one process (benchmarks/gpu_handoff.py, variant ``syncdec``).
PIPELINE_DECODES = True

# on_result(request_id, outcome_fields) — called from the executor thread.
ResultCallback = Callable[[int, dict[str, Any]], None]


def _shape_key(job: Job, handle) -> tuple:
    """What a launched request's GPU time depends on: the bucket it runs at (the captured graph
    replays that shape whatever the request's own seq_len; a real trace's many prompt lengths
    share a few buckets), else (a model without buckets) the request's shape."""
    bucket = getattr(handle, "bucket", None)
    if bucket is not None:
        return (job.model, bucket.batch, bucket.seq, bucket.new_cap)
    return (job.model, job.batch_size, job.seq_len, job.max_new_tokens)


class Executor:
    def __init__(self, models: dict, *, t0_ns: int, on_result: ResultCallback, worker: str,
                 batch_id_base: int = 0, max_batch: int = 1, max_wait_ms: float = 0.0,
                 stream=None, idle_start_exact: bool = True) -> None:
        self.models = models  # model name (as in the trace) -> LoadedModel
        self.t0_ns = t0_ns
        self.on_result = on_result
        self.worker = worker
        self.max_batch = max(1, int(max_batch))
        self.max_wait_ns = int(max_wait_ms * 1e6)
        self.stream = stream  # a torch.cuda.Stream (streams mode) or None
        # A request issued on an idle stream starts when issued (LoadedModel.finish,
        # IDLE_STREAM); False where another context can hold the stream back (timeslice).
        self.idle_start_exact = idle_start_exact
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._next_batch = batch_id_base
        # _shape_key -> shortest GPU time seen (ns), for the pipelining lookahead and inline polls
        self._gpu_ns: dict[tuple, int] = {}
        # _shape_key -> shortest time per decode step seen (ns), from first token to end
        self._step_ns: dict[tuple, int] = {}
        self._last_end_ns = 0  # when the last completed launched request ended (monotonic)
        self.thread: threading.Thread | None = None
        # try_inline: the executor thread waits for work with nothing in flight (``_idle``);
        # the loop's inline request in flight, if any (its model, handle and future)
        self._idle = False
        self._inline = None
        self.inline_count = 0  # requests served inline (run.json)

    # -- producer side -----------------------------------------------------------------------
    def put(self, job: Job) -> None:
        job.enqueued_ns = time.monotonic_ns()
        with self._cond:
            self._queue.append(job)
            self._cond.notify()

    def start_thread(self) -> None:
        self.thread = threading.Thread(target=self.run_forever, name=f"executor-{self.worker}",
                                       daemon=True)
        self.thread.start()

    def stop(self) -> list[Job]:
        """Stop after the batch in progress; returns the jobs that never ran."""
        with self._cond:
            self._stopping = True
            left = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        return left

    # -- executor thread ---------------------------------------------------------------------
    def run_forever(self) -> None:
        devices = {m.device for m in self.models.values()}
        if any(d.type == "cuda" for d in devices):
            import torch

            torch.cuda.set_device(next(iter(devices)))  # events and streams use this thread's
        if self.stream is not None:
            import torch

            with torch.cuda.stream(self.stream):
                self._loop()
        else:
            self._loop()

    def _loop(self) -> None:
        # Pipelining (one request ahead): a graph-captured forward is enqueued on the stream and
        # the next queued request is enqueued behind it before the host waits for the first, so
        # the GPU never idles while this thread reports a result or takes the next job.
        # A graph-captured decode is begun (inputs + prefill enqueued, behind the request in
        # flight), the request in flight is completed, then the decode is resumed: the host
        # waits for its first token and enqueues its steps, and the next request can be
        # enqueued behind the last step. Before this, decodes ran synchronously and the GPU
        # idled after each one while this thread reported it and launched the next (exclusive
        # mode on the lent H200, 2026-12-01, mean gap from a decode's end to the next waiting
        # request's start: 293-419 µs synchronous, 6-129 µs pipelined; benchmarks/gpu_handoff.py,
        # docs/results/simulator-fidelity-h200.md).
        # Eager runs and dynamic batches execute synchronously.
        #
        # With a request in flight and none queued, the thread waits for a new job until shortly
        # before the one in flight is expected to end (LOOKAHEAD_MARGIN_NS), and only then
        # blocks on it. In a closed loop at concurrency 2 the next request arrives while the
        # current one runs (its sender was woken by the previous result): waiting on the
        # in-flight one at once left the GPU idle from its end until this thread had reported
        # it and launched the next (H200, distilbert b8x128: harness 0.89 of the bare loop).
        #
        # Each launched request carries the anchor that places its GPU interval on the host
        # clock (LoadedModel.finish): the end of the request it was issued behind, the start
        # of the inline request it was issued behind, or IDLE_STREAM when nothing was in
        # flight on the stream.
        pending = None  # (batch, common, handle, anchor)
        while True:
            wait: bool | float = True
            if pending is not None:
                wait = self._lookahead_s(pending)
            batch = self._next_batch_jobs(wait=wait)
            if batch is None:
                if pending is not None:
                    self._complete(*pending)
                return
            if not batch:  # nothing queued: wait for the request in flight
                self._complete(*pending)
                pending = None
                continue
            # Nothing in flight here: the stream is idle, or holds the loop thread's inline
            # request (issued at a known host time on an idle stream: its start event anchors
            # what is issued behind it). Read once: the loop thread clears _inline.
            behind = None
            if pending is None and self.idle_start_exact:
                inline = self._inline
                handle = None if inline is None else inline[2]
                behind = (IDLE_STREAM if inline is None else None if handle is None else
                          (handle.issued_ns or handle.launched_ns, handle.start_ev))
            launched = self._launch(batch) if self.max_batch == 1 else None
            if pending is not None:
                behind = self._complete(*pending)
                pending = None
            if launched is None:
                self._execute(batch)
            elif launched is not False and self._resume(launched):
                pending = (*launched, behind)

    def _launch(self, batch: list[Job]):
        """Enqueue ``batch`` without waiting; (batch, common, handle), None when the model must
        run synchronously, False when the launch failed (error rows already sent)."""
        job = batch[0]
        model = self.models.get(job.model)
        launch = getattr(model, "launch", None)
        if launch is None:
            return None
        label = f"req {job.request_id}"
        try:
            handle = launch(job.batch_size, job.seq_len, job.max_new_tokens, label=label)
            pipelined = getattr(model, "can_pipeline_decode", None)
            if handle is None and PIPELINE_DECODES and pipelined is not None and pipelined(
                    job.batch_size, job.seq_len, job.max_new_tokens):
                handle = model.begin_decode(job.batch_size, job.seq_len, job.max_new_tokens,
                                            label=label)
        except Exception as exc:
            self._fail(batch, self._common(batch), exc)
            return False
        return None if handle is None else (batch, self._common(batch), handle)

    def _resume(self, launched) -> bool:
        """A begun decode (``steps_pending``): wait for its first token and enqueue its steps.
        False when that failed (error rows sent)."""
        batch, common, handle = launched
        if not getattr(handle, "steps_pending", False):
            return True
        try:
            self.models[batch[0].model].resume_decode(handle)
        except Exception as exc:
            self._fail(batch, common, exc)
            return False
        return True

    # -- inline requests (the event loop's thread) -------------------------------------------
    def try_inline(self, job: Job, loop, resolve: ResultCallback) -> bool:
        """Serve ``job`` from the calling thread (the event loop's) if this executor is idle —
        nothing queued, nothing in flight, its thread waiting — and the model launches without
        waiting (a graph-captured forward): launch it now, poll its end from ``loop``'s
        callbacks and call ``resolve(request_id, fields)`` there. False: nothing was done (the
        caller ``put``s the job). Only the caller's thread puts jobs, so while it launches the
        executor thread has nothing to launch: no lock is held around the launch."""
        # Unlocked first look (re-checked under the lock): a busy executor — every request at
        # overload — declines without taking the lock its thread and put() contend for.
        if self.max_batch != 1 or self._inline is not None or not self._idle:
            return False
        model = self.models.get(job.model)
        can_launch = getattr(model, "can_launch", None)
        if can_launch is None or not can_launch(job.batch_size, job.seq_len,
                                                job.max_new_tokens):
            return False
        with self._cond:
            if not self._idle or self._queue or self._stopping or self._inline is not None:
                return False
            common = self._common([job])
            self._inline = (job, common, None, model)
        label = f"req {job.request_id}"
        try:
            if self.stream is not None:
                import torch

                with torch.cuda.stream(self.stream):
                    handle = model.launch(job.batch_size, job.seq_len, job.max_new_tokens,
                                          label=label)
            else:
                handle = model.launch(job.batch_size, job.seq_len, job.max_new_tokens,
                                      label=label)
            if handle is None:
                raise RuntimeError("the model declined a launch it said it could take")
        except Exception as exc:
            self._inline = None
            self._fail([job], common, exc, on_result=resolve)
            return True
        self._inline = (job, common, handle, model)
        self.inline_count += 1
        # Poll from INLINE_SPIN_NS before the expected end (the shortest GPU time seen for the
        # bucket, _shape_key), every loop iteration from then on; from the launch when none was
        # seen yet (the first request of each bucket).
        gpu = self._gpu_ns.get(_shape_key(job, handle))
        margin = (INLINE_SPIN_NS if getattr(loop, "_traceforge_precise", False)
                  else INLINE_SPIN_COARSE_NS)
        delay = 0 if gpu is None else (
            max(handle.launched_ns, self._last_end_ns) + gpu - margin - time.monotonic_ns())
        if delay > 0:
            loop.call_later(delay / 1e9, self._poll_inline, loop, resolve)
        else:
            loop.call_soon(self._poll_inline, loop, resolve)
        return True

    def _poll_inline(self, loop, resolve: ResultCallback) -> None:
        job, common, handle, model = self._inline
        try:
            if not model.poll(handle):
                loop.call_soon(self._poll_inline, loop, resolve)  # one loop iteration later
                return
            # launched only when the executor was idle: nothing in flight on its stream
            stats = model.finish(handle, IDLE_STREAM if self.idle_start_exact else None)
            self._inline = None
            self._note_end(job, handle, stats)
            self._report([job], common, stats, on_result=resolve)
        except Exception as exc:  # the request becomes an error row, never a hang
            self._inline = None
            self._fail([job], common, exc, on_result=resolve)

    @property
    def inline_in_flight(self) -> bool:
        return self._inline is not None

    def _note_end(self, job: Job, handle, stats) -> None:
        self._last_end_ns = max(self._last_end_ns, stats.service_end_ns)
        key = _shape_key(job, handle)
        if stats.gpu_ns:
            self._gpu_ns[key] = min(self._gpu_ns.get(key, stats.gpu_ns), stats.gpu_ns)
        if stats.first_token_ns is not None and job.max_new_tokens > 1:
            step = (stats.service_end_ns - stats.first_token_ns) // (job.max_new_tokens - 1)
            self._step_ns[key] = min(self._step_ns.get(key, step), step)

    def _lookahead_s(self, pending) -> float:
        """Seconds to wait for a new job before blocking on the request in flight: until
        LOOKAHEAD_MARGIN_NS before its expected end (0 when nothing seen yet gives one).

        A launched forward started on the device at its launch or, when launched behind the
        previous request, at that one's end, whichever is later, and runs for the shortest GPU
        time seen for its bucket (_shape_key). A resumed decode ends its remaining steps after
        its first token, each the shortest step seen for its bucket (a bucket serves many
        decode lengths, so its whole-request GPU time does not predict one)."""
        batch, _common, handle = pending[:3]
        key = _shape_key(batch[0], handle)
        first = getattr(handle, "first_token_ns", None)
        if first is not None:
            step = self._step_ns.get(key)
            if step is None:
                return 0.0
            end = first + step * (batch[0].max_new_tokens - 1)
        else:
            gpu = self._gpu_ns.get(key)
            launched = getattr(handle, "launched_ns", None)
            if gpu is None or launched is None:
                return 0.0
            end = max(launched, self._last_end_ns) + gpu
        return max(0.0, (end - LOOKAHEAD_MARGIN_NS - time.monotonic_ns()) / 1e9)

    def _complete(self, batch: list[Job], common: dict[str, Any], handle, anchor=None):
        """Wait for a launched request and report it; the anchor of a request issued behind
        it — (its end, its end event) — or None when it failed."""
        model = self.models[batch[0].model]
        try:
            stats = model.finish(handle, anchor)
        except Exception as exc:
            self._fail(batch, common, exc)
            return None
        self._note_end(batch[0], handle, stats)
        self._report(batch, common, stats)
        end_ev = getattr(handle, "end_ev", None)
        return None if end_ev is None else (stats.service_end_ns, end_ev)

    def _common(self, batch: list[Job]) -> dict[str, Any]:
        batch_id = self._next_batch
        self._next_batch += 1
        return {"worker": self.worker, "batch_id": batch_id, "batched_with": len(batch)}

    def _fail(self, batch: list[Job], common: dict[str, Any], exc: Exception,
              on_result=None) -> None:
        on_result = on_result or self.on_result
        message = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:500]
        for job in batch:
            on_result(job.request_id, {**common, "status": "error", "error": message})

    def _next_batch_jobs(self, wait: bool | float = True) -> list[Job] | None:
        """The next batch; None when stopping. ``wait``: True blocks until a job comes; a
        number of seconds waits at most that long (0/False: not at all) and returns [] if
        none came."""
        with self._cond:
            if wait is not True and not self._queue and not self._stopping and wait > 0:
                self._cond.wait(wait)
            while not self._queue and not self._stopping:
                if wait is not True:
                    return []
                self._idle = True  # nothing in flight here: try_inline may launch
                self._cond.wait()
                self._idle = False
            if self._stopping:
                return None
            head = self._queue.popleft()
            batch = [head]
            if self.max_batch == 1:
                return batch
            deadline = head.enqueued_ns + self.max_wait_ns
            while True:
                self._take_same_model(head.model, batch)
                remaining = deadline - time.monotonic_ns()
                if len(batch) >= self.max_batch or remaining <= 0 or self._stopping:
                    return batch
                self._cond.wait(remaining / 1e9)

    def _take_same_model(self, model: str, batch: list[Job]) -> None:
        # Called with the lock held. Other models' jobs keep their FIFO order.
        keep: collections.deque[Job] = collections.deque()
        while self._queue and len(batch) < self.max_batch:
            job = self._queue.popleft()
            (batch if job.model == model else keep).append(job)
        keep.extend(self._queue)
        self._queue = keep

    def _execute(self, batch: list[Job]) -> None:
        head = batch[0]
        common = self._common(batch)
        model = self.models.get(head.model)
        try:
            if model is None:
                raise LookupError(f"model {head.model!r} is not resident in {self.worker}")
            label = "req " + ",".join(str(j.request_id) for j in batch)
            stats = model.run(sum(j.batch_size for j in batch),
                              max(j.seq_len for j in batch),
                              max(j.max_new_tokens for j in batch), label=label)
        except Exception as exc:  # one failed request becomes an error row, never a crash
            self._fail(batch, common, exc)
            return
        self._report(batch, common, stats)

    def _report(self, batch: list[Job], common: dict[str, Any], stats, on_result=None) -> None:
        on_result = on_result or self.on_result
        t0 = self.t0_ns
        first = None if stats.first_token_ns is None else stats.first_token_ns - t0
        times = {"service_start_ns": stats.service_start_ns - t0,
                 "service_end_ns": stats.service_end_ns - t0, "gpu_ns": stats.gpu_ns,
                 "bucket_seq_len": stats.bucket_seq_len,
                 "bucket_batch_size": stats.bucket_batch_size}
        for job in batch:
            generative = job.max_new_tokens > 0 and first is not None
            on_result(job.request_id, {
                **common, **times, "status": "ok",
                "first_token_ns": first if generative else None,
                "tokens_out": job.batch_size * job.max_new_tokens if generative else 0})
