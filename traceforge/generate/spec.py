"""The workload spec: a TOML file read and validated once into typed, frozen objects.

Every problem is a one-line :class:`~traceforge.errors.BadInput` naming the file, the key path
(``models.bert.arrival.rate``), the bad value and what is allowed. After :func:`load_spec`
returns, nothing downstream validates again: the generator trusts a :class:`WorkloadSpec`.

``WorkloadSpec.to_dict()`` is the normalised spec (defaults filled in) that goes into the trace
metadata; it is itself a valid spec, so a trace says exactly how to regenerate it.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from traceforge.errors import BadInput
from traceforge.generate.arrivals import (
    MAX_RATE,
    MIN_TIME_S,
    PROCESS_PARAMS,
    ArrivalProcess,
    Modulation,
    make_process,
)
from traceforge.generate.sessions import SessionSpec, parse_sessions
from traceforge.generate.shapes import (
    DIST_PARAMS,
    ShapeDist,
    make_dist,
)
from traceforge.limits import INT64_MAX, MAX_TIME_S
from traceforge.paths import missing_file_reason
from traceforge.schema import INT32_MAX, SHAPE_LOWER

# Lower bounds of the trace schema (CONTRACT.md): batch_size >= 1, seq_len >= 1, max_new_tokens >= 0.
SHAPE_FIELDS = SHAPE_LOWER
SHAPE_DEFAULTS = {"batch_size": 1, "seq_len": 128, "max_new_tokens": 0}
TOP_KEYS = ("name", "description", "duration_s", "requests", "seed", "models", "modulations")
MODEL_KEYS = ("zoo", "slo_ms", "arrival", "modulation", *SHAPE_FIELDS, "sessions",
              "seq_buckets")
MODULATION_KEYS = ("mean_dwell_s", "multipliers")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    arrival: ArrivalProcess
    batch_size: ShapeDist
    seq_len: ShapeDist
    max_new_tokens: ShapeDist
    zoo: str | None = None
    slo_ms: float | None = None
    modulation: str | None = None  # name of a shared modulation
    multipliers: tuple[float, ...] | None = None  # per-state rate multipliers for this model
    sessions: SessionSpec | None = None  # multi-turn sessions (generate/sessions.py)
    seq_buckets: tuple[int, ...] | None = None  # resident backend: padding buckets (override)

    def shape(self, name: str) -> ShapeDist:
        return getattr(self, name)

    def long_run_rate(self, modulations: dict[str, Modulation]) -> float:
        """Mean arrivals per second over a long horizon (shared modulation included)."""
        rate = self.arrival.mean_rate
        if self.modulation is not None:
            rate *= modulations[self.modulation].mean_multiplier(self.multipliers)
        return rate

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.zoo is not None:
            out["zoo"] = self.zoo
        if self.slo_ms is not None:
            out["slo_ms"] = self.slo_ms
        if self.seq_buckets is not None:
            out["seq_buckets"] = list(self.seq_buckets)
        out["arrival"] = self.arrival.to_dict()
        if self.modulation is not None:
            out["modulation"] = (
                self.modulation if self.multipliers is None
                else {"name": self.modulation, "multipliers": list(self.multipliers)}
            )
        for name in SHAPE_FIELDS:
            if self.arrival.process == "servegen" and name != "batch_size":
                continue  # drawn from the pool, not from the spec
            out[name] = self.shape(name).to_spec()
        if self.sessions is not None:
            out["sessions"] = self.sessions.to_dict()
        return out


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    models: dict[str, ModelSpec]
    duration_s: float | None = None
    requests: int | None = None
    seed: int | None = None
    description: str | None = None
    modulations: dict[str, Modulation] = field(default_factory=dict)
    path: Path | None = None

    def long_run_rate(self) -> float:
        return sum(m.long_run_rate(self.modulations) for m in self.models.values())

    def input_paths(self) -> list[Path]:
        """Every file or folder the spec reads besides itself (empirical distributions' data,
        ServeGen pools), resolved as the parser resolved them: outputs must not land on them."""
        from traceforge.generate.shapes import EmpiricalDist

        base = self.path.parent if self.path is not None else None
        out: list[Path] = []
        for model in self.models.values():
            pool = getattr(model.arrival, "pool", None)
            if isinstance(pool, str):
                out.append(Path(pool))
            for name in SHAPE_FIELDS:
                dist = model.shape(name)
                if isinstance(dist, EmpiricalDist):
                    path = Path(dist.path)
                    out.append(base / path if base is not None and not path.is_absolute()
                               else path)
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            out["description"] = self.description
        if self.duration_s is not None:
            out["duration_s"] = self.duration_s
        if self.requests is not None:
            out["requests"] = self.requests
        if self.seed is not None:
            out["seed"] = self.seed
        if self.modulations:
            out["modulations"] = {k: v.to_dict() for k, v in self.modulations.items()}
        out["models"] = {k: v.to_dict() for k, v in self.models.items()}
        return out


# -- validation helpers ------------------------------------------------------------------------
class SpecReader:
    """Typed access to a nested TOML table that raises :class:`BadInput` with the key path."""

    def __init__(self, source: object, base_dir: Path | None = None) -> None:
        self.source = source
        self.base_dir = base_dir

    def fail(self, key: str, value: object, message: str, allowed: object = None):
        raise BadInput(message, source=self.source, key=key, value=value, allowed=allowed)

    def missing(self, key: str, allowed: object = None):
        raise BadInput("missing required key", source=self.source, key=key, allowed=allowed)

    def check_keys(self, table: dict, prefix: str, allowed: tuple[str, ...]) -> None:
        for key in table:
            if key not in allowed:
                self.fail(_join(prefix, key), table[key], "unknown key",
                          ", ".join(allowed))

    def table(self, value: object, key: str) -> dict:
        if not isinstance(value, dict):
            self.fail(key, value, "must be a table")
        return value

    def number(self, value: object, key: str, *, low: float | None = None,
               low_open: bool = False, high: float | None = None) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(key, value, "must be a number")
        value = float(value)
        if not math.isfinite(value):
            self.fail(key, value, "must be finite")
        if low is not None and (value <= low if low_open else value < low):
            self.fail(key, value, f"must be {'>' if low_open else '>='} {_fmt(low)}")
        if high is not None and value > high:
            self.fail(key, value, f"must be <= {_fmt(high)}")
        return value

    def run_length(self, raw: dict, prefix: str = "") -> tuple[float | None, int | None]:
        """``(duration_s, requests)`` of a spec's top table (or a study mix's, keys named with
        ``prefix``), at most one of them given (workload and study specs alike); None where
        absent."""
        duration_s = requests = None
        if "duration_s" in raw:
            duration_s = self.number(raw["duration_s"], f"{prefix}duration_s", low=0,
                                     low_open=True, high=MAX_TIME_S)
        if "requests" in raw:
            requests = self.integer(raw["requests"], f"{prefix}requests", low=1,
                                    high=INT64_MAX)
        if duration_s is not None and requests is not None:
            self.fail(f"{prefix}requests", requests,
                      "give either duration_s or requests, not both")
        return duration_s, requests

    def integer(self, value: object, key: str, *, low: int | None = None,
                high: int | None = INT32_MAX) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, value, "must be an integer")
        if low is not None and value < low:
            self.fail(key, value, f"must be >= {low}")
        if high is not None and value > high:
            self.fail(key, value, f"must be <= {high}")
        return int(value)

    def string(self, value: object, key: str) -> str:
        if not isinstance(value, str) or not value:
            self.fail(key, value, "must be a non-empty string")
        return value

    def number_list(self, value: object, key: str, *, low: float, low_open: bool = False,
                    min_len: int = 1, high: float | None = None) -> tuple[float, ...]:
        if not isinstance(value, list):
            self.fail(key, value, "must be a list of numbers")
        if len(value) < min_len:
            self.fail(key, value, f"must have at least {min_len} entries")
        return tuple(self.number(v, f"{key}[{i}]", low=low, low_open=low_open, high=high)
                     for i, v in enumerate(value))

    def int_list(self, value: object, key: str, *, low: int) -> tuple[int, ...]:
        if not isinstance(value, list) or not value:
            self.fail(key, value, "must be a non-empty list of integers")
        return tuple(self.integer(v, f"{key}[{i}]", low=low) for i, v in enumerate(value))


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# -- entry points ------------------------------------------------------------------------------
def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; a missing, non-UTF-8 or malformed file is :class:`BadInput`
    naming it (workload specs and study specs read their files through this)."""
    if not path.is_file():
        raise BadInput(missing_file_reason(path), source=path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise BadInput("not a UTF-8 text file", source=path) from exc
    except ValueError as exc:
        raise BadInput(f"not valid TOML ({exc})", source=path) from exc


def load_spec(path: Path | str) -> WorkloadSpec:
    """Read and validate a workload spec (TOML). Raises :class:`BadInput`."""
    path = Path(path)
    return parse_spec(read_toml(path), source=path, base_dir=path.parent, path=path)


def parse_spec(raw: dict, *, source: object = "<spec>", base_dir: Path | None = None,
               path: Path | None = None) -> WorkloadSpec:
    """Validate a spec already parsed into a dict (e.g. ``Trace.meta["spec"]``)."""
    r = SpecReader(source, base_dir)
    r.check_keys(raw, "", TOP_KEYS)
    name = r.string(raw["name"], "name") if "name" in raw else (
        path.stem if path is not None else "workload")
    description = r.string(raw["description"], "description") if "description" in raw else None
    duration_s, requests = r.run_length(raw)
    seed = r.integer(raw["seed"], "seed", low=0, high=None) if "seed" in raw else None

    modulations: dict[str, Modulation] = {}
    for mod_name, table in r.table(raw.get("modulations", {}), "modulations").items():
        modulations[mod_name] = _parse_modulation(r, mod_name, table)

    if "models" not in raw:
        r.missing("models", "one [models.NAME] table per model")
    models_raw = r.table(raw["models"], "models")
    if not models_raw:
        r.fail("models", models_raw, "at least one model is required")
    models = {m: _parse_model(r, m, t, modulations) for m, t in models_raw.items()}
    unused = sorted(set(modulations) - {m.modulation for m in models.values()})
    if unused:
        r.fail(f"modulations.{unused[0]}", unused[0], "defined but no model uses it")
    return WorkloadSpec(name=name, description=description, duration_s=duration_s,
                        requests=requests, seed=seed, models=models,
                        modulations=modulations, path=path)


def _parse_modulation(r: SpecReader, name: str, table: object) -> Modulation:
    key = f"modulations.{name}"
    table = r.table(table, key)
    r.check_keys(table, key, MODULATION_KEYS)
    for k in MODULATION_KEYS:
        if k not in table:
            r.missing(f"{key}.{k}")
    dwell = r.number_list(table["mean_dwell_s"], f"{key}.mean_dwell_s", low=MIN_TIME_S,
                          high=MAX_TIME_S, min_len=2)
    mult = _multipliers(r, table["multipliers"], f"{key}.multipliers", len(dwell))
    return Modulation(name=name, mean_dwell_s=dwell, multipliers=mult)


def _multipliers(r: SpecReader, value: object, key: str, n_states: int) -> tuple[float, ...]:
    mult = r.number_list(value, key, low=0, high=MAX_RATE)
    if len(mult) != n_states:
        r.fail(key, value, f"needs one entry per state ({n_states}, as mean_dwell_s)")
    if not any(m > 0 for m in mult):
        r.fail(key, value, "at least one multiplier must be > 0")
    return mult


def _parse_model(r: SpecReader, name: str, table: object,
                 modulations: dict[str, Modulation]) -> ModelSpec:
    key = f"models.{name}"
    if not name.strip():
        r.fail(key, name, "a model name must not be empty")
    table = r.table(table, key)
    r.check_keys(table, key, MODEL_KEYS)
    zoo = r.string(table["zoo"], f"{key}.zoo") if "zoo" in table else None
    if zoo is not None:
        from traceforge.zoo import ZOO  # plain data: no torch import

        if zoo not in ZOO:
            r.fail(f"{key}.zoo", zoo, "unknown model-zoo entry", ", ".join(ZOO))
    slo_ms = (r.number(table["slo_ms"], f"{key}.slo_ms", low=0, low_open=True)
              if "slo_ms" in table else None)
    seq_buckets = None
    if "seq_buckets" in table:
        from traceforge.zoo.buckets import parse_buckets

        parsed = parse_buckets(table["seq_buckets"], key=f"{key}.seq_buckets",
                               source=r.source)
        if not parsed:
            r.fail(f"{key}.seq_buckets", table["seq_buckets"], "must list at least one bucket")
        seq_buckets = tuple(parsed)
    if "arrival" not in table:
        r.missing(f"{key}.arrival", ", ".join(PROCESS_PARAMS))
    arrival = _parse_arrival(r, f"{key}.arrival", table["arrival"])
    modulation = multipliers = None
    if "modulation" in table:
        mkey = f"{key}.modulation"
        value = table["modulation"]
        if isinstance(value, dict):
            r.check_keys(value, mkey, ("name", "multipliers"))
            if "name" not in value:
                r.missing(f"{mkey}.name")
            modulation = r.string(value["name"], f"{mkey}.name")
        else:
            modulation = r.string(value, mkey)
        if modulation not in modulations:
            r.fail(mkey, modulation, "no such modulation",
                   ", ".join(modulations) or "none defined: add a [modulations.NAME] table")
        if isinstance(value, dict) and "multipliers" in value:
            multipliers = _multipliers(r, value["multipliers"], f"{mkey}.multipliers",
                                       len(modulations[modulation].mean_dwell_s))
    if arrival.process == "servegen":  # the pool draws each arrival's lengths itself
        for f in ("seq_len", "max_new_tokens"):
            if f in table:
                r.fail(f"{key}.{f}", table[f], "a servegen arrival draws lengths from the pool's "
                       "distributions: remove this key")
        if modulation is not None:
            r.fail(f"{key}.modulation", modulation, "a servegen pool has its own time-varying "
                   "rate: a shared modulation does not apply")
        if "sessions" in table:
            r.fail(f"{key}.sessions", table["sessions"], "a servegen pool draws each request's "
                   "lengths itself; sessions (which grow prompts turn by turn) do not apply")
    shapes = {f: _parse_shape(r, f"{key}.{f}", table.get(f, SHAPE_DEFAULTS[f]), low)
              for f, low in SHAPE_FIELDS.items()}
    sessions = (parse_sessions(r, f"{key}.sessions", table["sessions"])
                if "sessions" in table else None)
    return ModelSpec(name=name, arrival=arrival, zoo=zoo, slo_ms=slo_ms,
                     modulation=modulation, multipliers=multipliers, sessions=sessions,
                     seq_buckets=seq_buckets,
                     **shapes)


def _checked_tagged_table(r: SpecReader, key: str, table: dict, tag: str,
                          params: dict[str, tuple[tuple[str, ...], tuple[str, ...]]],
                          what: str) -> str:
    """Validate a ``{tag = NAME, ...params}`` table against ``params[NAME]``; return NAME."""
    if tag not in table:
        r.missing(f"{key}.{tag}", ", ".join(params))
    name = table[tag]
    if not isinstance(name, str) or name not in params:  # a list or table is unhashable
        r.fail(f"{key}.{tag}", name, f"unknown {what}", ", ".join(params))
    required, optional = params[name]
    r.check_keys(table, key, (tag, *required, *optional))
    for k in required:
        if k not in table:
            r.missing(f"{key}.{k}", f"{name} takes {', '.join(required + optional)}")
    return name


def _parse_arrival(r: SpecReader, key: str, value: object) -> ArrivalProcess:
    table = r.table(value, key)
    process = _checked_tagged_table(r, key, table, "process", PROCESS_PARAMS, "arrival process")
    return make_process(r, key, process, table)


def _parse_shape(r: SpecReader, key: str, value: object, low: int) -> ShapeDist:
    if not isinstance(value, dict):
        return make_dist(r, key, "const", {"value": value}, low)
    dist = _checked_tagged_table(r, key, value, "dist", DIST_PARAMS, "distribution")
    return make_dist(r, key, dist, value, low)


def stable_model_key(name: str) -> int:
    """A seed component derived from a name, so adding a model never changes another's stream."""
    import zlib

    return zlib.crc32(name.encode("utf-8"))


def seed_sequence(seed: int, *keys: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(entropy=seed, spawn_key=tuple(keys))
