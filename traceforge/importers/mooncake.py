"""Mooncake traces (Qin et al., FAST 2025): JSON Lines with ``timestamp`` (ms since trace start),
``input_length``, ``output_length`` and ``hash_ids``. Reads both the FAST'25 release
(``conversation_trace.jsonl``, ``synthetic_trace.jsonl``, ...) and the earlier single-file
``mooncake_trace.jsonl``: the same fields, one request a line.

One model per file (default name: the file stem). input_length -> seq_len (>= 1),
output_length -> max_new_tokens (>= 0), hash_ids -> prefix_blocks (block ids of 512 tokens;
equal ids = identical prompt prefix blocks; the last block may be partial, so a line holds at
most ceil(input_length / 512) ids). A line without ``hash_ids`` gets a null prefix_blocks.
Files made by other tools with another block size: ``--block-tokens N``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa

from traceforge.errors import BadInput
from traceforge.importers.azure_llm import per_file_names
from traceforge.importers.common import SKIP_HINT, Records, file_info
from traceforge.limits import INT64_MAX
from traceforge.schema import INT32_MAX

FIELDS = (("timestamp", 0), ("input_length", 1), ("output_length", 0))
BLOCK_TOKENS = 512  # Mooncake's KV block size (FAST'25 release README)


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """json.loads object_pairs_hook: a key given twice in one object is an error (json.loads
    alone keeps the last: {"timestamp": 5, "timestamp": 99999} read as 99999)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: dict[str, object] = {}
        for key, value in pairs:
            if key in seen:
                raise _DuplicateKey(key, seen[key], value)
            seen[key] = value
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)


def _show(value: object) -> str:
    """repr, with an integer of hundreds of digits shown by its head and length."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:16]}... ({len(text)} digits)"


def _parse_line(text: str, block_tokens: int = BLOCK_TOKENS
                ) -> tuple[float, int, int, list[int] | None] | str:
    """The fields of one line, or the reason it is malformed."""
    try:
        obj = _DECODER.decode(text)
    except _DuplicateKey as exc:
        key, first, again = exc.args
        return f"{key} = {_show(again)}: given twice in one object (first {_show(first)})"
    except json.JSONDecodeError as exc:
        return f"not JSON ({exc.msg})"
    except ValueError as exc:
        # an integer of more than 4300 digits: Python refuses to convert it (sys.int_info)
        return f"a number too long to read ({str(exc).split(':')[0]})"
    if not isinstance(obj, dict):
        return "not a JSON object"
    out = []
    for key, low in FIELDS:
        value = obj.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{key} = {_show(value)}: missing or not a number"
        # Python ints are exact and unbounded: compared as ints, never converted to float
        # (math.isfinite of a 400-digit integer raised OverflowError)
        if isinstance(value, float) and not math.isfinite(value):
            return f"{key} = {value!r}: not a finite number"
        if key == "timestamp" and (abs(value) * 10**6 >= 2**63 if isinstance(value, int)
                                   else abs(value) * 1e6 >= 2.0**63):
            return f"{key} = {_show(value)}: beyond the int64-nanosecond range (about 292 years)"
        if value < low or (key != "timestamp" and (value != int(value) or value > INT32_MAX)):
            return f"{key} = {_show(value)}: must be an integer >= {low} (int32)"
        out.append(value)
    blocks = obj.get("hash_ids")
    if blocks is not None:
        if not isinstance(blocks, list) or any(
                isinstance(b, bool) or not isinstance(b, int) or not 0 <= b <= INT64_MAX
                for b in blocks):
            return f"hash_ids = {str(blocks)[:40]}: must be a list of integers >= 0"
        if len(blocks) > -(-int(out[1]) // block_tokens):
            return (f"hash_ids has {len(blocks)} blocks of {block_tokens} tokens, more than "
                    f"input_length {int(out[1])} holds (--block-tokens sets the block size)")
    return out[0], int(out[1]), int(out[2]), blocks


def read(sources: list[Path], *, models, skip_bad: bool, batch_size: int,
         block_tokens: int = BLOCK_TOKENS, **_) -> Records:
    names = per_file_names(sources, models, lambda p: p.stem)
    times, codes, seq, new, blocks, files = [], [], [], [], [], []
    for code, path in enumerate(sources):
        rows: list[tuple] = []
        skipped = 0
        try:
            with open(path, encoding="utf-8") as fh:
                # One json.loads per line: these files hold tens of thousands of requests.
                for line_no, text in enumerate(fh, start=1):
                    if not text.strip():
                        continue
                    parsed = _parse_line(text, block_tokens)
                    if isinstance(parsed, str):
                        if not skip_bad:
                            raise BadInput(f"{parsed} ({SKIP_HINT})",
                                           source=f"{path}:{line_no}")
                        skipped += 1
                        continue
                    rows.append(parsed)
        except UnicodeDecodeError as exc:
            raise BadInput(f"not UTF-8 text ({exc.reason})", source=path) from exc
        arr = np.asarray([r[:3] for r in rows], dtype=np.float64).reshape(-1, 3)
        times.append(np.rint(arr[:, 0] * 1e6).astype(np.int64))
        seq.append(arr[:, 1].astype(np.int64))
        new.append(arr[:, 2].astype(np.int64))
        blocks.extend(r[3] for r in rows)
        codes.append(np.full(len(rows), code, dtype=np.int32))
        files.append(file_info(path, len(rows) + skipped, skipped))
    n = sum(len(t) for t in times)
    has_blocks = any(b is not None for b in blocks)
    return Records(time_ns=np.concatenate(times), model_code=np.concatenate(codes),
                   model_names=names, batch_size=np.full(n, batch_size, dtype=np.int64),
                   seq_len=np.concatenate(seq), max_new_tokens=np.concatenate(new), files=files,
                   prefix_blocks=pa.array(blocks, pa.list_(pa.int64())) if has_blocks else None,
                   prefix_block_tokens=block_tokens if has_blocks else None)
