"""Any CSV with a header, through a column mapping:
``--columns time=COL[,seq_len=COL][,max_new_tokens=COL][,batch_size=COL][,model=COL]
[,session=COL[,turn=COL]]`` and ``--time-unit s|ms|us|ns|iso``. ``session`` (any text; empty =
no session) makes the rows with one value the turns of one multi-turn session (of one file when
each file is its own model; across files with a model column), numbered by time
unless ``turn`` (integers >= 1) gives the numbers; replay then sends each turn after the
previous one's answer plus the recorded gap (docs/replay.md, "Sessions"). Or ``id=COL,parent=COL``:
each row names the row it follows up (its parent's id, empty for a first turn) within the same
file; a chain of parents is one session, its depth the turn. Unmapped shapes take ``--batch-size/--seq-len/--max-new-tokens``.
With a model column, ``--models`` keeps/renames source models (``SRC`` or ``SRC=NAME``);
without one, each file is one model (``--models`` gives one name per file, default the stem).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from traceforge.errors import BadInput
from traceforge.importers.azure_llm import per_file_names
from traceforge.importers.common import (
    TIME_UNITS_NS,
    CsvColumns,
    Records,
    file_info,
    rename_filter,
)
from traceforge.schema import SHAPE_LOWER

FIELDS = ("time", "seq_len", "max_new_tokens", "batch_size", "model", "session", "turn", "id",
          "parent")
LOWER = SHAPE_LOWER
TIME_UNITS = (*TIME_UNITS_NS, "iso")


def parse_columns(columns: str | None) -> dict[str, str]:
    if not columns:
        raise BadInput("required for the csv format", key="--columns",
                       allowed="time=COL[,seq_len=COL,max_new_tokens=COL,batch_size=COL,"
                               "model=COL,session=COL,turn=COL | id=COL,parent=COL]")
    mapping: dict[str, str] = {}
    for entry in columns.split(","):
        field, sep, col = (s.strip() for s in entry.partition("="))
        if not sep or not col:
            raise BadInput("each entry must be FIELD=COLUMN", key="--columns", value=entry)
        if field not in FIELDS:
            raise BadInput("unknown field", key="--columns", value=field,
                           allowed=", ".join(FIELDS))
        if field in mapping:
            raise BadInput("field given twice", key="--columns", value=field)
        mapping[field] = col
    if "time" not in mapping:
        raise BadInput("the time column is required", key="--columns", value=columns)
    if "turn" in mapping and "session" not in mapping:
        raise BadInput("turn=COL needs session=COL", key="--columns", value=columns)
    if ("id" in mapping) != ("parent" in mapping):
        raise BadInput("id=COL and parent=COL go together", key="--columns", value=columns)
    if "parent" in mapping and "session" in mapping:
        raise BadInput("give session=COL or id=COL,parent=COL, not both", key="--columns",
                       value=columns)
    return mapping


def _parent_chains(cols: CsvColumns, id_col: str, parent_col: str, file_code: int):
    """(session text, turn) per row from id/parent links inside one file: the session is the
    chain's first row, the turn its depth + 1 (pointer jumping: log2(depth) vectorised steps)."""
    ids = pc.utf8_trim_whitespace(cols.strings(id_col))
    parents = pc.utf8_trim_whitespace(cols.strings(parent_col))
    n = len(ids)
    cols.mark(id_col, pc.equal(pc.utf8_length(ids), 0).to_numpy(zero_copy_only=False),
              "empty id")
    encoded = ids.dictionary_encode()
    code = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    row_of = np.full(len(encoded.dictionary), -1, np.int64)
    first = np.full(len(encoded.dictionary), n, np.int64)
    np.minimum.at(first, code, np.arange(n))
    cols.mark(id_col, first[code] != np.arange(n), "id given twice")
    row_of[code[first[code] == np.arange(n)]] = np.flatnonzero(first[code] == np.arange(n))
    none = pc.equal(pc.utf8_length(parents), 0).to_numpy(zero_copy_only=False)
    lookup = pc.index_in(parents, value_set=encoded.dictionary).fill_null(-1).to_numpy(
        zero_copy_only=False).astype(np.int64)
    cols.mark(parent_col, ~none & (lookup < 0), "parent id is not an id in this file")
    parent = np.where(~none & (lookup >= 0), row_of[np.maximum(lookup, 0)], -1)
    anc = np.where(parent >= 0, parent, np.arange(n))
    depth = (parent >= 0).astype(np.int64)
    for _ in range(64):  # 2^64 turns: more would be a loop
        if np.array_equal(anc[anc], anc):
            break
        depth, anc = depth + depth[anc], anc[anc]
    # A true root has no parent; jumping around a loop ends on a row that has one.
    looping = (parent[anc] >= 0) | (anc[anc] != anc)
    cols.mark(parent_col, looping, "parent chain loops")
    anc = np.where(looping, np.arange(n), anc)
    session = pa.array([f"{file_code}/{a}" for a in anc.tolist()], pa.string())
    return session, depth + 1


