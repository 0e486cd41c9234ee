"""Build a small STUDY_DIR the way the study engine lays it out (CONTRACT.md, "Studies"), with
every cell an ordinary run directory written by ``simulate`` (the code behind ``traceforge
simulate``, called in-process: a subprocess per cell would cost more than the simulation).

Used by tests/test_study_report.py and benchmarks/bench_study_report.py; the issue's 216-cell
study spec (issue_216_study) also by benchmarks/bench_study.py.
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
    seed_offset: int = 0  # added to every repeat's trace seed (0: configs share seeds)


def _label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def cell_name(mix: str, coords: dict[str, Any], repeat: int) -> str:
    parts = [mix, *(f"{k}={_label(v)}" for k, v in coords.items()), f"r{repeat}"]
    return "__".join(parts)


def run_cells(root: Path, *, mixes: dict[str, dict[str, dict[str, Any]]],
              configs: list[Config], loads: list[float], repeats: int = 3,
              requests: int = 1000, backend: str = "simulate", kind: str = "grid",
              statuses: dict[str, str] | None = None, suffix: str = "") -> list[dict[str, Any]]:
    """Simulate every (mix, config, load, repeat) cell into root/cells/<name> and return the
    study.json cell entries. ``mixes``: {mix: {model: {"rate": r, "slo_ms": s, ...any other
    workload-spec model key}}}. ``statuses``: cell name -> status for cells that are not run
    (no directory is written, as for a pending cell or one whose run never started)."""
    statuses = statuses or {}
    cells = []
    for mix, models in mixes.items():
        for config in configs:
            for load in loads:
                coords = {"load": load, **config.coords}
                for repeat in range(repeats):
                    name = cell_name(mix, coords, repeat) + suffix
                    seed = 1000 + repeat + config.seed_offset
                    status = statuses.get(name, "complete")
                    if status == "complete":
                        spec = parse_spec({
                            "name": mix, "requests": requests, "seed": seed,
                            "models": {m: {**{k: x for k, x in v.items() if k != "rate"},
                                           "arrival": {"process": "poisson",
                                                       "rate": v["rate"] * load}}
                                       for m, v in models.items()}})
                        simulate(generate_trace(spec), root / "cells" / name, seed=seed,
                                 **config.sim)
                    cells.append({"name": name, "mix": mix, "coords": dict(coords),
                                  "repeat": repeat, "seed": seed, "status": status,
                                  "run_dir": f"cells/{name}", "kind": kind,
                                  "backend": backend})
    return cells


def write_study_json(root: Path, cells: list[dict[str, Any]], *,
                     spec: dict[str, Any] | None = None,
                     capacity: list[dict[str, Any]] | None = None) -> Path:
    study = {"schema": "traceforge.study/1", "name": root.name,
             "spec": spec or {"name": root.name}, "cells": cells, "capacity": capacity or []}
    (root / "study.json").write_text(json.dumps(study, indent=1))
    return root


def write_study(root: Path, *, mixes: dict[str, dict[str, dict[str, Any]]],
                configs: list[Config], loads: list[float], repeats: int = 3,
                capacity: list[dict[str, Any]] | None = None,
                capacity_spec: dict[str, Any] | None = None, **kwargs: Any) -> Path:
    """A whole STUDY_DIR: :func:`run_cells` then study.json."""
    root.mkdir(parents=True, exist_ok=True)
    cells = run_cells(root, mixes=mixes, configs=configs, loads=loads, repeats=repeats,
                      **kwargs)
    spec = {"name": root.name, "repeats": repeats,
            "mixes": {m: {"models": v} for m, v in mixes.items()},
            "axes": {"load": loads,
                     **{k: [c.coords[k] for c in configs]
                        for k in (configs[0].coords if configs else {})}}}
    if capacity_spec is not None:
        spec["capacity"] = capacity_spec
    return write_study_json(root, cells, spec=spec, capacity=capacity)


_MIX_216 = """
[mixes.{name}.models.distilbert-base]
zoo = "distilbert-base"{slo_bert}
arrival = {{ process = "{process}", rate = 4.0{extra} }}
batch_size = 8
seq_len = 128
[mixes.{name}.models.distilgpt2]
zoo = "distilgpt2"{slo_gpt2}
arrival = {{ process = "{process}", rate = 1.2{extra} }}
seq_len = 64
max_new_tokens = 32
[mixes.{name}.models.mistral-7b]
zoo = "mistral-7b"{slo_mistral}
arrival = {{ process = "{process}", rate = 0.6{extra} }}
seq_len = 128
max_new_tokens = 16
"""


def issue_216_study(name: str, *, slo: bool) -> str:
    """The issue's study TOML: 3 mixes (Poisson, gamma cv 4, Weibull shape 0.5) of 3 zoo models
    × 6 loads × 4 modes × 3 repeats = 216 cells on the simulator; per-model SLOs if `slo`."""
    slos = ({"slo_bert": "\nslo_ms = 50.0", "slo_gpt2": "\nslo_ms = 400.0",
             "slo_mistral": "\nslo_ms = 1500.0"} if slo
            else {"slo_bert": "", "slo_gpt2": "", "slo_mistral": ""})
    mixes = "".join(_MIX_216.format(name=mix, process=mix, extra=extra, **slos)
                    for mix, extra in (("poisson", ""), ("gamma", ", cv = 4.0"),
                                       ("weibull", ", shape = 0.5")))
    return f"""
name = "{name}"
backend = "simulate"
repeats = 3
seed = 1
duration_s = 120.0
""" + mixes + """
[axes]
load = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
mode = ["exclusive", "timeslice", "mps", "streams"]
[options]
profile = "h200"
"""
