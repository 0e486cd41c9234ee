"""Importers: real public traces (Azure Functions/LLM, BurstGPT, Mooncake, CSV) -> trace table.

:func:`import_trace` runs one pipeline for every format: the format's reader parses rows into
records (malformed rows: an error with the line number, or skipped and counted with
``skip_bad``), then records are sorted by time (stable: ties keep file, then row order), cut to
the window ``[start, start + duration)`` measured in source seconds from the origin (the first
arrival; minute 1 of the first file for azure-functions-2019), rate-scaled, time-scaled, and
written with their provenance in the trace metadata.

Rate scaling by X compresses time by 1/X, which keeps the burst structure (the same requests,
closer together). Only ``thin=True`` removes requests instead: each is kept independently with
probability X (X <= 1), which keeps the timeline but dilutes bursts.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from traceforge import __version__
from traceforge.errors import BadInput
from traceforge.importers import azure_functions, azure_llm, burstgpt, csv_generic, mooncake
from traceforge.importers.common import Records, parse_model_names
from traceforge.limits import check_seconds, check_seed, scaled_ns
from traceforge.paths import missing_file_reason
from traceforge.schema import (
    INT32_MAX,
    PREFIX_BLOCK_TOKENS_KEY,
    TRACE_SCHEMA_ID,
    Trace,
    trace_table,
    validate_sessions,
)

READERS = {
    "azure-functions-2019": azure_functions.read,
    "azure-llm": azure_llm.read,
    "burstgpt": burstgpt.read,
    "mooncake": mooncake.read,
    "csv": csv_generic.read,
}
FORMATS = (*READERS, "servegen")
# options that only one format understands -> that format
FORMAT_OPTIONS = {"spread": ("--spread", "azure-functions-2019"),
                  "mapping": ("--map", "azure-functions-2019"),
                  "columns": ("--columns", "csv"), "time_unit": ("--time-unit", "csv"),
                  "failed": ("--failed", "burstgpt"), "clients": ("--clients", "servegen"),
                  "block_tokens": ("--block-tokens", "mooncake")}


def _positive(value: float, key: str, *, allow_zero: bool = False) -> float:
    if value is None or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise BadInput(f"must be {'>= 0' if allow_zero else '> 0'}", key=key, value=value)
    return float(value)


def import_trace(fmt: str, sources: Sequence[Path | str], *, models: str | list[str] | None = None,
                 start_s: float = 0.0, duration_s: float | None = None,
                 time_scale: float = 1.0, rate_scale: float = 1.0, thin: bool = False,
                 skip_bad: bool = False, seed: int = 0, spread: str | None = None,
                 mapping: str | None = None, columns: str | None = None,
                 time_unit: str | None = None, failed: str | None = None, batch_size: int = 1,
                 seq_len: int = 128, max_new_tokens: int = 0,
                 clients: str | None = None, block_tokens: int | None = None) -> Trace:
    """Import ``sources`` of format ``fmt`` into a :class:`~traceforge.schema.Trace`.

    ``models`` is a comma-separated string or a list (meaning per format: docs/traces.md).
    Raises :class:`BadInput` for any bad option, file or row; nothing is written here.
    """
    if fmt not in FORMATS:
        raise BadInput("unknown import format", key="FORMAT", value=fmt,
                       allowed=", ".join(FORMATS))
    given = {"spread": spread, "mapping": mapping, "columns": columns, "time_unit": time_unit,
             "failed": failed, "clients": clients, "block_tokens": block_tokens}
    for name, value in given.items():
        flag, owner = FORMAT_OPTIONS[name]
        if value is not None and owner != fmt:
            raise BadInput(f"applies only to the {owner} format", key=flag, value=value)
    paths = [Path(s) for s in sources]
    if not paths:
        raise BadInput("at least one source file is required", key="SRC")
    if fmt == "servegen":
        from traceforge.importers.servegen import import_servegen

        return import_servegen(paths, models=models, start_s=start_s, duration_s=duration_s,
                               time_scale=time_scale, rate_scale=rate_scale, thin=thin,
                               seed=seed, clients=clients, batch_size=batch_size)
    for p in paths:
        if not p.is_file():
            raise BadInput(missing_file_reason(p), source=p)
    start_s = check_seconds(_positive(start_s, "--start", allow_zero=True), key="--start")
    if duration_s is not None:
        duration_s = check_seconds(_positive(duration_s, "--duration"), key="--duration")
        check_seconds(duration_s, key="--duration", seconds=start_s + duration_s)
    time_scale = _positive(time_scale, "--time-scale")
    rate_scale = _positive(rate_scale, "--rate-scale")
    if thin and not rate_scale < 1:
        raise BadInput("--thin removes requests at random, so it needs --rate-scale below 1",
                       key="--rate-scale", value=rate_scale)
    check_seed(seed)
    for key, value, low in (("--batch-size", batch_size, 1), ("--seq-len", seq_len, 1),
                            ("--max-new-tokens", max_new_tokens, 0)):
        if not low <= value <= INT32_MAX:
            raise BadInput(f"must be between {low} and {INT32_MAX}", key=key, value=value)
    if block_tokens is not None and not 1 <= block_tokens <= INT32_MAX:
        raise BadInput(f"must be between 1 and {INT32_MAX}", key="--block-tokens",
                       value=block_tokens)
    model_list = parse_model_names(",".join(models) if isinstance(models, list) else models)

    options = {"spread": spread or "poisson", "mapping": mapping or "stripe", "columns": columns,
               "time_unit": time_unit or "s", "failed": failed or "keep"}
    if fmt == "mooncake":
        options["block_tokens"] = block_tokens or mooncake.BLOCK_TOKENS
    records = READERS[fmt](paths, models=model_list, skip_bad=skip_bad, seed=seed,
                           start_s=start_s, duration_s=duration_s, batch_size=batch_size,
                           seq_len=seq_len, max_new_tokens=max_new_tokens, **options)
    table, window_s, origin_ns, clipped = _window_and_scale(
        records, start_s, duration_s, time_scale, rate_scale, thin, seed,
        source=", ".join(str(p) for p in paths))
    factor = time_scale if thin else time_scale / rate_scale
    source: dict[str, Any] = {
        "kind": "import",
        "format": fmt,
        "importer": f"traceforge {__version__}",
        "files": records.files,
        "options": {k: v for k, v in {
            "models": models if models is None or isinstance(models, str) else ",".join(models),
            "start_s": start_s, "duration_s": duration_s, "time_scale": time_scale,
            "rate_scale": rate_scale, "thin": thin, "skip_bad": skip_bad, "seed": seed,
            "batch_size": batch_size, "seq_len": seq_len, "max_new_tokens": max_new_tokens,
            **{k: v for k, v in given.items() if v is not None}}.items() if v is not None},
        "origin_ns": origin_ns,
        "window_s": [start_s, start_s + window_s],
        "skipped_bad_rows": sum(f["skipped_bad_rows"] for f in records.files),
        **records.notes,
    }
    if clipped:
        source["duration_clipped_from_s"] = duration_s
    if fmt == "azure-llm" or (fmt == "csv" and options["time_unit"] == "iso"):
        source["origin_utc"] = dt.datetime.fromtimestamp(origin_ns / 1e9, dt.UTC).isoformat()
    spec = {
        "name": f"{fmt}:{'+'.join(p.stem for p in paths)}",
        "duration_s": window_s * factor,
        "models": {name: {"arrival": {"process": "imported"}} for name in records.model_names},
    }
    meta = {"schema": TRACE_SCHEMA_ID, "spec": spec, "seed": seed, "source": source,
            "duration_s": window_s * factor}
    if records.prefix_block_tokens is not None:
        meta[PREFIX_BLOCK_TOKENS_KEY] = records.prefix_block_tokens
    return Trace(table=table, meta=meta, path=None)


def _window_and_scale(rec: Records, start_s: float, duration_s: float | None, time_scale: float,
                      rate_scale: float, thin: bool, seed: int, *, source: str):
    """The window's table, its length in source seconds, the origin, and whether
    ``duration_s`` reached past the data and was clipped to it.

    A ``--duration`` longer than the data is clipped to the data's end (the last arrival, or
    the source's natural end such as a count table's last minute), never padded with silence:
    a padded window would understate the rate (and give a nonsense CI). The trace records
    ``duration_clipped_from_s`` and the CLI says so.
    """
    order = np.argsort(rec.time_ns, kind="stable")
    time_ns = rec.time_ns[order]
    if time_ns.size == 0:
        raise BadInput("the source holds no requests (no data rows)", source=source)
    _check_turns(rec, order, source)
    origin_ns = int(rec.origin_ns if rec.origin_ns is not None else time_ns[0])
    span = float(time_ns[-1]) - float(min(origin_ns, int(time_ns[0])))
    check_seconds(span / 1e9, key="time span", source=source)
    rel = time_ns - origin_ns
    start_ns = round(start_s * 1e9)
    end_ns = start_ns + round(duration_s * 1e9) if duration_s is not None else None
    lo = int(np.searchsorted(rel, start_ns, side="left"))
    hi = int(np.searchsorted(rel, end_ns, side="left")) if end_ns is not None else rel.size
    if hi <= lo:
        raise BadInput(f"the window holds no requests (the source spans "
                       f"{rel[-1] / 1e9:.6g} s from its origin)", source=source, key="--start",
                       value=start_s)
    data_end_ns = rec.end_ns - origin_ns if rec.end_ns is not None else int(rel[-1])
    clipped = duration_s is not None and end_ns > data_end_ns
    if clipped:
        window_s = (data_end_ns - start_ns) / 1e9
    elif duration_s is not None:
        window_s = duration_s
    elif rec.end_ns is not None:
        window_s = (rec.end_ns - origin_ns - start_ns) / 1e9
    else:
        window_s = (int(rel[-1]) - start_ns) / 1e9
    idx = order[lo:hi]
    rel = rel[lo:hi] - start_ns
    if thin:
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(1,))))
        kept = rng.random(rel.size) < rate_scale
        idx, rel = idx[kept], rel[kept]
        factor = time_scale
    else:
        factor = time_scale / rate_scale
    key, value = (("--time-scale", time_scale) if time_scale != 1.0 or thin
                  else ("--rate-scale", rate_scale))
    arrival_ns = scaled_ns(rel, factor, key=key, value=value)
    check_seconds(value, key=key, seconds=window_s * factor)
    if window_s > 0 and window_s * factor < 1e-9:
        raise BadInput(f"the {window_s:.6g} s window would last {window_s * factor:.3g} s, under "
                       "1 ns (the trace's resolution): every arrival would fall on one "
                       "nanosecond", source=source, key=key, value=value)
    blocks = None if rec.prefix_blocks is None else rec.prefix_blocks.take(pa.array(idx))
    table = trace_table(arrival_ns, rec.model_code[idx], rec.model_names, rec.batch_size[idx],
                        rec.seq_len[idx], rec.max_new_tokens[idx], prefix_blocks=blocks,
                        **_sessions(rec, order, idx))
    if rec.session_key is not None:
        validate_sessions(table, source=source)
    return table, window_s, origin_ns, clipped


def _check_turns(rec: Records, order: np.ndarray, source: str) -> None:
    """Given turn numbers (a turn column, or parent chains) must increase with arrival time
    within each session, over the whole source: refused naming the file and line of the first
    turn that arrives no later than a turn numbered after it (``order``: time order)."""
    if rec.session_key is None or rec.turn is None:
        return
    timed = order[rec.session_key[order] >= 0]
    if timed.size < 2:
        return
    grouped = timed[np.argsort(rec.session_key[timed], kind="stable")]  # time order inside
    same = rec.session_key[grouped][1:] == rec.session_key[grouped][:-1]
    bad = np.flatnonzero(same & (np.diff(rec.turn[grouped]) <= 0))
    if not bad.size:
        return
    prev, cur = int(grouped[bad[0]]), int(grouped[bad[0] + 1])
    if rec.where is None:
        file, at, before = source, f"record {cur}", f"record {prev}"
    else:
        (file, line), (_, prev_line) = rec.where(cur), rec.where(prev)
        at, before = f"line {line}", f"line {prev_line}"
    columns = rec.notes.get("columns", {})
    key = columns.get("turn") or ("turn (depth in its id/parent chain)" if "parent" in columns
                                  else "turn")
    tie = "at the same time as" if rec.time_ns[cur] == rec.time_ns[prev] else "after"
    raise BadInput(f"turns of a session must increase with arrival time: turn "
                   f"{int(rec.turn[cur])} ({at}) arrives {tie} turn {int(rec.turn[prev])} "
                   f"({before}) of the same session", source=file, key=key,
                   value=int(rec.turn[cur]))


def _sessions(rec: Records, order: np.ndarray, idx: np.ndarray) -> dict[str, pa.Array]:
    """session_id 0..S-1 in order of each session's first request in the window; turn from
    the source, else 1, 2, ... by time within the session over the whole source (``order``:
    all records in time order), so a session cut by the window keeps its turn numbers."""
    if rec.session_key is None:
        return {}
    turn_all = rec.turn
    if turn_all is None:
        key = rec.session_key[order]
        by_key = np.argsort(key, kind="stable")  # time order within each session
        grouped = key[by_key]
        starts = np.r_[0, np.flatnonzero(np.diff(grouped)) + 1]
        count = np.arange(key.size) - np.repeat(starts, np.diff(np.r_[starts, key.size]))
        turn_all = np.empty(key.size, np.int64)
        turn_all[order[by_key]] = count + 1
    key = rec.session_key[idx]
    none = key < 0
    sid = np.full(key.size, -1, np.int64)
    rows = np.flatnonzero(~none)
    if rows.size:
        _, first, inverse = np.unique(key[rows], return_index=True, return_inverse=True)
        rank = np.empty(first.size, np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(first.size)
        sid[rows] = rank[inverse]
    turn = np.where(none, 0, turn_all[idx])
    return {"session_id": pa.array(sid, pa.int64(), mask=none),
            "turn": pa.array(turn.astype(np.int32), pa.int32(), mask=none)}


__all__ = ["FORMATS", "import_trace"]
