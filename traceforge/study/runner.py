"""How a group's cells run: the one code path every executor calls (:func:`run_group`).

A cell's trace is generated from its mix spec (rates × load) and seed, written into the run
directory as ``trace.parquet`` (run.json's ``trace.path`` then says ``trace.parquet``), and run
with exactly what the commands use: :func:`traceforge.simulate.simulate` for ``simulate``, and
``replay_async`` with the backend built by the backend's ``from_options`` for the others.

A resident backend is started once per group and kept loaded across its cells
(:class:`KeepStarted`): every cell still gets its own run clock, and worker-side times are
shifted from the group's clock onto it; on GPU runs each cell gets its slice of the NVML samples
as ``telemetry.parquet``. All of a group's replays share one event loop (the backend's worker
connections belong to it).
"""

from __future__ import annotations

import asyncio
import math
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from traceforge.backends.options import split_options
from traceforge.clock import RunClock
from traceforge.record.manifest import RunManifest
from traceforge.study.capacity import LoadSearch, evaluate_slo
from traceforge.study.cells import CellGroup, CellTask, SearchTask, cell_name
from traceforge.study.executor import CellEvent, Event, SearchDone


class StopStudy(KeyboardInterrupt):
    """A cell was interrupted (Ctrl-C, SIGTERM): stop after reporting it."""


def build_trace(cell: CellTask, path: Path):
    """Generate the cell's trace into ``path`` and read it back (so run.json gets its sha256)."""
    from traceforge.generate import generate_trace, parse_spec
    from traceforge.schema import read_trace, write_trace
    from traceforge.study.spec import scale_workload

    spec = parse_spec(scale_workload(cell.workload, cell.load), source=f"cell {cell.name}")
    trace = generate_trace(spec, seed=cell.seed)
    meta = dict(trace.meta)
    meta["study"] = {"cell": cell.name, "load": cell.load, "mix": cell.mix}
    write_trace(trace.table, path, meta)
    return read_trace(path)


class KeepStarted:
    """A started backend reused by several replays (``replay_async`` starts and stops its
    backend around each run; here ``start``/``stop`` only bracket one cell)."""

    def __init__(self, inner, base: RunClock, run_dir: Path) -> None:
        self.inner = inner
        self.name = inner.name
        self.base = base
        self.run_dir = run_dir
        self.shift = 0
        self.window: list[int] = []

    async def start(self, models, clock) -> None:
        self.shift = self.base.t0_ns - clock.t0_ns
        self.window = [self.base.now()]

    async def submit(self, request):
        out = await self.inner.submit(request)
        for attr in ("service_start_ns", "first_token_ns", "service_end_ns"):
            value = getattr(out, attr)
            if value is not None:
                setattr(out, attr, value + self.shift)
        return out

    async def stop(self) -> None:
        self.window.append(self.base.now())
        table_of = getattr(self.inner, "telemetry_table", None)
        table = table_of() if table_of is not None else None
        if table is None or table.num_rows == 0:
            return
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        lo, hi = self.window
        t = table.column("t_ns")
        part = table.filter(pc.and_(pc.greater_equal(t, lo), pc.less_equal(t, hi)))
        part = part.set_column(0, "t_ns", pc.add(part.column("t_ns"), self.shift))
        pq.write_table(part, self.run_dir / "telemetry.parquet")

    def describe(self) -> dict[str, Any]:
        out = dict(self.inner.describe())
        out["shared_across_cells"] = True
        return out


