"""The study engine: claim STUDY_DIR, plan, hand groups to an executor, keep study.json true.

Phases, each a batch of groups for the executor:

1. ``prescreen`` (``[capacity] prescreen = "simulate"``): every configuration's capacity search
   on the simulator;
2. the grid cells with absolute loads, and the capacity searches (in the same groups, so models
   load once); a prescreened search starts at the simulated edge with small steps;
3. grid cells whose load axis is a fraction of the capacity (``load = {capacity = [...]}``):
   each fraction multiplies the capacity found for the same configuration and repeat (repeat 0's
   when that repeat was not searched).

``study.json`` (schema ``traceforge.study/1``) is rewritten atomically (tmp + rename) on every
cell event. STUDY_DIR is claimed like a run directory (``paths.lock_dir``: a create-exclusive
``.traceforge.lock`` holding pid and host); a lock left by a killed study is taken over by
``--resume``. ``--resume`` redoes only cells that are
not ``complete`` (complete cells' files are not touched), replays recorded probe outcomes so
capacity searches take the same path, and refuses a changed spec, naming the differing keys.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from traceforge.errors import BadInput
from traceforge.paths import LOCK_NAME, lock_dir
from traceforge.schema import atomic_write
from traceforge.study.cells import CellTask
from traceforge.study.executor import (
    CellEvent,
    Event,
    Executor,
    LocalExecutor,
    SearchDone,
    scratch_dir,
)
from traceforge.study.plan import (
    config_stem,
    configurations,
    grid_cells,
    plan_groups,
    searches_for,
)
from traceforge.study.spec import StudySpec

STUDY_SCHEMA_ID = "traceforge.study/1"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def spec_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = flatten(old), flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))


# -- the directory lock ---------------------------------------------------------------------------
@contextmanager
def claim(study_dir: Path) -> Iterator[None]:
    """Hold STUDY_DIR for this process: the run directories' lock (paths.lock_dir)."""
    lock = lock_dir(study_dir, key="-o", what="study")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


# -- study.json ----------------------------------------------------------------------------------
class StudyRecord:
    """study.json in memory; ``write()`` replaces the file atomically."""

    def __init__(self, study_dir: Path, spec: StudySpec, *, executor: str,
                 previous: dict[str, Any] | None = None) -> None:
        self.path = study_dir / "study.json"
        self.spec = spec
        prev = previous or {}
        self.data: dict[str, Any] = {
            "schema": STUDY_SCHEMA_ID,
            "name": spec.name,
            "spec_path": str(spec.path) if spec.path else None,
            "spec_hash": spec.spec_hash(),
            "spec": spec.to_dict(),
            "backend": spec.backend,
            "executor": executor,
            "status": "running",
            "created_at": prev.get("created_at", _now()),
            "updated_at": _now(),
            "resumed": prev.get("resumed", 0) + (1 if previous else 0),
        }
        self.cells: dict[str, dict[str, Any]] = {c["name"]: c for c in prev.get("cells", [])}
        self.capacity: dict[str, dict[str, Any]] = {c["key"]: c for c in prev.get("capacity", [])
                                                    if "key" in c}
        self.order: dict[str, tuple] = {}
        self.search_ranks: dict[str, int] = {}  # capacity key -> plan order
        self.last_write = 0.0

    # cells
    def plan_cell(self, cell: CellTask, order: tuple) -> None:
        self.order[cell.name] = order
        rec = self.cells.get(cell.name)
        if rec is None:
            rec = self._new_record(cell)
            self.cells[cell.name] = rec
        if cell.load == cell.load:  # not NaN: a capacity fraction's load may be known only now
            rec["load"] = cell.load

    def _new_record(self, cell: CellTask) -> dict[str, Any]:
        return {"name": cell.name, "kind": cell.kind, "mix": cell.mix,
                "coords": dict(cell.coords), "repeat": cell.repeat, "seed": cell.seed,
                "load": cell.load if cell.load == cell.load else None,
                "backend": cell.backend, "status": "pending", "run_dir": f"cells/{cell.name}",
                "attempts": 0, "error": None}

    def complete_cells(self) -> set[str]:
        root = self.path.parent
        return {n for n, c in self.cells.items()
                if c["status"] == "complete" and (root / c["run_dir"] / "run.json").exists()}

    def known_probes(self) -> dict[str, dict[str, Any]]:
        return {n: {"met": c["outcome"]["met"], "value": c["outcome"].get("value")}
                for n in self.complete_cells()
                if (c := self.cells[n])["kind"] != "grid" and "met" in c.get("outcome", {})}

    def on_event(self, event: Event) -> None:
        if isinstance(event, SearchDone):
            self.capacity[event.key] = {
                "key": event.key, "mix": event.mix, "config": event.config,
                "repeat": event.repeat, "kind": event.kind, "load": event.load,
                "low": event.low, "high": event.high, "tolerance": event.tolerance,
                "slo": event.slo, "converged": event.converged, "stopped": event.stopped,
                "probes": [{"load": p["load"], "cell": p["cell"], "met": p["met"],
                            "value": p["value"]} for p in event.probes]}
            self.write()
            return
        cell = event.cell
        rec = self.cells.get(cell.name)
        if rec is None:
            rec = self._new_record(cell)
            self.cells[cell.name] = rec
        rec["status"] = event.status
        # the driver's wall clock when it heard of the start / the end (a study's Gantt chart)
        rec["started_at" if event.status == "running" else "finished_at"] = _now()
        if event.status == "running":
            rec.pop("finished_at", None)
        rec["attempts"] = max(rec.get("attempts", 0), 0) + (1 if event.status == "running"
                                                             else 0)
        if event.status != "running":
            rec["error"] = event.error
            rec["elapsed_s"] = event.elapsed_s
            outcome = dict(event.outcome)
            if outcome:
                rec["outcome"] = outcome
            if event.where:
                rec["where"] = event.where
        elif time.monotonic() - self.last_write < 1.0:
            return  # "running" is written at most once a second; finished cells always are
        self.write()

    def mark_interrupted(self) -> None:
        for rec in self.cells.values():
            if rec["status"] == "running":
                rec["status"] = "interrupted"
                rec["error"] = rec.get("error") or "interrupted"

    def write(self, status: str | None = None) -> None:
        if status is not None:
            self.data["status"] = status
        self.data["updated_at"] = _now()
        cells = sorted(self.cells.values(), key=self._cell_order)
        caps = sorted(self.capacity.values(),
                      key=lambda c: (c["kind"] != "prescreen", self.search_rank(c), c["key"]))
        counts = _status_counts(cells)
        # One cell / capacity entry per line: readable, and json's C encoder (indent=None) is
        # ~20x faster than its indenting one on a study of hundreds of cells.
        head = {**self.data, "counts": counts}
        lines = ["{"]
        lines += [f"{json.dumps(k)}: {json.dumps(v, default=str)}," for k, v in head.items()]
        for key, items in (("cells", cells), ("capacity", caps)):
            body = ",\n".join("  " + json.dumps(c, default=str) for c in items)
            lines.append(f'{json.dumps(key)}: [\n{body}\n]' + ("," if key == "cells" else ""))
        lines.append("}")
        text = "\n".join(lines)
        atomic_write(self.path, lambda tmp: tmp.write_text(text + "\n"))
        self.last_write = time.monotonic()

    def _cell_order(self, rec: dict[str, Any]) -> tuple:
        """Grid cells in plan order, then prescreen and capacity probes by search (in plan
        order), then load — computed from the record, so a resumed study lists the same order."""
        if rec["name"] in self.order:
            return (0, *self.order[rec["name"]], rec["name"])
        config = {k: v for k, v in rec["coords"].items() if k != "load"}
        tag = "__pre" if rec["kind"] == "prescreen" else ""
        key = f"{config_stem(rec['mix'], config)}{tag}__r{rec['repeat']}"
        return (1 if rec["kind"] == "prescreen" else 2, self.search_ranks.get(key, 1 << 30),
                rec["load"] or 0.0, rec["name"])

    def search_rank(self, cap: dict[str, Any]) -> int:
        return self.search_ranks.get(cap["key"], 1 << 30)


