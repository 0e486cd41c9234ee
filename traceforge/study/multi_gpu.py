"""Study cells on several GPUs of one host, without Ray (``--executor local --gpus 0,1,...``).

One worker process per listed GPU, each started (spawned) with ``CUDA_VISIBLE_DEVICES`` set to
its GPU before anything imports torch, so ``device = "cuda"`` in a cell is that GPU. Workers
take cell groups from one queue — a group runs whole on one GPU, as a cell is a sharing
experiment on one GPU — and stream their events back over a queue as they happen. Run
directories are written under ``STUDY_DIR/.scratch`` (same filesystem), so landing a cell is a
rename, done here in the driver before the event is reported.

The workers live for the whole study (every ``run`` call) and the study command starts them
(:meth:`MultiGpuExecutor.prestart`) before it validates and plans, preloading torch, the CUDA
context and transformers for resident studies, beside the driver's own validation (torch
import and CUDA probe); on the lent 2 x H200 host a worker's start was ~12 s (docs/scale.md).

A worker that dies (crash, OOM kill) fails the cells of its current group that had not finished;
the other workers carry on with the remaining groups. Ctrl-C reaches every worker (one process
group): each reports its interrupted cell, and the driver raises ``KeyboardInterrupt`` after
landing what was recorded.
"""

from __future__ import annotations

import contextlib
import os
import queue as queue_mod
import time
from collections.abc import Sequence
from pathlib import Path

from traceforge.errors import BadInput
from traceforge.study.cells import CellGroup
from traceforge.study.executor import CellEvent, EventSink, land_event, scratch_dir

_POLL_S = 0.2


