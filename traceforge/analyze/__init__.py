"""Analyze: metrics, significance, plots, HTML report, Perfetto export for any run directory.

Public API (INTERFACES.md)::

    build_report(run_dir, *, warmup_s=None, slo_ms=None, slo_from=None) -> dict
    render_report(report)                      # rich, to the terminal
    write_html(run_dir, report, path)          # one self-contained HTML file
    compare_runs(run_dirs) -> dict             # B over A, per common model
    export_perfetto(run_dir, path)             # Chrome Trace Event JSON

Submodules are imported on first use so ``import traceforge.analyze`` stays cheap; matplotlib and
scipy are imported only inside the functions that plot or test.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_report": "traceforge.analyze.report",
    "parse_slo": "traceforge.analyze.report",
    "render_report": "traceforge.analyze.render",
    "render_compare": "traceforge.analyze.render",
    "write_html": "traceforge.analyze.html",
    "write_compare_html": "traceforge.analyze.html",
    "compare_runs": "traceforge.analyze.compare",
    "export_perfetto": "traceforge.analyze.perfetto",
    "to_json": "traceforge.analyze.jsonable",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'traceforge.analyze' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
