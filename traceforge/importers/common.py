"""Shared machinery of the importers: reading columns with line numbers, malformed-row policy,
and the window / scale / thin pipeline that turns parsed records into a trace.

Readers parse their format into :class:`Records` (int64 ns times on any origin, model codes,
shapes). Malformed rows are found vectorised (a regex mask per column, then a cast of the valid
rows), so clean files never take a Python loop and dirty ones still get the exact line number.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from traceforge.errors import BadInput
from traceforge.schema import INT32_MAX, sha256_file

SKIP_HINT = "--skip-bad skips malformed rows"
_INT_RE = r"^\s*[+-]?\d+\s*$"
_FLOAT_RE = r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$"
_ISO_RE = r"^\s*\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d{1,9})?\s*$"
TIME_UNITS_NS = {"s": 1e9, "ms": 1e6, "us": 1e3, "ns": 1.0}


@dataclass
class Records:
    """What a reader hands back: one entry per request, in file order."""

    time_ns: np.ndarray  # int64, any origin
    model_code: np.ndarray  # int32 index into model_names
    model_names: list[str]
    batch_size: np.ndarray
    seq_len: np.ndarray
    max_new_tokens: np.ndarray
    files: list[dict[str, Any]] = field(default_factory=list)  # provenance per source file
    origin_ns: int | None = None  # window origin; None: the first arrival
    end_ns: int | None = None  # natural end of the source (e.g. last minute of a count table)
    notes: dict[str, Any] = field(default_factory=dict)  # format-specific counts for provenance
    prefix_blocks: pa.Array | None = None  # list<int64> per request (None: the format has none)
    prefix_block_tokens: int | None = None  # tokens per prefix block
    # Multi-turn sessions where the format has them (csv --columns session=COL[,turn=COL]):
    # int64 session keys (any values, -1 = none) and optional turn numbers (None: numbered by
    # time within each session).
    session_key: np.ndarray | None = None
    turn: np.ndarray | None = None
    # Record index -> (file, 1-based line) for messages about one record (None: not tracked)
    where: Callable[[int], tuple[Path, int]] | None = None


def file_info(path: Path, rows: int, skipped: int) -> dict[str, Any]:
    return {"name": path.name, "sha256": sha256_file(path), "rows": rows,
            "skipped_bad_rows": skipped}


def read_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        try:
            header = next(csv.reader(fh))
        except StopIteration:
            raise BadInput("empty file (no header line)", source=path) from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise BadInput(f"not a CSV file ({exc})", source=path) from exc
    return [h.strip() for h in header]


class CsvColumns:
    """A CSV read as strings, with per-column parsers that record malformed rows.

    ``bad`` accumulates a mask of malformed rows; :meth:`finish` raises for the first one (in
    file order, with its line number) or, with ``skip_bad``, returns the mask of rows to keep.
    """

    def __init__(self, path: Path, columns: list[str], *, skip_bad: bool,
                 typed: dict[str, pa.DataType] | None = None) -> None:
        import pyarrow.csv as pacsv

        self.path = path
        self.skip_bad = skip_bad
        header = read_header(path)
        for col in columns:
            if col not in header:
                raise BadInput("missing column", source=path, key=col,
                               allowed=", ".join(header[:12]) + (", ..." if len(header) > 12
                                                                 else ""))
            # A header naming a column we read twice (t,t,s) was read silently from the first
            # one. Only the columns read are checked: an unread column named twice is harmless.
            where = [i + 1 for i, name in enumerate(header) if name == col]
            if len(where) > 1:
                raise BadInput(f"the header names this column {len(where)} times (fields "
                               f"{', '.join(map(str, where))}): which one is meant is "
                               "ambiguous", source=f"{path}:1", key="column", value=col)
        # rows with the wrong number of fields: (1-based line, text, expected, found). Arrow
        # ignores exceptions raised inside the handler, so rows are recorded and judged later.
        self.invalid_rows: list[tuple[int, str, int, int]] = []

        def on_invalid(row) -> str:
            self.invalid_rows.append((int(row.number), row.text, row.expected_columns,
                                      row.actual_columns))
            return "skip"

        def read(types: dict[str, pa.DataType]) -> pa.Table:
            return pacsv.read_csv(
                path,
                read_options=pacsv.ReadOptions(use_threads=False, block_size=1 << 24),
                parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid,
                                                 ignore_empty_lines=False),
                convert_options=pacsv.ConvertOptions(include_columns=columns,
                                                     column_types=types,
                                                     strings_can_be_null=False,
                                                     quoted_strings_can_be_null=False))

        self.typed = False
        try:
            if typed:
                # Fast path for big clean files: let Arrow convert while parsing.
                try:
                    self.table = read({c: typed.get(c, pa.string()) for c in columns})
                    self.typed = True
                except pa.ArrowInvalid:
                    self.invalid_rows.clear()
                    self.table = read({c: pa.string() for c in columns})
            else:
                self.table = read({c: pa.string() for c in columns})
        except BadInput:
            raise
        except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
            raise BadInput(f"cannot read as CSV ({exc})", source=path) from exc
        self.rows = self.table.num_rows
        self.bad = np.zeros(self.rows, dtype=bool)
        self._first_bad: tuple[int, str, str, str] | None = None  # row, column, value, message

    def line_of(self, row: int) -> int:
        """1-based line number of data row ``row`` (header is line 1)."""
        line = row + 2
        for skipped in sorted(r[0] for r in self.invalid_rows):
            if skipped <= line:
                line += 1
            else:
                break
        return line

    def _mark(self, column: str, bad: np.ndarray, message: str) -> None:
        bad = np.asarray(bad, dtype=bool)
        if not bad.any():
            return
        first = int(np.argmax(bad))
        if self._first_bad is None or first < self._first_bad[0]:
            value = self.table.column(column)[first].as_py()
            self._first_bad = (first, column, value, message)
        self.bad |= bad

    def strings(self, column: str) -> pa.Array:
        return pc.cast(self.table.column(column).combine_chunks(), pa.string())

    def _numeric(self, column: str, kind: str) -> np.ndarray:
        col = self.table.column(column).combine_chunks()
        target = pa.int64() if kind == "int" else pa.float64()
        if self.typed and col.type == target:
            return col.to_numpy(zero_copy_only=False)
        col = pc.cast(col, pa.string())
        ok = pc.match_substring_regex(col, _INT_RE if kind == "int" else _FLOAT_RE)
        ok = ok.to_numpy(zero_copy_only=False)
        self._mark(column, ~ok, "not an integer" if kind == "int" else "not a number")
        cleaned = pc.if_else(pa.array(ok), pc.utf8_trim_whitespace(col), "0")
        try:
            return pc.cast(cleaned, target).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid:  # an integer out of int64 range: find it the slow way
            values = np.zeros(len(cleaned), dtype=np.int64)
            overflow = np.zeros(len(cleaned), dtype=bool)
            for i, text in enumerate(cleaned.to_pylist()):
                v = int(text)
                if abs(v) >= 2**63:
                    overflow[i] = True
                else:
                    values[i] = v
            self._mark(column, overflow, "integer out of range")
            return values

    def integers(self, column: str, *, low: int, high: int = INT32_MAX) -> np.ndarray:
        values = self._numeric(column, "int")
        self._mark(column, (values < low) & ~self.bad, f"must be an integer >= {low}")
        self._mark(column, (values > high) & ~self.bad, f"must be <= {high}")
        return values

    def floats(self, column: str, *, low: float | None = None) -> np.ndarray:
        values = self._numeric(column, "float")
        self._mark(column, ~np.isfinite(values) & ~self.bad, "not a finite number")
        if low is not None:
            self._mark(column, (values < low) & ~self.bad, f"must be >= {low:g}")
        return values

    def timestamps_ns(self, column: str) -> np.ndarray:
        """ISO-8601 ``YYYY-MM-DD HH:MM:SS[.fffffffff]`` (naive, taken as UTC) -> ns since epoch."""
        col = self.strings(column)
        ok = pc.match_substring_regex(col, _ISO_RE).to_numpy(zero_copy_only=False)
        self._mark(column, ~ok, "not a timestamp YYYY-MM-DD HH:MM:SS[.fraction]")
        cleaned = pc.if_else(pa.array(ok), pc.utf8_trim_whitespace(col), "1970-01-01 00:00:00")
        try:
            stamps = pc.cast(cleaned, pa.timestamp("ns"))
        except pa.ArrowInvalid:  # passes the regex but is no date (month 13): find it per row
            out = np.zeros(len(cleaned), dtype=np.int64)
            wrong = np.zeros(len(cleaned), dtype=bool)
            for i, text in enumerate(cleaned.to_pylist()):
                try:
                    out[i] = pc.cast(pa.array([text]), pa.timestamp("ns"))[0].value
                except pa.ArrowInvalid:
                    wrong[i] = True
            self._mark(column, wrong, "not a valid date/time")
            return out
        return stamps.cast(pa.int64()).to_numpy(zero_copy_only=False)

    def time_ns(self, column: str, unit: str) -> np.ndarray:
        if unit == "iso":
            return self.timestamps_ns(column)
        values = self.floats(column)
        with np.errstate(over="ignore", invalid="ignore"):
            ns = values * TIME_UNITS_NS[unit]
        # beyond int64 ns (292 years) a float would wrap silently into a wrong time
        self._mark(column, ~(np.abs(ns) < 2.0**63) & ~self.bad,
                   "time beyond the int64-nanosecond range (about 292 years)")
        return np.rint(np.where(np.abs(ns) < 2.0**63, ns, 0.0)).astype(np.int64)

    def mark(self, column: str, bad: np.ndarray, message: str) -> None:
        """Let a reader flag rows by its own rule (e.g. a value no other row may take)."""
        self._mark(column, bad & ~self.bad, message)

    def finish(self) -> tuple[np.ndarray, int]:
        """(rows to keep, number skipped); raises for the first malformed row unless skip_bad."""
        if not self.skip_bad:
            first_value = (self.line_of(self._first_bad[0]) if self._first_bad is not None
                           else None)
            first_short = min(self.invalid_rows) if self.invalid_rows else None
            if first_short is not None and (first_value is None or first_short[0] < first_value):
                line, text, expected, found = first_short
                raise BadInput(f"expected {expected} fields, found {found} ({SKIP_HINT})",
                               source=f"{self.path}:{line}", value=text[:60])
            if self._first_bad is not None:
                _, column, value, message = self._first_bad
                raise BadInput(f"{message} ({SKIP_HINT})", source=f"{self.path}:{first_value}",
                               key=column, value=value)
        skipped = int(self.bad.sum()) + len(self.invalid_rows)
        return ~self.bad, skipped


def parse_model_names(models: str | None, *, source_key: str = "--models") -> list[str] | None:
    if models is None:
        return None
    names = [m.strip() for m in models.split(",")]
    if not names or any(not m for m in names):
        raise BadInput("empty model name in the list", key=source_key, value=models)
    plain = [m.split("=", 1)[-1] for m in names]
    dupes = sorted({m for m in plain if plain.count(m) > 1})
    if dupes:
        raise BadInput(f"model name {dupes[0]!r} given twice", key=source_key, value=models)
    return names


def rename_filter(models: list[str] | None, present: list[str]) -> dict[str, str]:
    """``--models`` for formats with a model column: ``SRC`` keeps it, ``SRC=NAME`` renames it;
    without ``--models`` every source model is kept under its own name."""
    if models is None:
        return {m: m for m in present}
    out: dict[str, str] = {}
    for entry in models:
        src, _, new = entry.partition("=")
        if src not in present:
            raise BadInput("no such model in the source", key="--models", value=src,
                           allowed=", ".join(present[:20]))
        out[src] = new or src
    return out
