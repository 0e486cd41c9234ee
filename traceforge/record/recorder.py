"""The replay recorder: per-request results kept in preallocated numpy columns, flushed as parts.

The dispatcher writes a finished request with :meth:`TimelineRecorder.complete` — a handful of
numpy item assignments and one ``list.append`` (about 1 µs; ``benchmarks/bench_recorder.py``
measures it against a bare list append). A background thread turns the finished indices into an
Arrow table with vectorised ``take``s and writes ``timeline/part-NNNNNN.parquet`` at least every
``flush_interval_s``, so a ``kill -9`` loses at most the last interval and the event loop never
waits for Parquet encoding (pyarrow releases the GIL while it writes).

The flusher costs ≈ 0.5 µs of CPU per row (a few ms per part) and holds the GIL for part of it.
Two things keep it off the dispatcher's back (measured in docs/scale.md): the replay shortens
the GIL switch interval while it runs (``ReplayOptions.switch_interval_us``), and
``flusher_cpus`` can put the thread on other cores than a pinned dispatcher's. (Idle CPU
priority was tried and is worse: a starved flusher that holds the GIL stalls the dispatcher.)

Null handling: integer columns use the dtype's minimum as the "null" sentinel, masked out when the
part is built; strings and the inter-token list live in sparse dicts (most rows have none).

``flusher="process"`` (what a replay uses by default, ``ReplayOptions.flusher``) takes the
flusher out of the dispatcher's process: the columns live in memory-mapped files in a scratch
directory ``timeline/.recorder-*`` (ignored by Parquet dataset readers), the sparse values go to
an append-only side log there (error text scrubbed first: nothing unscrubbed reaches disk), and a
child process (:mod:`traceforge.record.flusher`) scans the status column and writes the parts.
The dispatcher then shares neither the GIL nor its core with the flusher; its own cost is one
``write`` per row that has an error or an inter-token list (the side log), and none kept in
memory (those values are not also held in this process's dicts). Measured on the 2-core
VM (docs/scale.md): the thread flusher's GIL hand-offs were what limited one process to
40–50k req/s (send-lag p99 ≤ 1 ms) while, with no flushing at all, it sustained 80k. A
``kill -9`` of the dispatcher loses nothing: the child sees its stdin close, writes every
finished row and removes the scratch directory. If the child dies, the recorder falls back to
the thread flusher over the same columns.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from traceforge.record.writer import TimelineWriter
from traceforge.redact import scrub_text
from traceforge.schema import STATUSES, TIMELINE_SCHEMA

NULL_I64 = np.iinfo(np.int64).min
NULL_I32 = np.iinfo(np.int32).min
PENDING = -1
STATUS_CODE = {name: code for code, name in enumerate(STATUSES)}
OK, ERROR, TIMEOUT, CANCELLED, DROPPED = (STATUS_CODE[s] for s in STATUSES)
_STATUS_DICT = pa.array(list(STATUSES), pa.string())

# Outcome attributes copied into int64 / int32 columns when not None.
_I64_FIELDS = ("service_start_ns", "first_token_ns", "service_end_ns", "gpu_ns", "batch_id",
               "wire_sent_ns", "conn_wait_ns", "connect_ns")
_I32_FIELDS = ("batched_with", "tokens_out", "bucket_seq_len", "bucket_batch_size")

# Side log records (process flusher): header (row, kind, payload bytes), then the payload.
SIDE_HEADER = struct.Struct("<qBI")
SIDE_ERROR, SIDE_ITL, SIDE_WORKER = 0, 1, 2  # utf-8 text / int64 array / utf-8 name (row = code)
FLUSHERS = ("process", "thread")
_SCRUB_CACHE_MAX = 4096


class SideLog:
    """Reads the side log's complete records appended since the last call into a recorder's
    sparse values (``error``, ``itl_ns``, ``_worker_names``): the flusher child, and this
    process after a fall-back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.tail = b""

    def read(self, rec) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        buf = self.tail + data
        pos, size = 0, SIDE_HEADER.size
        while pos + size <= len(buf):
            i, kind, length = SIDE_HEADER.unpack_from(buf, pos)
            if pos + size + length > len(buf):
                break
            payload = buf[pos + size: pos + size + length]
            if kind == SIDE_ERROR:
                rec.error[i] = payload.decode(errors="replace")
            elif kind == SIDE_ITL:
                rec.itl_ns[i] = np.frombuffer(payload, np.int64).tolist()
            elif kind == SIDE_WORKER:
                while len(rec._worker_names) <= i:
                    rec._worker_names.append("")
                rec._worker_names[i] = payload.decode(errors="replace")
            pos += size + length
        self.tail = buf[pos:]



