"""Replay workers as Ray actors (``traceforge replay ... --executor ray --workers N``).

The driver side of ``workers.py``'s protocol, over Ray instead of pipes. No shared filesystem is
assumed: each actor records into a temporary directory on its own node, and when its shard is done
it ships the part files and its worker manifest back; the driver lands them atomically in the run
directory (``scale/files.py``). Actors are spread over the cluster (``SPREAD``), one CPU each.

Clocks: before an actor starts, the driver measures its CLOCK_MONOTONIC offset with round-trip
probes (the offset of the probe with the shortest round trip; uncertainty = half that round
trip). An actor on the driver's host (same kernel ``boot_id``) shares the driver's clock, so the
offset applied is 0 and the probe only documents the uncertainty; on another host the actor's
run clock starts at ``driver t0 + offset``. Every row is stamped with the actor's own clock.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
from pathlib import Path

from traceforge.clock import RunClock
from traceforge.replay.shard import WorkerRole
from traceforge.scale.files import land_files, pack_dir
from traceforge.scale.ray_util import init_ray

PROBES = 8


def boot_id() -> str:
    """Identifies one running kernel: equal boot ids share one CLOCK_MONOTONIC."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        import platform

        return f"host:{platform.node()}"


class _ActorRole(WorkerRole):
    def __init__(self, index: int, trace_info: dict) -> None:
        super().__init__(index, trace_info)
        self.ready = threading.Event()
        self.go = threading.Event()
        self.origin: int | None = None
        self.ready_info: dict | None = None
        self.result: dict | None = None

    def wait_origin(self) -> int:
        import os
        import platform

        self.ready_info = {"host": platform.node(), "pid": os.getpid()}
        self.ready.set()
        self.go.wait()
        if self.origin is None:
            from traceforge.replay.workers import Aborted

            raise Aborted("the driver aborted the run at the start barrier")
        return self.origin

    def finished(self, result: dict) -> None:
        self.result = result


class ReplayActor:
    """One replay worker. Threaded (``max_concurrency``): ``interrupt`` and ``go`` arrive while
    the shard runs in its own thread."""

    def __init__(self) -> None:
        self._role: _ActorRole | None = None
        self._thread: threading.Thread | None = None
        self._error: dict | None = None
        self._tmp: str | None = None

    def probe(self) -> tuple[int, str]:
        return time.monotonic_ns(), boot_id()

    def start(self, job) -> None:
        from traceforge.replay.workers import exception_record, run_shard

        self._tmp = tempfile.mkdtemp(prefix="traceforge-shard-")
        job.run_dir = str(Path(self._tmp) / "run")
        self._role = role = _ActorRole(job.index, job.trace_info)

        def body() -> None:
            try:
                run_shard(job, role)
            except BaseException as exc:
                self._error = exception_record(exc)
            finally:
                role.ready.set()  # a worker that failed before the barrier answers ready() too

        self._thread = threading.Thread(target=body, name="replay-shard", daemon=True)
        self._thread.start()

    def wait_ready(self) -> tuple:
        self._role.ready.wait()
        if self._role.ready_info is None:
            return ("error", self._error)
        return ("ready", self._role.ready_info)

    def go(self, origin_ns: int | None) -> None:
        self._role.origin = origin_ns
        self._role.go.set()

    def interrupt(self) -> None:
        if self._role is not None:
            self._role.interrupt()

    def result(self) -> tuple:
        self._thread.join()
        try:
            files = pack_dir(Path(self._tmp) / "run") if self._tmp else {}
        finally:
            if self._tmp:
                shutil.rmtree(self._tmp, ignore_errors=True)
        if self._role.result is None:
            return ("error", self._error), files
        return ("result", self._role.result, self._error), files


class RayPool:
    executor = "ray"

    def __init__(self, *, address: str | None) -> None:
        self.ray, self._owned = init_ray(address)
        self.actors: list = []
        self.clock_offsets: list[dict] = []
        self.run_dir: Path | None = None

    def start(self, jobs, clock: RunClock) -> None:
        ray = self.ray
        actor_cls = ray.remote(num_cpus=1, max_concurrency=4, max_restarts=0)(ReplayActor)
        self.run_dir = Path(jobs[0].run_dir)
        self.actors = [actor_cls.options(scheduling_strategy="SPREAD").remote() for _ in jobs]
        here = boot_id()
        for job, actor in zip(jobs, self.actors, strict=True):
            offset, rtt, remote_boot = self._measure_offset(actor)
            same = remote_boot == here
            applied = 0 if same else offset
            job.t0_ns = clock.t0_ns + applied
            self.clock_offsets.append({
                "worker": job.index, "offset_ns": int(offset), "applied_ns": int(applied),
                "uncertainty_ns": int(rtt // 2), "same_clock": same})
        # Waited for: a threaded actor may run calls out of order, so wait_ready must not race it.
        self.ray.get([actor.start.remote(job)
                      for job, actor in zip(jobs, self.actors, strict=True)])

    def _measure_offset(self, actor) -> tuple[int, int, str]:
        ray = self.ray
        best = None
        remote_boot = ""
        for _ in range(PROBES):
            t1 = time.monotonic_ns()
            remote, remote_boot = ray.get(actor.probe.remote())
            t2 = time.monotonic_ns()
            rtt = t2 - t1
            if best is None or rtt < best[1]:
                best = (remote - (t1 + t2) // 2, rtt)
        return best[0], best[1], remote_boot

    def _get(self, refs) -> list[tuple]:
        out = []
        for ref in refs:
            try:
                out.append(self.ray.get(ref))
            except self.ray.exceptions.RayActorError as exc:
                out.append(("died", f"Ray actor died: {exc}"[:500]))
        return out

    def wait_ready(self) -> dict[int, tuple]:
        return dict(enumerate(self._get([a.wait_ready.remote() for a in self.actors])))

    def go(self, origin_ns: int) -> None:
        self._get([a.go.remote(origin_ns) for a in self.actors])

    def abort(self, ready: list[int]) -> None:
        self._get([self.actors[k].go.remote(None) for k in ready])

    def results(self) -> dict[int, tuple]:
        out = {}
        for k, got in enumerate(self._get([a.result.remote() for a in self.actors])):
            if got[0] == "died":
                out[k] = got
                continue
            msg, files = got
            land_files(files, self.run_dir)
            out[k] = msg
        return out

    def signal(self, sig: int) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):
                actor.interrupt.remote()

    def close(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor)
        self.actors = []
        if self._owned:
            self.ray.shutdown()
            self._owned = False
