"""Queueing engines in virtual time: where each request starts and ends service.

Three engines, chosen by what the model needs:

* :func:`fifo_servers` — ``c`` identical FIFO servers without interference (the ``null`` backend,
  and ``exclusive`` mode without batching). ``c = 1`` is Lindley's recursion in closed form,
  ``end_i = S_i + max_{j<=i}(a_j - S_{j-1})`` with ``S`` the cumulative service, which numpy
  evaluates with one ``cumsum`` and one ``maximum.accumulate`` — exact in int64 nanoseconds.
  Constant service on ``c`` servers reduces to ``c`` interleaved Lindley recursions (the server
  that frees first is always the one that took request ``i - c``); random service on ``c > 1``
  servers runs a heap of server free-times, one ``heapreplace`` per request.
* :func:`shared_workers` — the resident workers: one FIFO worker per model (``timeslice``,
  ``mps``, ``streams``) or one global worker (``exclusive``), dynamic batching, and an
  interference model where each busy worker progresses at a rate that depends on which workers are
  busy at that instant (processor sharing with measured slowdowns, rates recomputed at every
  event). An event loop over per-worker state; arrivals are not events — a queue is an index range
  into the model's sorted arrival times, advanced by ``searchsorted`` when a worker looks at it.
* :func:`timeslice_workers` — ``timeslice`` with the profile's fitted time slice: one worker per
  model, one context on the GPU at a time at alone speed, taking turns at slice boundaries.

All are deterministic: ties go to the lower model index, then the lower request index (the
time-sliced engine passes turns round-robin from the worker that held the GPU).
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


def fifo_servers(arrival_ns: np.ndarray, service_ns: np.ndarray,
                 servers: int = 1, handoff_ns: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Service start and end (int64 ns) of FIFO requests on ``servers`` identical servers.

    ``arrival_ns`` must be non-decreasing; ``service_ns`` holds each request's service time.
    ``handoff_ns`` (per request, optional): the server's own work after the request's service
    ends and before it can start the next one (the executor's hand-off: reporting the result,
    taking the next job, launching it). A request that is already waiting starts at
    ``end + handoff`` of the one before; one that arrives later starts on arrival. It is Lindley
    on the occupancy ``service + handoff``, with ``end = start + service``.
    """
    if handoff_ns is None:
        start, end, _ = fifo_servers_assigned(arrival_ns, service_ns, servers)
        return start, end
    service = np.asarray(service_ns, dtype=np.int64)
    occupancy = service + np.asarray(handoff_ns, dtype=np.int64)
    start, _, _ = fifo_servers_assigned(arrival_ns, occupancy, servers)
    return start, start + service