def _status_counts(cells: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in cells:
        out[c["status"]] = out.get(c["status"], 0) + 1
    return out


def load_study_json(study_dir: Path) -> dict[str, Any]:
    path = study_dir / "study.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadInput("not a study directory (no readable study.json)", key="--resume",
                       value=str(study_dir)) from exc
    if data.get("schema") != STUDY_SCHEMA_ID:
        raise BadInput("not a traceforge study", source=path, key="schema",
                       value=data.get("schema"), allowed=STUDY_SCHEMA_ID)
    return data


# -- progress ------------------------------------------------------------------------------------
class _Progress:
    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled
        self.total = total
        self.done = 0
        self._progress = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(TextColumn("study"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[cell]}"), TimeElapsedColumn(),
                                      TimeRemainingColumn(), console=Console(stderr=True))
            self._task = self._progress.add_task("study", total=total, cell="")
            self._progress.start()

    def event(self, event: Event) -> None:
        if self._progress is None or not isinstance(event, CellEvent):
            return
        if event.status == "running":
            if event.cell.kind != "grid" and event.attempt == 1:
                self.total += 1  # probes are known only as the search picks them
                self._progress.update(self._task, total=self.total)
            self._progress.update(self._task, cell=event.cell.name)
        else:
            self._progress.advance(self._task)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


# -- running -------------------------------------------------------------------------------------
def check_study_dir(study_dir: Path, resume: bool) -> None:
    """STUDY_DIR must be new or empty, or (``--resume``) hold a study.json (exit 2 otherwise)."""
    if resume:
        if not (study_dir / "study.json").exists():
            raise BadInput("nothing to resume (no study.json)", key="-o", value=str(study_dir))
        return
    if study_dir.exists() and (not study_dir.is_dir() or any(study_dir.iterdir())):
        raise BadInput("exists and is not empty (use --resume to continue a study, or choose a "
                       "new directory)", key="-o", value=str(study_dir))


