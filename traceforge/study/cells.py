"""What an executor runs: self-contained, picklable cell and group descriptions.

A :class:`CellTask` carries everything needed to build its trace and run it — the mix's
normalised workload spec (a plain dict), the load multiplier and the trace seed — so a worker on
another host needs no shared filesystem and no study file. A :class:`CellGroup` is the unit of
placement: cells that share loaded models (same mix and the same non-load coordinates), run one
after another on one backend instance; a group may also carry capacity searches, which pick their
probe loads one at a time from the outcomes so far (:mod:`traceforge.study.capacity`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

CELL_KINDS = ("grid", "capacity", "prescreen")
CELL_STATUSES = ("pending", "running", "complete", "failed", "interrupted")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


def format_value(value: Any) -> str:
    """A coordinate value as it appears in a cell name (short, stable, filesystem-safe)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, dict):
        text = "+".join(f"{k}-{format_value(v)}" for k, v in sorted(value.items())) or "none"
    elif isinstance(value, (list, tuple)):
        text = "+".join(format_value(v) for v in value) or "none"
    elif value is None:
        text = "none"
    else:
        text = str(value)
    return _UNSAFE.sub("_", text)


def cell_name(mix: str, coords: dict[str, Any], repeat: int, *, kind: str = "grid") -> str:
    """``MIX__AXIS=VALUE__...__rN``; capacity probes add ``__cap`` (``__pre`` for prescreen)
    before the load, e.g. ``seed__mode=mps__cap__load=0.734__r0``. Axis order is the spec's."""
    parts = [format_value(mix)]
    tag = {"capacity": "cap", "prescreen": "pre"}.get(kind)
    for axis, value in coords.items():
        if axis == "load" and tag:
            parts.append(tag)
        parts.append(f"{format_value(axis)}={format_value(value)}")
    parts.append(f"r{repeat}")
    return "__".join(parts)


@dataclass(frozen=True)
class CellTask:
    """One cell: one trace (mix × load × seed) replayed or simulated into one run directory."""

    name: str
    kind: str  # grid | capacity | prescreen
    mix: str
    coords: dict[str, Any]  # every axis of this cell, load included, in spec order
    repeat: int
    seed: int  # trace seed: study seed + repeat
    load: float  # multiplier applied to every arrival rate of the mix
    backend: str  # simulate | null | http | resident
    workload: dict[str, Any]  # the mix as a normalised workload spec (generate.parse_spec input)
    options: dict[str, Any]  # backend + replay options for this cell ([options] + axes)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "mix": self.mix,
                "coords": dict(self.coords), "repeat": self.repeat, "seed": self.seed,
                "load": self.load, "backend": self.backend}


@dataclass(frozen=True)
class SearchTask:
    """A capacity search to run inside a group: probes are cells named by their load.

    ``known`` holds outcomes already recorded (``{cell name: {"met", "value"}}``) so a resumed
    search replays them instead of running those probes again. ``start``/``factor`` come from the
    study spec, or from a prescreen's bracket (start at the simulated capacity, small steps).
    """

    key: str  # stable id: the configuration's cell-name stem, e.g. "seed__mode=mps__r0"
    mix: str
    config: dict[str, Any]  # the non-load coordinates
    repeat: int
    seed: int
    kind: str  # capacity | prescreen
    backend: str
    workload: dict[str, Any]
    options: dict[str, Any]
    slo: dict[str, Any]  # {"metric": "p99", "ms": 50.0} or {"attainment": 0.99}
    tolerance: float
    start: float
    factor: float
    min_load: float
    max_load: float
    known: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_probes: int | None = None  # [capacity] max_probes (real searches only)


@dataclass(frozen=True)
class Resources:
    """What one group needs while it runs (an executor places groups by this)."""

    num_gpus: float = 0.0  # 1 for a resident backend on cuda, else 0
    num_cpus: float = 1.0


@dataclass(frozen=True)
class CellGroup:
    """Cells sharing loaded models: run in order on one backend instance, then the searches.

    ``max_attempts``: how often an executor may try a failed cell (1 = no retry); every attempt
    is reported, so retries show in study.json's ``attempts``.
    """

    key: str
    backend: str
    cells: tuple[CellTask, ...]
    searches: tuple[SearchTask, ...] = ()
    resources: Resources = Resources()
    max_attempts: int = 1
