"""Load a run directory once into flat numpy columns that every analysis shares.

The timeline is read with pyarrow and turned into float64 nanosecond arrays with NaN for null
(exact: run-clock values stay far below 2**53 ns, about 104 days). Derived per-row durations are
computed here, once, so the report, the plots and the Perfetto export agree on every definition:

    latency         = done_ns - scheduled_ns
    send_lag        = sent_ns - scheduled_ns
    queue_wait      = service_start_ns - sent_ns
    service         = service_end_ns - service_start_ns
    transport_other = latency - send_lag - queue_wait - service   (unknown parts counted as 0)

so ``send_lag + queue_wait + service + transport_other == latency`` holds exactly on every row
(docs/analysis.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from traceforge.errors import BadInput
from traceforge.record import read_timeline
from traceforge.schema import STATUSES, TIMELINE_SCHEMA, refuse_nulls

NS_PER_MS = 1e6
NS_PER_S = 1e9


def _float_ns(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """An int64 column as float64 with NaN where null. Unchecked: a time beyond 2**53 ns (104
    days; a corrupted row) rounds instead of stopping report/compare/export with a traceback."""
    return pc.fill_null(pc.cast(column, pa.float64(), safe=False), np.nan).to_numpy()


@dataclass
class RunData:
    """One run directory, read once. Arrays are aligned row by row (sorted by request_id)."""

    run_dir: Path
    manifest: dict[str, Any]
    table: pa.Table
    models: list[str]  # sorted model names
    model_code: np.ndarray  # int index into ``models`` per row
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.table.num_rows

    def col(self, name: str) -> np.ndarray:
        """A timeline column as numpy (ns columns as float64 with NaN for null), cached."""
        if name not in self.columns:
            column = self.table.column(name)
            if name == "status" or name == "worker" or name == "error":
                values = pc.fill_null(column, "").to_numpy(zero_copy_only=False)
            elif pa.types.is_boolean(column.type):
                values = pc.fill_null(column, False).to_numpy(zero_copy_only=False)
            else:
                values = _float_ns(column)
            self.columns[name] = values
        return self.columns[name]

    # -- derived per-row quantities (ns, NaN where unknown) ----------------------------------
    @cached_property
    def status(self) -> np.ndarray:
        return self.col("status")

    @cached_property
    def status_code(self) -> np.ndarray:
        """Index into ``schema.STATUSES`` per row (-1 for an unknown status): integer compares
        instead of string compares on every per-group count."""
        codes = pc.index_in(self.table.column("status"), value_set=pa.array(STATUSES))
        return pc.fill_null(codes, -1).to_numpy(zero_copy_only=False).astype(np.int8)

    @cached_property
    def ok(self) -> np.ndarray:
        return (self.status_code == STATUSES.index("ok")) & ~np.isnan(self.col("done_ns"))

    @cached_property
    def latency(self) -> np.ndarray:
        return self.col("done_ns") - self.col("scheduled_ns")

    @cached_property
    def send_lag(self) -> np.ndarray:
        # http rows: sent_ns is when the request was written; the time spent waiting for and
        # opening a connection (conn_wait_ns, connect_ns) is the endpoint's, not the generator's.
        lag = self.col("sent_ns") - self.col("scheduled_ns")
        for name in ("conn_wait_ns", "connect_ns"):
            if name in self.table.column_names:
                lag = lag - np.nan_to_num(self.col(name), nan=0.0)
        return lag

    @cached_property
    def queue_wait(self) -> np.ndarray:
        return self.col("service_start_ns") - self.col("sent_ns")

    @cached_property
    def service(self) -> np.ndarray:
        return self.col("service_end_ns") - self.col("service_start_ns")

    @cached_property
    def transport_other(self) -> np.ndarray:
        known = (np.nan_to_num(self.send_lag) + np.nan_to_num(self.queue_wait)
                 + np.nan_to_num(self.service))
        return self.latency - known

    @cached_property
    def gpu(self) -> np.ndarray:
        return self.col("gpu_ns")

    @cached_property
    def ttft(self) -> np.ndarray:
        """Time to first token from the intended send time (NaN for non-generative rows)."""
        return self.col("first_token_ns") - self.col("scheduled_ns")

    @cached_property
    def tpot(self) -> np.ndarray:
        """Time per output token after the first: (done - first_token) / (tokens_out - 1)."""
        tokens = self.col("tokens_out")
        with np.errstate(invalid="ignore", divide="ignore"):
            per_token = (self.col("done_ns") - self.col("first_token_ns")) / (tokens - 1)
        return np.where(tokens > 1, per_token, np.nan)

    def itl_values(self, rows: np.ndarray) -> np.ndarray:
        """All inter-token gaps (ns) of the selected rows, flattened (vectorised via Arrow)."""
        column = self.table.column("itl_ns")
        if column.null_count == len(column):
            return np.empty(0)
        selected = column.filter(pa.array(rows))
        flat = pc.list_flatten(selected)
        return _float_ns(flat) if len(flat) else np.empty(0)

    @cached_property
    def telemetry(self) -> pa.Table | None:
        path = self.run_dir / "telemetry.parquet"
        if not path.exists():
            return None
        from traceforge.gpu.telemetry import TELEMETRY_SCHEMA

        return read_checked_parquet(path, TELEMETRY_SCHEMA)


def read_checked_parquet(path: Path, schema: pa.Schema, *,
                         drop_nonfinite: tuple[str, ...] = ()) -> pa.Table:
    """A side file of a run (telemetry, server metrics) as ``schema`` says: a torn file, a
    missing required column, a column that does not cast to its type, or a null where none may
    be is one line naming the file (and column); a non-finite float becomes null, or drops its
    row for the columns in ``drop_nonfinite``. Columns outside the schema are left out."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # a torn side file must not hide the request data in a traceback
        raise BadInput(f"not a readable Parquet file ({exc})", source=path) from exc
    cols, keep = {}, None
    for f in schema:
        if f.name not in table.column_names:
            if not f.nullable:
                raise BadInput("missing column", source=path, key=f.name)
            cols[f.name] = pa.nulls(table.num_rows, f.type)
            continue
        col = table.column(f.name)
        try:
            col = col.cast(f.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            raise BadInput(f"a column of {col.type}, not {f.type}", source=path,
                           key=f.name) from None
        if pa.types.is_floating(f.type):
            finite = pc.fill_null(pc.is_finite(col), True)
            if f.name in drop_nonfinite:
                keep = finite if keep is None else pc.and_(keep, finite)
            else:
                col = pc.if_else(finite, col, pa.scalar(None, f.type))
        cols[f.name] = col
    out = pa.table(cols)
    if keep is not None:
        out = out.filter(keep)
    for f in schema:
        if not f.nullable:
            refuse_nulls(out, f.name, path)
    return out


# run.json keys the analyses read, by the JSON type they must have where present (not null)
_MANIFEST_OBJECTS = ("trace", "trace.meta", "trace.meta.spec", "options", "backend_info",
                     "self_check", "counts")
_MANIFEST_NUMBERS = ("trace.rows", "not_due", "options.warmup_s", "options.time_scale")


def _check_manifest(manifest: dict[str, Any], source: Path) -> None:
    """run.json keys of the wrong JSON type are one line (they were tracebacks downstream)."""
    def lookup(key: str) -> Any:
        value: Any = manifest
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    for key in _MANIFEST_OBJECTS:
        value = lookup(key)
        if value is not None and not isinstance(value, dict):
            raise BadInput("must be a JSON object", source=source, key=key,
                           **({} if isinstance(value, list) else {"value": value}))
    for key in _MANIFEST_NUMBERS:
        value = lookup(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise BadInput("must be a number", source=source, key=key,
                           **({} if isinstance(value, list | dict) else {"value": value}))


def load_run(run_dir: Path | str) -> RunData:
    """Read ``run.json`` and the timeline; every problem is a one-line :class:`BadInput`."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise BadInput("no such run directory", source=run_dir)
    if not run_dir.is_dir():
        raise BadInput("not a run directory (expected run.json and timeline/)", source=run_dir)
    manifest_path = run_dir / "run.json"
    if not manifest_path.exists():
        raise BadInput("missing run.json: not a run directory", source=run_dir)
    try:
        # NaN / Infinity tokens (a hand edit; run.json is written as strict JSON) read as
        # unknown, never as numbers printed "nan"; ValueError: an integer of > 4300 digits
        manifest = json.loads(manifest_path.read_text(), parse_constant=lambda _: None)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"not JSON ({exc})", source=manifest_path) from exc
    except OSError as exc:  # a directory named run.json, unreadable permissions
        raise BadInput(f"cannot read ({exc.strerror or exc})", source=manifest_path) from exc
    if not isinstance(manifest, dict):
        raise BadInput("not a JSON object", source=manifest_path)
    _check_manifest(manifest, manifest_path)
    try:
        table = read_timeline(run_dir)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OSError) as exc:
        raise BadInput(f"unreadable timeline ({exc})", source=run_dir / "timeline") from exc
    for name in TIMELINE_SCHEMA.names:  # a part without the column reads as nulls
        if not TIMELINE_SCHEMA.field(name).nullable:
            refuse_nulls(table, name, run_dir / "timeline")
    ids = table.column("request_id").to_numpy()  # sorted by read_timeline
    twice = np.flatnonzero(ids[1:] == ids[:-1])
    if twice.size:  # a part copied beside itself: every row of it would count twice
        raise BadInput(f"{twice.size} request_id(s) appear more than once (e.g. "
                       f"{int(ids[twice[0]])}): two parts hold the same rows",
                       source=run_dir / "timeline")
    encoded = pc.dictionary_encode(table.column("model")).combine_chunks()
    dictionary = encoded.dictionary.to_pylist()
    models = sorted(dictionary)
    # Remap the dictionary's first-seen order to sorted order so codes index ``models``.
    remap = np.array([models.index(m) for m in dictionary], dtype=np.int64)
    indices = encoded.indices.to_numpy(zero_copy_only=False)
    model_code = remap[indices] if len(remap) else np.zeros(0, dtype=np.int64)
    return RunData(run_dir=run_dir, manifest=manifest, table=table, models=models,
                   model_code=model_code)
