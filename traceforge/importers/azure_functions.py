"""Azure Functions 2019 (Shahrad et al., "Serverless in the Wild", USENIX ATC 2020; Azure Public
Dataset, CC-BY 4.0): ``invocations_per_function_md.anon.dNN.csv`` with ``HashOwner, HashApp,
HashFunction, Trigger`` and columns ``1``..``1440``: invocations of that function per minute.

Files are consecutive days in the order given (a shell glob of d01..d14 sorts right); time 0 is
minute 1 of the first file. Only the minute columns that overlap ``--start/--duration`` are read,
so a short window of a full day costs little. Within a minute, a count c is spread as c i.i.d.
uniform times (``--spread poisson``: exactly a Poisson process conditioned on its count) or at
evenly spaced times (j + ½)·60/c (``--spread uniform``).

Functions (owner, app, function) map to the ``--models`` names (default one model,
``functions``) by ``--map``:
- ``stripe``: model = crc32(owner/app/function) mod k — stable, independent of the window;
- ``round-robin``: functions ranked by invocations in the window, model = rank mod k;
- ``top-k``: only the k busiest functions, the i-th busiest becoming the i-th model.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from traceforge.errors import BadInput
from traceforge.importers.common import CsvColumns, Records, file_info

KEY_COLUMNS = ["HashOwner", "HashApp", "HashFunction"]
MINUTES_PER_DAY = 1440
MAPPINGS = ("stripe", "round-robin", "top-k")
SPREADS = ("poisson", "uniform")
MAX_REQUESTS = 200_000_000  # ~5 GB of columns; beyond this, window or thin the source first
ATTRIBUTION = ("Azure Functions trace 2019 (Azure Public Dataset), CC-BY 4.0; Shahrad et al., "
               "\"Serverless in the Wild\", USENIX ATC 2020")


def read(sources: list[Path], *, models, skip_bad: bool, mapping: str = "stripe",
         spread: str = "poisson", seed: int = 0, start_s: float = 0.0,
         duration_s: float | None = None, batch_size: int, seq_len: int, max_new_tokens: int,
         **_) -> Records:
    if mapping not in MAPPINGS:
        raise BadInput("unknown mapping", key="--map", value=mapping, allowed=", ".join(MAPPINGS))
    if spread not in SPREADS:
        raise BadInput("unknown spread", key="--spread", value=spread,
                       allowed=", ".join(SPREADS))
    names = ["functions"] if models is None else models
    if any("=" in n for n in names):
        raise BadInput("this format takes plain model names", key="--models",
                       value=",".join(names))
    end_s = math.inf if duration_s is None else start_s + duration_s

    # 1. per file: function keys and the per-minute counts of the minutes inside the window
    keys, counts, minute_starts, files = [], [], [], []
    for day, path in enumerate(sources):
        first = day * MINUTES_PER_DAY  # minutes before this file
        minutes = [m for m in range(1, MINUTES_PER_DAY + 1)
                   if (first + m - 1) * 60 < end_s and (first + m) * 60 > start_s]
        cols = CsvColumns(path, [*KEY_COLUMNS, *map(str, minutes)], skip_bad=skip_bad,
                          typed={str(m): pa.int64() for m in minutes})
        key = pc.binary_join_element_wise(*(cols.strings(c) for c in KEY_COLUMNS), "/")
        matrix = np.stack([cols.integers(str(m), low=0) for m in minutes], axis=1) \
            if minutes else np.zeros((cols.rows, 0), dtype=np.int64)
        keep, skipped = cols.finish()
        keys.append(key.filter(pa.array(keep)))
        counts.append(matrix[keep])
        minute_starts.append((first + np.asarray(minutes, dtype=np.int64) - 1) * 60)
        files.append(file_info(path, cols.rows, skipped))

    # 2. functions -> models
    encoded = pa.chunked_array(keys, pa.string()).combine_chunks().dictionary_encode()
    func_names = encoded.dictionary.to_pylist()
    func_of_row = encoded.indices.to_numpy(zero_copy_only=False)
    row_totals = np.concatenate([c.sum(axis=1) for c in counts]) if counts else np.empty(0)
    totals = np.bincount(func_of_row, weights=row_totals, minlength=len(func_names))
    k = len(names)
    # busiest first; ties by the function's key so the ranking never depends on file order
    rank_order = np.lexsort((np.asarray(func_names, dtype=object).astype(str), -totals))
    model_of_func = np.full(len(func_names), -1, dtype=np.int64)
    if mapping == "stripe":
        model_of_func[:] = [zlib.crc32(f.encode()) % k for f in func_names]
    elif mapping == "round-robin":
        model_of_func[rank_order] = np.arange(len(func_names)) % k
    else:
        top = rank_order[:k]
        model_of_func[top] = np.arange(len(top))
        if len(top) < k:
            raise BadInput(f"top-k needs at least {k} functions; the source has {len(top)}",
                           source=", ".join(str(p) for p in sources), key="--models",
                           value=",".join(names))

    # 3. expand counts into arrival times within each minute
    total = int(sum(int(c.sum()) for c in counts))
    if total > MAX_REQUESTS:
        raise BadInput(f"the window holds {total} invocations (max {MAX_REQUESTS}); narrow it "
                       "with --start/--duration or use --map top-k",
                       source=", ".join(str(p) for p in sources), key="--duration",
                       value=duration_s)
    rng = np.random.default_rng(seed)
    times, codes = [], []
    row_offset = 0
    for matrix, starts in zip(counts, minute_starts, strict=True):
        model_rows = model_of_func[func_of_row[row_offset: row_offset + len(matrix)]]
        row_offset += len(matrix)
        matrix = matrix[model_rows >= 0]
        model_rows = model_rows[model_rows >= 0]
        r, m = np.nonzero(matrix)
        c = matrix[r, m]
        n = int(c.sum())
        base = np.repeat(starts[m].astype(np.float64), c)
        if spread == "poisson":
            offset = rng.random(n) * 60.0
        else:
            index_in_cell = np.arange(n) - np.repeat(np.cumsum(c) - c, c)
            offset = (index_in_cell + 0.5) * 60.0 / np.repeat(c, c)
        times.append(np.rint((base + offset) * 1e9).astype(np.int64))
        codes.append(np.repeat(model_rows[r], c).astype(np.int32))
    n = sum(len(t) for t in times)
    days = len(sources)
    return Records(
        time_ns=np.concatenate(times) if times else np.empty(0, np.int64),
        model_code=np.concatenate(codes) if codes else np.empty(0, np.int32),
        model_names=names, batch_size=np.full(n, batch_size, dtype=np.int64),
        seq_len=np.full(n, seq_len, dtype=np.int64),
        max_new_tokens=np.full(n, max_new_tokens, dtype=np.int64), files=files,
        origin_ns=0, end_ns=days * MINUTES_PER_DAY * 60 * 10**9,
        notes={"functions": len(func_names), "mapping": mapping, "spread": spread,
               "attribution": ATTRIBUTION, "license": "CC-BY-4.0"})
