"""The executor interface: "run these cell groups, report each cell's status".

The study engine (:mod:`traceforge.study.engine`) never runs a cell itself. It hands groups of
cells to an :class:`Executor` and listens to the events it reports; the executor decides where
and how groups run. Contract for every implementation:

* **Input** — ``run(groups, study_dir=..., on_event=...)`` with picklable, self-contained
  :class:`~traceforge.study.cells.CellGroup` objects. A group's cells share loaded models and
  must run in order on one backend instance (one process, one device); different groups are
  independent and may run in parallel, on any GPU or host. ``group.resources`` says what a group
  needs (``num_gpus`` 1 for a resident backend on CUDA, else 0; ``num_cpus``). Cells name their
  device as the study does (``device = "cuda"``): to place a group on GPU i, run it in a process
  with ``CUDA_VISIBLE_DEVICES=i`` (Ray does this for ``num_gpus=1`` tasks and actors).
* **Running a group** — call :func:`traceforge.study.runner.run_group` (the one way a cell is
  run: it builds the trace from the cell's spec and seed and runs it with exactly the code
  ``replay``/``simulate`` use) with a scratch directory local to the worker. No shared filesystem
  is assumed: each finished cell's run directory lies under that scratch directory.
* **Landing** — before reporting a finished cell the executor lands its run directory at
  ``study_dir/cells/<name>/`` atomically: :func:`land_cell` (same filesystem: a rename), or
  :func:`pack_run_dir` on the worker + :func:`unpack_run_dir` on the driver.
* **Events** — ``on_event`` is called in the caller's process and thread, in order per group:
  ``CellEvent(status="running")`` when a cell starts, then one of ``complete``, ``failed``,
  ``interrupted`` (with ``landed=True`` once the run directory is in place), and
  ``SearchDone`` when a group's capacity search ends. An executor that retries a failed cell
  reports each attempt (``attempt`` = 1, 2, ...; at most ``group.max_attempts``); study.json
  records the count.
* **Interruption** — on Ctrl-C / SIGTERM the executor stops starting cells, reports the cells in
  flight as ``interrupted`` (landing what they recorded), and raises ``KeyboardInterrupt``.

Implementations are looked up by name in :data:`EXECUTORS` (``"module:attribute"`` strings, so
nothing imports Ray unless asked): :class:`LocalExecutor` here; ``ray`` and the multi-GPU local
executor (``--gpus``) live in their own modules.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from traceforge.errors import BadInput
from traceforge.study.cells import CellGroup, CellTask


@dataclass
class CellEvent:
    """A cell changed state. ``outcome`` (finished cells): counts, and for capacity probes
    ``{"met": bool, "value": float | None}``."""

    cell: CellTask
    status: str  # running | complete | failed | interrupted
    attempt: int = 1
    error: str | None = None
    outcome: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0
    run_dir: Path | None = None  # where the worker left the run directory (worker-local)
    landed: bool = False  # True once it is at study_dir/cells/<name>
    where: str | None = None  # host / device, for the record


@dataclass
class SearchDone:
    """A capacity search (or prescreen) ended. ``load`` = highest load meeting the SLO (None if
    even ``min_load`` missed it); ``high`` = lowest load missing it (None if ``max_load`` met)."""

    key: str
    mix: str
    config: dict[str, Any]
    repeat: int
    kind: str
    load: float | None
    low: float | None
    high: float | None
    tolerance: float
    slo: dict[str, Any]
    probes: list[dict[str, Any]]
    converged: bool
    stopped: str | None = None  # why it ended early (interrupted, failed probe, bounds)


Event = CellEvent | SearchDone
EventSink = Callable[[Event], None]


@runtime_checkable
class Executor(Protocol):
    name: str

    def run(self, groups: Sequence[CellGroup], *, study_dir: Path,
            on_event: EventSink) -> None:
        """Run every group (see the module docstring for the contract); return when all ended."""

    def close(self) -> None:
        """Release workers / connections; safe to call twice."""


# -- landing run directories ---------------------------------------------------------------------
def cells_dir(study_dir: Path) -> Path:
    return Path(study_dir) / "cells"


def scratch_dir(study_dir: Path) -> Path:
    """Where local executors run cells: inside STUDY_DIR, so landing is a rename."""
    return Path(study_dir) / ".scratch"


def land_cell(study_dir: Path, name: str, src: Path) -> Path:
    """Move ``src`` to ``study_dir/cells/<name>`` atomically, replacing an earlier attempt."""
    dest = cells_dir(study_dir) / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    src = Path(src)
    if os.stat(src).st_dev != os.stat(dest.parent).st_dev:
        # Another filesystem: copy next to the destination first, so the final step is a rename.
        staged = dest.parent / f".{name}.{uuid.uuid4().hex[:8]}.landing"
        shutil.copytree(src, staged)
        shutil.rmtree(src, ignore_errors=True)
        src = staged
    if dest.exists():
        old = dest.parent / f".{name}.{uuid.uuid4().hex[:8]}.old"
        os.replace(dest, old)
        os.replace(src, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dest)
    return dest


def land_event(study_dir: Path, event: Event) -> None:
    """Land a finished cell's run directory left on this filesystem (``event.run_dir``) before
    the event is reported: the local executors' landing step."""
    if (isinstance(event, CellEvent) and event.status != "running"
            and event.run_dir is not None and Path(event.run_dir).exists()):
        land_cell(study_dir, event.cell.name, event.run_dir)
        event.landed = True
        event.run_dir = None


