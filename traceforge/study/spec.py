"""The study spec (TOML): mixes × axes × repeats, shared options and an optional capacity search.

Validated once, like the workload spec: every problem is one :class:`BadInput` line naming the
study file, the key path (``mixes.small.models.bert.arrival.rate``, ``axes.mode[2]``), the bad
value and what is allowed. A mix is a workload spec (a file, or inline ``[mixes.NAME.models.X]``
tables) validated by :func:`traceforge.generate.spec.parse_spec` itself; axis and option names
are fields of the backend's typed options (:mod:`traceforge.backends.options`).

:meth:`StudySpec.to_dict` is the parsed spec (mixes inlined and normalised, the backend after any
``--backend`` override); its hash decides whether ``--resume`` may continue a study.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traceforge.backends.options import BACKENDS, coerce_options, split_options
from traceforge.errors import _MISSING, BadInput
from traceforge.generate.spec import SpecReader, parse_spec, read_toml
from traceforge.limits import check_seconds, check_service_ms
from traceforge.study.capacity import PERCENTILES
from traceforge.study.cells import format_value

TOP_KEYS = ("name", "description", "backend", "repeats", "seed", "duration_s", "requests",
            "retries", "mixes", "axes", "options", "capacity")
MIX_KEYS = ("workload", "models", "modulations", "duration_s", "requests", "description")
CAPACITY_KEYS = ("slo", "tolerance", "start", "min_load", "max_load", "prescreen", "profile",
                 "repeats", "max_probes", "duration_s")
PRESCREENS = ("simulate",)
DEFAULT_PROFILES = {"cpu": "cpu-tiny", "cuda": "h200"}
# arrival keys a load multiplier scales (a ServeGen pool's rate_scale: its rates are the pool's)
RATE_KEYS = ("rate", "rates", "off_rate", "rate_scale")


@dataclass(frozen=True)
class CapacitySpec:
    slo: dict[str, Any]
    tolerance: float = 0.02
    start: float = 1.0
    min_load: float = 0.001
    max_load: float = 1000.0
    prescreen: str | None = None
    profile: str | None = None  # simulate profile for the prescreen
    repeats: int = 1
    # Bounds on what a search costs the real backend: at most max_probes probes per search (the
    # prescreen is not bounded: it is the simulator), each probe a trace of duration_s seconds
    # instead of the mix's own size (so a probe at a low load does not last longer).
    max_probes: int | None = None
    duration_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"slo": dict(self.slo), "tolerance": self.tolerance, "start": self.start,
               "min_load": self.min_load, "max_load": self.max_load, "repeats": self.repeats}
        if self.prescreen:
            out["prescreen"] = self.prescreen
            out["profile"] = self.profile
        # only when set: the hash of a spec without them stays what it was
        if self.max_probes is not None:
            out["max_probes"] = self.max_probes
        if self.duration_s is not None:
            out["duration_s"] = self.duration_s
        return out


@dataclass(frozen=True)
class StudySpec:
    name: str
    backend: str
    repeats: int
    seed: int
    mixes: dict[str, dict[str, Any]]  # normalised workload spec dicts
    axes: dict[str, list[Any]]  # in spec order; "load" holds multipliers
    load_basis: str = "offered"  # offered (multipliers) | capacity (fractions of a capacity)
    options: dict[str, Any] = field(default_factory=dict)
    capacity: CapacitySpec | None = None
    description: str | None = None
    retries: int = 0  # extra attempts for a failed cell (each attempt counts in study.json)
    path: Path | None = None

    @property
    def config_axes(self) -> list[str]:
        return [a for a in self.axes if a != "load"]

    def model_slo_ms(self, mix: str) -> dict[str, float]:
        default = (self.capacity.slo.get("ms") if self.capacity else None)
        return {m: t.get("slo_ms", default) for m, t in self.mixes[mix]["models"].items()}

    def to_dict(self) -> dict[str, Any]:
        """The parsed spec as written into study.json (header values redacted: they may carry
        credentials, and no secret reaches disk)."""
        axes: dict[str, Any] = dict(self.axes)
        if self.load_basis == "capacity":
            axes["load"] = {"capacity": self.axes["load"]}
        if "headers" in axes:
            axes["headers"] = [_redacted(h) for h in axes["headers"]]
        options = dict(self.options)
        if "headers" in options:
            options["headers"] = _redacted(options["headers"])
        from traceforge.redact import redact_url

        for key in ("url", "scrape_url"):  # user:password@ and ?token= values: masked
            if isinstance(options.get(key), str):
                options[key] = redact_url(options[key])
            if isinstance(axes.get(key), list):
                axes[key] = [redact_url(v) if isinstance(v, str) else v for v in axes[key]]
        out: dict[str, Any] = {"name": self.name, "backend": self.backend,
                               "repeats": self.repeats, "seed": self.seed,
                               "mixes": self.mixes, "axes": axes, "options": options}
        if self.description:
            out["description"] = self.description
        if self.retries:
            out["retries"] = self.retries
        if self.capacity:
            out["capacity"] = self.capacity.to_dict()
        return out

    def spec_hash(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()


def _redacted(headers: dict[str, str]) -> dict[str, str]:
    # A digest keeps "did the headers change" answerable (--resume) without the value itself.
    return {k: "sha256:" + hashlib.sha256(v.encode()).hexdigest()[:12] for k, v in headers.items()}


def scale_workload(workload: dict[str, Any], load: float) -> dict[str, Any]:
    """The mix with every model's arrival rate multiplied by ``load`` (shapes untouched)."""
    out = json.loads(json.dumps(workload))
    for model in out["models"].values():
        arrival = model["arrival"]
        for key in RATE_KEYS:
            if key in arrival:
                value = arrival[key]
                arrival[key] = ([v * load for v in value] if isinstance(value, list)
                                else value * load)
    return out


