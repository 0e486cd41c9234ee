"""The timeline part writer: conforming Arrow tables written as ``timeline/part-NNNNNN.parquet``.

Row buffering and the once-a-second flushing thread live in :mod:`traceforge.record.recorder`
(the replay path); a simulated or synthetic run hands whole tables to :meth:`write_table`. Each
part is written to a dot-file and renamed, so a reader (``pyarrow.dataset``, which skips
dot-files) never sees a half-written part, and ``kill -9`` loses only the part being written.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from traceforge.schema import TIMELINE_SCHEMA, atomic_write

COLUMNS = TIMELINE_SCHEMA.names
PART_ROWS = 1_000_000


class TimelineWriter:
    def __init__(self, run_dir: Path | str, *, tag: str = "") -> None:
        """``tag``: parts are named ``part-{tag}-NNNNNN.parquet`` (a replay worker's, e.g.
        ``w01``), so several writers can share one timeline directory."""
        self.dir = Path(run_dir) / "timeline"
        self._prefix = f"part-{tag}-" if tag else "part-"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # the recorder's flusher thread and close() may race
        self._part = 0
        self.rows_written = 0

    def write_table(self, table: pa.Table) -> None:
        """Write a whole table (e.g. a simulated run) as parts of at most PART_ROWS rows;
        missing columns become nulls (``warmup`` becomes false)."""
        table = _conform(table)
        for offset in range(0, table.num_rows, PART_ROWS):
            self.write_part(table.slice(offset, PART_ROWS))

    def write_part(self, table: pa.Table) -> None:
        """Write one conforming table as the next part file, atomically."""
        if table.num_rows == 0:
            return
        with self._lock:
            self._part += 1
            path = self.dir / f"{self._prefix}{self._part:06d}.parquet"
            atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
            self.rows_written += table.num_rows

    def resync(self) -> None:
        """Continue after the highest part number on disk (another process — the recorder's
        flusher child — may have written parts under this prefix)."""
        with self._lock:
            for path in self.dir.glob(f"{self._prefix}*.parquet"):
                tail = path.stem[len(self._prefix):]
                if tail.isdigit():
                    self._part = max(self._part, int(tail))

    def close(self) -> None:
        """Nothing is buffered here; kept so callers can treat writers alike."""


def _conform(table: pa.Table) -> pa.Table:
    missing = [c for c in COLUMNS if c not in table.column_names]
    for c in missing:
        table = table.append_column(TIMELINE_SCHEMA.field(c),
                                    pa.nulls(table.num_rows, TIMELINE_SCHEMA.field(c).type))
    if "warmup" in missing:
        table = table.set_column(table.column_names.index("warmup"), "warmup",
                                 pa.array([False] * table.num_rows, pa.bool_()))
    return table.select(COLUMNS).cast(TIMELINE_SCHEMA)


def read_timeline(run_dir: Path | str) -> pa.Table:
    """The whole timeline of a run directory, sorted by request_id."""
    path = Path(run_dir) / "timeline"
    parts = sorted(path.glob("part-*.parquet")) if path.is_dir() else []
    if not parts:
        return TIMELINE_SCHEMA.empty_table()
    table = ds.dataset(parts, format="parquet", schema=TIMELINE_SCHEMA).to_table()
    return table.sort_by("request_id")
