"""``python -m traceforge.record.flusher SCRATCH``: the recorder's flusher in its own process.

Started by :class:`~traceforge.record.recorder.TimelineRecorder` (``flusher="process"``). It maps
the recorder's columns (``SCRATCH/*.bin``, dtypes in ``meta.json``), reads the side log of sparse values (scrubbed error
text, inter-token lists, worker names) and, every ``interval_s``, writes the rows whose status
became final as the next ``timeline/part-*.parquet`` — the same table the thread flusher builds
(``TimelineRecorder._build``). It shares no GIL with the dispatcher.

On x86 (total store order) a row is written at the first scan that sees its status final:
every store the dispatcher made before the status store is visible by then. Elsewhere it is
written one scan later, and scans run every half interval, so parts lag by at most one
interval either way. ``close`` on stdin, or stdin's EOF (the dispatcher
died, even by SIGKILL), ends it with a last part of every finished row; after an EOF it also
removes SCRATCH. Messages on stdout, one JSON object per line: ``ready``, ``error`` (a part
could not be written: the dispatcher stops the run), ``done`` (rows and parts written).
"""

from __future__ import annotations

import json
import os
import platform
import select
import shutil
import sys
from pathlib import Path

import numpy as np


def _say(**msg) -> None:
    try:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, OSError):  # the dispatcher is gone: nobody to tell
        pass


def _open(scratch: Path):
    import pyarrow as pa

    from traceforge.record.recorder import TimelineRecorder
    from traceforge.record.writer import TimelineWriter

    meta = json.loads((scratch / "meta.json").read_text())

    def col(name: str, mode: str = "r") -> np.ndarray:
        shape = (1,) if name == "params" else (meta["n"],)
        return np.memmap(scratch / f"{name}.bin", dtype=np.dtype(meta["columns"][name]),
                         mode=mode, shape=shape)

    # The recorder's own _build, on an instance whose columns are the maps.
    rec = TimelineRecorder.__new__(TimelineRecorder)
    rec.n = meta["n"]
    rec.replay_worker = meta["replay_worker"]
    rec._params = col("params")  # [warmup_end_ns], set by the dispatcher once it has an origin
    rec._warmup_end_ns = None
    rec.model_dict = pa.array(meta["model_names"], pa.string())
    for name in ("request_id", "model_codes", "batch_size", "seq_len", "max_new_tokens",
                 "scheduled_ns", "session_id", "turn", "sent_ns", "done_ns", "status",
                 "worker_code", "truncated"):
        setattr(rec, name, col(name))
    rec._i64 = {name: col(name) for name in meta["i64"]}
    rec._i32 = {name: col(name) for name in meta["i32"]}
    rec.error, rec.itl_ns, rec._worker_names = {}, {}, []
    rec.scrub = lambda text: text  # scrubbed by the dispatcher before it reached the log
    written = col("written", "r+")
    writer = TimelineWriter(meta["run_dir"], tag=meta["tag"])
    writer.resync()
    return meta, rec, written, writer


def main(argv: list[str]) -> int:
    from traceforge.record.recorder import NULL_I64, PENDING, SideLog

    scratch = Path(argv[0])
    meta, rec, written, writer = _open(scratch)
    rec._warm_up()  # pyarrow's first-call costs, before the schedule
    side = SideLog(scratch / "side.log")
    # x86: stores become visible in program order; other CPUs may reorder them, so a row is
    # taken one scan after its status was seen (twice the scans, same lag).
    settle = platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686")
    interval = float(meta["interval_s"]) / (2 if settle else 1)
    stdin = sys.stdin.buffer.fileno()
    _say(event="ready", pid=os.getpid())
    lo = 0  # rows below lo are all written
    seen = np.empty(0, np.int64)  # final at the last scan, not yet written
    parts = 0
    error: str | None = None
    parent_gone = False
    while True:
        final = False
        ready, _, _ = select.select([stdin], [], [], interval)
        if ready:
            data = os.read(stdin, 4096)
            if not data:
                final = parent_gone = True
            elif b"close" in data:
                final = True
        if error is not None and not final:
            continue  # after a failed part: wait for close (the dispatcher stops the run)
        unwritten = written[lo:] == 0  # one pass over the tail per scan
        done = np.flatnonzero((rec.status[lo:] != PENDING) & unwritten) + lo
        side.read(rec)  # after the scan: records precede their row's status store
        rows = done if final or not settle else np.intersect1d(seen, done, assume_unique=True)
        try:
            if rows.size:
                end = int(rec._params[0])
                rec._warmup_end_ns = None if end == NULL_I64 else end
                writer.write_part(rec._build(rows))
                written[rows] = 1
                unwritten[rows - lo] = False
                parts += 1
                if rec.error or rec.itl_ns:
                    for i in rows.tolist():
                        rec.error.pop(i, None)
                        rec.itl_ns.pop(i, None)
        except Exception as exc:  # reported; the dispatcher ends the run
            error = f"{type(exc).__name__}: {exc}"[:500]
            _say(event="error", message=error)
        seen = np.setdiff1d(done, rows, assume_unique=True)
        first = int(np.argmax(unwritten)) if unwritten.size else 0
        lo = lo + first if unwritten.size and unwritten[first] else rec.n
        if final:
            break
    written.flush()
    if parent_gone:  # nobody else will: the parts hold every finished row now
        shutil.rmtree(scratch, ignore_errors=True)
    _say(event="done", rows_written=writer.rows_written, parts=parts, error=error,
         parent_gone=parent_gone)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
