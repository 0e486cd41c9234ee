"""Study cells on Ray (``traceforge study ... --executor ray [--address ADDR]``).

Each cell group (cells that share loaded models, ``executor.py``) is one Ray task with the
group's resource request: ``num_gpus=1`` for resident cells on CUDA — the whole GPU, since a cell
*is* a sharing experiment on one GPU — and CPU only for simulate/null/http cells. Ray places the
task on a node with a free GPU and sets ``CUDA_VISIBLE_DEVICES`` to it, so ``device = "cuda"``
is the assigned GPU. Groups are spread over the nodes (``SPREAD``) rather than packed.

No shared filesystem: the task runs :func:`~traceforge.study.runner.run_group` in a scratch
directory on its node, packs every finished cell's run directory (``pack_run_dir``) and returns
the group's events with them; the driver lands each cell atomically under
``STUDY_DIR/cells/<name>`` (``unpack_run_dir``) before reporting it.

Node failure: a task lost with its node (or worker process) is submitted again — Ray schedules it
on a live node — up to ``NODE_ATTEMPTS`` times. Only that group's cells run again; every lost
attempt is reported for each of its cells (a ``running`` then a ``failed`` event naming the
loss), so study.json's ``attempts`` and ``error`` show it. An error raised *inside* the task (a
bug, not a lost node) fails the group's cells without a retry; cell failures inside a healthy
task are retried by ``run_group`` itself (``CellGroup.max_attempts``).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from traceforge.study.cells import CellGroup
from traceforge.study.executor import CellEvent, EventSink, pack_run_dir, unpack_run_dir

NODE_ATTEMPTS = 3  # tries per group when nodes die under it


def run_group_packed(group: CellGroup) -> list[tuple[Any, dict[str, bytes] | None]]:
    """The Ray task's body: run the group in a node-local scratch directory; return its events,
    each finished cell's run directory packed beside it."""
    import platform

    from traceforge.study.runner import run_group

    where = platform.node()
    with contextlib.suppress(Exception):
        import ray

        where = f"{platform.node()} ({ray.get_runtime_context().get_node_id()[:8]})"
        gpus = ray.get_gpu_ids()
        if gpus:
            where += f" gpu {','.join(str(g) for g in gpus)}"
    scratch = Path(tempfile.mkdtemp(prefix="traceforge-cells-"))
    out: list[tuple[Any, dict[str, bytes] | None]] = []

    def emit(event) -> None:
        packed = None
        if isinstance(event, CellEvent):
            event.where = where
            if event.status != "running" and event.run_dir is not None \
                    and Path(event.run_dir).exists():
                packed = pack_run_dir(Path(event.run_dir))
                shutil.rmtree(event.run_dir, ignore_errors=True)
            event.run_dir = None
        out.append((event, packed))

    try:
        run_group(group, scratch, emit)
    except KeyboardInterrupt:  # the task was cancelled: what finished still goes back
        pass
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


class RayExecutor:
    name = "ray"

    def __init__(self, *, gpus: list[int] | None = None, address: str | None = None) -> None:
        from traceforge.errors import BadInput

        if gpus:
            raise BadInput("--gpus is for --executor local; Ray places GPU cells itself",
                           key="--gpus", value=",".join(map(str, gpus)))
        self.address = address
        self._ray = None
        self._owned = False

    def _connect(self):
        if self._ray is None:
            from traceforge.scale.ray_util import init_ray

            self._ray, self._owned = init_ray(self.address)
        return self._ray

    def run(self, groups: Sequence[CellGroup], *, study_dir: Path,
            on_event: EventSink) -> None:
        if not groups:
            return
        ray = self._connect()
        task = ray.remote(run_group_packed)

        def submit(group: CellGroup):
            return task.options(num_cpus=group.resources.num_cpus,
                                num_gpus=group.resources.num_gpus, max_retries=0,
                                scheduling_strategy="SPREAD",
                                name=f"traceforge-cells:{group.key}").remote(group)

        pending = {submit(g): (g, 1) for g in groups}
        lost: dict[str, int] = {}  # group key -> attempts lost with their node
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                ref = ready[0]
                group, attempt = pending.pop(ref)
                try:
                    events = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # raised inside the task: no retry
                    self._fail(group, lost.get(group.key, 0) + 1, on_event,
                               f"cell group failed: {exc}"[:2000])
                    continue
                except ray.exceptions.RayError as exc:  # the node / worker died under it
                    lost[group.key] = lost.get(group.key, 0) + 1
                    why = f"attempt lost with its node ({type(exc).__name__})"
                    self._fail(group, lost[group.key], on_event, why)
                    if attempt < NODE_ATTEMPTS:
                        pending[submit(group)] = (group, attempt + 1)
                    continue
                self._deliver(events, lost.get(group.key, 0), study_dir, on_event)
        except KeyboardInterrupt:
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            raise

    @staticmethod
    def _fail(group: CellGroup, attempt: int, on_event: EventSink, error: str) -> None:
        for cell in group.cells:
            on_event(CellEvent(cell=cell, status="running", attempt=attempt))
            on_event(CellEvent(cell=cell, status="failed", attempt=attempt, error=error))

    @staticmethod
    def _deliver(events, offset: int, study_dir: Path, on_event: EventSink) -> None:
        for event, packed in events:
            if isinstance(event, CellEvent):
                event.attempt += offset  # attempts lost with nodes come first
                if packed is not None:
                    unpack_run_dir(study_dir, event.cell.name, packed)
                    event.landed = True
            on_event(event)

    def close(self) -> None:
        if self._ray is not None and self._owned:
            self._ray.shutdown()  # only a connection (or local instance) this executor made
        self._ray, self._owned = None, False
