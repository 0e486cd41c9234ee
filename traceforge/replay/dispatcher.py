"""The dispatcher: sends each trace row to the backend at its time and records what happened.

One coroutine walks the schedule (precomputed, vectorised: ``scheduled_ns = origin +
round(arrival_ns × time_scale)``) and waits for each *absolute* target with a pacer
(``pacing.py``); every request then runs as one Task wrapping ``backend.submit`` — the cheapest
way to drive an arbitrary coroutine concurrently (``bench_pacing.py`` measures the cost). All
requests due at the same wake-up leave in one burst.

- open loop (default): send at the scheduled time whatever is outstanding.
- open loop with ``max_inflight``: at most N outstanding; a request whose time came while all
  slots were busy leaves when one frees. Its latency still counts from ``scheduled_ns``.
- closed loop (``concurrency``): N outstanding, arrival times ignored; ``scheduled_ns`` is the
  moment the request's slot became free.

Per request the dispatcher stamps ``sent_ns`` right before handing the request to the backend,
and ``done_ns`` when ``submit`` returns. Timeouts cancel the request's task (status ``timeout``);
:meth:`Dispatcher.interrupt` (SIGINT/SIGTERM) cancels everything in flight (``cancelled``) and
stops sending; due rows that never left become ``dropped``.

``duration_s`` (``--duration``) ends sending at that many seconds of the schedule: rows
scheduled later are not due (counted as ``not_due`` in run.json, no row); rows scheduled earlier
that could not leave in time (all slots busy) are ``dropped``. ``drain_timeout_s``
(``--drain-timeout``) bounds the wait for in-flight requests once sending ended; those still
out then are ``cancelled``.
"""

from __future__ import annotations

import asyncio

import numpy as np

from traceforge.clock import RunClock
from traceforge.record.recorder import (
    CANCELLED,
    ERROR,
    NULL_I64,
    STATUS_CODE,
    TIMEOUT,
    TimelineRecorder,
)
from traceforge.replay.protocol import Backend, Outcome, Request


