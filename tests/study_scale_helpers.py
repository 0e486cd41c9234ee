"""Shared by the study tests: the small two-mix study they run (as TOML), and the per-request rows
of its cells."""

from __future__ import annotations

import json
from pathlib import Path

from traceforge.record import read_timeline


def two_mix_study(name: str, *, rate: float, cv: float, duration_s: float, seed: int,
                  loads: list[float], servers: list[int] = (1, 2), service_ms: float = 8.0,
                  repeats: int = 2, backend: str = "simulate", capacity: str = "") -> str:
    """The study TOML the study tests share: mix ``a`` Poisson, mix ``b`` gamma (``cv``), both
    at ``rate``; a load × servers grid on the null service model; an optional [capacity]."""
    text = f"""
name = "{name}"
backend = "{backend}"
repeats = {repeats}
seed = {seed}
duration_s = {duration_s!r}
[mixes.a.models.m]
arrival = {{ process = "poisson", rate = {rate!r} }}
[mixes.b.models.m]
arrival = {{ process = "gamma", rate = {rate!r}, cv = {cv!r} }}
[axes]
load = {list(loads)!r}
servers = {list(servers)!r}
[options]
service_ms = {service_ms!r}
"""
    return text + (f"[capacity]\n{capacity.strip()}\n" if capacity else "")


SIM_STUDY = two_mix_study("scale", rate=80.0, cv=3.0, duration_s=3.0, seed=5, loads=[0.5, 1.0])


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
