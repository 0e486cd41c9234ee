"""One replay across several processes (``--workers N``) or Ray actors (``--executor ray``).

The driver (this module, in the ``traceforge replay`` process):

1. validates everything (options, run directory, backend options) before anything is written;
2. shards the trace (``shard.py``) and starts one worker per shard — a local process (spawned,
   so no thread or lock state is inherited) or a Ray actor (``ray_pool.py``);
3. start barrier: each worker builds its backend, starts it, prepares its recorder and reports
   ready; when all are ready the driver writes ``run.json`` (status ``running``), picks one
   schedule origin ``now + start delay`` on its run clock and sends it to every worker;
4. each worker paces and records its shard into the same run directory (parts
   ``timeline/part-wNN-*.parquet``, its manifest in ``workers/wNN.json``, the ``replay_worker``
   column), then hands back its counts and the per-row arrays of the self-check;
5. the driver merges counts and the self-check (overall and per worker) into ``run.json``.

Clocks: on one host CLOCK_MONOTONIC is system-wide, so every local worker runs on the driver's
run clock (same ``t0``). A Ray actor may sit on another host: the driver measures the offset of
the actor's monotonic clock at the barrier (round-trip probes; uncertainty = half the best
round trip), and the actor's run clock starts at ``driver t0 + offset``. Every row is stamped by
one clock — the actor's — so its latency never mixes hosts; the offsets only align workers with
each other, and run.json records them with their uncertainty.

SIGINT/SIGTERM: the driver forwards them to the workers, which stop like a one-process replay
(everything recorded is kept; status ``interrupted``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import shutil
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from traceforge.clock import RunClock
from traceforge.errors import BadInput, RunFailure
from traceforge.record.manifest import RunManifest
from traceforge.record.recorder import NULL_I64
from traceforge.redact import Scrubber, scrub_text
from traceforge.replay.options import ReplayOptions, RunSummary
from traceforge.replay.run import backend_secrets, check_run_dir, default_models
from traceforge.replay.selfcheck import merge_wake_stats, self_check
from traceforge.replay.shard import WorkerRole, shard_rows, split_cap
from traceforge.schema import Trace, sha256_file

EXECUTORS = ("local", "ray")
SHARDABLE_BACKENDS = ("null", "http")
BARRIER_LEAD_NS = 50_000_000  # origin = barrier + this: every worker must be awake by then
FLUSHER_WAIT_S = 5.0  # a dead worker's flusher child: how long its last parts may take
LOCAL_WORKERS_PER_CPU = 4  # --executor local: at most this many workers per usable CPU


@dataclass
class ShardJob:
    """Everything one worker needs; plain data, so it pickles to a process or a Ray actor."""

    index: int
    workers: int
    table_ipc: bytes  # the shard's trace rows (Arrow IPC stream)
    trace_meta: dict | None
    trace_info: dict
    backend: str
    backend_options: dict
    options: ReplayOptions
    run_dir: str
    t0_ns: int  # the run clock's t0 on the worker's own CLOCK_MONOTONIC
    wall_t0_ns: int
    # Backend inputs planned over the whole trace by the driver (http: prompt first tokens,
    # prompts.py), so a shard builds exactly what an unsharded replay builds; None: none.
    prompt_plan: dict | None = None


def table_to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def run_shard(job: ShardJob, role: WorkerRole) -> None:
    """The worker's side: replay one shard into ``job.run_dir`` (in this process)."""
    import asyncio

    from traceforge.backends import make_backend
    from traceforge.replay.run import event_loop_factory, replay_async

    table = pa.ipc.open_stream(job.table_ipc).read_all()
    trace = Trace(table=table, meta=job.trace_meta, path=None)
    backend = make_backend(job.backend, job.backend_options)
    if job.prompt_plan is not None:
        backend.use_prompt_plan(job.prompt_plan)
    clock = RunClock(t0_ns=job.t0_ns, wall_t0_ns=job.wall_t0_ns)
    with asyncio.Runner(loop_factory=event_loop_factory(job.options.event_loop)) as runner:
        runner.run(replay_async(trace, job.run_dir, backend, job.options, clock=clock,
                                worker=role))


class Aborted(Exception):
    """The driver called the run off at the start barrier (another worker failed)."""