class Dispatcher:
    def __init__(
        self,
        *,
        backend: Backend,
        recorder: TimelineRecorder,
        clock: RunClock,
        pacer,
        model_names: list[str],
        closed_loop: bool = False,
        inflight_cap: int | None = None,
        timeout_s: float | None = None,
        duration_s: float | None = None,
        drain_timeout_s: float | None = None,
    ) -> None:
        self.backend = backend
        self.rec = recorder
        self.clock = clock
        self.pacer = pacer
        self.closed_loop = closed_loop
        self.cap = inflight_cap
        self.timeout_s = timeout_s
        self.duration_ns = None if duration_s is None else round(duration_s * 1e9)
        self.drain_timeout_s = drain_timeout_s
        self.drain_expired = False  # the drain window ended with requests still out
        self.send_cut = False  # --duration ended sending before every row was handed out
        self.n = recorder.n
        # Plain Python lists: indexing one is several times cheaper than indexing an ndarray, and
        # yields Python ints (numpy scalars would leak into backends, e.g. into JSON bodies).
        self._request_id = recorder.request_id.tolist()
        self._model = [model_names[c] for c in recorder.model_codes.tolist()]
        self._batch_size = recorder.batch_size.tolist()
        self._seq_len = recorder.seq_len.tolist()
        self._max_new_tokens = recorder.max_new_tokens.tolist()
        # Offsets from the schedule origin; run(origin_ns) makes recorder.scheduled_ns absolute.
        self._offset = recorder.scheduled_ns.tolist()
        self.origin_ns = 0
        # When a request was ready to leave, if later than scheduled (it waited for a slot).
        self.ready_ns = np.full(self.n, NULL_I64, np.int64)
        self.slot_waits = 0
        self._slot_waiter: asyncio.Future | None = None
        self._inflight: dict[int, asyncio.Task] = {}
        self._expired: set[int] = set()
        self.next_index = 0  # requests [0, next_index) have been handed to a task
        self.completed = 0
        self.stopping = False
        self.stopped_at_ns: int | None = None
        self._main: asyncio.Task | None = None

    # -- the schedule walk -------------------------------------------------------------------
    async def run(self, origin_ns: int) -> None:
        """Send every request (request i at ``origin_ns + offset_i``), then wait for all of
        them. Returns early after interrupt()."""
        self._main = asyncio.current_task()
        self.origin_ns = origin_ns
        self.rec.scheduled_ns += origin_ns  # in place: the recorder shares this array
        if self.stopping:  # interrupted while the run was being prepared
            return
        try:
            if self.closed_loop:
                await self._closed_loop()
            else:
                await self._open_loop()
            await self._drain_window()
        except asyncio.CancelledError:
            if not self.stopping:
                raise
        if self.stopping:
            await self.drain()

    async def _drain_window(self) -> None:
        """Wait for what is in flight, at most ``drain_timeout_s``; then cancel the rest."""
        if not self._inflight:
            return
        if self.drain_timeout_s is None:
            await self._wait_all()
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout_s
        while self._inflight and (left := deadline - loop.time()) > 0:
            tasks = list(self._inflight.items())
            await asyncio.wait([t for _, t in tasks], timeout=left,
                               return_when=asyncio.FIRST_COMPLETED)
            self._forget_done(tasks)
        if self._inflight:
            self.drain_expired = True
            await self.drain()

    def _send_limit(self) -> int:
        """Rows scheduled before ``--duration`` (offsets are sorted in open loop)."""
        if self.duration_ns is None:
            return self.n
        return int(np.searchsorted(np.asarray(self._offset, np.int64), self.duration_ns,
                                   side="left"))

    async def _open_loop(self) -> None:
        offset = self._offset
        origin = self.origin_ns
        now = self.clock.now
        wait_until = self.pacer.wait_until
        capped = self.cap is not None
        n = self._send_limit()
        end = None if self.duration_ns is None else origin + self.duration_ns
        i = 0
        while i < n:
            target = origin + offset[i]
            if now() < target:
                await wait_until(target)
            # Everything due by now leaves in this burst.
            t = now()
            while i < n and origin + offset[i] <= t:
                if capped and len(self._inflight) >= self.cap:
                    self.slot_waits += 1
                    self.ready_ns[i] = await self._wait_slot()
                    t = now()
                    if end is not None and t >= end:  # --duration is over: stop sending
                        self.send_cut = True
                        return
                self._launch(i)
                i += 1
                self.next_index = i

    async def _closed_loop(self) -> None:
        scheduled = self.rec.scheduled_ns
        now = self.clock.now
        if self.n:
            await self.pacer.wait_until(self.origin_ns)  # the common start, like open loop
        end = None if self.duration_ns is None else self.origin_ns + self.duration_ns
        for i in range(self.n):
            if len(self._inflight) >= self.cap:
                # scheduled = when the slot freed: the dispatcher's own delay shows as send lag.
                scheduled[i] = await self._wait_slot()
            else:
                scheduled[i] = now()
            if end is not None and scheduled[i] >= end:  # --duration is over
                self.send_cut = True
                return
            self._offset[i] = int(scheduled[i]) - self.origin_ns
            self._launch(i)
            self.next_index = i + 1

    async def _wait_slot(self) -> int:
        self._slot_waiter = asyncio.get_running_loop().create_future()
        try:
            return await self._slot_waiter
        finally:
            self._slot_waiter = None

    def _launch(self, i: int) -> None:
        self._inflight[i] = asyncio.get_running_loop().create_task(self._serve(i))

    # -- one request -------------------------------------------------------------------------
    async def _serve(self, i: int) -> None:
        rec = self.rec
        now = self.clock.now
        timer = None
        sent = False
        try:
            request = Request(self._request_id[i], self._model[i], self._batch_size[i],
                              self._seq_len[i], self._max_new_tokens[i],
                              self.origin_ns + self._offset[i])
            if self.timeout_s is not None:
                timer = asyncio.get_running_loop().call_later(self.timeout_s, self._expire, i)
            rec.sent_ns[i] = now()
            sent = True
            outcome: Outcome | None = await self.backend.submit(request)
            done = now()
            status = STATUS_CODE.get(outcome.status, ERROR)
            error = None
            if status == ERROR and outcome.status != "error":
                error = f"backend returned unknown status {outcome.status!r}"
        except asyncio.CancelledError:
            if not sent:  # cancelled before it left: finalize_pending() marks it dropped
                return
            outcome, done = None, None
            if i in self._expired:
                status, error = TIMEOUT, f"no response within {self.timeout_s:g} s"
            elif self.drain_expired:
                status, error = CANCELLED, (f"cancelled: still in flight when --drain-timeout "
                                            f"({self.drain_timeout_s:g} s) ended")
            else:
                status, error = CANCELLED, "cancelled: run interrupted"
        except Exception as exc:  # one failed request is a row, never the end of the run
            outcome, done = None, now()
            status, error = ERROR, f"{type(exc).__name__}: {exc}"[:2000]
        finally:
            if timer is not None:
                timer.cancel()
            del self._inflight[i]
            self.completed += 1
            waiter = self._slot_waiter  # set only while the dispatcher waits for a slot
            if waiter is not None and not waiter.done():
                waiter.set_result(now())
        rec.complete(i, status, done, outcome, error)

    def _expire(self, i: int) -> None:
        task = self._inflight.get(i)
        if task is not None:
            self._expired.add(i)
            task.cancel()

    # -- stopping ----------------------------------------------------------------------------
    def interrupt(self, *, cancel_main: bool = True) -> None:
        """Stop sending and cancel everything in flight (safe to call from a signal handler).

        ``cancel_main=False`` when called from the task running :meth:`run` itself (after it
        was cancelled from outside or failed), which must not cancel itself again."""
        if self.stopping:
            return
        self.stopping = True
        self.stopped_at_ns = self.clock.now()
        if cancel_main and self._main is not None:
            self._main.cancel()
        for task in list(self._inflight.values()):
            task.cancel()

    async def drain(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        await self._wait_all()

    async def _wait_all(self) -> None:
        while self._inflight:
            tasks = list(self._inflight.items())
            await asyncio.gather(*(t for _, t in tasks), return_exceptions=True)
            self._forget_done(tasks)

    def _forget_done(self, tasks) -> None:
        for i, task in tasks:
            # A task cancelled before its first step never ran _serve (nor its finally): forget
            # it here, or the waits would spin forever. Its row, unsent, is finalised by
            # finalize_pending (dropped).
            if task.done() and self._inflight.get(i) is task:
                del self._inflight[i]

    def due_mask(self) -> np.ndarray:
        """Rows whose time had come: all in a finished run; not those scheduled at or after
        ``--duration``; after an interrupt, only those scheduled by then (closed loop: those
        handed out)."""
        if self.closed_loop:
            mask = np.ones(self.n, bool)
            if self.stopping or self.send_cut:
                mask[self.next_index:] = False
            return mask
        mask = np.ones(self.n, bool)
        if self.duration_ns is not None:
            mask &= self.rec.scheduled_ns < self.origin_ns + self.duration_ns
        if self.stopping:
            mask &= self.rec.scheduled_ns <= self.stopped_at_ns
        return mask
