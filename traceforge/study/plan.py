"""From a validated study spec to cells and groups.

* **Configuration** — a mix and one value of every non-load axis.
* **Cell** — a configuration × one load × one repeat; repeat ``r`` uses trace seed ``seed + r``.
  Its name is its coordinates (:func:`traceforge.study.cells.cell_name`), e.g.
  ``seed__load=0.5__mode=mps__r0``.
* **Group** — every cell of one configuration (all loads and repeats) plus its capacity
  searches: they share loaded models, so a resident backend starts once per group.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from traceforge.backends.options import split_options
from traceforge.errors import BadInput
from traceforge.study.capacity import prescreen_factor
from traceforge.study.cells import CellGroup, CellTask, Resources, SearchTask, cell_name
from traceforge.study.spec import StudySpec


def configurations(spec: StudySpec) -> list[dict[str, Any]]:
    """Every combination of the non-load axes, in spec order (``[{}]`` without axes)."""
    axes = spec.config_axes
    return [dict(zip(axes, values, strict=True))
            for values in itertools.product(*(spec.axes[a] for a in axes))]


def ordered_coords(spec: StudySpec, config: dict[str, Any], load_key: str | None,
                   load: float | None) -> dict[str, Any]:
    """Coordinates in axis order, the load at the load axis's place (first if it has none)."""
    out: dict[str, Any] = {}
    if load_key is not None and "load" not in spec.axes:
        out[load_key] = load
    for axis in spec.axes:
        if axis == "load":
            if load_key is not None:
                out[load_key] = load
        else:
            out[axis] = config[axis]
    return out


def config_stem(mix: str, config: dict[str, Any]) -> str:
    return cell_name(mix, config, 0)[: -len("__r0")]


def resources_for(backend: str, options: dict[str, Any]) -> Resources:
    if backend == "resident" and str(options.get("device", "cpu")).startswith("cuda"):
        return Resources(num_gpus=1.0, num_cpus=1.0)
    return Resources()


def grid_cells(spec: StudySpec, mix: str, config: dict[str, Any],
               capacity_of: dict[int, float] | None = None) -> list[CellTask]:
    """The configuration's grid cells, repeat-major then load ascending. With a capacity load
    axis, ``capacity_of[repeat]`` gives the capacity each fraction multiplies (cells whose
    capacity is unknown get ``load = nan``: the engine records them as failed)."""
    options = {**spec.options, **config}
    out = []
    for repeat in range(spec.repeats):
        loads = spec.axes.get("load") or [None]
        for value in sorted(loads, key=lambda v: -1 if v is None else v):
            if value is None:
                coords, load = ordered_coords(spec, config, None, None), 1.0
            elif spec.load_basis == "capacity":
                coords = ordered_coords(spec, config, "capacity", value)
                cap = (capacity_of or {}).get(repeat, (capacity_of or {}).get(0))
                load = math.nan if cap is None else float(f"{value * cap:.6g}")
            else:
                coords, load = ordered_coords(spec, config, "load", value), float(value)
            cell_options = options
            if spec.backend in ("null", "simulate") and "seed" not in options:
                # a repeat draws new service times too, not only new arrivals: otherwise the
                # intervals across repeats miss the service-time randomness
                cell_options = {**options, "seed": spec.seed + repeat}
            out.append(CellTask(
                name=cell_name(mix, coords, repeat), kind="grid", mix=mix, coords=coords,
                repeat=repeat, seed=spec.seed + repeat, load=load, backend=spec.backend,
                workload=spec.mixes[mix], options=cell_options))
    return out


def searches_for(spec: StudySpec, mix: str, config: dict[str, Any], *, kind: str,
                 starts: dict[int, tuple[float | None, float | None]] | None = None,
                 known: dict[str, dict[str, Any]] | None = None) -> list[SearchTask]:
    """Capacity searches of one configuration (one per searched repeat). ``kind="prescreen"``
    runs them on the simulator with ``[capacity] profile``; ``starts[repeat] = (low, high)``
    (a prescreen's answer) starts the real search at the edge with a small step."""
    cap = spec.capacity
    if cap is None:
        return []
    backend, options = spec.backend, {**spec.options, **config}
    if kind == "prescreen":
        backend, options = "simulate", prescreen_options(spec, config)
    out = []
    for repeat in range(cap.repeats):
        start, factor = cap.start, 2.0
        if starts and repeat in starts:
            low, high = starts[repeat]
            if low is not None:
                start, factor = low, prescreen_factor(cap.tolerance)
            elif high is not None:
                start, factor = high / 2.0, 2.0
        stem = config_stem(mix, config)
        out.append(SearchTask(
            key=f"{stem}__r{repeat}" if kind == "capacity" else f"{stem}__pre__r{repeat}",
            mix=mix, config=dict(config), repeat=repeat, seed=spec.seed + repeat, kind=kind,
            backend=backend, workload=probe_workload(spec, mix), options=options,
            slo={**cap.slo, "model_slo_ms": spec.model_slo_ms(mix)},
            tolerance=cap.tolerance, start=start, factor=factor, min_load=cap.min_load,
            max_load=cap.max_load, known=dict(known or {}),
            max_probes=cap.max_probes if kind == "capacity" else None))
    return out


