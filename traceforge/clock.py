"""The run clock: int64 nanoseconds since run start on CLOCK_MONOTONIC.

``time.monotonic_ns`` reads CLOCK_MONOTONIC, which on Linux is one system-wide clock, so a worker
process stamps times on the same run clock by subtracting the ``t0_ns`` it was handed. Wall time is
kept only to align a run with the outside world (``run.json``'s ``started_at``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RunClock:
    t0_ns: int = field(default_factory=time.monotonic_ns)
    wall_t0_ns: int = field(default_factory=time.time_ns)

    def now(self) -> int:
        """Nanoseconds since run start."""
        return time.monotonic_ns() - self.t0_ns