def load_study(path: Path | str, *, backend: str | None = None) -> StudySpec:
    """Read and validate a study file; ``backend`` overrides the file's (``--backend``)."""
    path = Path(path)
    return parse_study(read_toml(path), source=path, base_dir=path.parent, backend=backend,
                       path=path)


def _rekey(exc: BadInput, source: object, prefix: str) -> BadInput:
    key = f"{prefix}.{exc.key}" if exc.key else prefix
    kwargs: dict[str, Any] = {"source": source, "key": key, "allowed": exc.allowed}
    if exc.value is not _MISSING:
        kwargs["value"] = exc.value
    return BadInput(exc.message, **kwargs)


def parse_study(raw: dict, *, source: object = "<study>", base_dir: Path | None = None,
                backend: str | None = None, path: Path | None = None) -> StudySpec:
    r = SpecReader(source, base_dir)
    r.check_keys(raw, "", TOP_KEYS)
    name = r.string(raw["name"], "name") if "name" in raw else (
        path.stem if path is not None else "study")
    description = r.string(raw["description"], "description") if "description" in raw else None
    if backend is not None:
        if backend not in BACKENDS:
            raise BadInput("unknown backend", key="--backend", value=backend,
                           allowed=", ".join(BACKENDS))
    else:
        backend = raw.get("backend", "simulate")
        if backend not in BACKENDS:
            r.fail("backend", backend, "unknown backend", ", ".join(BACKENDS))
    repeats = r.integer(raw.get("repeats", 1), "repeats", low=1, high=10_000)
    seed = r.integer(raw.get("seed", 0), "seed", low=0, high=None)
    retries = r.integer(raw.get("retries", 0), "retries", low=0, high=10)
    duration_s, requests = r.run_length(raw)

    if "mixes" not in raw:
        r.missing("mixes", "one [mixes.NAME] table per mix")
    mixes_raw = r.table(raw["mixes"], "mixes")
    if not mixes_raw:
        r.fail("mixes", mixes_raw, "at least one mix is required")
    mixes = {m: _parse_mix(r, m, t, base_dir, duration_s, requests)
             for m, t in mixes_raw.items()}

    options_raw = r.table(raw.get("options", {}), "options")
    options = coerce_options(backend, options_raw, source=source,
                             keys={k: f"options.{k}" for k in options_raw})

    axes: dict[str, list[Any]] = {}
    load_basis = "offered"
    for axis, values in r.table(raw.get("axes", {}), "axes").items():
        key = f"axes.{axis}"
        if axis == "load":
            if isinstance(values, dict):
                r.check_keys(values, key, ("capacity",))
                if "capacity" not in values:
                    r.missing(f"{key}.capacity", "a list of fractions of the capacity")
                load_basis = "capacity"
                values = values["capacity"]
                key = f"{key}.capacity"
            loads = list(r.number_list(values, key, low=0, low_open=True))
            if len(set(loads)) != len(loads):
                r.fail(key, values, "values must be distinct")
            axes[axis] = loads
            continue
        if axis in options:
            r.fail(key, values, "also set in [options]: give it in one place")
        if not isinstance(values, list) or not values:
            r.fail(key, values, "must be a non-empty list of values")
        checked = [coerce_options(backend, {axis: v}, source=source,
                                  keys={axis: f"{key}[{i}]"})[axis]
                   for i, v in enumerate(values)]
        if len({json.dumps(v, sort_keys=True) for v in checked}) != len(checked):
            r.fail(key, values, "values must be distinct")
        axes[axis] = checked

    for axis, values in axes.items():  # cell names are coordinates: they must stay distinct
        names = [format_value(v) for v in values]
        if len(set(names)) != len(names):
            r.fail(f"axes.{axis}", values, "values that look the same in cell names (6 "
                   "significant digits, unsafe characters as _)")
    mix_names = [format_value(m) for m in mixes]
    if len(set(mix_names)) != len(mix_names):
        r.fail("mixes", list(mixes), "mix names that look the same in cell names")
    capacity = None
    if "capacity" in raw:
        capacity = _parse_capacity(r, raw["capacity"], backend, options, repeats, mixes)
    if load_basis == "capacity" and capacity is None:
        r.fail("axes.load.capacity", axes["load"], "fractions of the capacity need a "
               "[capacity] table")
    spec = StudySpec(name=name, backend=backend, repeats=repeats, seed=seed, mixes=mixes,
                     axes=axes, load_basis=load_basis, options=options, capacity=capacity,
                     description=description, retries=retries, path=path)
    _check_combinations(spec, source)
    return spec