class TimelineRecorder:
    """Columns for every trace row; rows reach disk once :meth:`complete` marks them final.

    ``scheduled_ns`` is shared with the dispatcher (closed loop fills it in as it goes);
    ``sent_ns`` is written by the dispatcher directly (``recorder.sent_ns[i] = t``).
    """

    def __init__(
        self,
        run_dir: Path | str,
        *,
        request_id: np.ndarray,
        model_codes: np.ndarray,
        model_names: list[str],
        batch_size: np.ndarray,
        seq_len: np.ndarray,
        max_new_tokens: np.ndarray,
        scheduled_ns: np.ndarray,
        warmup_end_ns: int | None = None,
        flush_interval_s: float = 0.5,
        background: bool = True,
        session_id: np.ndarray | None = None,
        turn: np.ndarray | None = None,
        flusher_cpus: set[int] | None = None,
        replay_worker: int | None = None,
        scrub=scrub_text,
        flusher: str = "thread",
    ) -> None:
        n = len(request_id)
        if flusher not in FLUSHERS:
            raise ValueError(f"flusher must be one of {FLUSHERS}, not {flusher!r}")
        # The one place error text is scrubbed before it reaches disk (redact.py): a Scrubber
        # that knows the backend's secret values, or URL credentials and auth echoes only.
        self.scrub = scrub
        self.n = n
        self.replay_worker = replay_worker
        tag = "" if replay_worker is None else f"w{replay_worker:02d}"
        self.writer = TimelineWriter(run_dir, tag=tag)
        self.flusher = flusher if background else "thread"
        # Process flusher: every column in a memory-mapped file the child reads (see the module
        # docstring); otherwise plain arrays. Where the files cannot be made (no space: the
        # blocks are reserved up front, so a full disk is an error here, never a SIGBUS
        # mid-run), the thread flusher takes over and run.json says why.
        self.flusher_note: str | None = None  # why the process flusher is not used, if so
        self._scratch: Path | None = None
        self._mapped_dtypes: dict[str, str] = {}
        trace_cols = (request_id, model_codes, batch_size, seq_len, max_new_tokens,
                      scheduled_ns, session_id, turn)
        if self.flusher == "process" and n == 0:
            self.flusher = "thread"  # nothing to write
        if self.flusher == "process":
            scratch = self.writer.dir / f".recorder-{tag or 'main'}-{os.getpid()}"
            try:
                scratch.mkdir()
                self._scratch = scratch
                self._allocate(*trace_cols)
            except OSError as exc:
                shutil.rmtree(scratch, ignore_errors=True)
                self._scratch = None
                self._mapped_dtypes = {}
                self.flusher = "thread"
                self.flusher_note = (f"process flusher unavailable ({type(exc).__name__}: "
                                     f"{exc}); the thread flusher writes the parts")
        if self._scratch is None:
            self._allocate(*trace_cols)
        self.model_dict = pa.array(model_names, pa.string())
        self.warmup_end_ns = warmup_end_ns
        self.error: dict[int, str] = {}
        # Workers repeat (a few servers or endpoints serve every row): dictionary-encoded, so the
        # flusher builds the column without a Python loop over rows.
        self._worker_codes: dict[str, int] = {}
        self._worker_names: list[str] = []
        self.itl_ns: dict[int, list[int]] = {}
        # Finished indices not yet on disk. Appended by the event loop; the flusher takes a
        # prefix with slice + del, each atomic under the GIL, so no lock is needed here.
        self._finished: list[int] = []
        self.flush_interval_s = flush_interval_s
        self.flusher_cpus = flusher_cpus
        self._flush_lock = threading.Lock()
        self.flush_windows: list[tuple[int, int]] = []  # (start, end) of each part, monotonic ns
        self._stop = threading.Event()
        self._error: BaseException | None = None
        # Called (from the flusher thread) when a part cannot be written: the replay stops at
        # once rather than keep sending requests whose rows can no longer reach disk.
        self.on_error = None
        self._thread: threading.Thread | None = None
        self._side_fd: int | None = None
        self._side_reader: SideLog | None = None  # this process's reader, after a fall-back
        self._proc: subprocess.Popen | None = None
        # True while the child writes the parts: complete() then keeps sparse values in the
        # side log only (not also in this process's dicts: they would grow with every error
        # and streamed row of the run) and queues nothing for the thread.
        self._child_active = False
        self._child: dict = {}  # the child's final summary (rows, parts, error)
        self._closing = False
        self._scrubbed: dict[str, str] = {}
        if self._scratch is not None:
            self._start_child(run_dir, tag, model_names)
        else:
            self._warm_up()
            if background:
                self._thread = threading.Thread(target=self._flush_loop, name="timeline-flusher",
                                                daemon=True)
                self._thread.start()

    @property
    def warmup_end_ns(self) -> int | None:
        return self._warmup_end_ns

    @warmup_end_ns.setter
    def warmup_end_ns(self, value: int | None) -> None:
        self._warmup_end_ns = value
        if self._params is not None:
            self._params[0] = NULL_I64 if value is None else value

    def _allocate(self, request_id, model_codes, batch_size, seq_len, max_new_tokens,
                  scheduled_ns, session_id, turn) -> None:
        """Every column, in plain arrays or (process flusher) in mapped files."""
        column = self._column
        self.request_id = column("request_id", np.int64, np.asarray(request_id, np.int64))
        self.model_codes = column("model_codes", np.int32, np.asarray(model_codes, np.int32))
        self.batch_size = column("batch_size", np.int32, np.asarray(batch_size, np.int32))
        self.seq_len = column("seq_len", np.int32, np.asarray(seq_len, np.int32))
        self.max_new_tokens = column("max_new_tokens", np.int32,
                                     np.asarray(max_new_tokens, np.int32))
        # Shared with the dispatcher, which fills it in (closed loop) and makes it absolute.
        self.scheduled_ns = (scheduled_ns if self._scratch is None else
                             column("scheduled_ns", np.int64, np.asarray(scheduled_ns, np.int64)))
        # From the trace; NULL_I64 / NULL_I32 where a row belongs to no session.
        self.session_id = column("session_id", np.int64, NULL_I64 if session_id is None
                                 else np.asarray(session_id, np.int64))
        self.turn = column("turn", np.int32, NULL_I32 if turn is None
                           else np.asarray(turn, np.int32))
        self.sent_ns = column("sent_ns", np.int64, NULL_I64)
        self.done_ns = column("done_ns", np.int64, NULL_I64)
        self.status = column("status", np.int8, PENDING)
        self._i64 = {name: column(name, np.int64, NULL_I64) for name in _I64_FIELDS}
        self._i32 = {name: column(name, np.int32, NULL_I32) for name in _I32_FIELDS}
        # Workers repeat (a few servers or endpoints serve every row): dictionary-encoded, so the
        # flusher builds the column without a Python loop over rows.
        self.worker_code = column("worker_code", np.int32, -1)
        self.truncated = column("truncated", np.int8, -1)  # -1 null, 0 false, 1 true
        self._params: np.ndarray | None = None  # [warmup_end_ns] for the process flusher
        if self._scratch is not None:
            self.written = column("written", np.int8, 0)  # set by the child once on disk
            self._params = self._mapped("params", np.int64, 1)
            self._params[0] = NULL_I64

    def _column(self, name: str, dtype, values) -> np.ndarray:
        """A column: ``values`` (an array to copy, or a scalar fill) in a plain array, or in a
        memory-mapped file under the scratch directory (process flusher)."""
        if self._scratch is None:
            if np.isscalar(values):
                return np.full(self.n, values, dtype)
            return np.array(values, dtype, copy=True) if values.dtype != dtype else values
        mm = self._mapped(name, dtype, self.n)
        mm[:] = values
        return mm

    def _mapped(self, name: str, dtype, n: int) -> np.ndarray:
        """A zero-copy view of ``SCRATCH/name.bin``, its blocks reserved first (posix_fallocate:
        ENOSPC here, as an OSError, instead of SIGBUS on a page fault mid-run)."""
        dtype = np.dtype(dtype)
        path = self._scratch / f"{name}.bin"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            size = max(1, n * dtype.itemsize)
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, size)
            else:
                os.ftruncate(fd, size)
        finally:
            os.close(fd)
        self._mapped_dtypes[name] = dtype.str
        # a plain ndarray over the map: no memmap subclass cost on the hot path
        return np.asarray(np.memmap(path, dtype=dtype, mode="r+", shape=(n,)))

    def _start_child(self, run_dir, tag: str, model_names: list[str]) -> None:
        meta = {"run_dir": str(Path(run_dir)), "tag": tag, "n": self.n,
                "model_names": list(model_names), "replay_worker": self.replay_worker,
                "interval_s": self.flush_interval_s, "i64": list(_I64_FIELDS),
                "i32": list(_I32_FIELDS), "columns": self._mapped_dtypes}
        (self._scratch / "meta.json").write_text(json.dumps(meta))
        self._side_fd = os.open(self._scratch / "side.log",
                                os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._side_reader = SideLog(self._scratch / "side.log")
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # importable as in this process
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                    else "")
        # Its own session: a signal to this process group (Ctrl-C, killpg) does not stop it
        # before it has written what this process finished; it exits when our pipe closes.
        # stderr to a file, read only on failure: a pipe nobody drains could fill and stall it
        err_path = self._scratch / "flusher.err"
        try:
            with open(err_path, "wb") as err_file:
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", "traceforge.record.flusher", str(self._scratch)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err_file,
                    env=env, start_new_session=True)
        except OSError as exc:
            self._fall_back(f"flusher process did not start ({type(exc).__name__}: {exc})")
            return
        if self.flusher_cpus:
            with contextlib.suppress(AttributeError, OSError):
                os.sched_setaffinity(self._proc.pid, self.flusher_cpus)
        line = self._proc.stdout.readline()  # "ready" once imports and pyarrow's warm-up ran
        if not line.startswith(b'{"event": "ready"'):
            # Whatever it is doing, it must not write parts beside the thread that takes over.
            with contextlib.suppress(OSError):
                self._proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                self._proc.wait(timeout=5)
            lines: list[str] = []
            with contextlib.suppress(OSError):
                lines = err_path.read_text(errors="replace").strip().splitlines()
            last = lines[-1] if lines else ""
            self._fall_back(f"flusher process did not start ({line[:200]!r} {last})".strip())
            return
        self._child_active = True
        self._reader = threading.Thread(target=self._read_child, name="timeline-flusher-pipe",
                                        daemon=True)
        self._reader.start()

    def _read_child(self) -> None:
        """Blocks on the child's stdout (no GIL while it waits): errors stop the run at once,
        the final summary is kept; an early EOF means the child died: fall back."""
        proc = self._proc
        for raw in proc.stdout:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            if msg.get("event") == "error":
                self._error = OSError(f"timeline flusher process: {msg.get('message')}")
                if self.on_error is not None:
                    self.on_error(self._error)
            elif msg.get("event") == "done":
                self._child = msg
        if not self._child and not self._closing:
            self._fall_back(f"flusher process exited early (status {proc.wait()})")

    def _fall_back(self, why: str) -> None:
        """The child is gone: flush from this process (thread), continuing its part numbers.
        From here complete() queues rows again (a row queued twice is written once, flush());
        sparse values keep going to the side log, which flush() reads. The side log stays open
        until close(): it is closed only by the thread that writes it."""
        self._child_active = False
        self.flusher_note = why
        self.writer.resync()
        self._finished.extend(np.flatnonzero((self.status != PENDING)
                                             & (self.written == 0)).tolist())
        if not self._closing:
            self._thread = threading.Thread(target=self._flush_loop, name="timeline-flusher",
                                            daemon=True)
            self._thread.start()

    def _side_fd_close(self) -> None:
        fd, self._side_fd = self._side_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _side(self, i: int, kind: int, payload: bytes) -> None:
        try:
            os.write(self._side_fd, SIDE_HEADER.pack(i, kind, len(payload)) + payload)
        except OSError as exc:  # disk full: the run stops, as when a part fails
            self._error = exc
            if self.on_error is not None:
                self.on_error(exc)

    def _load_side(self) -> None:
        """After a fall-back: the side log's new records into this process's dicts, less the
        rows the child already wrote."""
        if self._side_reader is None:
            return
        self._side_reader.read(self)
        for d in (self.error, self.itl_ns):
            for i in [i for i in d if self.written[i]]:
                del d[i]

    def _scrubbed_text(self, text: str) -> str:
        clean = self._scrubbed.get(text)
        if clean is None:
            clean = self.scrub(text)
            if len(self._scrubbed) < _SCRUB_CACHE_MAX:
                self._scrubbed[text] = clean
        return clean

    # -- hot path (event loop) ---------------------------------------------------------------
    def complete(self, i: int, status: int, done_ns: int | None, outcome=None,
                 error: str | None = None) -> None:
        """Mark row ``i`` final. ``outcome`` is a protocol ``Outcome`` or None."""
        if done_ns is not None:
            self.done_ns[i] = done_ns
        if outcome is not None:
            i64 = self._i64
            for name in _I64_FIELDS:
                value = getattr(outcome, name)
                if value is not None:
                    i64[name][i] = value
            for name in _I32_FIELDS:
                value = getattr(outcome, name)
                if value is not None:
                    self._i32[name][i] = value
            worker = outcome.worker
            if worker is not None:
                code = self._worker_codes.get(worker)
                if code is None:
                    code = self._worker_codes[worker] = len(self._worker_names)
                    self._worker_names.append(worker)
                    if self._side_fd is not None:
                        self._side(code, SIDE_WORKER, worker.encode())
                self.worker_code[i] = code
            if outcome.itl_ns is not None:
                if self._side_fd is None:
                    self.itl_ns[i] = outcome.itl_ns
                else:
                    self._side(i, SIDE_ITL, np.asarray(outcome.itl_ns, np.int64).tobytes())
            if outcome.truncated is not None:
                self.truncated[i] = outcome.truncated
            if error is None:
                error = outcome.error
        if error is not None:
            if self._side_fd is None:
                self.error[i] = error
            else:
                self._side(i, SIDE_ERROR, self._scrubbed_text(error).encode())
        # Last: the process flusher takes a row once its status is set (side records first).
        self.status[i] = status
        if not self._child_active:  # the thread flusher's queue (the child scans the statuses)
            self._finished.append(i)

    def finalize_pending(self, due: np.ndarray, *, cancelled_msg: str, dropped_msg: str) -> dict:
        """Give every due row that never finished a final status, vectorised.

        Sent but unanswered rows become ``cancelled``, unsent ones ``dropped``. Returns the
        number of each.
        """
        pending = np.flatnonzero((self.status == PENDING) & due)
        sent = self.sent_ns[pending] != NULL_I64
        cancelled, dropped = pending[sent], pending[~sent]
        if self._side_fd is None:
            for i in cancelled.tolist():
                self.error[i] = cancelled_msg
            for i in dropped.tolist():
                self.error[i] = dropped_msg
        elif pending.size:  # one write, before the statuses
            chunks = []
            for rows, msg in ((cancelled, cancelled_msg), (dropped, dropped_msg)):
                text = self._scrubbed_text(msg).encode()
                chunks += [SIDE_HEADER.pack(i, SIDE_ERROR, len(text)) + text
                           for i in rows.tolist()]
            try:
                os.write(self._side_fd, b"".join(chunks))
            except OSError as exc:
                self._error = self._error or exc
        self.status[cancelled] = CANCELLED
        self.status[dropped] = DROPPED
        if not self._child_active:
            self._finished.extend(pending.tolist())
        return {"cancelled": int(cancelled.size), "dropped": int(dropped.size)}

    # -- flushing (background thread) --------------------------------------------------------
    def flush(self) -> int:
        """Write every finished row not yet on disk as one part; returns the row count.
        (With the process flusher the child writes; here only after a fall-back.)"""
        if self._child_active:
            return 0
        with self._flush_lock:
            k = len(self._finished)
            if k == 0:
                return 0
            started = time.monotonic_ns()
            idx = np.array(self._finished[:k], dtype=np.int64)
            if self._scratch is not None:  # after a fall-back: each row once, none the child wrote
                idx = np.unique(idx)
                idx = idx[self.written[idx] == 0]
                self._load_side()  # after the rows: their records precede their statuses
            else:
                idx.sort()
            table = self._build(idx)
            self.writer.write_part(table)
            if self._scratch is not None:
                self.written[idx] = 1
            if len(self.flush_windows) < 100_000:  # for the self-check (replay/selfcheck.py)
                self.flush_windows.append((started, time.monotonic_ns()))
            # Only once the part is on disk: a failed write (disk full, no descriptors) leaves
            # the rows queued, so close()'s last flush can still save them.
            del self._finished[:k]
            if self.error or self.itl_ns:
                for i in idx.tolist():
                    self.error.pop(i, None)
                    self.itl_ns.pop(i, None)
            return k

    @property
    def rows_written(self) -> int:
        return self.writer.rows_written + int(self._child.get("rows_written", 0))

    def _build(self, idx: np.ndarray) -> pa.Table:
        def i64(values: np.ndarray) -> pa.Array:
            return pa.array(values, pa.int64(), mask=values == NULL_I64)

        def i32(values: np.ndarray) -> pa.Array:
            return pa.array(values, pa.int32(), mask=values == NULL_I32)

        def sparse(d: dict, typ: pa.DataType) -> pa.Array:
            if not d:
                return pa.nulls(len(idx), typ)
            return pa.array([d.get(i) for i in idx.tolist()], typ)

        scheduled = self.scheduled_ns[idx]
        if self.warmup_end_ns is None:
            warmup = np.zeros(len(idx), bool)
        else:
            warmup = scheduled < self.warmup_end_ns
        models = pa.DictionaryArray.from_arrays(pa.array(self.model_codes[idx]), self.model_dict)
        status = pa.DictionaryArray.from_arrays(pa.array(self.status[idx].astype(np.int32)),
                                                _STATUS_DICT)
        columns = {
            "request_id": pa.array(self.request_id[idx], pa.int64()),
            "model": models.cast(pa.string()),
            "batch_size": pa.array(self.batch_size[idx], pa.int32()),
            "seq_len": pa.array(self.seq_len[idx], pa.int32()),
            "max_new_tokens": pa.array(self.max_new_tokens[idx], pa.int32()),
            "scheduled_ns": pa.array(scheduled, pa.int64()),
            # A backend that knows when the request was written (http) replaces the
            # dispatcher's hand-over time; self.sent_ns keeps the latter for the self-check.
            "sent_ns": i64(np.where(self._i64["wire_sent_ns"][idx] != NULL_I64,
                                    self._i64["wire_sent_ns"][idx], self.sent_ns[idx])),
            "service_start_ns": i64(self._i64["service_start_ns"][idx]),
            "first_token_ns": i64(self._i64["first_token_ns"][idx]),
            "service_end_ns": i64(self._i64["service_end_ns"][idx]),
            "done_ns": i64(self.done_ns[idx]),
            "status": status.cast(pa.string()),
            "error": self._errors(idx),
            "gpu_ns": i64(self._i64["gpu_ns"][idx]),
            "batch_id": i64(self._i64["batch_id"][idx]),
            "batched_with": i32(self._i32["batched_with"][idx]),
            "tokens_out": i32(self._i32["tokens_out"][idx]),
            "worker": self._workers(idx),
            "warmup": pa.array(warmup, pa.bool_()),
            "itl_ns": sparse(self.itl_ns, pa.list_(pa.int64())),
            "session_id": i64(self.session_id[idx]),
            "turn": i32(self.turn[idx]),
            "replay_worker": (pa.nulls(len(idx), pa.int32()) if self.replay_worker is None else
                              pa.array(np.full(len(idx), self.replay_worker, np.int32))),
            "bucket_seq_len": i32(self._i32["bucket_seq_len"][idx]),
            "bucket_batch_size": i32(self._i32["bucket_batch_size"][idx]),
            "conn_wait_ns": i64(self._i64["conn_wait_ns"][idx]),
            "connect_ns": i64(self._i64["connect_ns"][idx]),
            "truncated": pa.array(self.truncated[idx] == 1, pa.bool_(),
                                  mask=self.truncated[idx] < 0),
        }
        return pa.table(columns, schema=TIMELINE_SCHEMA)

    def _warm_up(self) -> None:
        """Pay pyarrow's lazy first-call costs (~15 ms: compute kernels, the Parquet writer) now,
        before the schedule starts, rather than in the first flush, where the flusher would hold
        the GIL while requests are due."""
        import io

        import pyarrow.parquet as pq

        pq.write_table(self._build(np.zeros(0, np.int64)), io.BytesIO(), compression="zstd")

    def _errors(self, idx: np.ndarray) -> pa.Array:
        """The part's error column, scrubbed. Each distinct text is scrubbed once: at overload
        thousands of rows share a handful of messages (timeouts, refused connections), and the
        regexes run on the flusher thread, which holds the GIL the dispatcher needs."""
        if not self.error:
            return pa.nulls(len(idx), pa.string())
        scrubbed: dict[str | None, str | None] = {None: None}
        out = []
        for i in idx.tolist():
            text = self.error.get(i)
            clean = scrubbed.get(text, scrubbed)
            if clean is scrubbed:
                clean = scrubbed[text] = self.scrub(text)
            out.append(clean)
        return pa.array(out, pa.string())

    def _workers(self, idx: np.ndarray) -> pa.Array:
        codes = self.worker_code[idx]
        names = pa.array(list(self._worker_names), pa.string())  # a snapshot: appends may race
        return pa.DictionaryArray.from_arrays(
            pa.array(codes, pa.int32(), mask=codes < 0), names).cast(pa.string())

    def _flush_loop(self) -> None:
        if self.flusher_cpus:
            # not Linux, or CPUs outside our cpuset: stay where we are
            with contextlib.suppress(AttributeError, OSError):
                os.sched_setaffinity(threading.get_native_id(), self.flusher_cpus)
        while not self._stop.wait(self.flush_interval_s):
            try:
                self.flush()
            except BaseException as exc:  # surfaced by close(); never kill the run silently
                self._error = exc
                if self.on_error is not None:
                    self.on_error(exc)
                return

    @property
    def write_error(self) -> BaseException | None:
        """The flusher's failure, if any (the run must end as ``failed``)."""
        return self._error

    def close(self) -> None:
        """Stop the flusher and write what is left; re-raises a flusher failure."""
        if self._proc is not None:
            self._close_child()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.flush()  # after a flusher failure this may still save the rest, or fail again
        except BaseException as exc:
            if self._error is None:
                self._error = exc
        if self._scratch is not None and self._proc is None:  # the child never started
            self._side_fd_close()
            shutil.rmtree(self._scratch, ignore_errors=True)
        if self._error is not None:
            raise self._error

    def _close_child(self) -> None:
        """Ask the child to write every finished row and exit; take over what it could not."""
        self._closing = True
        proc = self._proc
        self._side_fd_close()  # every record is written: os.write does not buffer
        if self.flusher_note is None:
            with contextlib.suppress(OSError):
                proc.stdin.write(b"close\n")
                proc.stdin.flush()
        with contextlib.suppress(OSError):
            proc.stdin.close()
        # A final part of a million rows takes the child about a second here; be generous.
        deadline = 30.0 + self.n / 50_000
        try:
            proc.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.join(timeout=5)
        self._child_active = False
        if self._child.get("error") and self._error is None:
            self._error = OSError(f"timeline flusher process: {self._child['error']}")
        left = np.flatnonzero((self.status != PENDING) & (self.written == 0))
        if left.size:  # the child died or failed: write the rest from here
            if self.flusher_note is None:
                self.flusher_note = (f"flusher process ended with {left.size} finished rows "
                                     f"unwritten (exit status {proc.returncode})")
            self.writer.resync()
            with self._flush_lock:
                self._finished = left.tolist()
                self._load_side()  # before the scratch goes
        else:
            self._finished = []
        shutil.rmtree(self._scratch, ignore_errors=True)

    def describe_flusher(self) -> dict:
        """For run.json: which flusher wrote the parts, and any fall-back."""
        out: dict = {"flusher": self.flusher}
        if self._proc is not None:
            out["flusher_pid"] = self._proc.pid
            out["child_rows"] = int(self._child.get("rows_written", 0))
            out["child_parts"] = int(self._child.get("parts", 0))
        if self.flusher_note:
            out["fallback"] = self.flusher_note
        return out

    # -- summaries ---------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        codes = np.bincount(self.status[self.status >= 0], minlength=len(STATUSES))
        return {name: int(codes[k]) for k, name in enumerate(STATUSES) if codes[k]}

