"""Dispatcher-side handle of one worker process: start, submit, ping, detect death, stop.

The socket is read by the event loop itself (``loop.add_reader``), so a result costs one
wake-up and no thread hop. A worker that dies turns every request it held, and every later one,
into an ``error`` result naming the exit status and the tail of its stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from typing import Any

from traceforge.errors import RunFailure


def _load_prctl():
    try:
        import ctypes
        import ctypes.util

        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


_PRCTL = _load_prctl()  # resolved here: the child between fork and exec must not load libraries


def _die_with_parent(parent_pid: int):
    """``preexec_fn``: the worker gets SIGKILL when the dispatcher dies (PR_SET_PDEATHSIG
    survives exec), from its very first instruction — a worker still importing torch or
    building models must not outlive a ``kill -9`` of its dispatcher."""
    if _PRCTL is None:
        return None

    def setup() -> None:
        _PRCTL(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return setup


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "closed its connection while still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


class WorkerProcess:
    def __init__(self, name: str, cfg: dict[str, Any], env: dict[str, str], status=None):
        self.name = name
        self.cfg = cfg
        self.env = env
        # status(line): the worker's progress lines while it starts (slow pre-warm); each one
        # also restarts start()'s timeout, which bounds silence, not a long pre-warm
        self.status = status
        self._progress_at = 0.0
        # The worker's stdout/stderr: an already-unlinked temporary file (kept open here), so
        # nothing is left on disk however the dispatcher dies (SIGKILL included).
        self.log = None
        self.proc: subprocess.Popen | None = None
        self.conn: Connection | None = None
        self.pending: dict[int, asyncio.Future] = {}
        self.info: dict[str, Any] = {}
        self.dead_reason: str | None = None
        self._ready: asyncio.Future | None = None
        self._pongs: dict[int, asyncio.Future] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    async def start(self, timeout_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        parent, child = socket.socketpair()
        # Closed by close_log() once the backend has copied it (the worker writes meanwhile).
        self.log = tempfile.TemporaryFile(prefix="traceforge-worker-")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "traceforge.backends.resident.worker",
             "--fd", str(child.fileno()), "--parent", str(os.getpid())],
            pass_fds=[child.fileno()], env=self.env, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent(os.getpid()),
            stdout=self.log, stderr=self.log)
        child.close()
        self.conn = Connection(parent.detach())
        self._ready = self._loop.create_future()
        self._loop.add_reader(self.conn.fileno(), self._on_readable)
        self.conn.send(("init", self.cfg))
        self._progress_at = time.monotonic()
        while True:
            left = self._progress_at + timeout_s - time.monotonic()
            if left > 0:
                done, _ = await asyncio.wait({self._ready}, timeout=left)
                if done:
                    break
                continue  # a progress line came meanwhile: wait again from it
            self._ready.cancel()
            raise RunFailure(f"worker {self.name} (pid {self.pid}) not ready: nothing heard "
                             f"from it for {timeout_s:.0f} s; log: {self.log_tail()}")
        self.info = self._ready.result()

    def submit(self, job: tuple) -> asyncio.Future:
        fut = self._loop.create_future()
        if self.dead_reason is not None:
            fut.set_result({"status": "error", "error": self.dead_reason, "worker": self.name})
            return fut
        self.pending[job[0]] = fut
        try:
            self.conn.send(("job", job))
        except OSError as exc:
            self._died(f"send failed: {exc}")
        return fut

    def forget(self, request_id: int) -> None:
        self.pending.pop(request_id, None)

    async def ping_rtt_ns(self, n: int) -> list[int]:
        """Round trips of an empty message through the worker's reader thread."""
        rtts = []
        for i in range(n):
            fut = self._loop.create_future()
            self._pongs[i] = fut
            sent = time.perf_counter_ns()
            self.conn.send(("ping", i))
            await fut
            rtts.append(time.perf_counter_ns() - sent)
        return rtts

    # -- event-loop reader -------------------------------------------------------------------
    def _on_readable(self) -> None:
        try:
            while self.conn.poll():
                msg = self.conn.recv()
                tag = msg[0]
                if tag == "result":
                    fut = self.pending.pop(msg[1], None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg[2])
                elif tag == "pong":
                    fut = self._pongs.pop(msg[1], None)
                    if fut is not None and not fut.done():
                        fut.set_result(None)
                elif tag == "ready":
                    if not self._ready.done():
                        self._ready.set_result(msg[1])
                elif tag == "status":
                    self._progress_at = time.monotonic()
                    if self.status is not None:
                        self.status(msg[1])
                elif tag == "fail":
                    self._died(f"failed to start: {msg[1]}")
        except (EOFError, OSError):
            self._died(None)

    def _died(self, reason: str | None) -> None:
        if self.dead_reason is not None:
            return
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.conn.fileno())
        rc = None
        if self.proc is not None:
            # A crash: EOF came from the exit, so the status is there at once (the short wait
            # covers the kernel closing the socket a moment before the process is reapable).
            # A requested stop: stop() reaps it; never block the event loop here.
            with contextlib.suppress(subprocess.TimeoutExpired):
                rc = self.proc.poll() if self._stopping else self.proc.wait(timeout=0.5)
        what = reason or describe_exit(rc)
        if self._stopping and reason is None:
            what = "stopped" if rc is None else f"stopped ({describe_exit(rc)})"
        tail = self.log_tail()
        self.dead_reason = (f"worker {self.name} (pid {self.pid}) {what}"
                            + (f"; stderr: {tail}" if tail and not self._stopping else ""))
        err = {"status": "error", "error": self.dead_reason, "worker": self.name}
        for fut in list(self.pending.values()) + list(self._pongs.values()):
            if not fut.done():
                fut.set_result(err)
        self.pending.clear()
        self._pongs.clear()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(RunFailure(self.dead_reason))
            if self._stopping:  # stopped while starting (Ctrl-C during loading): start() may
                # be gone already; marked seen, so asyncio does not print "Future exception
                # was never retrieved" at exit (start() still raises it if it waits)
                self._ready.exception()

    def log_text(self) -> str:
        """Everything the worker wrote so far (pread: the file offset, shared with the worker's
        stdout, is left alone)."""
        if self.log is None or self.log.closed:
            return ""
        with contextlib.suppress(OSError):
            fd = self.log.fileno()
            return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")
        return ""

    def log_tail(self, n: int = 3) -> str:
        lines = self.log_text().strip().splitlines()
        return " | ".join(line.strip() for line in lines[-n:])[-600:]

    def close_log(self) -> None:
        if self.log is not None:
            self.log.close()

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the worker to finish, then terminate/kill it; always reaps the process."""
        self._stopping = True
        if self._ready is not None and not self._ready.done():
            # Still loading (interrupted, or another worker failed): it reads no messages yet,
            # so asking it to stop would only wait out the timeout.
            timeout_s = 0.0
        if self.conn is not None and self.dead_reason is None:
            with contextlib.suppress(OSError):
                self.conn.send(("stop",))
        if self.proc is not None:
            for action in (None, self.proc.terminate, self.proc.kill):
                if action is not None:
                    with contextlib.suppress(ProcessLookupError):
                        action()
                try:
                    await asyncio.to_thread(self.proc.wait, timeout_s if action is None else 5)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self.dead_reason is None:
            self._died("stopped")
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.conn.fileno())
            self.conn.close()