# -- local processes ------------------------------------------------------------------------
class _PipeRole(WorkerRole):
    def __init__(self, index: int, trace_info: dict, conn) -> None:
        super().__init__(index, trace_info)
        self.conn = conn
        self.result: dict | None = None

    def wait_origin(self) -> int:
        self.conn.send(("ready", {"host": platform.node(), "pid": os.getpid()}))
        msg = self.conn.recv()
        if msg[0] != "go":
            raise Aborted("the driver aborted the run at the start barrier")
        return msg[1]

    def finished(self, result: dict) -> None:
        self.result = result


def _local_worker_main(job: ShardJob, conn) -> None:
    """Entry point of a spawned worker process."""
    import multiprocessing
    import signal

    from traceforge.backends.resident.worker import die_with_parent

    # A SIGKILLed driver left its workers sending the rest of the trace (re-parented to init,
    # `daemon` only acts at a clean exit): SIGTERM when it dies stops the shard as an interrupt.
    parent = multiprocessing.parent_process()
    # Started with SIGINT / SIGTERM ignored (LocalPool.start): a Ctrl-C to the process group
    # while this interpreter imported printed a KeyboardInterrupt traceback per worker. They
    # stay ignored until its replay takes them over (noted, then honoured as the dispatch
    # starts): before the start barrier the driver calls the shard off over the pipe.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    die_with_parent(parent.pid if parent is not None else None, signal.SIGTERM)
    role = _PipeRole(job.index, job.trace_info, conn)
    error = None
    try:
        run_shard(job, role)
    except BaseException as exc:  # reported to the driver; the result (if any) still goes back
        error = exception_record(exc)
    with contextlib.suppress(OSError):
        if role.result is not None:
            conn.send(("result", role.result, error))
        else:
            conn.send(("error", error))
    conn.close()


def exception_record(exc: BaseException) -> dict:
    return {"type": type(exc).__name__, "message": str(exc)[:2000],
            "bad_input": isinstance(exc, BadInput),
            "traceback": "".join(traceback.format_exception(exc))[-4000:]}


def _spawn_ignoring_signals(spawn, signals: list[int], handler):
    """``multiprocessing.util.spawnv_passfds`` with ``signals`` ignored across the fork and
    exec, so the child inherits them ignored (a handled signal is reset to its default by
    exec); ``handler`` (this process's noting one) is back right after."""
    def spawnv_passfds(path, args, passfds):
        if threading.current_thread() is not threading.main_thread():
            return spawn(path, args, passfds)  # another thread's spawn: handlers are not its
        for sig in signals:
            signal.signal(sig, signal.SIG_IGN)
        try:
            return spawn(path, args, passfds)
        finally:
            for sig in signals:
                signal.signal(sig, handler)
    return spawnv_passfds


class LocalPool:
    """N spawned processes on this host, talking over pipes."""

    executor = "local"

    def __init__(self) -> None:
        import multiprocessing

        self._ctx = multiprocessing.get_context("spawn")
        self.procs: list = []
        self.conns: list = []
        self.clock_offsets: list[dict] | None = None

    def start(self, jobs: list[ShardJob], clock: RunClock) -> None:
        # SIGINT / SIGTERM while the workers are spawned: one that interrupted the write of a
        # job to its child cut the pickle short (the child printed UnpicklingError), so this
        # process only notes them here and raises them again once every worker is started;
        # and each child starts with them ignored (_spawn_ignoring_signals), so a Ctrl-C to
        # the process group does not print a KeyboardInterrupt traceback from its imports.
        from multiprocessing import util as mp_util

        noted: list[int] = []

        def note(signum, _frame) -> None:
            noted.append(signum)

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                previous[sig] = signal.signal(sig, note)
        spawn = mp_util.spawnv_passfds
        mp_util.spawnv_passfds = _spawn_ignoring_signals(spawn, list(previous), note)
        try:
            for job in jobs:
                job.t0_ns = clock.t0_ns  # CLOCK_MONOTONIC is system-wide on one host
                parent, child = self._ctx.Pipe()
                proc = self._ctx.Process(target=_local_worker_main, args=(job, child),
                                         name=f"traceforge-replay-w{job.index:02d}",
                                         daemon=True)
                proc.start()
                child.close()
                self.procs.append(proc)
                self.conns.append(parent)
        finally:
            mp_util.spawnv_passfds = spawn
            for sig, handler in previous.items():
                if handler is not None:  # None: not set from Python, nothing to give back
                    signal.signal(sig, handler)
            for sig in dict.fromkeys(noted):
                signal.raise_signal(sig)  # the handler this process had, now

    def _recv_all(self, want: set[int]) -> dict[int, tuple]:
        """One message from each worker in ``want``; a dead worker answers ("died", code)."""
        from multiprocessing.connection import wait

        got: dict[int, tuple] = {}
        while len(got) < len(want):
            pending = [k for k in want if k not in got]
            waitables = [self.conns[k] for k in pending] + [self.procs[k].sentinel
                                                             for k in pending]
            ready = wait(waitables)
            for k in pending:
                if self.conns[k] in ready:
                    try:
                        got[k] = self.conns[k].recv()
                    except (EOFError, OSError):
                        self.procs[k].join()
                        got[k] = ("died", self.procs[k].exitcode)
                elif self.procs[k].sentinel in ready and not self.conns[k].poll():
                    self.procs[k].join()
                    got[k] = ("died", self.procs[k].exitcode)
        return got

    def wait_ready(self) -> dict[int, tuple]:
        return self._recv_all(set(range(len(self.procs))))

    def go(self, origin_ns: int) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("go", origin_ns))

    def abort(self, ready: list[int]) -> None:
        for k in ready:
            with contextlib.suppress(OSError, IndexError):
                self.conns[k].send(("abort",))

    def results(self) -> dict[int, tuple]:
        return self._recv_all(set(range(len(self.procs))))

    def signal(self, sig: int) -> None:
        for proc in self.procs:
            if proc.is_alive():
                with contextlib.suppress(OSError):
                    os.kill(proc.pid, sig)

    def close(self) -> None:
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()