def check_resume(study_dir: Path, spec: StudySpec) -> dict[str, Any]:
    previous = load_study_json(study_dir)
    if previous.get("spec_hash") != spec.spec_hash():
        diff = spec_differences(previous.get("spec") or {}, spec.to_dict())
        raise BadInput("the study spec changed since this study started (differing keys: "
                       f"{', '.join(diff[:12]) or 'unknown'}); start a new STUDY_DIR",
                       source=spec.path, key="--resume", value=str(study_dir))
    return previous


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _note_executor(record: StudyRecord, executor: Executor) -> None:
    """What the executor tells of itself (``--gpus``: each worker's start), for study.json."""
    info = getattr(executor, "info", None)
    if info is not None:
        record.data["executor_info"] = info()


def run_study(spec: StudySpec, study_dir: Path | str, *, resume: bool = False,
              executor: Executor | None = None, progress: bool = False) -> dict[str, Any]:
    """Run (or resume) a study; returns the final study.json content. Raises BadInput before
    writing anything; KeyboardInterrupt (after recording it) when interrupted."""
    study_dir = Path(study_dir)
    check_study_dir(study_dir, resume)
    previous = check_resume(study_dir, spec) if resume else None
    executor = executor or LocalExecutor()
    study_dir.mkdir(parents=True, exist_ok=True)
    with claim(study_dir), _sigterm_as_interrupt():
        if not resume and any(not p.name.startswith(LOCK_NAME) for p in study_dir.iterdir()):
            # Another study filled it between the check above and the claim: not ours.
            check_study_dir(study_dir, resume)
        record = StudyRecord(study_dir, spec, executor=executor.name, previous=previous)
        return _run(spec, study_dir, record, executor, progress)


def _run(spec: StudySpec, study_dir: Path, record: StudyRecord, executor: Executor,
         progress: bool) -> dict[str, Any]:
    configs = [(mix, config) for mix in spec.mixes for config in configurations(spec)]
    rank = {}
    for i, (mix, config) in enumerate(configs):
        for r in range(spec.repeats):
            stem = config_stem(mix, config)
            rank[f"{stem}__r{r}"] = i * 10_000 + r
            rank[f"{stem}__pre__r{r}"] = i * 10_000 + r
    record.search_ranks = rank
    for gi, (mix, config) in enumerate(configs):
        for ci, cell in enumerate(grid_cells(spec, mix, config)):
            record.plan_cell(cell, (0, gi, ci))
    done = record.complete_cells()
    shutil.rmtree(scratch_dir(study_dir), ignore_errors=True)  # leftovers of a killed study
    record.write("running")
    todo = sum(1 for n, c in record.cells.items() if c["kind"] == "grid" and n not in done)
    bar = _Progress(progress, todo)

    def on_event(event: Event) -> None:
        record.on_event(event)
        bar.event(event)

    try:
        starts: dict[tuple[str, str], dict[int, tuple]] = {}
        cap = spec.capacity
        if cap is not None and cap.prescreen:
            known = record.known_probes()
            searches = {(m, config_stem(m, c)): searches_for(spec, m, c, kind="prescreen",
                                                             known=known)
                        for m, c in configs}
            executor.run(plan_groups(spec, searches=searches, grid=False), study_dir=study_dir,
                         on_event=on_event)
            for (m, stem), found in searches.items():
                starts[(m, stem)] = {s.repeat: (record.capacity[s.key]["low"],
                                                record.capacity[s.key]["high"])
                                     for s in found if s.key in record.capacity}
        searches = {}
        if cap is not None:
            known = record.known_probes()
            searches = {(m, config_stem(m, c)): searches_for(
                spec, m, c, kind="capacity", starts=starts.get((m, config_stem(m, c))),
                known=known) for m, c in configs}
        grid = spec.load_basis != "capacity"
        groups = plan_groups(spec, skip=done, searches=searches, grid=grid)
        executor.run(groups, study_dir=study_dir, on_event=on_event)
        if not grid:
            capacity_of = {}
            for (m, stem), found in searches.items():
                capacity_of[(m, stem)] = {s.repeat: record.capacity[s.key]["load"]
                                          for s in found
                                          if s.key in record.capacity
                                          and record.capacity[s.key]["load"] is not None}
            for gi, (mix, config) in enumerate(configs):
                for ci, cell in enumerate(grid_cells(spec, mix, config,
                                                     capacity_of[(mix, config_stem(mix,
                                                                                   config))])):
                    record.plan_cell(cell, (0, gi, ci))
            groups = plan_groups(spec, skip=done, capacity_of=capacity_of)
            executor.run(groups, study_dir=study_dir, on_event=on_event)
    except KeyboardInterrupt:
        _note_executor(record, executor)
        record.mark_interrupted()
        record.write("interrupted")
        bar.close()
        raise
    except BaseException:
        _note_executor(record, executor)
        record.mark_interrupted()
        record.write("failed")
        bar.close()
        raise
    finally:
        executor.close()
    _note_executor(record, executor)  # again after close: close_s
    bar.close()
    failed = [c for c in record.cells.values() if c["status"] != "complete"]
    record.write("failed" if failed else "complete")
    shutil.rmtree(scratch_dir(study_dir), ignore_errors=True)
    return json.loads(record.path.read_text())
