"""Explicit Arrow schemas for the two files every stage exchanges: the trace and the timeline.

Never inferred from data: versions and units live in schema metadata (CONTRACT.md is the
user-facing description; docs/traces.md and docs/replay.md explain each column).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from traceforge.errors import BadInput

TRACE_SCHEMA_ID = "traceforge.trace/1"
TIMELINE_SCHEMA_ID = "traceforge.timeline/1"
RUN_SCHEMA_ID = "traceforge.run/1"
META_KEY = b"traceforge"

STATUSES = ("ok", "error", "timeout", "cancelled", "dropped")
SHAPE_LOWER = {"batch_size": 1, "seq_len": 1, "max_new_tokens": 0}  # inclusive lower bounds
INT32_MAX = 2**31 - 1  # the shape columns are int32


def _f(name: str, typ: pa.DataType, nullable: bool, unit: str, doc: str) -> pa.Field:
    return pa.field(name, typ, nullable=nullable, metadata={"unit": unit, "doc": doc})


TRACE_SCHEMA = pa.schema(
    [
        _f("request_id", pa.int64(), False, "", "0..n-1 in arrival order"),
        _f("arrival_ns", pa.int64(), False, "ns", "since trace start, non-decreasing"),
        _f("model", pa.string(), False, "", "model name from the spec"),
        _f("batch_size", pa.int32(), False, "requests", ">= 1"),
        _f("seq_len", pa.int32(), False, "tokens|pixels", ">= 1; image side for vision"),
        _f("max_new_tokens", pa.int32(), False, "tokens", ">= 0; 0 = not generative"),
        # -- optional columns (nullable; a file without them reads as all-null) --
        _f("prefix_blocks", pa.list_(pa.int64()), True, "block ids",
           "prompt prefix blocks of prefix_block_tokens tokens; equal ids = identical text"),
        _f("session_id", pa.int64(), True, "", "session this row is a turn of; null = none"),
        _f("turn", pa.int32(), True, "", "1-based turn within the session; null = none"),
    ],
    metadata={"schema": TRACE_SCHEMA_ID},
)
# Columns a trace file may omit (older files, formats without them): read as nulls.
OPTIONAL_TRACE_COLUMNS = tuple(f.name for f in TRACE_SCHEMA if f.nullable)
PREFIX_BLOCK_TOKENS_KEY = "prefix_block_tokens"  # trace metadata: tokens per prefix block

_NS = "ns since run start (CLOCK_MONOTONIC)"
TIMELINE_SCHEMA = pa.schema(
    [
        _f("request_id", pa.int64(), False, "", "from the trace"),
        _f("model", pa.string(), False, "", "from the trace"),
        _f("batch_size", pa.int32(), False, "requests", "from the trace"),
        _f("seq_len", pa.int32(), False, "tokens|pixels", "from the trace"),
        _f("max_new_tokens", pa.int32(), False, "tokens", "from the trace"),
        _f("scheduled_ns", pa.int64(), False, _NS, "intended send time"),
        _f("sent_ns", pa.int64(), True, _NS, "left the dispatcher; null if never sent"),
        _f("service_start_ns", pa.int64(), True, _NS, "execution began (worker side)"),
        _f("first_token_ns", pa.int64(), True, _NS, "first output token"),
        _f("service_end_ns", pa.int64(), True, _NS, "execution ended (worker side)"),
        _f("done_ns", pa.int64(), True, _NS, "response complete at the dispatcher"),
        _f("status", pa.string(), False, "", "|".join(STATUSES)),
        _f("error", pa.string(), True, "", "message for non-ok rows"),
        _f("gpu_ns", pa.int64(), True, "ns", "device time by CUDA events"),
        _f("batch_id", pa.int64(), True, "", "execution batch (dynamic batching)"),
        _f("batched_with", pa.int32(), True, "requests", "requests in that execution batch"),
        _f("tokens_out", pa.int32(), True, "tokens", "tokens produced"),
        _f("worker", pa.string(), True, "", "which worker / endpoint served it"),
        _f("warmup", pa.bool_(), False, "", "true for rows scheduled inside --warmup"),
        _f("itl_ns", pa.list_(pa.int64()), True, "ns", "inter-token gaps (streaming)"),
        _f("session_id", pa.int64(), True, "", "from the trace"),
        _f("turn", pa.int32(), True, "", "from the trace"),
        _f("replay_worker", pa.int32(), True, "",
           "replay worker (process or Ray actor) that sent it, with --workers; else null"),
        _f("bucket_seq_len", pa.int32(), True, "tokens|pixels", "padded seq_len that ran"),
        _f("bucket_batch_size", pa.int32(), True, "requests", "padded batch that ran"),
        _f("conn_wait_ns", pa.int64(), True, "ns",
           "http: waiting for a pooled connection (--max-connections)"),
        _f("connect_ns", pa.int64(), True, "ns", "http: opening a new connection; 0 = reused"),
        _f("truncated", pa.bool_(), True, "",
           "http stream ended short of max_new_tokens without [DONE] (status stays ok)"),
    ],
    metadata={"schema": TIMELINE_SCHEMA_ID},
)


def conform_trace_table(table: pa.Table) -> pa.Table:
    """``table`` with TRACE_SCHEMA's columns in order: missing optional columns become nulls
    (raises ``KeyError`` for a missing required column, Arrow errors for bad types)."""
    for name in OPTIONAL_TRACE_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(TRACE_SCHEMA.field(name),
                                        pa.nulls(table.num_rows, TRACE_SCHEMA.field(name).type))
    return table.select(TRACE_SCHEMA.names).cast(TRACE_SCHEMA)


def trace_table(arrival_ns, model_code, model_names: list[str], batch_size, seq_len,
                max_new_tokens, **optional) -> pa.Table:
    """A TRACE_SCHEMA table from numpy columns: rows already in arrival order, models as integer
    codes into ``model_names``; request_id is assigned 0..n-1. ``optional`` columns (e.g.
    ``prefix_blocks``, an Arrow list array) are taken as given; absent ones are null."""
    import numpy as np

    unknown = sorted(set(optional) - set(OPTIONAL_TRACE_COLUMNS))
    if unknown:
        raise TypeError(f"not an optional trace column: {unknown[0]}")
    model = pa.DictionaryArray.from_arrays(pa.array(model_code, pa.int32()),
                                           pa.array(model_names, pa.string()))
    return pa.table(
        {
            "request_id": pa.array(np.arange(len(arrival_ns), dtype=np.int64)),
            "arrival_ns": pa.array(np.asarray(arrival_ns).astype(np.int64, copy=False)),
            "model": model.cast(pa.string()),
            **{name: pa.array(np.asarray(col).astype(np.int32, copy=False))
               for name, col in (("batch_size", batch_size), ("seq_len", seq_len),
                                 ("max_new_tokens", max_new_tokens))},
            **{name: optional.get(name) if optional.get(name) is not None
               else pa.nulls(len(arrival_ns), TRACE_SCHEMA.field(name).type)
               for name in OPTIONAL_TRACE_COLUMNS},
        },
        schema=TRACE_SCHEMA,
    )


@dataclass(frozen=True)
class Trace:
    table: pa.Table  # conforms to TRACE_SCHEMA
    meta: dict[str, Any]  # the JSON under the `traceforge` metadata key
    path: Path | None = None

    @property
    def models(self) -> list[str]:
        return sorted(set(self.table.column("model").unique().to_pylist()))


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: a crash never leaves a partial file."""
    from traceforge.paths import output_error

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # realpath: mkstemp returns abspath(dir/name), which drops "link/.." lexically and so
        # named another folder than the kernel's (the rename then failed or went elsewhere)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                   dir=os.path.realpath(path.parent))
    except OSError as exc:  # the place cannot take a file: one line, nothing written
        raise output_error(path, exc) from exc
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        write(Path(tmp))
        os.replace(tmp, path)
    except OSError as exc:  # full disk, I/O error...: the final name never sees a partial file
        Path(tmp).unlink(missing_ok=True)
        raise output_error(path, exc) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_trace(table: pa.Table, path: Path | str, meta: dict[str, Any]) -> None:
    """Write a trace atomically with its metadata (``schema`` is filled in)."""
    table = conform_trace_table(table)
    # An all-null optional column is left out (read_trace restores it): writing 5M null lists
    # doubled the write time of a generated trace.
    empty = [n for n in OPTIONAL_TRACE_COLUMNS if table.column(n).null_count == table.num_rows]
    table = table.drop_columns(empty)
    md = dict(meta)
    md["schema"] = TRACE_SCHEMA_ID
    schema = table.schema.with_metadata(
        {**TRACE_SCHEMA.metadata, META_KEY: json.dumps(md, default=str).encode()}
    )
    atomic_write(
        Path(path),
        lambda tmp: pq.write_table(
            table.replace_schema_metadata(schema.metadata), tmp, compression="zstd",
            # Only the model name repeats enough to dictionary-encode; the sorted int64 columns
            # delta-encode well; string min/max stats cost time for nothing. At 10M rows this
            # halves the write time and shrinks the file by a quarter (measured with a 10M-row trace when introduced, commit 1a9749c).
            use_dictionary=["model"],
            column_encoding={"request_id": "DELTA_BINARY_PACKED",
                             "arrival_ns": "DELTA_BINARY_PACKED"},
            write_statistics=["request_id", "arrival_ns", "batch_size", "seq_len",
                              "max_new_tokens", "session_id"]),
    )