# -- the driver -----------------------------------------------------------------------------
def check_sharded(backend: str, workers: int, executor: str) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise BadInput("must be an integer >= 1", key="--workers", value=workers)
    if executor not in EXECUTORS:
        raise BadInput("unknown executor", key="--executor", value=executor,
                       allowed=", ".join(EXECUTORS))
    if backend not in SHARDABLE_BACKENDS and (workers > 1 or executor == "ray"):
        raise BadInput("a sharded replay needs --backend null or http (resident models live in "
                       "one process set on one GPU: replay them from one process)",
                       key="--backend", value=backend)
    if executor == "local" and workers > 1:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
        if workers > LOCAL_WORKERS_PER_CPU * cpus:
            # Each worker paces its own shard on a core of its own; far more processes than
            # cores only compete for them (and 1000 spawned interpreters swamp the machine).
            raise BadInput(f"more local workers than {LOCAL_WORKERS_PER_CPU} per CPU ({cpus} "
                           "usable here); use fewer, or --executor ray across machines",
                           key="--workers", value=workers)


def run_sharded(trace: Trace, run_dir: Path | str, backend: str, backend_options: dict,
                options: ReplayOptions | None = None, *, workers: int, shard_by: str = "request",
                executor: str = "local", address: str | None = None) -> RunSummary:
    """Replay ``trace`` with ``workers`` workers into one run directory (see module doc)."""
    from traceforge.backends import make_backend

    options = (options or ReplayOptions()).validate()
    check_sharded(backend, workers, executor)
    run_dir = Path(run_dir)
    inputs = [("the trace being replayed", trace.path)]
    check_run_dir(run_dir, inputs)
    probe = make_backend(backend, backend_options)  # flag errors now, before any worker starts
    if workers > max(trace.table.num_rows, 1):
        raise BadInput(f"more workers than the trace has rows ({trace.table.num_rows}): a "
                       "worker would have nothing to send", key="--workers", value=workers)
    shards = shard_rows(trace.table, workers, shard_by)
    if getattr(probe, "prompt_seed", None) is not None:
        # One prompt seed for every worker (a seed drawn per worker would give the same
        # prefix block a different text in each shard).
        backend_options = {**backend_options, "prompt_seed": probe.prompt_seed}
    planner = getattr(probe, "prompt_plan", None)
    ids = trace.table.column("request_id").to_numpy()
    plans = (planner(trace, [ids[rows] for rows in shards]) if planner is not None
             else [None] * workers)
    # Worker failures reach run.json as text: masked like the rows' errors (the same values).
    scrub = Scrubber(backend_secrets(probe))
    del probe
    models = options.models or default_models(trace)
    caps = split_cap(options.inflight_cap, workers)
    trace_info = {"path": str(trace.path) if trace.path else None,
                  "sha256": sha256_file(trace.path) if trace.path else None,
                  "rows": trace.table.num_rows, "meta": trace.meta}
    if executor == "ray":
        from traceforge.replay.ray_pool import RayPool

        pool = RayPool(address=address)
    else:
        pool = LocalPool()

    clock = RunClock()
    existed = run_dir.exists()
    from traceforge.paths import claim_run_dir

    claim = claim_run_dir(run_dir, inputs=inputs)  # exclusive; the shards write inside it
    jobs = []
    try:
        for k, rows in enumerate(shards):
            table = trace.table.take(pa.array(rows))
            shard_models = set(table.column("model").unique().to_pylist())
            opts = dataclasses.replace(
                options, progress=False, print_self_check=False,
                models=[m for m in models if m.name in shard_models or shard_by == "request"],
                concurrency=caps[k] if options.concurrency else None,
                max_inflight=caps[k] if options.max_inflight else None,
                # one server_metrics.parquet per run: worker 0 scrapes
                scrape_url=options.scrape_url if k == 0 else None)
            jobs.append(ShardJob(index=k, workers=workers, table_ipc=table_to_ipc(table),
                                 trace_meta=trace.meta, trace_info=trace_info, backend=backend,
                                 backend_options=backend_options, options=opts,
                                 run_dir=str(run_dir), t0_ns=0, wall_t0_ns=clock.wall_t0_ns,
                                 prompt_plan=plans[k]))
        return _drive(pool, jobs, clock, run_dir, existed, options, trace_info, models,
                      backend, shard_by, scrub, shard_rows=[len(rows) for rows in shards])
    finally:
        pool.close()
        claim.release(remove_if_empty=True)


