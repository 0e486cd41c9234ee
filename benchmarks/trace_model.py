"""One model's rows of a trace as a trace of its own (request ids renumbered 0..n-1; the
metadata kept), for a replay of that model alone (benchmarks/gpu_zoo.sh, gpu_newuser.sh).

    python benchmarks/trace_model.py IN.parquet MODEL OUT.parquet
"""

from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from traceforge.schema import conform_trace_table, read_trace, write_trace


def main(src: str, model: str, dst: str) -> int:
    tr = read_trace(src)
    t = tr.table.filter(pc.equal(tr.table["model"], model))
    if t.num_rows == 0:
        sys.exit(f"trace_model.py: {src}: no rows of model {model!r}")
    t = t.set_column(0, "request_id", pa.array(np.arange(t.num_rows, dtype=np.int64)))
    write_trace(conform_trace_table(t), dst, tr.meta)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