def pack_run_dir(path: Path) -> dict[str, bytes]:
    """A run directory's files as ``{relative path: bytes}`` (for executors whose workers share
    no filesystem): the format sharded Ray replays ship too (:mod:`traceforge.scale.files`)."""
    from traceforge.scale.files import pack_dir

    return pack_dir(path)


def unpack_run_dir(study_dir: Path, name: str, data: dict[str, bytes]) -> Path:
    """Inverse of :func:`pack_run_dir`, landed atomically at ``study_dir/cells/<name>``."""
    from traceforge.scale.files import land_files

    scratch = scratch_dir(study_dir)
    scratch.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=scratch))
    land_files(data, tmp)
    return land_cell(study_dir, name, tmp)


# -- the local executor --------------------------------------------------------------------------
class LocalExecutor:
    """Sequential and in-process: groups one after another in this process (the default)."""

    name = "local"

    def __init__(self, **_: Any) -> None:
        pass

    def run(self, groups: Sequence[CellGroup], *, study_dir: Path,
            on_event: EventSink) -> None:
        from traceforge.study.runner import run_group

        scratch = scratch_dir(study_dir)
        scratch.mkdir(parents=True, exist_ok=True)

        def emit(event: Event) -> None:
            land_event(study_dir, event)
            on_event(event)

        for group in groups:
            run_group(group, scratch, emit)

    def close(self) -> None:
        pass


# name -> "module:attribute" of a class taking (gpus=..., address=...) keyword arguments
EXECUTORS: dict[str, str] = {
    "local": "traceforge.study.executor:LocalExecutor",
    "ray": "traceforge.study.ray_executor:RayExecutor",
    "local-gpus": "traceforge.study.multi_gpu:MultiGpuExecutor",
}


def make_executor(name: str, *, gpus: list[int] | None = None,
                  address: str | None = None) -> Executor:
    """The executor for ``--executor NAME`` (``local`` with ``--gpus`` → ``local-gpus``)."""
    if name not in ("local", "ray"):
        raise BadInput("unknown executor", key="--executor", value=name, allowed="local, ray")
    if address is not None and name != "ray":
        raise BadInput("--address needs --executor ray", key="--address", value=address)
    key = "local-gpus" if name == "local" and gpus else name
    module_name, _, attr = EXECUTORS[key].partition(":")
    what = "--gpus" if key == "local-gpus" else f"--executor {name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise BadInput(f"{what} is not implemented in this build", key="--executor",
                           value=name) from exc
        raise BadInput(f"{what} needs the {exc.name!r} package (pip install "
                       f"'traceforge[{exc.name}]')", key="--executor", value=name) from exc
    return getattr(module, attr)(gpus=gpus, address=address)