def crowding_warning(workers: int, executor: str, pacer: str = "spin") -> str | None:
    """A line when local workers leave no core free: each worker's spin pacer keeps a core busy,
    so their recorders' flushes (and everything else) take the CPU from a pacer. Measured on 2
    cores (docs/scale.md): 2 workers had send-lag p99 2.9–4.4 ms at 10k–60k req/s, their
    dispatchers runnable-but-waiting 57–132 ms per 2 s, where one process held 69–635 µs; with
    ``--pacer sleep`` the same 2 workers held 0.46–0.79 ms at 10k–30k req/s in ad-hoc runs (docs/scale.md)."""
    if executor != "local" or not hasattr(os, "sched_getaffinity"):
        return None
    cores = len(os.sched_getaffinity(0))
    if workers < cores:
        return None
    line = (f"{workers} local workers on {cores} cores leave no core for their recorders and "
            "the rest of the machine; expect send lag of a few hundred µs to ms (use at most "
            f"{max(1, cores - 1)}")
    if pacer == "spin":
        line += ", or --pacer sleep: spinning pacers starve each other's flushes"
    return line + "; docs/scale.md)"


def _drive(pool, jobs: list[ShardJob], clock: RunClock, run_dir: Path, existed: bool,
           options: ReplayOptions, trace_info: dict, models, backend: str,
           shard_by: str, scrub: Scrubber, *, shard_rows: list[int] | None = None) -> RunSummary:
    started = time.perf_counter()
    try:
        pool.start(jobs, clock)
        ready = pool.wait_ready()
    except KeyboardInterrupt:  # Ctrl-C before the start: call every worker off, keep nothing
        with contextlib.suppress(Exception):
            pool.abort(list(range(len(jobs))))
        pool.close()  # every worker has exited before its files are removed
        _remove_partial(run_dir, existed)
        raise
    # From here a signal is forwarded to the workers (they stop as their dispatch starts), or,
    # before the origin is sent, calls the run off with nothing written (no run.json left
    # "running" by a Ctrl-C between the barrier and the start).
    received: list[str] = []
    previous = _forward_signals(pool, received)
    try:
        return _drive_ready(pool, jobs, ready, clock, run_dir, existed, options, trace_info,
                            models, backend, shard_by, scrub, received, started,
                            shard_rows=shard_rows)
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # None: not set from Python, nothing to give back
                signal.signal(sig, handler)