def read_trace(path: Path | str, *, validate: bool = True) -> Trace:
    """Read and validate a trace file; every problem is a one-line :class:`BadInput`."""
    path = Path(path)
    if not path.is_file():  # a directory of Parquet files would read as one dataset
        from traceforge.paths import missing_file_reason

        raise BadInput(missing_file_reason(path), source=path)
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a non-Parquet file
        raise BadInput(f"not a readable Parquet file ({exc})", source=path) from exc
    raw = (table.schema.metadata or {}).get(META_KEY)
    try:
        meta = json.loads(raw) if raw else {}
    except ValueError as exc:
        raise BadInput("metadata key 'traceforge' is not JSON", source=path) from exc
    _check_meta(meta, path)
    for field in TRACE_SCHEMA:
        if field.name not in table.column_names and not field.nullable:
            raise BadInput("missing column", source=path, key=field.name,
                           allowed=", ".join(TRACE_SCHEMA.names))
        if not field.nullable:
            # before the cast, which refuses nulls in a non-nullable field with a ValueError
            refuse_nulls(table, field.name, path)
    try:
        table = conform_trace_table(table)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise BadInput(f"column types do not match the trace schema ({exc})",
                       source=path) from exc
    if validate:
        validate_trace_table(table, source=path, meta=meta)
    return Trace(table=table, meta=meta, path=path)


