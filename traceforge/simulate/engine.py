"""Queueing engines in virtual time: where each request starts and ends service.

Two engines, chosen by what the model needs:

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

Both are deterministic: ties go to the lower model index, then the lower request index.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


def fifo_servers(arrival_ns: np.ndarray, service_ns: np.ndarray,
                 servers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Service start and end (int64 ns) of FIFO requests on ``servers`` identical servers.

    ``arrival_ns`` must be non-decreasing; ``service_ns`` holds each request's service time.
    """
    start, end, _ = fifo_servers_assigned(arrival_ns, service_ns, servers)
    return start, end


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


@dataclass(slots=True)
class WorkerResult:
    start_ns: np.ndarray  # float64 per request
    end_ns: np.ndarray  # float64 per request
    batch_id: np.ndarray  # int64 per request, global in start order
    batched_with: np.ndarray  # int32 per request


BatchWork = Callable[[int, int, int], float]  # (model index, first row, end row) -> alone ns


def shared_workers(
    queues: Sequence[ModelQueue],
    *,
    exclusive: bool,
    rates: dict[int, Sequence[float]] | None = None,
    max_batch: int = 1,
    max_wait_ns: float = 0.0,
    batch_work: BatchWork | None = None,
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
    """
    k = len(queues)
    arrivals = [q.arrival_ns.tolist() for q in queues]
    arrival_arrays = [np.asarray(q.arrival_ns, dtype=np.float64) for q in queues]
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
    wait = float(max_wait_ns)
    rate_table = rates or {}
    one = [1.0] * k

    starts = [[0.0] * n for n in sizes]
    ends = [[0.0] * n for n in sizes]
    batch_ids = [np.zeros(n, np.int64) for n in sizes]
    batched = [np.ones(n, np.int32) for n in sizes]

    head = [0] * k  # first request of each model not yet dispatched
    inf = math.inf
    n_workers = 1 if exclusive else k
    # Per worker: model being served (-1 idle), batch rows, remaining work, start time.
    serving = [-1] * n_workers
    row_lo = [0] * n_workers
    row_hi = [0] * n_workers
    remaining = [0.0] * n_workers
    began = [0.0] * n_workers
    rate = [1.0] * n_workers
    next_start = [inf] * n_workers  # when an idle worker will dispatch its next batch
    next_model = [-1] * n_workers
    batch_counter = 0
    t = 0.0

    def dispatch_time(m: int, now: float) -> float:
        h = head[m]
        arr = arrivals[m]
        if max_batch == 1 or wait <= 0.0:
            a = arr[h]
            return a if a > now else now
        full = arr[h + max_batch - 1] if h + max_batch - 1 < sizes[m] else inf
        ready = arr[h] + wait
        if full < ready:
            ready = full
        return ready if ready > now else now

    def plan(w: int, now: float) -> None:
        # Decide when idle worker w starts next, and with which model.
        if exclusive:
            best_m, best_a = -1, inf
            for m in range(k):
                if head[m] < sizes[m]:
                    a = arrivals[m][head[m]]
                    if a < best_a:
                        best_a, best_m = a, m
            if best_m < 0:
                next_start[w] = inf
                return
            next_model[w] = best_m
            next_start[w] = dispatch_time(best_m, now)
        else:
            if head[w] < sizes[w]:
                next_model[w] = w
                next_start[w] = dispatch_time(w, now)
            else:
                next_start[w] = inf

    for w in range(n_workers):
        plan(w, 0.0)

    busy_mask = 0
    while True:
        # Next event: the earliest batch completion or batch start.
        t_next = inf
        kind = 0
        who = -1
        for w in range(n_workers):
            if serving[w] >= 0:
                te = t + remaining[w] / rate[w]
                if te < t_next:
                    t_next, kind, who = te, 1, w
            elif next_start[w] < t_next:
                t_next, kind, who = next_start[w], 2, w
        if who < 0:
            break
        dt = t_next - t
        if dt > 0.0:
            for w in range(n_workers):
                if serving[w] >= 0:
                    remaining[w] -= rate[w] * dt
        t = t_next
        if kind == 1:
            m = serving[who]
            lo, hi = row_lo[who], row_hi[who]
            st = began[who]
            s_m, e_m = starts[m], ends[m]
            for i in range(lo, hi):
                s_m[i] = st
                e_m[i] = t
            serving[who] = -1
            busy_mask &= ~(1 << who)
            plan(who, t)
        else:
            m = next_model[who]
            h = head[m]
            # Every request that has reached the worker by now joins, up to max_batch.
            if max_batch == 1:
                hi = h + 1
            else:
                arrived = int(np.searchsorted(arrival_arrays[m], t, side="right"))
                hi = min(h + max_batch, max(arrived, h + 1))
            head[m] = hi
            serving[who] = m
            row_lo[who], row_hi[who] = h, hi
            remaining[who] = batch_work(m, h, hi)
            began[who] = t
            batch_ids[m][h:hi] = batch_counter
            batched[m][h:hi] = hi - h
            batch_counter += 1
            next_start[who] = inf
            busy_mask |= 1 << who
        if not exclusive:
            r = rate_table.get(busy_mask, one)
            for w in range(n_workers):
                rate[w] = r[w]
    return [
        WorkerResult(np.array(starts[m]), np.array(ends[m]), batch_ids[m], batched[m])
        for m in range(k)
    ]