class _GroupRuntime:
    """One group's event loop and, for resident groups, its started backend."""

    def __init__(self, group: CellGroup) -> None:
        self.group = group
        self.backend = group.backend
        self.runner: asyncio.Runner | None = None
        self.shared = None
        self.shared_error: BaseException | None = None
        self.base_clock: RunClock | None = None

    def close(self) -> None:
        if self.runner is None:
            return
        try:
            if self.shared is not None:
                self.runner.run(self.shared.stop())
        finally:
            self.runner.close()
            self.runner = None

    def _loop(self, event_loop: str) -> asyncio.Runner:
        if self.runner is None:
            from traceforge.replay.run import event_loop_factory

            self.runner = asyncio.Runner(loop_factory=event_loop_factory(event_loop))
        return self.runner

    def run_cell(self, cell: CellTask, trace, run_dir: Path) -> tuple[str, dict[str, Any]]:
        """Run one cell into ``run_dir``; (status, counts)."""
        if self.backend == "simulate":
            from traceforge.simulate import simulate

            (opts,) = split_options("simulate", cell.options)
            if opts.get("mode") != "timeslice":  # time_slice is for the timeslice cells only
                opts.pop("time_slice", None)
            # None means "simulate()'s own default" (e.g. cold_start follows the profile)
            summary = simulate(trace, run_dir,
                               **{k: v for k, v in opts.items() if v is not None})
            return summary.status, summary.counts
        from traceforge.replay import ReplayOptions, default_models
        from traceforge.replay.run import replay_async

        backend_opts, replay_opts = split_options(self.backend, cell.options)
        models = default_models(trace)
        zoo = backend_opts.get("zoo") or {}
        for m in models:
            m.zoo = zoo.get(m.name, m.zoo)
        options = ReplayOptions(models=models, progress=False, **replay_opts).validate()
        runner = self._loop(options.event_loop)
        if self.backend == "resident":
            backend = KeepStarted(self._shared(models, backend_opts, trace), self.base_clock,
                                  run_dir)
        elif self.backend == "null":
            from traceforge.backends.null import from_options

            backend = from_options(backend_opts)
        else:
            from traceforge.backends.http import from_options

            backend = from_options({**backend_opts, "pool_size": options.inflight_cap or 0})
        # replay_async gives back the signal handlers it found (the study's own)
        summary = runner.run(replay_async(trace, run_dir, backend, options))
        return summary.status, summary.counts

    def _shared(self, models, backend_opts: dict[str, Any], trace):
        if self.shared_error is not None:
            raise self.shared_error
        if self.shared is None:
            from traceforge.backends.resident import from_options

            _add_shapes(models, trace)

            backend = from_options({**backend_opts,
                                    "zoo": {m.name: m.zoo for m in models if m.zoo},
                                    "run_dir": None})
            self.base_clock = RunClock()
            try:
                self.runner.run(backend.start(models, self.base_clock))
            except BaseException as exc:
                self.runner.run(backend.stop())
                self.shared_error = exc
                raise
            self.shared = backend
        return self.shared


def _add_shapes(models, trace) -> None:
    """Where ModelInfo carries ``shapes`` (what a resident backend pre-warms at start), give the
    shared backend the first cell's: shape streams are seeded apart from arrivals, so the
    group's other cells draw the same shapes (more or fewer of them)."""
    if not models or "shapes" not in getattr(type(models[0]), "__dataclass_fields__", {}):
        return
    table = trace.table.select(["model", "batch_size", "seq_len", "max_new_tokens"])
    rows = table.group_by(table.column_names).aggregate([]).to_pylist()
    shapes: dict[str, list[tuple[int, int, int]]] = {}
    for row in rows:
        shapes.setdefault(row["model"], []).append(
            (row["batch_size"], row["seq_len"], row["max_new_tokens"]))
    for m in models:
        if m.shapes is None:
            m.shapes = sorted(shapes.get(m.name, []))


def _fix_trace_path(run_dir: Path) -> None:
    """The cell's trace now lives in its run directory: say so in run.json."""
    if not (run_dir / "run.json").exists():
        return
    manifest = RunManifest.open(run_dir)
    manifest.data.setdefault("trace", {})["path"] = "trace.parquet"
    manifest.write()