def _parse_mix(r: SpecReader, name: str, table: object, base_dir: Path | None,
               duration_s: float | None, requests: int | None) -> dict[str, Any]:
    key = f"mixes.{name}"
    table = r.table(table, key)
    r.check_keys(table, key, MIX_KEYS)
    if ("workload" in table) == ("models" in table):
        r.fail(key, name, "give either workload = PATH or [mixes.NAME.models.X] tables")
    if "workload" in table:
        rel = r.string(table["workload"], f"{key}.workload")
        extra = sorted(set(table) - {"workload", "duration_s", "requests"})
        if extra:
            r.fail(f"{key}.{extra[0]}", table[extra[0]], "not allowed beside workload = PATH "
                   "(edit the workload file)")
        wpath = (base_dir / rel) if base_dir is not None else Path(rel)
        if not wpath.is_file():
            r.fail(f"{key}.workload", rel, "no such file (paths are relative to the study file)")
        try:
            raw = tomllib.loads(wpath.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            r.fail(f"{key}.workload", rel, f"not a valid TOML workload spec ({exc})")
        # its errors name the workload file; a relative ServeGen pool is the file's neighbour
        parsed = parse_spec(raw, source=wpath, base_dir=wpath.parent, path=wpath)
        spec_dict = parsed.to_dict()
        spec_dict.pop("seed", None)  # the study's seed (+ repeat) drives every trace
        own = {k: table[k] for k in ("duration_s", "requests") if k in table}
    else:
        raw = {k: v for k, v in table.items() if k in ("models", "modulations", "description")}
        raw["name"] = name
        try:
            # a relative ServeGen pool lies beside the study file (to_dict keeps it absolute)
            parsed = parse_spec(raw, source=r.source, base_dir=base_dir)
        except BadInput as exc:
            raise _rekey(exc, r.source, key) from None
        spec_dict = parsed.to_dict()
        own = {k: table[k] for k in ("duration_s", "requests") if k in table}
    if own:  # the mix's own length wins over the file's and the study's
        spec_dict.pop("duration_s", None)
        spec_dict.pop("requests", None)
        own_duration, own_requests = r.run_length(own, prefix=f"{key}.")
        if own_duration is not None:
            spec_dict["duration_s"] = own_duration
        else:
            spec_dict["requests"] = own_requests
    elif "duration_s" not in spec_dict and "requests" not in spec_dict:
        if duration_s is None and requests is None:
            r.missing("duration_s", f"the mix {name!r} sets no duration_s or requests: give "
                      "one at the top of the study")
        spec_dict["duration_s" if duration_s is not None else "requests"] = (
            duration_s if duration_s is not None else requests)
    for model, mt in spec_dict["models"].items():
        scalable = [k for k in RATE_KEYS if k in mt["arrival"]]
        if not scalable:
            r.fail(f"{key}.models.{model}.arrival.process", mt["arrival"].get("process"),
                   "a load multiplier cannot scale this arrival process (no rate)")
    return spec_dict


def _parse_capacity(r: SpecReader, table: object, backend: str, options: dict[str, Any],
                    repeats: int, mixes: dict[str, dict[str, Any]]) -> CapacitySpec:
    key = "capacity"
    table = r.table(table, key)
    r.check_keys(table, key, CAPACITY_KEYS)
    if "slo" not in table:
        r.missing("capacity.slo", '{ metric = "p99", ms = 50.0 } or { attainment = 0.99 }')
    slo_raw = r.table(table["slo"], "capacity.slo")
    r.check_keys(slo_raw, "capacity.slo", ("metric", "ms", "attainment"))
    if "attainment" in slo_raw:
        if "metric" in slo_raw:
            r.fail("capacity.slo.metric", slo_raw["metric"],
                   "give either metric + ms or attainment")
        slo: dict[str, Any] = {"attainment": r.number(slo_raw["attainment"],
                                                      "capacity.slo.attainment", low=0,
                                                      low_open=True, high=1)}
        if "ms" in slo_raw:
            slo["ms"] = r.number(slo_raw["ms"], "capacity.slo.ms", low=0, low_open=True)
        for mix, spec in mixes.items():
            for model, mt in spec["models"].items():
                if "slo_ms" not in mt and "ms" not in slo:
                    r.fail(f"mixes.{mix}.models.{model}.slo_ms", None,
                           "attainment needs each model's slo_ms (or capacity.slo.ms)")
    else:
        metric = slo_raw.get("metric", "p99")
        if not isinstance(metric, str) or metric not in PERCENTILES:  # a list is unhashable
            r.fail("capacity.slo.metric", metric, "unknown metric", ", ".join(PERCENTILES))
        if "ms" not in slo_raw:
            r.missing("capacity.slo.ms", "the latency bound in milliseconds")
        slo = {"metric": metric,
               "ms": r.number(slo_raw["ms"], "capacity.slo.ms", low=0, low_open=True)}
    tolerance = r.number(table.get("tolerance", 0.02), "capacity.tolerance", low=1e-4, high=1)
    min_load = r.number(table.get("min_load", 0.001), "capacity.min_load", low=0, low_open=True)
    max_load = r.number(table.get("max_load", 1000.0), "capacity.max_load", low=0,
                        low_open=True)
    if max_load <= min_load:
        r.fail("capacity.max_load", max_load, f"must be > min_load ({min_load})")
    start = r.number(table.get("start", 1.0), "capacity.start", low=min_load, high=max_load)
    n_rep = r.integer(table.get("repeats", repeats), "capacity.repeats", low=1, high=repeats)
    max_probes = (None if "max_probes" not in table else
                  r.integer(table["max_probes"], "capacity.max_probes", low=1, high=1000))
    probe_s = (None if "duration_s" not in table else
               r.number(table["duration_s"], "capacity.duration_s", low=0, low_open=True))
    prescreen = profile = None
    if "prescreen" in table:
        prescreen = table["prescreen"]
        if prescreen not in PRESCREENS:
            r.fail("capacity.prescreen", prescreen, "unknown prescreen", ", ".join(PRESCREENS))
        if backend == "simulate":
            r.fail("capacity.prescreen", prescreen, "the study already runs on the simulator")
        device = str(options.get("device", "cpu"))
        profile = table.get("profile") or options.get("profile") or DEFAULT_PROFILES[
            "cuda" if device.startswith("cuda") else "cpu"]
        profile = r.string(profile, "capacity.profile")
        from traceforge.simulate.profile import load_profile

        try:
            load_profile(profile)
        except BadInput as exc:
            raise _rekey(exc, r.source, "capacity.profile") from None
    elif "profile" in table:
        r.fail("capacity.profile", table["profile"], "only used with prescreen = \"simulate\"")
    return CapacitySpec(slo=slo, tolerance=tolerance, start=start, min_load=min_load,
                        max_load=max_load, prescreen=prescreen, profile=profile,
                        repeats=n_rep, max_probes=max_probes, duration_s=probe_s)


def _check_mixes(spec: StudySpec, source: object) -> dict[str, tuple[float, float]]:
    """Every mix at the highest load of the grid (and the capacity search's start) passes the
    trace generator's own checks (time range, memory) now, not as failed cells later. Returns
    per mix (expected rows, seconds) at that load. Loads that are fractions of a capacity not
    yet known are checked when the cells are made."""
    from traceforge.generate.build import preflight, row_rate

    loads = [1.0]
    if "load" in spec.axes and spec.load_basis != "capacity":
        loads = list(spec.axes["load"])
    if spec.capacity is not None:
        loads.append(spec.capacity.start)
    top = max(loads)
    out = {}
    for mix, workload in spec.mixes.items():
        try:
            parsed = parse_spec(scale_workload(workload, top), source=source)
            rows = preflight(parsed)
        except BadInput as exc:
            if top != 1.0:
                exc.message = f"at load {top:g}: {exc.message}"
            raise _rekey(exc, source, f"mixes.{mix}") from None
        # rows count session turns: over the rate of rows, not of arrivals
        span = parsed.duration_s if parsed.duration_s is not None else rows / max(
            row_rate(parsed), 1e-300)
        out[mix] = (rows, float(span))
    return out


def _check_combinations(spec: StudySpec, source: object) -> None:
    """Build (without starting) the backend of every configuration, so a bad combination
    (``mode = "mps"`` with ``sm_percent`` on another mode, a missing profile...) fails now."""
    from traceforge.study.plan import (
        configurations,
        prescreen_options,
        validate_backend_options,
    )

    sizes = _check_mixes(spec, source)
    for mix in spec.mixes:
        for config in configurations(spec):
            opts = {**spec.options, **config}
            try:
                validate_backend_options(spec.backend, opts, spec.mixes[mix])
                rows, span = sizes[mix]
                # the cell's trace scaled by time_scale must stay inside int64 ns (1e300 would
                # otherwise fail every cell of the configuration when its schedule is built)
                time_scale = float(opts.get("time_scale", 1.0))
                check_seconds(time_scale, key="time_scale", seconds=span * time_scale)
                if spec.backend in ("null", "simulate") and not opts.get("profile"):
                    filled = split_options(spec.backend, opts)[0]  # the options' defaults
                    check_service_ms(float(filled["service_ms"]), dist=filled["service_dist"],
                                     rows=rows, span_s=span, key="service_ms")
                if spec.capacity is not None and spec.capacity.prescreen:
                    try:
                        validate_backend_options("simulate", prescreen_options(spec, config),
                                                 spec.mixes[mix])
                    except BadInput as exc:
                        raise _rekey_flat(exc, source, "capacity.prescreen") from None
            except BadInput as exc:
                if exc.key == "capacity.prescreen":
                    raise
                name = (exc.key or "options").split()[0].lstrip("-").replace("-", "_")
                if name not in opts and f"{name}_s" in opts:  # --duration -> duration_s
                    name = f"{name}_s"
                where = (f"axes.{name}" if name in config else
                         f"options.{name}" if name in spec.options else
                         (exc.key or "options"))
                raise _rekey_flat(exc, source, where) from None


def _rekey_flat(exc: BadInput, source: object, key: str) -> BadInput:
    kwargs: dict[str, Any] = {"source": source, "key": key, "allowed": exc.allowed}
    if exc.value is not _MISSING:
        kwargs["value"] = exc.value
    return BadInput(exc.message, **kwargs)