def _check_meta(meta: object, source: object) -> None:
    """The metadata's shape where readers rely on it (replay, stats, --rate): an object whose
    ``spec``, ``spec.models``, ``spec.modulations`` and ``source`` are objects and whose
    ``duration_s`` is a number >= 0, where present."""
    import math

    def json_type(value: object) -> str:
        return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
            type(value), "a number")

    if not isinstance(meta, dict):
        raise BadInput(f"metadata key 'traceforge' is not a JSON object ({json_type(meta)})",
                       source=source)
    spec = meta.get("spec")
    for key, value in (("spec", spec), ("source", meta.get("source")),
                       *((f"spec.{k}", spec.get(k)) for k in ("models", "modulations")
                         if isinstance(spec, dict))):
        if value is not None and not isinstance(value, dict):
            raise BadInput(f"must be a JSON object, not {json_type(value)}", source=source,
                           key=f"traceforge.{key}")
    spec_slo_ms(spec, source=source, prefix="traceforge.spec")
    duration = meta.get("duration_s")
    if duration is not None and (isinstance(duration, bool)
                                 or not isinstance(duration, int | float)
                                 or not math.isfinite(duration) or duration < 0):
        shown = {"value": duration} if not isinstance(duration, list | dict) else {}
        raise BadInput("must be a number of seconds >= 0", source=source,
                       key="traceforge.duration_s", **shown)