def probe_workload(spec: StudySpec, mix: str) -> dict[str, Any]:
    """The workload a capacity probe replays: the mix, or with ``[capacity] duration_s`` the mix
    cut to that many seconds at every load (prescreen and real probes alike)."""
    workload = spec.mixes[mix]
    if spec.capacity is None or spec.capacity.duration_s is None:
        return workload
    out = {k: v for k, v in workload.items() if k not in ("requests", "duration_s")}
    out["duration_s"] = spec.capacity.duration_s
    return out


def prescreen_options(spec: StudySpec, config: dict[str, Any]) -> dict[str, Any]:
    """The simulate options that model a configuration: its sharing mode and batching, with
    ``[capacity] profile`` (mode ``exclusive`` when the study does not set one)."""
    options = {**spec.options, **config}
    out = {k: v for k, v in options.items()
           if k in ("mode", "max_batch", "max_wait_ms", "duration_s", "drain_timeout_s")}
    out.setdefault("mode", "exclusive")
    out["profile"] = spec.capacity.profile
    return out


def validate_backend_options(backend: str, options: dict[str, Any],
                             workload: dict[str, Any]) -> None:
    """Everything the CLI would check about these options, without starting anything."""
    if backend == "simulate":
        _validate_simulate(options, workload)
        return
    backend_opts, replay_opts = split_options(backend, options)
    from traceforge.replay import ReplayOptions

    ReplayOptions(**{k: v for k, v in replay_opts.items()}).validate()
    sessions = [m for m, table in (workload.get("models") or {}).items()
                if isinstance(table, dict) and table.get("sessions")]
    if replay_opts.get("concurrency") and sessions:
        # replay refuses it per cell (each session is a closed loop by itself): every cell
        # would fail after the study had started
        raise BadInput(f"a mix with sessions ({sessions[0]}) replays open loop; use "
                       "max_inflight to cap what is in flight", key="concurrency",
                       value=replay_opts["concurrency"])
    if backend == "null":
        from traceforge.backends.null import from_options
    elif backend == "http":
        from traceforge.backends.http import from_options
    else:
        from traceforge.backends.resident import from_options
    from_options(backend_opts)


def _validate_simulate(options: dict[str, Any], workload: dict[str, Any]) -> None:
    from traceforge.simulate.simulator import SERVICE_DISTS, check_run_options

    (opts,) = split_options("simulate", options)
    # simulate()'s own checks of --time-scale, --warmup, --max-batch, --max-wait-ms, --seed,
    # --duration and --drain-timeout: a bad value fails the study now, not each of its cells
    check_run_options(time_scale=opts["time_scale"], warmup_s=opts["warmup_s"],
                      max_batch=opts["max_batch"], max_wait_ms=opts["max_wait_ms"],
                      seed=opts["seed"], duration_s=opts.get("duration_s"),
                      drain_timeout_s=opts.get("drain_timeout_s"))
    if opts["profile"] is None:
        if opts["mode"] is not None:
            raise BadInput("mode needs a profile on the simulate backend", key="mode",
                           value=opts["mode"])
        if opts.get("cold_start") is not None:
            raise BadInput("cold_start needs a profile on the simulate backend",
                           key="cold_start", value=opts["cold_start"])
        if opts.get("time_slice") is not None:
            raise BadInput("time_slice needs a profile and mode timeslice on the simulate "
                           "backend", key="time_slice", value=opts["time_slice"])
        if opts.get("zoo"):
            raise BadInput("zoo needs a profile on the simulate backend", key="zoo",
                           value=opts["zoo"])
        if opts["max_batch"] != 1 or opts["max_wait_ms"]:
            raise BadInput("dynamic batching needs a profile on the simulate backend",
                           key="max_batch", value=opts["max_batch"])
        if opts["servers"] < 1:
            raise BadInput("must be an integer >= 1", key="servers", value=opts["servers"])
        if not (math.isfinite(opts["service_ms"]) and opts["service_ms"] >= 0):
            raise BadInput("must be >= 0", key="service_ms", value=opts["service_ms"])
        if opts["service_dist"] not in SERVICE_DISTS:
            raise BadInput("unknown service distribution", key="service_dist",
                           value=opts["service_dist"], allowed=", ".join(SERVICE_DISTS))
        return
    from traceforge.simulate.profile import load_profile

    profile = load_profile(opts["profile"])
    if opts["mode"] is None:
        raise BadInput("a profile needs a mode", key="mode", allowed=", ".join(profile.modes))
    if opts["mode"] not in profile.modes:
        raise BadInput("mode not in the profile", key="mode", value=opts["mode"],
                       allowed=", ".join(profile.modes))
    if opts["max_batch"] < 1:
        raise BadInput("must be an integer >= 1", key="max_batch", value=opts["max_batch"])
    if opts.get("time_slice") is not None:
        # Applies to the study's timeslice cells (runner.run_cell drops it for other modes, so
        # a mode axis may mix them); its form is checked whatever the mode.
        from traceforge.simulate.simulator import parse_time_slice

        parse_time_slice(opts["time_slice"], "timeslice", key="time_slice")
        if opts["mode"] == "timeslice" and opts["max_batch"] > 1:
            raise BadInput("the time-sliced engine runs unbatched; a timeslice cell with "
                           "max_batch > 1 cannot use time_slice", key="time_slice",
                           value=opts["time_slice"])
    by_zoo = {p.zoo for p in profile.models.values() if p.zoo}
    overrides = opts.get("zoo") or {}
    unknown = sorted(set(overrides) - set(workload["models"]))
    if unknown:
        raise BadInput("model not in the workload", key="zoo", value=unknown[0],
                       allowed=", ".join(workload["models"]))
    for model, table in workload["models"].items():
        if model in overrides:  # as simulate's map_models: the override decides alone
            if overrides[model] not in profile.models and overrides[model] not in by_zoo:
                raise BadInput("zoo entry has no entry in the profile", key="zoo",
                               value=f"{model}={overrides[model]}",
                               allowed=", ".join(profile.models))
            continue
        zoo = table.get("zoo")
        if model not in profile.models and zoo not in profile.models and zoo not in by_zoo:
            raise BadInput("model has no entry in the profile", key="profile",
                           value=f"{model} (zoo {zoo})", allowed=", ".join(profile.models))