def run_cell(rt: _GroupRuntime, cell: CellTask, scratch: Path, emit: Callable[[Event], None],
             *, attempt: int = 1, slo: dict[str, Any] | None = None) -> CellEvent:
    """Run one cell (one attempt) and emit its events; returns the final event."""
    emit(CellEvent(cell=cell, status="running", attempt=attempt))
    started = time.perf_counter()
    tag = uuid.uuid4().hex[:8]
    run_dir = scratch / f"{cell.name}.{tag}"
    trace_path = scratch / f"{cell.name}.{tag}.trace.parquet"
    status, error, outcome = "failed", None, {}
    try:
        if not math.isfinite(cell.load):
            raise ValueError("no capacity known for this configuration (its search failed)")
        trace = build_trace(cell, trace_path)
        status, counts = rt.run_cell(cell, trace, run_dir)
        outcome["counts"] = counts
        if status == "complete" and slo is not None:
            outcome.update(evaluate_slo(run_dir, slo, slo.get("model_slo_ms") or {}))
    except KeyboardInterrupt:
        status, error = "interrupted", "interrupted"
    except Exception as exc:
        status, error = "failed", f"{type(exc).__name__}: {exc}"
    finally:
        if run_dir.exists() and trace_path.exists():
            shutil.move(trace_path, run_dir / "trace.parquet")
            _fix_trace_path(run_dir)
        trace_path.unlink(missing_ok=True)
    if status == "interrupted" and error is None:
        error = "interrupted"
    event = CellEvent(cell=cell, status=status, attempt=attempt, error=error, outcome=outcome,
                      elapsed_s=round(time.perf_counter() - started, 4),
                      run_dir=run_dir if run_dir.exists() else None)
    emit(event)
    if status == "interrupted":
        raise StopStudy
    return event


def _run_with_retries(rt, cell, scratch, emit, max_attempts, slo=None) -> CellEvent:
    event = None
    for attempt in range(1, max_attempts + 1):
        event = run_cell(rt, cell, scratch, emit, attempt=attempt, slo=slo)
        if event.status == "complete":
            break
    return event


def run_search(rt: _GroupRuntime, search: SearchTask, scratch: Path,
               emit: Callable[[Event], None], max_attempts: int = 1) -> SearchDone:
    state = LoadSearch(start=search.start, tolerance=search.tolerance, factor=search.factor,
                       min_load=search.min_load, max_load=search.max_load,
                       max_probes=search.max_probes)
    while (load := state.next_load()) is not None:
        coords = _probe_coords(search, load)
        name = cell_name(search.mix, coords, search.repeat, kind=search.kind)
        known = search.known.get(name)
        if known is not None:
            state.record(load, known["met"], known.get("value"), name)
            continue
        cell = CellTask(name=name, kind=search.kind, mix=search.mix, coords=coords,
                        repeat=search.repeat, seed=search.seed, load=load,
                        backend=search.backend, workload=search.workload,
                        options=search.options)
        event = _run_with_retries(rt, cell, scratch, emit, max_attempts, slo=search.slo)
        if event.status != "complete":
            state.stopped = f"probe {name} {event.status}"
            break
        state.record(load, event.outcome["met"], event.outcome.get("value"), name)
    res = state.result()
    slo = {k: v for k, v in search.slo.items() if k != "model_slo_ms"}
    done = SearchDone(key=search.key, mix=search.mix, config=dict(search.config),
                      repeat=search.repeat, kind=search.kind, load=res["load"],
                      low=res["low"], high=res["high"], tolerance=search.tolerance, slo=slo,
                      probes=res["probes"], converged=res["converged"], stopped=res["stopped"])
    emit(done)
    return done


def _probe_coords(search: SearchTask, load: float) -> dict[str, Any]:
    # The configuration (its axes in spec order), then the probe's load.
    return {**search.config, "load": load}


def run_group(group: CellGroup, scratch: Path, emit: Callable[[Event], None]) -> None:
    """Run a group's cells in order, then its capacity searches, on one backend instance.

    ``scratch`` is a worker-local directory; each finished cell's run directory is left there
    and reported in its event (``run_dir``) for the executor to land. Raises
    ``KeyboardInterrupt`` (:class:`StopStudy`) after reporting an interrupted cell.
    """
    scratch = Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    rt = _GroupRuntime(group)
    try:
        for cell in group.cells:
            _run_with_retries(rt, cell, scratch, emit, group.max_attempts)
        for search in group.searches:
            run_search(rt, search, scratch, emit, group.max_attempts)
    finally:
        rt.close()
