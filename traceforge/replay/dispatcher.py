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

Sessions (trace rows with ``session_id``/``turn``): the first turn of a session leaves on the
schedule like any row; turn k+1 is released only when turn k completes, ``think`` later, where
``think = arrival_{k+1} − arrival_k`` (× time scale) from the trace: ``scheduled_ns`` of turn k+1
= ``done_k + think`` (its latency excludes the think time but includes any slot wait). Released
turns are timed by the event loop's timer and count against ``max_inflight``. A turn that ends
in anything but ``ok`` stops its session: every later turn becomes a ``dropped`` row saying why,
scheduled at the moment the session stopped.

Per request the dispatcher stamps ``sent_ns`` right before handing the request to the backend,
and ``done_ns`` when ``submit`` returns. Timeouts cancel the request's task (status ``timeout``);
:meth:`Dispatcher.interrupt` (SIGINT/SIGTERM) cancels everything in flight (``cancelled``) and
stops sending; due rows that never left become ``dropped``.

``duration_s`` (``--duration``) ends sending at that many seconds of the schedule: rows
scheduled later are not due (counted as ``not_due`` in run.json, no row); rows scheduled earlier
that could not leave in time (all slots busy) are ``dropped``. ``drain_timeout_s``
(``--drain-timeout``) bounds the wait for in-flight requests once sending ended; those still
out then are ``cancelled``.

Garbage collection: during the schedule the caller (``run.py``) turns Python's automatic GC off,
because its passes fire at allocation counts, i.e. in the middle of bursts (measured as send-lag
spikes inside GC windows, docs/scale.md). The replay creates almost no cyclic garbage (tens of
objects per 10⁵ requests), so the dispatcher collects the young generations itself at *safe
points* — before a wait whose slack exceeds ``GC_SAFE_GAP_NS`` — and, so memory stays bounded
when the schedule never leaves such a gap, whenever more than ``GC_FORCE_PENDING`` objects are
pending; every ``GC_FULL_EVERY``-th of these passes is a full collection.
"""

from __future__ import annotations

import asyncio
import gc
from collections import deque

import numpy as np

from traceforge.clock import RunClock
from traceforge.record.recorder import (
    CANCELLED,
    DROPPED,
    ERROR,
    NULL_I64,
    OK,
    STATUS_CODE,
    TIMEOUT,
    TimelineRecorder,
)
from traceforge.replay.protocol import Backend, Outcome, Request
from traceforge.schema import STATUSES


def session_links(session_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(next_turn, prev_turn)``: per row, the row index of the same session's next / previous
    turn in row order, -1 where none (rows with ``session_id == NULL_I64`` have no session)."""
    n = len(session_id)
    nxt = np.full(n, -1, np.int64)
    prev = np.full(n, -1, np.int64)
    rows = np.flatnonzero(session_id != NULL_I64)
    if rows.size:
        order = rows[np.argsort(session_id[rows], kind="stable")]  # each session in row order
        same = session_id[order][1:] == session_id[order][:-1]
        nxt[order[:-1][same]] = order[1:][same]
        prev[order[1:][same]] = order[:-1][same]
    return nxt, prev