def plan_groups(spec: StudySpec, *, skip: set[str] | frozenset[str] = frozenset(),
                searches: dict[tuple[str, str], list[SearchTask]] | None = None,
                capacity_of: dict[tuple[str, str], dict[int, float]] | None = None,
                grid: bool = True) -> list[CellGroup]:
    """One group per configuration: its grid cells not in ``skip`` and its searches."""
    groups = []
    for mix in spec.mixes:
        for config in configurations(spec):
            stem = config_stem(mix, config)
            cells: list[CellTask] = []
            if grid:
                cells = [c for c in grid_cells(spec, mix, config,
                                               (capacity_of or {}).get((mix, stem)))
                         if c.name not in skip]
            found = (searches or {}).get((mix, stem), [])
            if not cells and not found:
                continue
            backend = found[0].backend if found else spec.backend
            options = found[0].options if found else {**spec.options, **config}
            groups.append(CellGroup(key=stem, backend=backend, cells=tuple(cells),
                                    searches=tuple(found),
                                    resources=resources_for(backend, options),
                                    max_attempts=1 + spec.retries))
    return groups


def cell_seconds(spec: StudySpec, mix: str, load: float) -> float:
    """How long a cell's trace lasts at ``load`` (a replay takes at least that long)."""
    from traceforge.generate import parse_spec
    from traceforge.study.spec import scale_workload

    workload = spec.mixes[mix]
    if "duration_s" in workload:
        return float(workload["duration_s"])
    rate = parse_spec(scale_workload(workload, load), source=mix).long_run_rate()
    return workload["requests"] / rate


def describe_plan(spec: StudySpec) -> str:
    """The plan in words: groups, grid cells, searches, and the replay time they need."""
    groups = plan_groups(spec, searches={
        (m, config_stem(m, c)): searches_for(spec, m, c, kind="capacity")
        for m in spec.mixes for c in configurations(spec)} if spec.capacity else None)
    lines = [f"study {spec.name}: backend {spec.backend}, {len(spec.mixes)} mixes, "
             f"{len(configurations(spec))} configurations per mix, {spec.repeats} repeats"]
    total = 0.0
    for group in groups:
        seconds = sum(cell_seconds(spec, c.mix, c.load) for c in group.cells
                      if c.load == c.load)
        total += seconds
        gpu = " (1 GPU)" if group.resources.num_gpus else ""
        searches = f", {len(group.searches)} capacity searches" if group.searches else ""
        lines.append(f"  group {group.key}{gpu}: {len(group.cells)} grid cells{searches}, "
                     f"grid traces {seconds:.0f} s")
    n_cells = sum(len(g.cells) for g in groups)
    note = ("virtual seconds: the study itself takes seconds" if spec.backend == "simulate" else
            "real time: the least the grid cells take, plus model loads and drains")
    lines.append(f"{len(groups)} groups, {n_cells} grid cells; traces {total:.0f} s ({note})")
    if spec.capacity:
        cap = spec.capacity
        start_s = (cap.duration_s if cap.duration_s is not None else
                   cell_seconds(spec, next(iter(spec.mixes)), cap.start))
        where = ("at the simulated capacity (prescreen)" if cap.prescreen else
                 f"at load {cap.start:g}")
        lines.append(f"capacity: every configuration x {cap.repeats} repeat(s), bracketing "
                     f"{where} ({start_s:.0f} s a probe there) then bisection to "
                     f"{cap.tolerance:g}"
                     + (f", at most {cap.max_probes} probes a search" if cap.max_probes else "")
                     + (f", each probe {cap.duration_s:g} s" if cap.duration_s else ""))
    return "\n".join(lines)