def read(sources: list[Path], *, models, skip_bad: bool, columns: str | None, time_unit: str,
         batch_size: int, seq_len: int, max_new_tokens: int, **_) -> Records:
    mapping = parse_columns(columns)
    if time_unit not in TIME_UNITS:
        raise BadInput("unknown time unit", key="--time-unit", value=time_unit,
                       allowed=", ".join(TIME_UNITS))
    defaults = {"batch_size": batch_size, "seq_len": seq_len, "max_new_tokens": max_new_tokens}
    per_file = "model" not in mapping
    file_names = per_file_names(sources, models, lambda p: p.stem) if per_file else None
    times, shape_cols, model_cols, codes, files = [], {f: [] for f in LOWER}, [], [], []
    session_cols, turn_cols = [], []
    # with sessions, each kept record's file and data row (for messages naming the line)
    origin_file, origin_row, line_maps = [], [], []
    for code, path in enumerate(sources):
        cols = CsvColumns(path, list(dict.fromkeys(mapping.values())), skip_bad=skip_bad)
        t = cols.time_ns(mapping["time"], time_unit)
        shapes = {f: cols.integers(mapping[f], low=low) if f in mapping else None
                  for f, low in LOWER.items()}
        session = turn = None
        if "session" in mapping:
            session = pc.utf8_trim_whitespace(cols.strings(mapping["session"]))
            if per_file:
                # Each file is its own model here: a session key is the file's, so one key in
                # two files is two sessions (it was one, alternating between the two models).
                # With model=COL a key still spans files (a log split over several).
                empty = pc.equal(pc.utf8_length(session), 0)
                session = pc.if_else(empty, session, pc.binary_join_element_wise(
                    pa.scalar(str(code)), session, "\x1f"))
            if "turn" in mapping:
                turn = cols.integers(mapping["turn"], low=1)
        elif "parent" in mapping:
            session, turn = _parent_chains(cols, mapping["id"], mapping["parent"], code)
        model = None
        if not per_file:
            model = pc.utf8_trim_whitespace(cols.strings(mapping["model"]))
            cols.mark(mapping["model"],
                      pc.equal(pc.utf8_length(model), 0).to_numpy(zero_copy_only=False),
                      "empty model name")
        keep, skipped = cols.finish()
        n = int(keep.sum())
        times.append(t[keep])
        for f, values in shapes.items():
            shape_cols[f].append(values[keep] if values is not None
                                 else np.full(n, defaults[f], dtype=np.int64))
        if per_file:
            codes.append(np.full(n, code, dtype=np.int32))
        else:
            model_cols.append(model.filter(pa.array(keep)))
        files.append(file_info(path, cols.rows, skipped))
        if session is not None:
            session_cols.append(session.filter(pa.array(keep)))
            if turn is not None:
                turn_cols.append(turn[keep])
            origin_file.append(np.full(n, code, dtype=np.int32))
            origin_row.append(np.flatnonzero(keep))
            line_maps.append(cols.line_of)
    time_ns = np.concatenate(times)
    shapes = {f: np.concatenate(v) for f, v in shape_cols.items()}
    sessions = {}
    if session_cols:  # one key per distinct non-empty text, across files
        text = pa.chunked_array(session_cols, pa.string()).combine_chunks()
        key = text.dictionary_encode().indices.to_numpy(zero_copy_only=False).astype(np.int64)
        key[pc.equal(pc.utf8_length(text), 0).to_numpy(zero_copy_only=False)] = -1
        sessions = {"session_key": key,
                    "turn": np.concatenate(turn_cols) if turn_cols else None,
                    "origin_file": np.concatenate(origin_file),
                    "origin_row": np.concatenate(origin_row)}
    if per_file:
        return Records(time_ns=time_ns, model_code=np.concatenate(codes), model_names=file_names,
                       files=files, notes={"columns": mapping, "time_unit": time_unit}, **shapes,
                       **_where(sessions, sources, line_maps))
    encoded = pa.chunked_array(model_cols, pa.string()).combine_chunks().dictionary_encode()
    present = encoded.dictionary.to_pylist()
    src_codes = encoded.indices.to_numpy(zero_copy_only=False)
    rename = rename_filter(models, present)
    wanted = np.asarray([m in rename for m in present], dtype=bool)
    keep = wanted[src_codes]
    new_code = (np.cumsum(wanted) - 1).astype(np.int32)
    return Records(time_ns=time_ns[keep], model_code=new_code[src_codes[keep]],
                   model_names=[rename[m] for m in present if m in rename], files=files,
                   notes={"columns": mapping, "time_unit": time_unit},
                   **{f: v[keep] for f, v in shapes.items()},
                   **_where({k: None if v is None else v[keep] for k, v in sessions.items()},
                            sources, line_maps))


def _where(sessions: dict, sources: list[Path], line_maps: list) -> dict:
    """The Records session fields, the origin columns folded into ``where`` (record index ->
    file and line)."""
    if not sessions:
        return {}
    files, rows = sessions.pop("origin_file"), sessions.pop("origin_row")

    def where(i: int) -> tuple[Path, int]:
        code = int(files[i])
        return sources[code], line_maps[code](int(rows[i]))

    return {**sessions, "where": where}