NEVER_NS = np.iinfo(np.int64).max  # the time of a session turn that can no longer come
GC_SAFE_GAP_NS = 3_000_000  # a wait this long leaves > 1 ms after the spin margin for a pass
GC_MIN_PENDING = 2_000  # below this a pass is not worth a wake-up
GC_FORCE_PENDING = 200_000  # ~20 MB of young objects: collect even mid-burst
GC_FULL_EVERY = 20  # every 20th pass is a full one, so cyclic garbage that aged (e.g. error
# tracebacks in a long run of failing requests) cannot pile up until the end of the run


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
        gc_safe_points: bool = False,
    ) -> None:
        self.backend = backend
        self.gc_safe_points = gc_safe_points  # the caller disabled automatic GC
        self.gc_passes = 0
        self.rec = recorder
        self.clock = clock
        self.pacer = pacer
        self.closed_loop = closed_loop
        self.cap = inflight_cap
        self.timeout_s = timeout_s
        self.duration_ns = None if duration_s is None else round(duration_s * 1e9)
        self.drain_timeout_s = drain_timeout_s
        self.drain_expired = False  # the drain window ended with requests still out
        self.drain_end_ns: int | None = None  # when it ended: later releases were not due
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
        self._slot_waiters: deque[asyncio.Future] = deque()
        self._inflight: dict[int, asyncio.Task] = {}
        self.launched = 0
        # Sessions: follow-up turns leave when released by their previous turn (module doc).
        self._sessions = bool((recorder.session_id != NULL_I64).any())
        self._session_id = self._turn = None
        self._turn_tasks: dict[int, asyncio.Task] = {}
        if self._sessions:
            nxt, prev = session_links(recorder.session_id)
            self._next_turn = nxt.tolist()
            self._walk = np.flatnonzero(prev < 0).tolist()  # rows the schedule sends
            has_prev = prev >= 0
            self._follow = has_prev  # rows released by their previous turn
            think = np.zeros(self.n, np.int64)
            think[has_prev] = recorder.scheduled_ns[has_prev] - recorder.scheduled_ns[
                prev[has_prev]]
            self._think = think.tolist()
            self._session_id = recorder.session_id.tolist()
            self._turn = recorder.turn.tolist()
        self._expired: set[int] = set()
        self.next_index = 0  # rows [0, next_index) of the schedule walk have been handed out
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
        if self.drain_timeout_s is None:
            await self._wait_all()
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout_s
        # Let the requests launched by the last burst take their first step (stamp sent_ns):
        # they left, so a zero drain cancels them, it does not mark them unsent.
        await asyncio.sleep(0)
        while (self._inflight or self._turn_tasks) and (left := deadline - loop.time()) > 0:
            items = self._outstanding()
            await asyncio.wait([t for _, _, t in items], timeout=left,
                               return_when=asyncio.FIRST_COMPLETED)
            self._forget_done(items)
        if self._inflight or self._turn_tasks:
            self.drain_expired = True
            self.drain_end_ns = self.clock.now()
            self._abandon_releases()
            await self.drain()

    def _send_limit(self, walk) -> int:
        """How many rows of the walk are scheduled before ``--duration`` (offsets sorted)."""
        if self.duration_ns is None:
            return len(walk)
        offsets = np.asarray(self._offset, np.int64)[np.asarray(walk, np.int64)]
        return int(np.searchsorted(offsets, self.duration_ns, side="left"))

    async def _open_loop(self) -> None:
        offset = self._offset
        origin = self.origin_ns
        now = self.clock.now
        wait_until = self.pacer.wait_until
        capped = self.cap is not None
        gc_points = self.gc_safe_points
        get_count = gc.get_count
        # The rows the schedule sends, in order: all of them, or without session follow-ups
        # (those are released by their previous turn).
        walk = self._walk if self._sessions else range(self.n)
        n = self._send_limit(walk)
        end = None if self.duration_ns is None else origin + self.duration_ns
        k = 0
        while k < n:
            target = origin + offset[walk[k]]
            if gc_points:
                pending = get_count()[0]
                if pending > GC_FORCE_PENDING or (pending > GC_MIN_PENDING
                                                  and target - now() > GC_SAFE_GAP_NS):
                    self._collect()
            t = now()
            if t < target:
                await wait_until(target)
                t = now()
            # Everything due by now (t) leaves in this burst.
            held = None  # when the last slot wait of this burst ended
            while k < n and origin + offset[walk[k]] <= t:
                i = walk[k]
                if capped and len(self._inflight) >= self.cap:
                    self.slot_waits += 1
                    # A loop: a released session turn may take the freed slot first.
                    while len(self._inflight) >= self.cap:
                        got = await self._wait_slot_until(end)
                        if got is None:  # --duration ended while every slot stayed busy
                            self.send_cut = True
                            return
                        self.ready_ns[i] = got
                    held = self.ready_ns[i]
                    t = now()
                    if end is not None and t >= end:  # --duration is over: stop sending
                        self.send_cut = True
                        # The slot this wait was handed goes unused: pass it on, or a session
                        # turn waiting for one would wait forever (nothing left in flight to
                        # free another) and the run never ended.
                        self._wake_slot_waiter(t)
                        return
                elif held is not None and self.ready_ns[i] < held:
                    # Queued behind a request that waited for a slot: the target held it back
                    # until then (two slots freeing at once let it leave without a wait).
                    self.ready_ns[i] = held
                self._launch(i)
                k += 1
                self.next_index = k

    async def _closed_loop(self) -> None:
        scheduled = self.rec.scheduled_ns
        now = self.clock.now
        if self.n:
            await self.pacer.wait_until(self.origin_ns)  # the common start, like open loop
        end = None if self.duration_ns is None else self.origin_ns + self.duration_ns
        for i in range(self.n):
            if self.gc_safe_points and gc.get_count()[0] > GC_FORCE_PENDING:
                self._collect()
            if len(self._inflight) >= self.cap:
                # scheduled = when the slot freed: the dispatcher's own delay shows as send lag.
                got = await self._wait_slot_until(end)
                if got is None:  # --duration ended while every slot stayed busy
                    self.send_cut = True
                    return
                scheduled[i] = got
            else:
                scheduled[i] = now()
            if end is not None and scheduled[i] >= end:  # --duration is over
                self.send_cut = True
                if len(self._inflight) < self.cap:
                    self._wake_slot_waiter(int(scheduled[i]))  # the unused slot passes on
                return
            self._offset[i] = int(scheduled[i]) - self.origin_ns
            self._launch(i)
            self.next_index = i + 1

    def _collect(self) -> None:
        self.gc_passes += 1
        # The young generations; survivors age into gen 2, which every GC_FULL_EVERY-th pass
        # (and the automatic GC after the run) collects.
        gc.collect(2 if self.gc_passes % GC_FULL_EVERY == 0 else 1)

    async def _wait_slot_until(self, end: int | None) -> int | None:
        """:meth:`_wait_slot`, but give up at ``end`` (run clock ns; --duration's end): None
        then. Without it a run whose slots all stayed busy (a stalled server, long requests
        at --max-inflight / --concurrency) waited past --duration and --drain-timeout, for
        ever against a server that never answered."""
        if end is None:
            return await self._wait_slot()
        left = end - self.clock.now()
        if left <= 0:
            return None
        slot = asyncio.ensure_future(self._wait_slot())
        try:
            done, _ = await asyncio.wait({slot}, timeout=left / 1e9)
        except asyncio.CancelledError:
            slot.cancel()  # this task is cancelled (interrupt, drain): no slot wait left over
            raise
        if slot in done:
            return slot.result()
        slot.cancel()  # a slot handed to it meanwhile is passed on (_wait_slot)
        try:
            return await slot  # it got one just before the cancel: the caller passes it on
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this task itself is being cancelled, not just the slot wait
            return None

    async def _wait_slot(self) -> int:
        """Wait for a freed slot (FIFO); returns when it freed. A cancelled waiter stays in the
        deque, done, and :meth:`_wake_slot_waiter` skips it: O(1), no search of the deque."""
        waiter = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # A slot was handed to us just before the cancel: pass it on.
                self._wake_slot_waiter(waiter.result())
            raise

    def _wake_slot_waiter(self, at: int) -> None:
        """Hand a freed slot to the first waiter still waiting."""
        waiters = self._slot_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(at)
                return

    def _launch(self, i: int) -> None:
        self.launched += 1
        self._inflight[i] = asyncio.get_running_loop().create_task(self._serve(i))

    # -- sessions ----------------------------------------------------------------------------
    def _after_turn(self, i: int, status: int, done: int | None) -> None:
        """Turn ``i`` is final: release the session's next turn, or stop the session."""
        j = self._next_turn[i]
        if j < 0:
            return
        if self.stopping:  # interrupted: the later turns' time never came (not due, no row)
            self._schedule_rest(j, NEVER_NS)
            return
        if status == OK:
            at = done + self._think[j]
            self.rec.scheduled_ns[j] = at
            self._offset[j] = at - self.origin_ns
            if self.duration_ns is not None and at >= self.origin_ns + self.duration_ns:
                # After --duration: this turn and the session's later ones are not due (no
                # row), like trace rows after it.
                self._schedule_rest(j, at)
                return
            self._turn_tasks[j] = asyncio.get_running_loop().create_task(self._release(j, at))
            return
        stopped = self.clock.now()
        if self.drain_expired:
            # Cancelled by the drain's end: the run is over, so the later turns' time never
            # came (not due, no row; due_mask() leaves out turns released after the drain).
            self._schedule_rest(j, stopped)
            return
        why = (f"session {self._session_id[i]} stopped: turn {self._turn[i]} ended "
               f"{STATUSES[status]}")
        while j >= 0:
            self.rec.scheduled_ns[j] = stopped
            self.rec.complete(j, DROPPED, None, None, why)
            self.completed += 1
            j = self._next_turn[j]

    def _schedule_rest(self, j: int, at: int) -> None:
        """Turn ``j`` (due at ``at``) will not be released, so the later turns of its session
        never come: due_mask() judges ``j`` by ``at`` and never counts the later ones (never
        by the trace's nominal times)."""
        self.rec.scheduled_ns[j] = at
        j = self._next_turn[j]
        while j >= 0:
            self.rec.scheduled_ns[j] = NEVER_NS
            j = self._next_turn[j]

    def _abandon_releases(self) -> None:
        """The run ends with turns waiting for their release: their sessions end there."""
        for j in list(self._turn_tasks):
            self._schedule_rest(j, int(self.rec.scheduled_ns[j]))

    async def _release(self, j: int, at: int) -> None:
        try:
            delay = at - self.clock.now()
            if delay > 0:
                await asyncio.sleep(delay / 1e9)
            if self.cap is not None and len(self._inflight) >= self.cap:
                self.slot_waits += 1
                end = (None if self.duration_ns is None
                       else self.origin_ns + self.duration_ns)
                while len(self._inflight) >= self.cap:
                    got = await self._wait_slot_until(end)
                    if got is None:  # --duration ended first: never leaves (dropped)
                        return
                    self.ready_ns[j] = got
                if (self.duration_ns is not None
                        and self.clock.now() >= self.origin_ns + self.duration_ns):
                    # Its slot came after --duration: it never leaves (due, unsent: dropped,
                    # as a schedule row that waited past the end), and the slot passes on.
                    self._wake_slot_waiter(self.clock.now())
                    return
            self._launch(j)
        finally:
            del self._turn_tasks[j]

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
            if self._sessions and self._session_id[i] != NULL_I64:
                request.session_id, request.turn = self._session_id[i], self._turn[i]
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
            if self._slot_waiters:  # open loop, no cap: none ever, so no clock read
                self._wake_slot_waiter(now())  # the first still waiting takes the slot
        try:
            rec.complete(i, status, done, outcome, error)
        except (OverflowError, TypeError, ValueError) as exc:
            # An outcome the timeline cannot hold (a token count beyond int32 from a server):
            # the row is an error saying so -- left pending it was called "cancelled: run
            # interrupted" at the end of a complete run.
            status = ERROR
            rec.complete(i, status, done, None,
                         f"the backend's outcome cannot be recorded: {type(exc).__name__}: "
                         f"{exc}"[:2000])
        if self._sessions:
            self._after_turn(i, status, done if done is not None else now())

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
        self._abandon_releases()
        if cancel_main and self._main is not None:
            self._main.cancel()
        for task in [*self._inflight.values(), *self._turn_tasks.values()]:
            task.cancel()

    async def drain(self) -> None:
        for task in [*self._inflight.values(), *self._turn_tasks.values()]:
            task.cancel()
        await self._wait_all()

    def _outstanding(self) -> list[tuple[dict, int, asyncio.Task]]:
        return [(d, k, t) for d in (self._inflight, self._turn_tasks) for k, t in d.items()]

    async def _wait_all(self) -> None:
        while self._inflight or self._turn_tasks:
            items = self._outstanding()
            await asyncio.gather(*(t for _, _, t in items), return_exceptions=True)
            self._forget_done(items)

    @staticmethod
    def _forget_done(items) -> None:
        for d, k, task in items:
            # A task cancelled before its first step never ran its body (nor its finally):
            # forget it here, or the waits would spin forever. Its row, unsent, is finalised by
            # finalize_pending (dropped).
            if task.done() and d.get(k) is task:
                del d[k]

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
        if self.drain_end_ns is not None and self._sessions:
            # Session turns whose release time came after the drain ended: not due.
            mask &= ~(self._follow & (self.rec.scheduled_ns >= self.drain_end_ns))
        return mask
