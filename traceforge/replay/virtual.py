"""A virtual-time asyncio loop, so scheduling logic can be tested to the nanosecond.

Time only moves when the loop would otherwise block: the selector polls real file descriptors
without waiting, and if nothing is ready it advances the virtual clock by exactly the timeout
asyncio asked for — straight to the next timer. ``asyncio.sleep``, ``call_later`` and the
dispatcher's :class:`~traceforge.replay.pacing.SleepPacer` therefore fire at exact virtual times,
and a whole replay runs in milliseconds of real time. (Spinning pacers never advance virtual
time, so use ``pacer="sleep"`` here.)

    loop = VirtualTimeLoop()
    summary = loop.run_until_complete(
        replay_async(trace, run_dir, NullBackend(service_dist="const"),
                     ReplayOptions(pacer="sleep"), clock=VirtualClock(loop)))
"""

from __future__ import annotations

import asyncio
import selectors

from traceforge.clock import RunClock


class _VirtualSelector(selectors.DefaultSelector):
    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None):
        events = super().select(0)
        if events:
            return events
        if timeout is None:
            raise RuntimeError("virtual-time deadlock: nothing is scheduled and nothing is ready")
        if timeout > 0:
            self._loop.advance_ns(max(1, round(timeout * 1e9)))
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._virtual_ns = 0
        super().__init__(selector=_VirtualSelector(self))

    def time(self) -> float:
        return self._virtual_ns / 1e9

    def time_ns(self) -> int:
        return self._virtual_ns

    def advance_ns(self, ns: int) -> None:
        self._virtual_ns += ns


class VirtualClock(RunClock):
    """A run clock reading the virtual loop's time (t0 = 0)."""

    __slots__ = ("loop",)

    def __init__(self, loop: VirtualTimeLoop) -> None:
        object.__setattr__(self, "t0_ns", 0)
        object.__setattr__(self, "wall_t0_ns", 0)
        object.__setattr__(self, "loop", loop)

    def now(self) -> int:
        return self.loop.time_ns()

