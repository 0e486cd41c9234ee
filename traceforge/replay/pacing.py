"""Pacers: how the dispatcher waits until an absolute send time on the run clock.

Every pacer takes an absolute target (``scheduled_ns`` on the run clock), never a relative delay,
so errors do not accumulate: a late wake-up makes one request late, not all that follow.

- :class:`SleepPacer` — ``asyncio.sleep`` to the target. The event loop's timer sits on
  ``epoll_wait``, whose timeout Python rounds *up* to whole milliseconds, so it wakes 0–1 ms late
  (more under load). This is the baseline ``benchmarks/bench_pacing.py`` compares against, and
  the exact choice under a virtual-time loop (tests).
- :class:`SpinPacer` — sleep on the loop until ``margin`` before the target, then yield-spin:
  ``await asyncio.sleep(0)`` until the monotonic clock passes the target. Each yield is one loop
  iteration (``epoll_wait`` with timeout 0 + ready callbacks), so responses keep being handled
  while we spin and the send lands within one loop iteration (~5–20 µs) of its time. Costs CPU
  only inside the margin.
- :class:`ThreadPacer` — a daemon thread sleeps to the target with ``time.sleep``
  (``clock_nanosleep``; its timer slack is lowered to 1 ns where ``prctl`` allows) and wakes the
  loop with ``call_soon_threadsafe``. No spinning, but every wake-up pays a thread hand-off and
  the loop's self-pipe.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import threading
import time
from collections.abc import Callable

from traceforge.clock import RunClock


class SleepPacer:
    name = "sleep"

    def __init__(self, clock: RunClock) -> None:
        self._now = clock.now

    async def wait_until(self, target_ns: int) -> None:
        delay = target_ns - self._now()
        if delay > 0:
            await asyncio.sleep(delay / 1e9)

    def close(self) -> None:
        pass


class SpinPacer:
    name = "spin"
    PROBE_MIN_NS = 300_000  # waits with this much slack read the thread's CPU wait (2 × 1.4 µs)
    LATE_NS = 100_000

    def __init__(self, clock: RunClock, margin_ns: int = 1_500_000, probe=None) -> None:
        self._now = clock.now
        self.margin_ns = margin_ns
        # ``probe()``: this thread's schedstat run delay (ns runnable but waiting for a CPU), or
        # None. A wait that had slack and still ended late records (start, end, CPU wait) in
        # ``cpu_waits`` (run clock): the self-check's measure of the machine's share of the lag
        # beyond the timed waits the loop itself records (replay/loop.py).
        self._probe = probe
        self.cpu_waits: list[tuple[int, int, int]] = []

    async def wait_until(self, target_ns: int) -> None:
        now = self._now
        start = now()
        delay = target_ns - start
        q0 = self._probe() if self._probe is not None and delay > self.PROBE_MIN_NS else None
        if delay > self.margin_ns:
            await asyncio.sleep((delay - self.margin_ns) / 1e9)
        while now() < target_ns:
            await asyncio.sleep(0)  # one loop iteration: I/O callbacks run while we spin
        if q0 is not None:
            end = now()
            if end - target_ns > self.LATE_NS and len(self.cpu_waits) < 100_000:
                q1 = self._probe()
                if q1 is not None and q1 > q0:
                    self.cpu_waits.append((start, end, q1 - q0))

    def close(self) -> None:
        pass


def _lower_timer_slack() -> None:
    """PR_SET_TIMERSLACK = 29: ask for 1 ns instead of the default 50 µs sleep slack."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(29, 1, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: keep the default slack
        pass


class ThreadPacer:
    name = "thread"

    def __init__(self, clock: RunClock) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._job: tuple[int, Callable[[], None]] | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="pacer", daemon=True)
        self._thread.start()

    async def wait_until(self, target_ns: int) -> None:
        if target_ns <= self._clock.now():
            return
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def wake() -> None:
            loop.call_soon_threadsafe(_resolve, fut)

        with self._cond:
            self._job = (target_ns, wake)
            self._cond.notify()
        try:
            await fut
        except asyncio.CancelledError:
            with self._cond:
                self._job = None
            raise

    def _run(self) -> None:
        _lower_timer_slack()
        t0 = self._clock.t0_ns
        mono = time.monotonic_ns
        while True:
            with self._cond:
                while self._job is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                target, wake = self._job
                self._job = None
            deadline = t0 + target
            while (rest := deadline - mono()) > 0:
                time.sleep(rest / 1e9)  # releases the GIL; the loop keeps running
            wake()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=1.0)


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def make_pacer(name: str, clock: RunClock, *, margin_ns: int = 1_500_000, probe=None):
    if name == "spin":
        return SpinPacer(clock, margin_ns, probe)
    if name == "thread":
        return ThreadPacer(clock)
    if name == "sleep":
        return SleepPacer(clock)
    raise ValueError(f"unknown pacer {name!r}")
