"""Generate: workload spec (TOML) -> arrival processes and request shapes -> trace table.

Public API (INTERFACES.md): :func:`load_spec`, :func:`generate_trace`, :func:`trace_stats`,
:data:`DEMO_SPEC`. Pure numpy and pyarrow; scipy and matplotlib are imported only by the stats.
"""

from pathlib import Path

from traceforge.generate.build import generate_trace
from traceforge.generate.spec import ModelSpec, WorkloadSpec, load_spec, parse_spec
from traceforge.generate.stats import plot_arrivals, trace_stats

DEMO_SPEC = Path(__file__).resolve().parent.parent / "data" / "workloads" / "demo.toml"

__all__ = [
    "DEMO_SPEC",
    "ModelSpec",
    "WorkloadSpec",
    "generate_trace",
    "load_spec",
    "parse_spec",
    "plot_arrivals",
    "trace_stats",
]
