"""Build a small STUDY_DIR the way the study engine lays it out (CONTRACT.md, "Studies"), with
every cell an ordinary run directory written by ``simulate`` (the code behind ``traceforge
simulate``, called in-process: a subprocess per cell would cost more than the simulation).

Used by tests/test_study_report.py and benchmarks/bench_study_report.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traceforge.generate.build import generate_trace
from traceforge.generate.spec import parse_spec
from traceforge.simulate import simulate


@dataclass
class Config:
    """One configuration: its coordinates in the study and the simulate() arguments."""

    coords: dict[str, Any]
    sim: dict[str, Any] = field(default_factory=dict)


def _label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def cell_name(mix: str, coords: dict[str, Any], repeat: int) -> str:
    parts = [mix, *(f"{k}={_label(v)}" for k, v in coords.items()), f"r{repeat}"]
    return "__".join(parts)


def write_study(root: Path, *, mixes: dict[str, dict[str, dict[str, float]]],
                configs: list[Config], loads: list[float], repeats: int = 3,
                requests: int = 1000, backend: str = "simulate", kind: str = "grid",
                statuses: dict[str, str] | None = None,
                capacity: list[dict[str, Any]] | None = None,
                capacity_spec: dict[str, Any] | None = None,
                extra_cells: list[dict[str, Any]] | None = None) -> Path:
    """``mixes``: {mix: {model: {"rate": r, "slo_ms": s}}}. ``statuses``: cell name -> status
    for cells that are not run (their directory is not written, as for a pending or failed
    cell whose run never started)."""
    statuses = statuses or {}
    root.mkdir(parents=True, exist_ok=True)
    cells = []
    for mix, models in mixes.items():
        for config in configs:
            for load in loads:
                coords = {"load": load, **config.coords}
                for repeat in range(repeats):
                    name = cell_name(mix, coords, repeat)
                    seed = 1000 + repeat
                    status = statuses.get(name, "complete")
                    if status == "complete":
                        spec = parse_spec({
                            "name": mix, "requests": requests, "seed": seed,
                            "models": {m: {"slo_ms": v["slo_ms"],
                                           "arrival": {"process": "poisson",
                                                       "rate": v["rate"] * load}}
                                       for m, v in models.items()}})
                        simulate(generate_trace(spec), root / "cells" / name, seed=seed,
                                 **config.sim)
                    cells.append({"name": name, "mix": mix, "coords": coords,
                                  "repeat": repeat, "seed": seed, "status": status,
                                  "run_dir": f"cells/{name}", "kind": kind,
                                  "backend": backend})
    cells += extra_cells or []
    spec = {"name": root.name, "backend": backend, "repeats": repeats,
            "mixes": {m: {"models": v} for m, v in mixes.items()},
            "axes": {"load": loads,
                     **{k: sorted({c.coords[k] for c in configs}, key=str)
                        for k in (configs[0].coords if configs else {})}}}
    if capacity_spec is not None:
        spec["capacity"] = capacity_spec
    study = {"schema": "traceforge.study/1", "name": root.name, "spec": spec, "cells": cells,
             "capacity": capacity or []}
    (root / "study.json").write_text(json.dumps(study, indent=1))
    return root