def _drive_ready(pool, jobs, ready, clock, run_dir, existed, options, trace_info, models,
                 backend, shard_by, scrub, received, started, *, shard_rows) -> RunSummary:
    failed = {k: msg for k, msg in ready.items() if msg[0] != "ready"}
    if received and not failed:  # interrupted at the barrier: call every worker off
        pool.abort(list(range(len(jobs))))
        pool.results()
        _remove_partial(run_dir, existed)
        from traceforge.replay.run import SetupInterrupted

        raise SetupInterrupted(received[0])
    if failed:
        pool.abort([k for k, msg in ready.items() if msg[0] == "ready"])
        pool.results()  # let every worker finish before the directory is cleaned up
        _remove_partial(run_dir, existed)
        raise _barrier_error(failed)

    manifest = RunManifest(
        run_dir, backend=backend, options=options.to_json(), trace=trace_info,
        models=[{"name": m.name, "zoo": m.zoo} for m in models],
        executor=pool.executor, workers=len(jobs), shard_by=shard_by,
        worker_hosts=[ready[k][1] for k in range(len(jobs))])
    if pool.clock_offsets is not None:
        manifest.update(clock_offsets=pool.clock_offsets)
    origin_ns = clock.now() + max(int(options.start_delay_ms * 1e6), BARRIER_LEAD_NS)
    manifest.update(run_clock={"t0_monotonic_ns": clock.t0_ns, "wall_t0_ns": clock.wall_t0_ns,
                               "schedule_origin_ns": origin_ns,
                               "time_scale": options.time_scale})
    if received:  # came while run.json was prepared: still nothing to keep
        pool.abort(list(range(len(jobs))))
        pool.results()
        _remove_partial(run_dir, existed)
        from traceforge.replay.run import SetupInterrupted

        raise SetupInterrupted(received[0])
    manifest.write()
    pool.go(origin_ns)
    results = pool.results()
    duration_s = time.perf_counter() - started
    return _merge(manifest, results, options, run_dir, received, duration_s, scrub,
                  shard_rows=shard_rows)


def _barrier_error(failed: dict[int, tuple]) -> Exception:
    k, msg = min(failed.items())
    if msg[0] == "error" and msg[1] and msg[1]["bad_input"]:
        return BadInput(msg[1]["message"])  # already the one line the worker's BadInput made
    if msg[0] == "error" and msg[1] and msg[1]["type"] == "KeyboardInterrupt":
        return KeyboardInterrupt()
    what = describe_failure(msg)
    return RunFailure(f"replay worker w{k:02d} failed before the start: {what}; nothing recorded")


def describe_failure(msg: tuple) -> str:
    if msg[0] == "died":
        return f"exited with code {msg[1]}" if isinstance(msg[1], int) else str(msg[1])
    if not msg[1]:
        return "failed without a report"
    return f"{msg[1]['type']}: {msg[1]['message']}"


def _remove_partial(run_dir: Path, existed: bool) -> None:
    """Undo what workers wrote before the barrier failed (bad input writes nothing)."""
    if not existed:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for sub in ("timeline", "workers"):
        shutil.rmtree(run_dir / sub, ignore_errors=True)


def _forward_signals(pool, received: list[str]) -> dict:
    previous = {}

    def forward(sig, _frame) -> None:
        received.append(signal.Signals(sig).name)
        pool.signal(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, forward)
        except ValueError:  # not the main thread
            continue
    return previous