def fifo_pair_handoff(arrival_ns: np.ndarray, service_ns: np.ndarray, model: np.ndarray,
                      gap_ns: Callable[[int, int, bool], float],
                      sent_ns: np.ndarray | None = None,
                      idle_inbound: Callable[[int, float], float] | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """One FIFO server (requests in arrival order, ``arrival_ns`` non-decreasing) whose
    hand-off depends on the pair: a request already waiting when the one before it ends starts
    ``gap_ns(prev model, its model, early)`` after that end, ``early`` meaning it had arrived by
    the time the one before it *started* (simulate/measure.handoff_classes); one that arrives
    later starts on arrival. A Python loop (the gap depends on the previous start): 0.38 µs per
    request on the 2-core VM, 0.52 µs with ``idle_inbound`` (1M requests). ``idle_inbound(model, idle_ns)`` with ``sent_ns``: a request sent after the one
    before it ended reaches the server ``idle_inbound`` after its send (see ``ModelQueue``)."""
    arrival = np.asarray(arrival_ns, dtype=np.int64).tolist()
    service = np.asarray(service_ns, dtype=np.int64).tolist()
    models = np.asarray(model).tolist()
    sent = None if sent_ns is None or idle_inbound is None else \
        np.asarray(sent_ns, dtype=np.int64).tolist()
    n = len(arrival)
    start = [0] * n
    prev_start = prev_end = None
    prev_model = None
    cache: dict[tuple[int, int, bool], int] = {}
    for k in range(n):
        a = arrival[k]
        if sent is not None and (prev_end is None or sent[k] > prev_end):
            idle = math.inf if prev_end is None else sent[k] - prev_end
            a = sent[k] + round(idle_inbound(models[k], idle))
        if prev_end is None:
            s = a
        else:  # as fifo_servers: the hand-off occupies the server, whoever comes next
            key = (prev_model, models[k], a <= prev_start)
            g = cache.get(key)
            if g is None:
                g = cache[key] = round(gap_ns(*key))
            s = max(a, prev_end + g)
        start[k] = s
        prev_start, prev_end, prev_model = s, s + service[k], models[k]
    start_a = np.asarray(start, dtype=np.int64)
    return start_a, start_a + np.asarray(service, dtype=np.int64)


def fifo_servers_assigned(arrival_ns: np.ndarray, service_ns: np.ndarray, servers: int = 1
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like :func:`fifo_servers`, plus the index of the server each request ran on (the
    earliest-free server, ties to the lowest index, as the ``null`` backend picks)."""
    arrival = np.asarray(arrival_ns, dtype=np.int64)
    service = np.asarray(service_ns, dtype=np.int64)
    n = arrival.size
    if n == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int32)
    if servers == 1:
        return (*_lindley(arrival, service), np.zeros(n, np.int32))
    if np.all(service == service[0]):
        # Equal service times: ends are non-decreasing in FIFO order, so request i takes the
        # server freed by request i - c; each residue class mod c is a one-server queue.
        start = np.empty(n, np.int64)
        end = np.empty(n, np.int64)
        for r in range(servers):
            s, e = _lindley(arrival[r::servers], service[r::servers])
            start[r::servers] = s
            end[r::servers] = e
        return start, end, (np.arange(n) % servers).astype(np.int32)
    return _heap_servers(arrival, service, servers)


def _lindley(arrival: np.ndarray, service: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cum = np.cumsum(service)
    end = cum + np.maximum.accumulate(arrival - (cum - service))
    return end - service, end


def _heap_servers(arrival: np.ndarray, service: np.ndarray,
                  servers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Hand-written loop: no vectorised form exists for FIFO c-server queues with random service
    # (completions overtake each other); a heap of (free time, server) is O(n log c).
    free = [(-(2**62), k) for k in range(servers)]
    starts = [0] * arrival.size
    which = [0] * arrival.size
    replace = heapq.heapreplace
    for i, (a, s) in enumerate(zip(arrival.tolist(), service.tolist(), strict=True)):
        earliest, k = free[0]
        st = a if a > earliest else earliest
        replace(free, (st + s, k))
        starts[i] = st
        which[i] = k
    start = np.array(starts, dtype=np.int64)
    return start, start + service, np.array(which, dtype=np.int32)


@dataclass(slots=True)
class ModelQueue:
    """One model's requests as the workers see them (all times in ns of virtual time)."""

    arrival_ns: np.ndarray  # float64, non-decreasing: when each request reaches its worker
    work_ns: np.ndarray | None = None  # alone service time per request (no batching)
    # Transport that depends on how long the worker had been idle (simulate/measure.py,
    # idle_transport_bins): a request sent at ``sent_ns[i]`` to a worker idle since ``t``
    # reaches it at ``sent + idle_inbound(sent - t)`` (``t`` = -inf before its first request);
    # one sent while the worker is busy keeps ``arrival_ns[i]``. Unbatched workers only.
    sent_ns: np.ndarray | None = None
    idle_inbound: Callable[[float], float] | None = None


@dataclass(slots=True)
class WorkerResult:
    start_ns: np.ndarray  # float64 per request
    end_ns: np.ndarray  # float64 per request
    batch_id: np.ndarray  # int64 per request, global in start order
    batched_with: np.ndarray  # int32 per request


BatchWork = Callable[[int, int, int], float]  # (model index, first row, end row) -> alone ns


@dataclass(slots=True)
class SizeInterference:
    """Co-run slowdowns that depend on the size of the request each busy worker runs.

    ``excess[u][c][w]``: added to worker ``w``'s slowdown while worker ``u`` runs a request of
    size class ``c`` (0 at the size ``rates`` were measured at; Profile.size_excess).
    ``classes[u][i]``: the class of worker ``u``'s request ``i`` run alone;
    ``batch_class(u, i, j)``: the class of its rows ``i:j`` run as one batch (batching;
    default: the first row's class). Worker ``w``'s slowdown under busy set ``S`` is then
    ``1/rates[S][w] + sum over u in S, u != w of excess[u][class of u's batch][w]``, the
    profile's additive rule for sets (Profile.slowdown), never below MIN_SLOWDOWN.
    """

    classes: list[list[int]]
    excess: list[list[Sequence[float]]]
    batch_class: Callable[[int, int, int], int] | None = None


MIN_SLOWDOWN = 0.5  # as the profile clamps its measured slowdowns (measure._clamp)


def _size_rates(rates: dict[int, Sequence[float]], k: int, sized: SizeInterference
                ) -> Callable[[int, list[int]], list[float]]:
    """``resolve(mask, cur)``: every worker's rate while ``mask`` is busy and busy worker
    ``u`` runs a class-``cur[u]`` batch. Memoised per state, so a state's list is always the
    same object (the engines compare rates by value anyway)."""
    ones = [1.0] * k
    memo: dict[tuple[int, ...], list[float]] = {}
    excess = sized.excess
    workers = range(k)

    def resolve(mask: int, cur: list[int]) -> list[float]:
        key = (mask, *[cur[u] if mask >> u & 1 else -1 for u in workers])
        out = memo.get(key)
        if out is None:
            base = rates.get(mask, ones)
            out = []
            for w in workers:
                if not mask >> w & 1:
                    out.append(1.0)
                    continue
                slow = 1.0 / base[w]
                for u in workers:
                    if u != w and mask >> u & 1:
                        slow += excess[u][cur[u]][w]
                out.append(1.0 / max(slow, MIN_SLOWDOWN))
            memo[key] = out
        return out

    return resolve


def shared_workers(
    queues: Sequence[ModelQueue],
    *,
    exclusive: bool,
    rates: dict[int, Sequence[float]] | None = None,
    max_batch: int = 1,
    max_wait_ns: float = 0.0,
    batch_work: BatchWork | None = None,
    fast_path: bool = True,
    handoff_ns: Sequence[float] | None = None,
    sized: SizeInterference | None = None,
) -> list[WorkerResult]:
    """Simulate the resident workers.

    ``exclusive``: one worker serves every model, taking the oldest waiting request first (global
    FIFO) and batching within that request's model. Otherwise each model has its own worker and
    they run concurrently.

    ``rates[mask][m]``: progress rate of model ``m``'s worker (alone = 1.0) while the workers in
    bitmask ``mask`` are busy; missing masks run at rate 1. A batch needs ``work`` ns of alone
    time; under rate ``r`` it advances ``r`` ns of work per ns of virtual time.

    Batching (Triton-style ``max_queue_delay``): an idle worker dispatches the queue head as soon
    as ``max_batch`` requests are waiting, or once the head has waited ``max_wait_ns`` since it
    reached the worker, whichever is first, taking every waiting request up to ``max_batch``.
    ``batch_work(m, i, j)`` gives the alone time of rows ``i:j`` of model ``m`` run as one batch;
    without it, ``queues[m].work_ns`` must be set and batches add up their rows' work.

    ``handoff_ns[m]``: the worker's hand-off after a batch of model ``m`` ends, before it can
    start its next batch (see :func:`fifo_servers`); the worker counts as idle for the
    interference model meanwhile (the GPU has nothing of it to run).

    ``sized``: slowdowns that also depend on the size of the batch each other busy worker runs
    (:class:`SizeInterference`); ignored in exclusive mode (nothing runs beside).

    ``fast_path=False`` forces the general loop where the inlined one would apply (tests check
    that both give the same timelines). Batch ids count per worker from ``worker << 40``, as the
    resident workers number them.
    """
    k = len(queues)
    gaps = [0.0] * k if handoff_ns is None else [float(g) for g in handoff_ns]
    if fast_path and not exclusive and max(1, int(max_batch)) == 1 and all(q.work_ns is not None
                                                              for q in queues):
        return _concurrent_unbatched(queues, rates or {}, gaps, sized)
    if k == 0:
        return []
    arrivals = [np.asarray(q.arrival_ns, dtype=np.float64).tolist() for q in queues]
    sizes = [len(a) for a in arrivals]
    if batch_work is None:
        works = [np.asarray(q.work_ns, dtype=np.float64) for q in queues]
        cums = [np.concatenate(([0.0], np.cumsum(w))).tolist() for w in works]
        work_lists = [w.tolist() for w in works]

        def batch_work(m: int, i: int, j: int) -> float:
            if j == i + 1:
                return work_lists[m][i]
            return cums[m][j] - cums[m][i]

    max_batch = max(1, int(max_batch))
    wait = float(max_wait_ns) if max_batch > 1 else 0.0
    rate_table = rates or {}
    if exclusive:
        sized = None
    batch_class = None
    if sized is not None:
        batch_class = sized.batch_class or (lambda m, i, j, c=sized.classes: c[m][i])
    if fast_path and not exclusive and not any(gaps):
        return _concurrent_batched(arrivals, sizes, batch_work, rate_table, max_batch, wait,
                                   sized, batch_class)
    inf = math.inf
    n_workers = 1 if exclusive else k
    ones = [1.0] * n_workers

    starts = [[0.0] * n for n in sizes]
    ends = [[0.0] * n for n in sizes]
    batch_ids = [[0] * n for n in sizes]
    batched = [[1] * n for n in sizes]

    head = [0] * k  # first request of each model not yet dispatched
    # Per worker, one event time: when its batch ends (busy, at the current rates) or when its
    # next batch will start (idle; inf if its queue is empty for good).
    event = [inf] * n_workers
    busy = [False] * n_workers
    serving = [0] * n_workers  # model of the batch in progress / of the next batch
    row_lo = [0] * n_workers
    row_hi = [0] * n_workers
    began = [0.0] * n_workers
    rate = list(ones)
    batch_counter = [0] * n_workers
    busy_mask = 0
    workers = range(n_workers)
    interference = not exclusive and (bool(rate_table) or sized is not None)
    bisect_right = bisect.bisect_right
    cur = [0] * n_workers  # size class of each worker's batch (sized interference)
    resolve = (_size_rates(rate_table, k, sized) if sized is not None
               else (lambda mask, cur: rate_table.get(mask, ones)))

    def plan(w: int, now: float) -> None:
        """Set idle worker w's next start time and model (the batching rule)."""
        if exclusive:
            m, a = -1, inf
            for mm in range(k):  # global FIFO: the oldest head of any model
                if head[mm] < sizes[mm]:
                    am = arrivals[mm][head[mm]]
                    if am < a:
                        a, m = am, mm
            if m < 0:
                event[w] = inf
                return
        else:
            m = w
            if head[m] >= sizes[m]:
                event[w] = inf
                return
            a = arrivals[m][head[m]]
        serving[w] = m
        if wait > 0.0:
            last = head[m] + max_batch - 1
            full = arrivals[m][last] if last < sizes[m] else inf
            ready = a + wait
            if full < ready:
                ready = full
            a = ready
        event[w] = a if a > now else now

    def start(w: int, now: float) -> None:
        nonlocal busy_mask
        m = serving[w]
        h = head[m]
        if max_batch == 1:
            hi = h + 1
        else:
            # Every request that has reached the worker by now joins, up to max_batch.
            arrived = bisect_right(arrivals[m], now, h)
            hi = min(h + max_batch, max(arrived, h + 1))
        head[m] = hi
        row_lo[w], row_hi[w] = h, hi
        began[w] = now
        b_ids, b_n = batch_ids[m], batched[m]
        batch_id = batch_counter[w] + (w << 40)  # per-worker ids, as the resident workers
        for i in range(h, hi):
            b_ids[i] = batch_id
            b_n[i] = hi - h
        batch_counter[w] += 1
        busy[w] = True
        busy_mask |= 1 << w
        if batch_class is not None:
            cur[w] = batch_class(m, h, hi)
        r = resolve(busy_mask, cur)[w] if interference else 1.0
        rate[w] = r
        event[w] = now + batch_work(m, h, hi) / r

    for w in workers:
        plan(w, 0.0)

    while True:
        # The earliest event; ties go to the lower worker index (list.index finds the first).
        t = min(event)
        if t == inf:
            break
        w = event.index(t)
        mask_before = busy_mask
        if busy[w]:
            m = serving[w]
            st = began[w]
            s_m, e_m = starts[m], ends[m]
            for i in range(row_lo[w], row_hi[w]):
                s_m[i] = st
                e_m[i] = t
            busy[w] = False
            busy_mask &= ~(1 << w)
            plan(w, t + gaps[m])  # the hand-off: no start before t + gap
            if event[w] == t:  # the next batch is ready: start it in the same step
                start(w, t)
        else:
            start(w, t)
        if interference and (busy_mask != mask_before or batch_class is not None):
            # Apply the rates of the new busy set (and, sized, of the new batch's class): a
            # busy worker with remaining work (event - t) * old rate finishes at
            # t + remaining / new rate. (A worker that started at t already runs at its new
            # rate.)
            new = resolve(busy_mask, cur)
            for u in workers:
                if busy[u]:
                    r = new[u]
                    if r != rate[u]:
                        event[u] = t + (event[u] - t) * rate[u] / r
                        rate[u] = r
    return [
        WorkerResult(np.array(starts[m]), np.array(ends[m]),
                     np.array(batch_ids[m], dtype=np.int64),
                     np.array(batched[m], dtype=np.int32))
        for m in range(k)
    ]


def _concurrent_unbatched(queues: Sequence[ModelQueue], rates: dict[int, Sequence[float]],
                          gaps: Sequence[float] | None = None,
                          sized: SizeInterference | None = None) -> list[WorkerResult]:
    """:func:`shared_workers` for one worker per model and no batching, inlined.

    The same event rules; kept separate because it is the common case and the per-event Python
    work decides the speed (1M requests in about a second). A worker that finishes and finds its
    next request waiting restarts at once: the busy set is unchanged, so no rate changes
    (unless ``sized`` and the new request's size class differs: then the others' rates follow).
    """
    k = len(queues)
    if k == 0:
        return []
    arrivals = [np.asarray(q.arrival_ns, dtype=np.float64).tolist() for q in queues]
    works = [np.asarray(q.work_ns, dtype=np.float64).tolist() for q in queues]
    sizes = [len(a) for a in arrivals]
    starts = [[0.0] * n for n in sizes]
    ends = [[0.0] * n for n in sizes]
    inf = math.inf
    ones = [1.0] * k
    workers = range(k)
    event = [a[0] if a else inf for a in arrivals]
    idle_fn = [q.idle_inbound if q.sent_ns is not None else None for q in queues]
    sents = [None if f is None else np.asarray(q.sent_ns, dtype=np.float64).tolist()
             for f, q in zip(idle_fn, queues, strict=True)]
    for w in workers:
        if idle_fn[w] is not None and sizes[w]:
            event[w] = sents[w][0] + idle_fn[w](inf)
    busy = [False] * k
    current = [0] * k  # request in service (busy) or next to start (idle)
    rate = list(ones)
    mask = 0
    get_rates = rates.get
    gap = list(gaps) if gaps is not None else [0.0] * k
    sz = sized is not None
    cls = sized.classes if sz else []
    cur = [0] * k  # size class of each worker's request (sized)
    resolve = _size_rates(rates, k, sized) if sz else None
    while True:
        t = min(event)
        if t == inf:
            break
        w = event.index(t)
        before = mask
        resized = False  # w restarted with a request of another size class (sized)
        if busy[w]:
            i = current[w]
            ends[w][i] = t
            i += 1
            current[w] = i
            if i < sizes[w]:
                a = arrivals[w][i]
                f = idle_fn[w]
                if f is not None and sents[w][i] > t:  # sent to an idle worker
                    a = sents[w][i] + f(sents[w][i] - t)
                g = gap[w]
                if g > 0.0:  # the hand-off: idle until t + g at the earliest
                    a = a if a > t + g else t + g
                elif a <= t:  # waiting already: restart, same busy set, same rate
                    starts[w][i] = t
                    if sz and cls[w][i] != cur[w]:  # unless its size class changes them
                        cur[w] = cls[w][i]
                        rate[w] = resolve(mask, cur)[w]
                        resized = True
                    event[w] = t + works[w][i] / rate[w]
                    if not resized:
                        continue
                if not resized:
                    event[w] = a
            else:
                event[w] = inf
            if not resized:
                busy[w] = False
                mask &= ~(1 << w)
        else:
            i = current[w]
            starts[w][i] = t
            busy[w] = True
            mask |= 1 << w
            if sz:
                cur[w] = cls[w][i]
                r = resolve(mask, cur)[w]
            else:
                r = get_rates(mask, ones)[w]
            rate[w] = r
            event[w] = t + works[w][i] / r
        if (mask != before or resized) and (rates or sz):
            new = resolve(mask, cur) if sz else get_rates(mask, ones)
            for u in workers:
                if busy[u] and u != w:
                    r = new[u]
                    if r != rate[u]:
                        event[u] = t + (event[u] - t) * rate[u] / r
                        rate[u] = r
    return [WorkerResult(np.array(starts[m]), np.array(ends[m]),
                         np.arange(sizes[m], dtype=np.int64) + (m << 40),
                         np.ones(sizes[m], np.int32)) for m in range(k)]


def _concurrent_batched(arrivals: list[list[float]], sizes: list[int], batch_work: BatchWork,
                        rates: dict[int, Sequence[float]], max_batch: int,
                        wait: float, sized: SizeInterference | None = None,
                        batch_class: Callable[[int, int, int], int] | None = None
                        ) -> list[WorkerResult]:
    """:func:`shared_workers` for one worker per model with dynamic batching, inlined (the
    general loop's rules, checked against it in the tests)."""
    k = len(arrivals)
    starts = [[0.0] * n for n in sizes]
    ends = [[0.0] * n for n in sizes]
    batch_ids = [[0] * n for n in sizes]
    batched = [[1] * n for n in sizes]
    inf = math.inf
    ones = [1.0] * k
    workers = range(k)
    event = [inf] * k
    busy = [False] * k
    head = [0] * k
    row_lo = [0] * k
    row_hi = [0] * k
    began = [0.0] * k
    rate = list(ones)
    counter = [0] * k
    mask = 0
    get_rates = rates.get
    sz = sized is not None and batch_class is not None
    cur = [0] * k  # size class of each worker's batch (sized)
    resolve = _size_rates(rates, k, sized) if sz else None
    bisect_right = bisect.bisect_right

    def ready(w: int, h: int) -> float:
        # When the batch headed by request h may leave: max_batch waiting, or h waited `wait`.
        arr = arrivals[w]
        a = arr[h]
        if wait > 0.0:
            last = h + max_batch - 1
            a += wait
            if last < sizes[w] and arr[last] < a:
                a = arr[last]
        return a

    for w in workers:
        if sizes[w]:
            event[w] = ready(w, 0)
    while True:
        t = min(event)
        if t == inf:
            break
        w = event.index(t)
        before = mask
        start_now = True
        if busy[w]:
            st = began[w]
            s_w, e_w = starts[w], ends[w]
            for i in range(row_lo[w], row_hi[w]):
                s_w[i] = st
                e_w[i] = t
            busy[w] = False
            mask &= ~(1 << w)
            h = head[w]
            if h >= sizes[w]:
                event[w] = inf
                start_now = False
            else:
                a = ready(w, h)
                if a > t:
                    event[w] = a
                    start_now = False
        if start_now:
            h = head[w]
            if max_batch == 1:
                j = h + 1
            else:
                # Every request that has reached the worker by now joins, up to max_batch.
                j = min(h + max_batch, max(bisect_right(arrivals[w], t, h), h + 1))
            head[w] = j
            row_lo[w], row_hi[w] = h, j
            began[w] = t
            batch_id = counter[w] + (w << 40)
            counter[w] += 1
            if j == h + 1:
                batch_ids[w][h] = batch_id
            else:
                b_ids, b_n = batch_ids[w], batched[w]
                for i in range(h, j):
                    b_ids[i] = batch_id
                    b_n[i] = j - h
            busy[w] = True
            mask |= 1 << w
            if sz:
                cur[w] = batch_class(w, h, j)
                r = resolve(mask, cur)[w]
            else:
                r = get_rates(mask, ones)[w]
            rate[w] = r
            event[w] = t + batch_work(w, h, j) / r
        if (mask != before or sz) and (rates or sz):
            new = resolve(mask, cur) if sz else get_rates(mask, ones)
            for u in workers:
                if busy[u] and u != w:
                    r = new[u]
                    if r != rate[u]:
                        event[u] = t + (event[u] - t) * rate[u] / r
                        rate[u] = r
    return [WorkerResult(np.array(starts[m]), np.array(ends[m]),
                         np.array(batch_ids[m], dtype=np.int64),
                         np.array(batched[m], dtype=np.int32)) for m in range(k)]


def timeslice_workers(queues: Sequence[ModelQueue], quantum_ns: float, *,
                      yield_ns: Sequence[np.ndarray | None] | None = None,
                      switch_ns: float = 0.0) -> list[WorkerResult]:
    """One GPU time-sliced between the workers' contexts (``timeslice``: CUDA's time-slicing
    of processes without MPS), one FIFO worker per model, no batching.

    At any instant at most one worker's request runs, at its alone speed (``work_ns``). The
    worker holding the GPU keeps it while it has work (a request ends and its next one is
    already waiting: it runs on), until another worker waits at one of its time-slice
    boundaries (every ``quantum_ns`` from when it got the GPU): the GPU then passes to the next
    waiting worker in round-robin order, and the preempted request keeps its remaining work for
    its worker's next turn. A worker with nothing more to run gives the GPU to the next waiting
    one at once, and so does a request's yield point ``yield_ns[m][i]`` (the work done when a
    decoder's host waits for its first token; None or NaN: none). ``switch_ns``: the GPU's
    idle time at each change of owner (a context switch). The simulator fits both parameters
    to the profile's mixed pass (measure.fit_time_slice); this is not processor sharing: a
    request's GPU time is its alone time, and what another model costs it is waiting.

    A request's start is when it first runs, its end when its last work ends (a preempted one
    spans the other workers' turns, as its CUDA events do). Transport by idle time
    (``sent_ns``/``idle_inbound``) as in :func:`shared_workers`.
    """
    k = len(queues)
    if k == 0:
        return []
    q = float(quantum_ns)
    if not q > 0:
        raise ValueError(f"quantum_ns must be > 0, got {quantum_ns!r}")
    inf = math.inf
    arrivals = [np.asarray(x.arrival_ns, dtype=np.float64).tolist() for x in queues]
    works = [np.asarray(x.work_ns, dtype=np.float64).tolist() for x in queues]
    sizes = [len(a) for a in arrivals]
    yields = [[inf] * n for n in sizes]
    if yield_ns is not None:
        for m, y in enumerate(yield_ns):
            if y is not None:
                yields[m] = [v if v == v and 0.0 < v < works[m][i] else inf
                             for i, v in enumerate(np.asarray(y, dtype=np.float64).tolist())]
    idle_fn = [x.idle_inbound if x.sent_ns is not None else None for x in queues]
    sents = [None if f is None else np.asarray(x.sent_ns, dtype=np.float64).tolist()
             for f, x in zip(idle_fn, queues, strict=True)]
    starts = [[0.0] * n for n in sizes]
    ends = [[0.0] * n for n in sizes]
    cur = [0] * k  # the request each worker is on
    done = [0.0] * k  # work done on it
    began = [False] * k
    ready = [inf] * k  # when its current request reaches it (inf: none left)

    def arrive(w: int, free_at: float) -> None:
        i = cur[w]
        if i >= sizes[w]:
            ready[w] = inf
            return
        a = arrivals[w][i]
        f = idle_fn[w]
        if f is not None and sents[w][i] > free_at:  # sent to an idle worker
            a = sents[w][i] + f(sents[w][i] - free_at)
        ready[w] = a

    for w in range(k):
        arrive(w, -inf)

    def next_waiting(after: int, t: float) -> int:
        for d in range(1, k + 1):
            u = (after + d) % k
            if u != after and ready[u] <= t:
                return u
        return -1

    def take(w: int, t: float) -> None:
        if not began[w]:
            starts[w][cur[w]] = t
            began[w] = True

    owner, t, slice_at = -1, 0.0, 0.0
    while True:
        if owner < 0:
            t0 = min(ready)
            if t0 == inf:
                break
            owner = ready.index(t0)
            t = t0 if t0 > t else t
            slice_at = t
            take(owner, t)
        w = owner
        i = cur[w]
        y = yields[w][i]
        target = y if done[w] < y < inf else works[w][i]
        seg_end = t + (target - done[w])
        # The first boundary of w's slices at which another worker waits.
        other = min([ready[u] for u in range(k) if u != w], default=inf)
        if other < seg_end:
            when = other if other > t else t
            b = slice_at + q * math.ceil((when - slice_at) / q - 1e-12)
            if b <= t:
                b = slice_at + q * (math.floor((t - slice_at) / q) + 1)
            if b < seg_end:  # preempted at b
                done[w] += b - t
                u = next_waiting(w, b)
                t = b + switch_ns
                owner, slice_at = u, t
                take(u, t)
                continue
        done[w] = target
        t = seg_end
        if target < works[w][i]:  # the yield point: pass to a waiting worker
            u = next_waiting(w, t)
            if u >= 0:
                t += switch_ns
                owner, slice_at = u, t
                take(u, t)
            continue
        ends[w][i] = t
        cur[w] = i + 1
        done[w] = 0.0
        began[w] = False
        arrive(w, t)
        if ready[w] <= t:
            take(w, t)  # its next request is waiting: it keeps the GPU and its slice
            continue
        u = next_waiting(w, t)
        if u >= 0:
            t += switch_ns
            owner, slice_at = u, t
            take(u, t)
        else:
            owner = -1
    return [WorkerResult(np.array(starts[m]), np.array(ends[m]),
                         np.arange(sizes[m], dtype=np.int64) + (m << 40),
                         np.ones(sizes[m], np.int32)) for m in range(k)]
