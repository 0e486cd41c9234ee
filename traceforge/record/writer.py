"""The timeline writer: rows buffered in column lists, written as ``timeline/part-NNNNNN.parquet``.

A background thread closes a part at least every ``flush_interval_s`` so that ``kill -9`` loses at
most the last interval, without the event loop ever blocking on Parquet I/O. Each part is written
to a dot-file and renamed, so a reader (``pyarrow.dataset``, which skips dot-files) never sees a
half-written part.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from traceforge.schema import TIMELINE_SCHEMA, atomic_write

COLUMNS = TIMELINE_SCHEMA.names
_DEFAULTS = {"warmup": False}


class TimelineWriter:
    def __init__(self, run_dir: Path | str, *, flush_interval_s: float = 0.5,
                 background: bool = True) -> None:
        self.dir = Path(run_dir) / "timeline"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.flush_interval_s = flush_interval_s
        self._cols: dict[str, list] = {c: [] for c in COLUMNS}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._part = 0
        self.rows_written = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        if background:
            self._thread = threading.Thread(target=self._loop, name="timeline-writer",
                                            daemon=True)
            self._thread.start()

    # -- producers ---------------------------------------------------------------------------
    def add(self, row: dict) -> None:
        """Append one row given as a mapping of column -> value (missing columns are null)."""
        with self._lock:
            for name, col in self._cols.items():
                col.append(row.get(name, _DEFAULTS.get(name)))

    def add_columns(self, **columns: list) -> None:
        """Append many rows given as equal-length column lists."""
        n = len(next(iter(columns.values())))
        with self._lock:
            for name, col in self._cols.items():
                values = columns.get(name)
                col.extend(values if values is not None else [_DEFAULTS.get(name)] * n)

    def write_table(self, table: pa.Table) -> None:
        """Write a whole table (e.g. a simulated run) as parts of at most 1M rows."""
        table = _conform(table)
        for offset in range(0, max(table.num_rows, 1), 1_000_000):
            self.write_part(table.slice(offset, 1_000_000))

    # -- flushing ----------------------------------------------------------------------------
    def flush(self) -> None:
        with self._lock:
            if not self._cols["request_id"]:
                return
            cols, self._cols = self._cols, {c: [] for c in COLUMNS}
        table = pa.table({c: pa.array(cols[c], type=TIMELINE_SCHEMA.field(c).type)
                          for c in COLUMNS}, schema=TIMELINE_SCHEMA)
        self.write_part(table)

    def write_part(self, table: pa.Table) -> None:
        """Write one conforming table as the next part file, atomically."""
        if table.num_rows == 0:
            return
        with self._write_lock:
            self._part += 1
            path = self.dir / f"part-{self._part:06d}.parquet"
            atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
            self.rows_written += table.num_rows

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_interval_s):
            try:
                self.flush()
            except BaseException as exc:  # surfaced by close(); never kill the run silently
                self._error = exc

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()
        if self._error is not None:
            raise self._error


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