def _merge(manifest: RunManifest, results: dict[int, tuple], options: ReplayOptions,
           run_dir: Path, received: list[str], duration_s: float,
           scrub: Scrubber = scrub_text, *, shard_rows: list[int] | None = None) -> RunSummary:
    """``shard_rows``: each worker's trace rows. A worker that died (no manifest came back)
    counts the rows its part files hold in ``rows_written`` (and their ``status`` in
    ``counts``, so run.json's counts are the timeline's) and the rest of its shard in
    ``rows_lost``, so that ``rows_written + not_due + rows_lost = trace rows`` holds."""
    per_worker, arrays, problems = [], [], []
    counts: dict[str, int] = {}
    statuses = []
    rows_written = not_due = rows_lost = slot_waits = 0
    drain_expired = False
    event_loop = None
    for k in sorted(results):
        msg = results[k]
        if msg[0] == "result":
            res, error = msg[1], msg[2]
            data = res["manifest"]
            statuses.append(data["status"])
            for name, v in data.get("counts", {}).items():
                counts[name] = counts.get(name, 0) + v
            rows_written += data.get("rows_written", 0)
            not_due += data.get("not_due", 0)
            rows_lost += data.get("rows_lost", 0)
            drain_expired = drain_expired or bool(data.get("drain_expired"))
            slot_waits += res["slot_waits"]
            arrays.append(res)
            event_loop = event_loop or (data.get("self_check") or {}).get("event_loop")
            for key in ("backend_info", "mode", "device", "gpu", "scrape"):
                if key in data and key not in manifest.data:
                    manifest.data[key] = data[key]
            entry = {"worker": k, "status": data["status"], "counts": data.get("counts"),
                     "self_check": data.get("self_check"), "rows": data["trace"]["shard_rows"],
                     "host": data.get("host"), "duration_s": data.get("duration_s")}
            if data.get("error") or error:
                entry["error"] = data.get("error") or scrub(f"{error['type']}: "
                                                            f"{error['message']}")
                problems.append(f"w{k:02d}: {entry['error']}")
        else:
            statuses.append("failed")
            what = scrub(describe_failure(msg))
            entry = {"worker": k, "status": "failed", "error": what}
            problems.append(f"w{k:02d}: {what}")
            written, on_disk = _part_rows(run_dir, k)  # what reached disk before it died
            rows_written += written
            for name, v in on_disk.items():  # its rows in the timeline count like the others'
                counts[name] = counts.get(name, 0) + v
            if on_disk:
                entry["counts"] = on_disk
            if shard_rows is not None:
                entry["rows"] = shard_rows[k]
                rows_lost += max(0, shard_rows[k] - written)
        per_worker.append(entry)
    os_delay = wakeups = None
    if arrays:
        scheduled = np.concatenate([a["scheduled_ns"] for a in arrays])
        sent = np.concatenate([a["sent_ns"] for a in arrays])
        ready_ns = np.concatenate([a["ready_ns"] for a in arrays])
        if all(a.get("os_delay_ns") is not None for a in arrays):  # every worker kept a record
            os_delay = np.concatenate([a["os_delay_ns"] for a in arrays])
            wakeups = merge_wake_stats([a["wakeups"] for a in arrays])
    else:
        scheduled = sent = ready_ns = np.zeros(0, np.int64)
    check = self_check(scheduled_ns=scheduled, sent_ns=sent, ready_ns=ready_ns,
                       sent_mask=sent != NULL_I64, slot_waits=slot_waits,
                       closed_loop=bool(options.concurrency), pacer=options.pacer,
                       event_loop=event_loop or options.event_loop, os_delay=os_delay,
                       wakeups=wakeups,
                       cpu_qos=next((a.get("cpu_qos") for a in arrays if a.get("cpu_qos")), None),
                       cpu_wait_ms=(sum(a["cpu_wait_ms"] for a in arrays)
                                    if arrays and all(a.get("cpu_wait_ms") is not None
                                                      for a in arrays) else None))
    check["workers"] = len(results)
    status = ("failed" if "failed" in statuses
              else "interrupted" if "interrupted" in statuses else "complete")
    extra: dict[str, Any] = {"counts": counts, "self_check": check, "duration_s": duration_s,
                             "rows_written": rows_written, "not_due": not_due,
                             "rows_lost": rows_lost, "worker_runs": per_worker}
    if drain_expired:  # as a one-process run says it (any worker's drain window ended)
        extra["drain_expired"] = True
    if received:
        extra["interrupted_by"] = received[0]
    if problems:
        extra["error"] = "; ".join(problems)[:4000]
    manifest.finish(status, **extra)
    return RunSummary(run_dir=run_dir, status=status, counts=counts, self_check=check,
                      duration_s=duration_s, error=extra.get("error"))


def _part_rows(run_dir: Path, k: int) -> tuple[int, dict[str, int]]:
    """Rows in worker ``k``'s finished part files (``timeline/part-wNN-*.parquet``; a part
    being written is a dot-file and not counted, nor is one that cannot be read), and their
    ``status`` counts. Waits first (at most ``FLUSHER_WAIT_S``) for the worker's flusher
    child: it outlives the worker and writes the rows the worker finished, then removes its
    scratch directory ``timeline/.recorder-wNN-<pid>``."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    timeline = Path(run_dir) / "timeline"
    deadline = time.monotonic() + FLUSHER_WAIT_S
    while any(timeline.glob(f".recorder-w{k:02d}-*")) and time.monotonic() < deadline:
        time.sleep(0.02)
    total = 0
    counts: dict[str, int] = {}
    for path in sorted(timeline.glob(f"part-w{k:02d}-*.parquet")):
        try:  # pyarrow's ArrowInvalid is a ValueError
            part = pq.ParquetFile(path)
            rows = part.metadata.num_rows
            status = (part.read(columns=["status"]).column("status")
                      if "status" in part.schema_arrow.names else None)
        except (OSError, ValueError):
            continue
        total += rows
        if status is not None:
            for row in pc.value_counts(status).to_pylist():
                if row["values"] is not None:
                    counts[row["values"]] = counts.get(row["values"], 0) + row["counts"]
    return total, counts
