"""BurstGPT (Wang et al., 2024; CC-BY 4.0): ``Timestamp`` (s since trace start), ``Model``
(ChatGPT / GPT-4), ``Request tokens``, ``Response tokens``, ``Total tokens``, ``Log Type``.

Rows whose ``Response tokens`` is 0 are requests that failed in the original service. They did
arrive, so by default they are kept (``--failed keep``) with max_new_tokens = 0, which keeps the
arrival process intact; ``--failed drop`` removes them. Either way their count goes into the
provenance. A ``Request tokens`` of 0 becomes seq_len 1 (the schema's minimum), also counted.
``--models`` keeps the named source models (``GPT-4``) and may rename them (``GPT-4=gpt4``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from traceforge.errors import BadInput
from traceforge.importers.common import CsvColumns, Records, file_info, rename_filter

COLUMNS = ["Timestamp", "Model", "Request tokens", "Response tokens"]
ATTRIBUTION = "BurstGPT (Wang et al., arXiv:2401.17644, 2024), CC-BY 4.0"
FAILED_POLICIES = ("keep", "drop")


def read(sources: list[Path], *, models, skip_bad: bool, batch_size: int, failed: str = "keep",
         **_) -> Records:
    if failed not in FAILED_POLICIES:
        raise BadInput("unknown policy", key="--failed", value=failed,
                       allowed=", ".join(FAILED_POLICIES))
    times, model_str, seq, new, files = [], [], [], [], []
    n_failed = n_zero_request = 0
    for path in sources:
        cols = CsvColumns(path, COLUMNS, skip_bad=skip_bad)
        t_ns = cols.time_ns("Timestamp", "s")  # seconds; refuses times beyond int64 ns
        cols.mark("Timestamp", t_ns < 0, "must be >= 0")
        model = cols.strings("Model")
        request = cols.integers("Request tokens", low=0)
        response = cols.integers("Response tokens", low=0)
        empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(model)), 0)
        cols.mark("Model", empty.to_numpy(zero_copy_only=False), "empty model name")
        keep, skipped = cols.finish()
        failed_rows = keep & (response == 0)
        n_failed += int(failed_rows.sum())
        if failed == "drop":
            keep &= ~failed_rows
        n_zero_request += int((keep & (request == 0)).sum())
        times.append(t_ns[keep])
        model_str.append(pc.utf8_trim_whitespace(model).filter(pa.array(keep)))
        seq.append(np.maximum(request[keep], 1))
        new.append(response[keep])
        files.append(file_info(path, cols.rows, skipped))
    encoded = pa.chunked_array(model_str, pa.string()).combine_chunks().dictionary_encode()
    present = encoded.dictionary.to_pylist()  # in order of first appearance
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    mapping = rename_filter(models, present)
    wanted = np.asarray([m in mapping for m in present], dtype=bool)
    keep = wanted[codes]
    names = [mapping[m] for m in present if m in mapping]
    new_code = np.cumsum(wanted) - 1
    n = int(keep.sum())
    return Records(
        time_ns=np.concatenate(times)[keep], model_code=new_code[codes[keep]].astype(np.int32),
        model_names=names, batch_size=np.full(n, batch_size, dtype=np.int64),
        seq_len=np.concatenate(seq)[keep], max_new_tokens=np.concatenate(new)[keep],
        files=files,
        notes={"failed_rows": n_failed, "failed_policy": failed,
               "zero_request_tokens": n_zero_request, "attribution": ATTRIBUTION,
               "license": "CC-BY-4.0"})
