"""An asyncio event loop whose timers fire on time: epoll plus a ``timerfd`` (Linux).

Stock asyncio sleeps in ``epoll_wait`` with the timeout rounded *up* to whole milliseconds, so
every ``asyncio.sleep`` / ``call_later`` — the dispatcher's waits, the null backend's service
completions, per-request timeouts — wakes 0–1 ms late whenever the loop is otherwise idle. Here,
before blocking, the selector arms a ``timerfd`` (nanosecond resolution, CLOCK_MONOTONIC like
``loop.time()``) for the exact timeout and registers it with the same epoll object, so the kernel
wakes the loop when the timer is due, typically within tens of µs. One extra syscall per blocking
wait, no spinning. Elsewhere (no ``timerfd`` through ctypes) :func:`new_event_loop` falls back to
the stock loop, and ``describe_loop`` says so in run.json.

The selector also keeps the record the self-check needs to tell the generator's own lag from the
machine's: every timed wait that returned more than :data:`LATE_WAKE_NS` after its timer was due
(``late_wakeups``, on CLOCK_MONOTONIC). While blocked in ``epoll_wait`` the process runs no code at
all, so time past the timer is the kernel's (on a VM, the hypervisor's) or a GIL hand-off's, never
the event loop's. On the 2-vCPU Firecracker VM this project is developed on, a bare
``time.sleep`` loop outside traceforge wakes 0.1 ms late at p50 and 1.2–9 ms late at p99.9;
that tail, not the generator's work, was what pushed the demo's send lag p99 past 1 ms
(docs/replay.md, "Late wake-ups").
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import math
import os
import selectors
import time

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
LATE_WAKE_NS = 100_000  # a timed wait that returns this much past its timer is recorded
MAX_LATE_WAKEUPS = 100_000  # a bound on that record (16 bytes each)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _load_libc():
    if not hasattr(selectors, "EpollSelector"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int,
                                         ctypes.POINTER(_Itimerspec), ctypes.c_void_p]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()


class TimerfdEpollSelector(selectors.EpollSelector):  # type: ignore[misc, name-defined]
    """EpollSelector whose timed waits end on a timerfd instead of epoll's ms timeout."""

    def __init__(self) -> None:
        super().__init__()
        self._tfd = _LIBC.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if self._tfd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        # Registered on the raw epoll object only: select() drops its events (unknown fd).
        self._selector.register(self._tfd, selectors.EVENT_READ)
        self._spec = _Itimerspec()
        self._spec_ref = ctypes.byref(self._spec)
        self._armed = False
        self.timed_waits = 0
        # (timer due, returned, of which runnable-but-waiting-for-a-CPU), monotonic ns
        self.late_wakeups: list[tuple[int, int, int]] = []
        self._sched_fd: int | None = None  # this thread's /proc schedstat, opened on first use

    def _arm(self, ns: int) -> None:
        self._spec.it_value.tv_sec, self._spec.it_value.tv_nsec = divmod(ns, 1_000_000_000)
        _LIBC.timerfd_settime(self._tfd, 0, self._spec_ref, None)  # also resets its count

    def select(self, timeout: float | None = None):
        if timeout is not None and timeout > 0:
            ns = max(1, math.ceil(timeout * 1e9))
            queued = self.run_delay_ns()
            due = time.monotonic_ns() + ns
            self._arm(ns)
            self._armed = True
            # epoll's own timeout is only a safety net, 1 ms past the timerfd.
            ready = super().select(timeout + 0.001)
            back = time.monotonic_ns()
            self.timed_waits += 1
            if back - due > LATE_WAKE_NS and len(self.late_wakeups) < MAX_LATE_WAKEUPS:
                # runnable-but-queued time (another task held the CPU) vs. not runnable at all
                # (the wake-up itself came late: idle exit, the hypervisor)
                if queued is not None:
                    queued = max(0, (self.run_delay_ns() or queued) - queued)
                self.late_wakeups.append((due, back, queued or 0))
            return ready
        if timeout is None and self._armed:
            self._arm(0)  # disarm: a stale readable timerfd would turn a blocking wait into a spin
            self._armed = False
        return super().select(timeout)

    def run_delay_ns(self) -> int | None:
        """This thread's total time runnable but waiting for a CPU (Linux schedstat, 1.4 µs
        per read here); None where unavailable."""
        if self._sched_fd is None:
            try:
                self._sched_fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
            except OSError:
                self._sched_fd = -1
        if self._sched_fd < 0:
            return None
        try:
            return int(os.pread(self._sched_fd, 64, 0).split()[1])
        except (OSError, IndexError, ValueError):
            return None

    def close(self) -> None:
        if self._sched_fd is not None and self._sched_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._sched_fd)
        with contextlib.suppress(OSError):
            os.close(self._tfd)
        super().close()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A SelectorEventLoop on :class:`TimerfdEpollSelector`, or the stock loop where unavailable."""
    if _LIBC is None:
        return asyncio.new_event_loop()
    try:
        selector = TimerfdEpollSelector()
    except OSError:
        return asyncio.new_event_loop()
    loop = asyncio.SelectorEventLoop(selector)
    loop._traceforge_precise = True  # type: ignore[attr-defined]  # read by describe_loop
    return loop


def wake_record(loop: asyncio.AbstractEventLoop) -> tuple[int, list[tuple[int, int, int]]] | None:
    """(timed waits, late wake-ups) of a precise loop; None where the loop keeps no record."""
    selector = getattr(loop, "_selector", None)
    if not isinstance(selector, TimerfdEpollSelector):
        return None
    return selector.timed_waits, list(selector.late_wakeups)


def run_delay_ns(loop: asyncio.AbstractEventLoop | None = None) -> int | None:
    """The calling thread's schedstat run delay (ns runnable but not running), or None."""
    selector = getattr(loop, "_selector", None)
    if isinstance(selector, TimerfdEpollSelector):
        return selector.run_delay_ns()
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None


def describe_loop(loop: asyncio.AbstractEventLoop) -> str:
    if getattr(loop, "_traceforge_precise", False):
        return "asyncio+timerfd"
    return type(loop).__module__.split(".")[0]
