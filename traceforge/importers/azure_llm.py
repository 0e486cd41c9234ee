"""Azure LLM inference traces 2023 and 2024 (Azure Public Dataset; Patel et al., Splitwise,
ISCA 2024; CC-BY 4.0): ``TIMESTAMP, ContextTokens, GeneratedTokens``, one row per request.

Each file becomes one model (default name from ``AzureLLMInferenceTrace_<name>[_1week].csv``:
``code``, ``conv``); several files are merged on their absolute timestamps.
ContextTokens -> seq_len (>= 1), GeneratedTokens -> max_new_tokens (>= 0), batch_size 1.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from traceforge.errors import BadInput
from traceforge.importers.common import CsvColumns, Records, file_info

COLUMNS = ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]
ATTRIBUTION = ("Azure LLM inference trace (Azure Public Dataset), CC-BY 4.0; Patel et al., "
               "\"Splitwise: Efficient generative LLM inference using phase splitting\", ISCA 2024")


def default_name(path: Path) -> str:
    m = re.match(r"AzureLLMInferenceTrace_([A-Za-z]+)", path.name)
    return m.group(1).lower() if m else path.stem


def per_file_names(sources: list[Path], models: list[str] | None, namer) -> list[str]:
    names = [namer(p) for p in sources] if models is None else models
    if len(names) != len(sources):
        raise BadInput(f"needs one model name per source file ({len(sources)})",
                       key="--models", value=",".join(names))
    if any("=" in n for n in names):
        raise BadInput("this format takes plain names, one per file", key="--models",
                       value=",".join(names))
    if len(set(names)) != len(names):
        raise BadInput("two files map to the same model name; name them with --models",
                       key="--models", value=",".join(names))
    return names


def read(sources: list[Path], *, models, skip_bad: bool, batch_size: int, **_) -> Records:
    names = per_file_names(sources, models, default_name)
    times, codes, seq, new, files = [], [], [], [], []
    for code, path in enumerate(sources):
        cols = CsvColumns(path, COLUMNS, skip_bad=skip_bad)
        t = cols.timestamps_ns("TIMESTAMP")
        ctx = cols.integers("ContextTokens", low=1)
        gen = cols.integers("GeneratedTokens", low=0)
        keep, skipped = cols.finish()
        times.append(t[keep])
        seq.append(ctx[keep])
        new.append(gen[keep])
        codes.append(np.full(int(keep.sum()), code, dtype=np.int32))
        files.append(file_info(path, cols.rows, skipped))
    n = sum(len(t) for t in times)
    return Records(time_ns=np.concatenate(times), model_code=np.concatenate(codes),
                   model_names=names, batch_size=np.full(n, batch_size, dtype=np.int64),
                   seq_len=np.concatenate(seq), max_new_tokens=np.concatenate(new), files=files,
                   notes={"attribution": ATTRIBUTION, "license": "CC-BY-4.0"})
