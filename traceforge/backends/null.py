"""The ``null`` backend: an in-process fake server per model, for testing the load generator.

Each model is a FIFO queue in front of ``servers`` identical servers with service times that are
constant or exponential (mean ``service_ms``), drawn from a seeded generator per model. Because the
queue is FIFO and service times are drawn at arrival, a request's start and end are known the
moment it arrives (earliest-free-server rule, as in a G/G/c queue's Kiefer–Wolfowitz recursion);
``submit`` just sleeps until its end. ``service_start_ns`` / ``service_end_ns`` are those exact
times on the run clock, so ``done_ns - service_end_ns`` shows how late the event loop noticed the
completion. With Poisson arrivals, one server and exponential service this is an M/M/1 queue, and
the replayed latencies must match queueing theory (tests/test_replay_realtime.py).
"""

from __future__ import annotations

import asyncio
import heapq
import math
import zlib
from typing import Any

import numpy as np

from traceforge.clock import RunClock
from traceforge.errors import BadInput
from traceforge.replay.protocol import ModelInfo, Outcome, Request

SERVICE_DISTS = ("const", "exp")
_BLOCK = 4096  # service times drawn per numpy call


class _ModelQueue:
    __slots__ = ("_draws", "_rng", "dist", "free", "mean_ns", "name")

    def __init__(self, name: str, servers: int, mean_ns: float, dist: str, seed: int) -> None:
        self.name = name
        self.mean_ns = mean_ns
        self.dist = dist
        # One stream per (seed, model), independent of which other models are in the trace.
        self._rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        self._draws: list[int] = []
        # (time the server becomes free, server index): heap order = earliest free, then lowest.
        self.free = [(-(2**62), k) for k in range(servers)]

    def next_service_ns(self) -> int:
        if self.dist == "const":
            return int(self.mean_ns)
        if not self._draws:
            block = np.rint(self._rng.exponential(self.mean_ns, _BLOCK)).astype(np.int64)
            self._draws = block.tolist()[::-1]
        return self._draws.pop()


class NullBackend:
    name = "null"

    def __init__(self, servers: int = 1, service_ms: float = 10.0, service_dist: str = "exp",
                 seed: int = 0) -> None:
        if isinstance(servers, bool) or not isinstance(servers, int) or servers < 1:
            raise BadInput("must be an integer >= 1", key="--servers", value=servers)
        if not isinstance(service_ms, (int, float)) or not math.isfinite(service_ms) \
                or service_ms < 0:
            raise BadInput("must be a number >= 0", key="--service-ms", value=service_ms)
        if service_dist not in SERVICE_DISTS:
            raise BadInput("unknown distribution", key="--service-dist", value=service_dist,
                           allowed=", ".join(SERVICE_DISTS))
        self.servers = servers
        self.service_ms = float(service_ms)
        self.service_dist = service_dist
        self.seed = int(seed)
        self._queues: dict[str, _ModelQueue] = {}
        self._clock: RunClock | None = None

    async def start(self, models: list[ModelInfo], clock: RunClock) -> None:
        self._clock = clock
        self._queues = {m.name: _ModelQueue(m.name, self.servers, self.service_ms * 1e6,
                                            self.service_dist, self.seed) for m in models}

    async def submit(self, request: Request) -> Outcome:
        queue = self._queues[request.model]
        now = self._clock.now()
        free_at, server = queue.free[0]
        start = now if free_at < now else free_at
        end = start + queue.next_service_ns()
        heapq.heapreplace(queue.free, (end, server))
        delay = end - now
        if delay > 0:
            await asyncio.sleep(delay / 1e9)
        return Outcome(service_start_ns=start, service_end_ns=end,
                       worker=f"{queue.name}/{server}",
                       tokens_out=request.max_new_tokens or None)

    async def stop(self) -> None:
        self._queues = {}

    def describe(self) -> dict[str, Any]:
        return {"servers": self.servers, "service_ms": self.service_ms,
                "service_dist": self.service_dist, "seed": self.seed}


def from_options(opts: dict[str, Any]) -> NullBackend:
    """Build from CLI options: ``servers``, ``service_ms``, ``service_dist``, ``seed``."""
    return NullBackend(servers=opts.get("servers", 1), service_ms=opts.get("service_ms", 10.0),
                       service_dist=opts.get("service_dist", "exp"), seed=opts.get("seed", 0))