def spec_slo_ms(spec: object, *, source: object, prefix: str) -> dict[str, float]:
    """Per-model ``slo_ms`` of a workload spec (a trace's metadata, or the copy run.json
    records), the SLO the report and studies judge by. A value that is not a finite number > 0
    (NaN, negative, a boolean, a string, an explicit null: a hand-edited file) is BadInput
    naming ``{prefix}.models.<name>.slo_ms`` -- it gave "attained 0 %" (or 100 %) tables.
    ``trace gen`` never writes a null: the spec refuses one and leaves an unset SLO out."""
    import math

    models = spec.get("models") if isinstance(spec, dict) else None
    out: dict[str, float] = {}
    for name, entry in (models.items() if isinstance(models, dict) else ()):
        if not isinstance(entry, dict) or "slo_ms" not in entry:
            continue
        slo = entry["slo_ms"]
        if (isinstance(slo, bool) or not isinstance(slo, int | float)
                or not math.isfinite(slo) or slo <= 0):
            shown = {"value": slo} if not isinstance(slo, list | dict) else {}
            raise BadInput("must be a number of milliseconds > 0", source=source,
                           key=f"{prefix}.models.{name}.slo_ms", **shown)
        out[name] = float(slo)
    return out


def refuse_nulls(table: pa.Table, name: str, source: object) -> None:
    """BadInput naming the first null row of a column that must be complete."""
    import numpy as np

    col = table.column(name)
    if col.null_count:
        i = int(np.argmax(col.is_null().to_numpy(zero_copy_only=False)))
        raise BadInput(f"null value (row {i}); the column must be complete", source=source,
                       key=name, value=None)


def validate_trace_table(table: pa.Table, *, source: object = None,
                         meta: dict[str, Any] | None = None) -> None:
    import numpy as np
    import pyarrow.compute as pc

    n = table.num_rows
    if n == 0:
        return
    for name in TRACE_SCHEMA.names:
        if name in OPTIONAL_TRACE_COLUMNS:
            continue
        refuse_nulls(table, name, source)
    ids = table.column("request_id").to_numpy()
    bad = np.flatnonzero(ids != np.arange(n, dtype=np.int64))
    if bad.size:  # CONTRACT.md: ids are 0..n-1 in row order (duplicates would merge rows)
        i = int(bad[0])
        raise BadInput(f"must be 0..n-1 in row order; row {i} holds {int(ids[i])}",
                       source=source, key="request_id", value=int(ids[i]))
    empty = pc.equal(pc.utf8_length(table.column("model")), 0)
    if pc.any(empty).as_py():
        i = int(np.argmax(empty.to_numpy(zero_copy_only=False)))
        raise BadInput(f"empty model name (row {i})", source=source, key="model", value="")
    arrival = table.column("arrival_ns").to_numpy()
    bad = np.flatnonzero(np.diff(arrival) < 0)
    if bad.size:
        i = int(bad[0]) + 1
        raise BadInput(f"arrival_ns decreases at row {i}", source=source, key="arrival_ns",
                       value=int(arrival[i]))
    if arrival[0] < 0:
        raise BadInput("must be >= 0", source=source, key="arrival_ns", value=int(arrival[0]))
    for name, low in SHAPE_LOWER.items():
        col = table.column(name).to_numpy()
        bad = np.flatnonzero(col < low)
        if bad.size:
            i = int(bad[0])
            raise BadInput(f"must be >= {low} (row {i})", source=source, key=name,
                           value=int(col[i]))
    if "prefix_blocks" in table.column_names:
        validate_prefix_blocks(table, meta or {}, source=source)
    validate_sessions(table, source=source)


