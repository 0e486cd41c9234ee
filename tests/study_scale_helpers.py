"""Shared by the scale-out study tests: a small study, and the per-request rows of its cells."""

from __future__ import annotations

import json
from pathlib import Path

from traceforge.record import read_timeline

SIM_STUDY = """
name = "scale"
backend = "simulate"
repeats = 2
seed = 5
duration_s = 3.0
[mixes.a.models.m]
arrival = { process = "poisson", rate = 80.0 }
[mixes.b.models.m]
arrival = { process = "gamma", rate = 80.0, cv = 3.0 }
[axes]
load = [0.5, 1.0]
servers = [1, 2]
[options]
service_ms = 8.0
"""


def write_study(tmp: Path, text: str = SIM_STUDY) -> Path:
    path = tmp / "study.toml"
    path.write_text(text)
    return path


def cell_rows(study_dir: Path, *, full: bool = True) -> dict[str, list]:
    """Per cell: every timeline row (simulate: all columns are deterministic) or, for real-time
    replays, the rows' identity and schedule relative to the origin."""
    out = {}
    data = json.loads((study_dir / "study.json").read_text())
    for cell in data["cells"]:
        run = study_dir / cell["run_dir"]
        tl = read_timeline(run)
        if full:
            out[cell["name"]] = tl.to_pylist()
        else:
            origin = json.loads((run / "run.json").read_text())["run_clock"]["schedule_origin_ns"]
            sched = (tl.column("scheduled_ns").to_numpy() - origin).tolist()
            out[cell["name"]] = list(zip(tl.column("request_id").to_pylist(),
                                         tl.column("model").to_pylist(), sched, strict=True))
    return out