def _preload() -> dict[str, float]:
    """What every resident group's first start pays once per process, done while the driver
    still validates and plans: import torch, create the CUDA context and a cuBLAS handle on
    this worker's GPU, import transformers' model machinery. Returns each phase's seconds (for
    study.json ``workers``). Failures are left to the group's own start to report."""
    phases: dict[str, float] = {}
    t = time.perf_counter()

    def mark(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        phases[name] = round(now - t, 3)
        t = now

    try:
        import torch

        mark("import_torch_s")
        if torch.cuda.is_available():
            x = torch.ones((64, 64), device="cuda")
            (x @ x).sum().item()
        mark("cuda_start_s")
        import transformers.modeling_utils  # noqa: F401  (the bulk of a zoo build's imports)

        mark("import_transformers_s")
    except Exception:  # reported by the group that needs them
        pass
    return phases


def _worker_main(gpu: int, slot: int, tasks, events, preload: bool, spawned_at: float) -> None:
    """A spawned worker: pinned to ``gpu``, runs (group, scratch) tasks until it gets None."""
    started_at = time.time()
    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # before torch can be imported
    phases = _preload() if preload else {}
    t = time.perf_counter()
    from traceforge.study.runner import run_group

    phases["import_runner_s"] = round(time.perf_counter() - t, 3)
    # Where a study's start goes (study.json ``workers``): spawn = process start and the
    # interpreter's imports up to here, then the preload's phases.
    events.put(("startup", slot, {"gpu": gpu, "pid": os.getpid(),
                                  "spawn_s": round(started_at - spawned_at, 3),
                                  "phases": phases,
                                  "ready_after_s": round(time.time() - spawned_at, 3)}))

    where = f"gpu {gpu} (worker {slot}, pid {os.getpid()})"

    def emit(event) -> None:
        if isinstance(event, CellEvent):
            event.where = where
        events.put(("event", slot, event))

    while True:
        task = tasks.get()
        if task is None:
            break
        group, scratch = task
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
    # Everything is reported and every group's backend stopped (run_group's finally): skip the
    # interpreter's teardown (torch's CUDA and allocator shutdown, ~1-2 s on a GPU host) once
    # the queue's feeder thread has handed the last message over.
    events.close()
    events.join_thread()
    os._exit(0)


class MultiGpuExecutor:
    """One worker process per GPU, kept for the whole study (every ``run`` call: prescreen,
    capacity searches, grid), so a process's torch import and CUDA start are paid once.
    :meth:`prestart` starts them early (the study command does, before it validates the spec),
    optionally preloading torch/CUDA/transformers while the driver is busy."""

    name = "local-gpus"

    def __init__(self, *, gpus: list[int] | None = None, address: str | None = None) -> None:
        if not gpus:
            raise BadInput("needs GPU indices", key="--gpus", value=gpus)
        if address is not None:
            raise BadInput("--address needs --executor ray", key="--address", value=address)
        self.gpus = list(gpus)
        self._procs: list = []
        self._tasks = self._events = None
        self._alive: set[int] = set()
        self._startup: dict[int, dict] = {}
        self._close_s: float | None = None

    def info(self) -> dict:
        """For study.json: each worker's start (spawn, preload phases, ready after), so a slow
        study start can be told apart from slow cells."""
        return {"workers": [self._startup[k] for k in sorted(self._startup)],
                "close_s": self._close_s}

    def prestart(self, *, preload: bool = False) -> None:
        """Start the worker processes now (idempotent)."""
        if self._procs:
            return
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._tasks, self._events = ctx.Queue(), ctx.Queue()
        self._procs = [ctx.Process(target=_worker_main,
                                   args=(gpu, slot, self._tasks, self._events, preload,
                                         time.time()),
                                   name=f"traceforge-study-gpu{gpu}", daemon=True)
                       for slot, gpu in enumerate(self.gpus)]
        for p in self._procs:
            p.start()
        self._alive = set(range(len(self._procs)))

    def run(self, groups: Sequence[CellGroup], *, study_dir: Path,
            on_event: EventSink) -> None:
        if not groups:
            return
        self.prestart()
        scratch = scratch_dir(study_dir)
        scratch.mkdir(parents=True, exist_ok=True)
        tasks, events, procs = self._tasks, self._events, self._procs
        by_key = {g.key: g for g in groups}
        for group in groups:
            tasks.put((group, str(scratch)))
        outstanding = set(by_key)
        current: dict[int, str | None] = dict.fromkeys(range(len(procs)))
        finished: dict[str, set[str]] = {}  # group key -> cells with a final event
        alive = self._alive
        interrupted = False
        try:
            while outstanding and alive:
                try:
                    kind, slot, payload = events.get(timeout=_POLL_S)
                except queue_mod.Empty:
                    for slot in list(alive):
                        if not procs[slot].is_alive() and events.empty():
                            alive.discard(slot)
                            key = current[slot]
                            self._lost(by_key.get(key), finished, procs[slot], on_event)
                            outstanding.discard(key)
                    continue
                if kind == "event":
                    self._deliver(payload, study_dir, on_event)
                    if isinstance(payload, CellEvent) and payload.status != "running":
                        finished.setdefault(current[slot] or "", set()).add(payload.cell.name)
                elif kind == "start":
                    current[slot] = payload
                elif kind == "startup":
                    self._startup[slot] = payload
                elif kind == "done":
                    outstanding.discard(payload)
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
            if outstanding and not interrupted:  # every worker died before taking these
                for key in outstanding:
                    self._lost(by_key[key], finished, None, on_event,
                               why="no GPU worker process left to run it")
        except KeyboardInterrupt:
            interrupted = True
            self._drain(events, study_dir, on_event)
        if interrupted:
            self.close()
            raise KeyboardInterrupt

    @staticmethod
    def _deliver(event, study_dir: Path, on_event: EventSink) -> None:
        land_event(study_dir, event)
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
        """Stop the workers: each exits after its current group (killed after 30 s)."""
        procs, self._procs = self._procs, []
        if not procs:
            return
        t = time.perf_counter()
        for p in procs:
            if p.is_alive():
                self._tasks.put(None)
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
        self._alive = set()
        self._close_s = round(time.perf_counter() - t, 3)
