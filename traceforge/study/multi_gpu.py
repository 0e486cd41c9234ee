"""Study cells on several GPUs of one host, without Ray (``--executor local --gpus 0,1,...``).

One worker process per listed GPU, each started (spawned) with ``CUDA_VISIBLE_DEVICES`` set to
its GPU before anything imports torch, so ``device = "cuda"`` in a cell is that GPU. Workers
take cell groups from one queue — a group runs whole on one GPU, as a cell is a sharing
experiment on one GPU — and stream their events back over a queue as they happen. Run
directories are written under ``STUDY_DIR/.scratch`` (same filesystem), so landing a cell is a
rename, done here in the driver before the event is reported.

A worker that dies (crash, OOM kill) fails the cells of its current group that had not finished;
the other workers carry on with the remaining groups. Ctrl-C reaches every worker (one process
group): each reports its interrupted cell, and the driver raises ``KeyboardInterrupt`` after
landing what was recorded.
"""

from __future__ import annotations

import contextlib
import os
import queue as queue_mod
from collections.abc import Sequence
from pathlib import Path

from traceforge.errors import BadInput
from traceforge.study.cells import CellGroup
from traceforge.study.executor import CellEvent, EventSink, land_cell, scratch_dir

_POLL_S = 0.2


def _worker_main(gpu: int, slot: int, tasks, events, scratch: str) -> None:
    """A spawned worker: pinned to ``gpu``, runs groups until it gets ``None``."""
    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # before torch can be imported
    from traceforge.study.runner import run_group

    where = f"gpu {gpu} (worker {slot}, pid {os.getpid()})"

    def emit(event) -> None:
        if isinstance(event, CellEvent):
            event.where = where
        events.put(("event", slot, event))

    while True:
        group = tasks.get()
        if group is None:
            break
        events.put(("start", slot, group.key))
        try:
            run_group(group, Path(scratch), emit)
        except KeyboardInterrupt:
            events.put(("interrupted", slot, group.key))
            return
        except Exception as exc:  # run_group records cell errors itself; this is a bug
            events.put(("error", slot, f"{type(exc).__name__}: {exc}"))
        events.put(("done", slot, group.key))
    events.put(("exit", slot, None))


class MultiGpuExecutor:
    name = "local-gpus"

    def __init__(self, *, gpus: list[int] | None = None, address: str | None = None) -> None:
        if not gpus:
            raise BadInput("needs GPU indices", key="--gpus", value=gpus)
        if address is not None:
            raise BadInput("--address needs --executor ray", key="--address", value=address)
        self.gpus = list(gpus)

    def run(self, groups: Sequence[CellGroup], *, study_dir: Path,
            on_event: EventSink) -> None:
        import multiprocessing

        if not groups:
            return
        ctx = multiprocessing.get_context("spawn")
        scratch = scratch_dir(study_dir)
        scratch.mkdir(parents=True, exist_ok=True)
        tasks, events = ctx.Queue(), ctx.Queue()
        by_key = {g.key: g for g in groups}
        for group in groups:
            tasks.put(group)
        n = min(len(self.gpus), len(groups))
        for _ in range(n):
            tasks.put(None)
        procs = [ctx.Process(target=_worker_main, args=(gpu, slot, tasks, events, str(scratch)),
                             name=f"traceforge-study-gpu{gpu}", daemon=True)
                 for slot, gpu in enumerate(self.gpus[:n])]
        for p in procs:
            p.start()
        current: dict[int, str | None] = dict.fromkeys(range(n))
        finished: dict[str, set[str]] = {}  # group key -> cells with a final event
        alive = set(range(n))
        interrupted = False
        try:
            while alive:
                try:
                    kind, slot, payload = events.get(timeout=_POLL_S)
                except queue_mod.Empty:
                    for slot in list(alive):
                        if not procs[slot].is_alive() and events.empty():
                            alive.discard(slot)
                            self._lost(by_key.get(current[slot]), finished, procs[slot],
                                       on_event)
                    continue
                if kind == "event":
                    self._deliver(payload, study_dir, on_event)
                    if isinstance(payload, CellEvent) and payload.status != "running":
                        finished.setdefault(current[slot] or "", set()).add(payload.cell.name)
                elif kind == "start":
                    current[slot] = payload
                elif kind == "done":
                    current[slot] = None
                elif kind == "interrupted":
                    interrupted = True
                    alive.discard(slot)
                elif kind == "exit":
                    alive.discard(slot)
                elif kind == "error":
                    group = by_key.get(current[slot])
                    if group is not None:
                        self._lost(group, finished, procs[slot], on_event, why=payload)
        except KeyboardInterrupt:
            interrupted = True
            self._drain(events, study_dir, on_event)
        finally:
            for p in procs:
                p.join(timeout=30)
                if p.is_alive():
                    p.kill()
                    p.join()
        if interrupted:
            raise KeyboardInterrupt

    @staticmethod
    def _deliver(event, study_dir: Path, on_event: EventSink) -> None:
        if (isinstance(event, CellEvent) and event.status != "running"
                and event.run_dir is not None and Path(event.run_dir).exists()):
            land_cell(study_dir, event.cell.name, event.run_dir)
            event.landed = True
            event.run_dir = None
        on_event(event)

    def _drain(self, events, study_dir: Path, on_event: EventSink) -> None:
        """After Ctrl-C: deliver what the workers still report (their interrupted cells)."""
        while True:
            try:
                kind, _slot, payload = events.get(timeout=2.0)
            except (queue_mod.Empty, KeyboardInterrupt):
                return
            if kind == "event":
                with contextlib.suppress(Exception):
                    self._deliver(payload, study_dir, on_event)

    @staticmethod
    def _lost(group: CellGroup | None, finished: dict[str, set[str]], proc, on_event: EventSink,
              why: str | None = None) -> None:
        if group is None:
            return
        done = finished.get(group.key, set())
        error = why or f"worker process died (exit code {proc.exitcode})"
        for cell in group.cells:
            if cell.name not in done:
                on_event(CellEvent(cell=cell, status="failed", error=error))

    def close(self) -> None:
        pass