def prefix_block_tokens(meta: dict[str, Any] | None) -> int | None:
    """The trace's prefix block size (tokens), or None when it has none."""
    value = (meta or {}).get(PREFIX_BLOCK_TOKENS_KEY)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def validate_prefix_blocks(table: pa.Table, meta: dict[str, Any], *,
                           source: object = None) -> None:
    """Block ids are non-null integers; a row's blocks cover at most its prompt (the last block
    may be partial): ``len(prefix_blocks) <= ceil(seq_len / prefix_block_tokens)``."""
    import numpy as np
    import pyarrow.compute as pc

    col = table.column("prefix_blocks").combine_chunks()
    if col.null_count == len(col) or pc.sum(pc.list_value_length(col)).as_py() in (None, 0):
        return
    block = meta.get(PREFIX_BLOCK_TOKENS_KEY)
    if isinstance(block, bool) or not isinstance(block, int) or not 1 <= block <= INT32_MAX:
        raise BadInput("the trace has prefix_blocks, so its metadata needs a positive integer",
                       source=source, key=PREFIX_BLOCK_TOKENS_KEY, value=block)
    if col.values.null_count:
        offsets = col.offsets.to_numpy()
        first = int(np.flatnonzero(~col.values.is_valid().to_numpy(zero_copy_only=False))[0])
        row = int(np.searchsorted(offsets, first, side="right")) - 1
        raise BadInput(f"null block id (row {row})", source=source, key="prefix_blocks")
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
    seq = table.column("seq_len").to_numpy()
    bad = np.flatnonzero(lengths > -(-seq // block))
    if bad.size:
        i = int(bad[0])
        raise BadInput(f"{lengths[i]} blocks of {block} tokens exceed seq_len {seq[i]} "
                       f"(row {i}; at most ceil(seq_len / {block}))", source=source,
                       key="prefix_blocks", value=lengths[i])


def validate_sessions(table: pa.Table, *, source: object = None) -> None:
    """``session_id`` and ``turn`` are null together; within a session, turns are >= 1 and
    strictly increasing in row (= arrival) order. The first row of a session is its start."""
    import numpy as np

    sid_col, turn_col = table.column("session_id"), table.column("turn")
    if sid_col.null_count == table.num_rows and turn_col.null_count == table.num_rows:
        return
    sid_null = sid_col.is_null().to_numpy(zero_copy_only=False)
    turn_null = turn_col.is_null().to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(sid_null != turn_null)
    if bad.size:
        i = int(bad[0])
        raise BadInput(f"session_id and turn must be null together (row {i})", source=source,
                       key="turn")
    rows = np.flatnonzero(~sid_null)
    sid = sid_col.fill_null(0).to_numpy()[rows]
    turn = turn_col.fill_null(0).to_numpy()[rows]
    if (turn < 1).any():
        i = int(rows[np.flatnonzero(turn < 1)[0]])
        raise BadInput(f"must be >= 1 (row {i})", source=source, key="turn",
                       value=int(turn_col[i].as_py()))
    order = np.argsort(sid, kind="stable")  # rows of one session stay in row order
    same = sid[order][1:] == sid[order][:-1]
    bad = np.flatnonzero(same & (np.diff(turn[order]) <= 0))
    if bad.size:
        i = int(rows[order[bad[0] + 1]])
        raise BadInput(f"turns of session {int(sid[order[bad[0]]])} must increase in arrival "
                       f"order (row {i})", source=source, key="turn",
                       value=int(turn_col[i].as_py()))


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
