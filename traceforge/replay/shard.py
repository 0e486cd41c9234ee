"""Splitting one replay across workers: which rows each worker sends, and the worker's side of
the start barrier.

Two ways to shard (``--shard-by``):

- ``request`` (default): row *j* of the trace (arrival order) goes to worker ``j mod N``. Every
  worker gets an even share of every model and of every burst, and — since each shard is a
  subsequence of the trace — each model's requests stay in arrival order within a shard. A
  multi-turn session (``session_id``) is one unit: all its turns go to one worker (sessions are
  dealt round-robin in order of their first turn), since a turn is released by the completion
  of the one before it.
- ``model``: every model's requests go to one worker; models are dealt largest first to the
  least-loaded worker. A model's queue then lives in one process (the null backend's fake
  servers, an HTTP client's connection pool per model), at the price of uneven shards when one
  model dominates. Needs at least as many models as workers.

In-flight caps (``--max-inflight`` / ``--concurrency``) are split across workers (the first
``cap mod N`` workers get one more), so the whole run never has more than ``cap`` outstanding.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from traceforge.errors import BadInput

SHARD_BY = ("request", "model")


def shard_rows(table: pa.Table, workers: int, by: str = "request") -> list[np.ndarray]:
    """Row positions for each worker, each sorted (so arrival order is kept)."""
    n = table.num_rows
    if by == "request":
        units = _units(table)
        if units is None:
            return [np.arange(k, n, workers, dtype=np.int64) for k in range(workers)]
        owner = units % workers
        return [np.flatnonzero(owner == k) for k in range(workers)]
    if by != "model":
        raise BadInput("unknown sharding", key="--shard-by", value=by, allowed=", ".join(SHARD_BY))
    encoded = table.column("model").combine_chunks().dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    names = encoded.dictionary.to_pylist()
    if len(names) < workers:
        raise BadInput(f"--shard-by model needs at least as many models as workers; the trace "
                       f"has {len(names)}", key="--workers", value=workers)
    counts = np.bincount(codes, minlength=len(names))
    load = [0] * workers
    owner = np.zeros(len(names), np.int64)
    for code in sorted(range(len(names)), key=lambda c: (-counts[c], names[c])):
        k = min(range(workers), key=lambda w: (load[w], w))
        owner[code] = k
        load[k] += int(counts[code])
    row_owner = owner[codes]
    return [np.flatnonzero(row_owner == k) for k in range(workers)]


def _units(table: pa.Table) -> np.ndarray | None:
    """Per row, the index of its dealing unit (a session, or the row alone) in order of first
    appearance; None when the trace has no sessions."""
    if "session_id" not in table.column_names or table.column("session_id").null_count == \
            table.num_rows:
        return None
    session = table.column("session_id").to_numpy(zero_copy_only=False)
    key = np.where(np.isnan(session.astype(float)), -(np.arange(table.num_rows) + 1.0),
                   session.astype(float))
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # rank of each unique key by first appearance
    return order[inverse]


def split_cap(cap: int | None, workers: int) -> list[int | None]:
    """An in-flight cap shared by ``workers``: each gets ``cap // N``, the first ``cap % N`` one
    more."""
    if cap is None:
        return [None] * workers
    if cap < workers:
        raise BadInput(f"an in-flight cap must be >= --workers ({workers}) so every worker gets "
                       "a slot", key="--max-inflight/--concurrency", value=cap)
    return [cap // workers + (k < cap % workers) for k in range(workers)]


class WorkerRole:
    """A replay worker's link to its driver, as ``replay_async(worker=...)`` uses it.

    Subclasses implement :meth:`wait_origin` (report ready, block until the driver sends the
    common schedule origin, on this worker's run clock) and :meth:`finished` (hand back the
    worker's manifest and the per-row arrays of the self-check)."""

    def __init__(self, index: int, trace_info: dict | None = None) -> None:
        self.index = index
        self.trace_info = trace_info
        self._loop = None
        self._dispatcher = None
        self._interrupt_early = False

    def attach(self, loop, dispatcher) -> None:
        """Called by replay_async once the dispatcher exists, so :meth:`interrupt` can reach it."""
        self._loop, self._dispatcher = loop, dispatcher
        if self._interrupt_early:
            dispatcher.interrupt()

    def interrupt(self) -> None:
        """Stop this worker like SIGINT would (callable from any thread)."""
        if self._dispatcher is None:
            self._interrupt_early = True
            return
        self._loop.call_soon_threadsafe(self._dispatcher.interrupt)

    def wait_origin(self) -> int:
        raise NotImplementedError

    def finished(self, result: dict) -> None:
        raise NotImplementedError
