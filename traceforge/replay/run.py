"""One replay run, end to end: validate, start the backend, dispatch, record, self-check.

Order matters for the "bad input writes nothing" rule: options, the run directory and the backend
(``start`` may raise ``BadInput``, e.g. an unreachable URL) are all checked before the first byte
is written. From then on every outcome — complete, interrupted (SIGINT/SIGTERM), failed — ends
with the timeline flushed and ``run.json`` finalised.

The run clock starts (``t0``) before ``backend.start`` so that backends can hand it to worker
processes; the schedule starts at ``schedule_origin_ns`` on that clock, a few ms after the backend
is ready, and ``scheduled_ns = schedule_origin_ns + round(arrival_ns × time_scale)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from traceforge import paths
from traceforge.clock import RunClock
from traceforge.errors import BadInput, RunFailure
from traceforge.limits import scaled_ns
from traceforge.record.manifest import RunManifest
from traceforge.record.recorder import NULL_I32, NULL_I64, TimelineRecorder
from traceforge.redact import Scrubber
from traceforge.replay.dispatcher import Dispatcher
from traceforge.replay.loop import describe_loop, run_delay_ns, wake_record
from traceforge.replay.options import ReplayOptions, RunSummary
from traceforge.replay.pacing import make_pacer
from traceforge.replay.protocol import Backend, ModelInfo
from traceforge.replay.selfcheck import (
    cpu_wait_share_ns,
    format_self_check,
    os_delay_ns,
    self_check,
    wake_stats,
)
from traceforge.replay.shard import WorkerRole
from traceforge.schema import Trace, sha256_file


def default_models(trace: Trace) -> list[ModelInfo]:
    """One ModelInfo per trace model; ``zoo`` from the spec kept in the trace metadata."""
    spec_models = ((trace.meta or {}).get("spec") or {}).get("models") or {}
    out = []
    for name in trace.models:
        entry = spec_models.get(name)
        zoo = entry.get("zoo") if isinstance(entry, dict) else None
        buckets = entry.get("seq_buckets") if isinstance(entry, dict) else None
        out.append(ModelInfo(name=name, zoo=zoo,
                             seq_buckets=list(buckets) if buckets else None))
    return out


def trace_shapes(trace: Trace) -> dict[str, list[tuple[int, int, int]]]:
    """Per model, the distinct (batch_size, seq_len, max_new_tokens) rows of the trace."""
    import pyarrow.compute as pc  # noqa: F401  (group_by lives on the table)

    t = trace.table.select(["model", "batch_size", "seq_len", "max_new_tokens"])
    groups = t.group_by(["model", "batch_size", "seq_len", "max_new_tokens"]).aggregate([])
    out: dict[str, list[tuple[int, int, int]]] = {}
    for row in groups.to_pylist():
        out.setdefault(row["model"], []).append(
            (row["batch_size"], row["seq_len"], row["max_new_tokens"]))
    return {m: sorted(v) for m, v in out.items()}


def check_run_dir(run_dir: Path, inputs=()) -> None:
    """A run directory is strictly new or empty, and never an input (traceforge.paths)."""
    paths.check_run_dir(run_dir, inputs=inputs)


def _output_inputs(trace: Trace) -> list[tuple[str, Path | None]]:
    return [("the trace being replayed", trace.path)]


def event_loop_factory(event_loop: str):
    """The ``asyncio.Runner`` loop factory for ``--event-loop`` (None: stock asyncio)."""
    if event_loop in ("auto", "precise"):
        from traceforge.replay.loop import new_event_loop

        return new_event_loop
    if event_loop == "uvloop":
        import uvloop  # presence checked by ReplayOptions.validate()

        return uvloop.new_event_loop
    return None


def run_replay(trace: Trace, run_dir: Path | str, backend: Backend,
               options: ReplayOptions | None = None) -> RunSummary:
    """Synchronous entry point: owns the event loop (``options.event_loop``)."""
    options = (options or ReplayOptions()).validate()
    factory = event_loop_factory(options.event_loop)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(replay_async(trace, run_dir, backend, options))


async def replay_async(trace: Trace, run_dir: Path | str, backend: Backend,
                       options: ReplayOptions | None = None, *,
                       clock: RunClock | None = None,
                       worker: WorkerRole | None = None) -> RunSummary:
    """Replay ``trace`` against ``backend`` into ``run_dir``. ``clock`` is injectable for tests
    (a virtual-time loop passes a clock that reads the loop's time).

    ``worker``: this replay is one shard of a ``--workers`` run (``replay/workers.py``): its parts
    are tagged with the worker's index, its manifest goes to ``workers/wNN.json`` (the driver
    writes run.json), the schedule origin comes from the driver's start barrier, and the
    per-row arrays the merged self-check needs are handed to ``worker.finished``."""
    options = (options or ReplayOptions()).validate()
    run_dir = Path(run_dir)
    if worker is None:  # a replay worker writes into its coordinator's directory
        check_run_dir(run_dir, _output_inputs(trace))
    models = options.models or default_models(trace)
    known = {m.name for m in models}
    missing = [m for m in trace.models if m not in known]
    if missing:
        raise BadInput("trace models without a model entry", key="models",
                       value=",".join(missing), allowed=",".join(sorted(known)))
    from traceforge.replay.rate import check_schedule

    check_schedule(trace, options.time_scale,
                   key="--rate" if options.rate else "--time-scale",
                   value=(options.rate or {}).get("rate"))
    if worker is not None and worker.trace_info is not None:
        trace_info = dict(worker.trace_info, shard_rows=trace.table.num_rows)
    else:
        trace_info = {"path": str(trace.path) if trace.path else None,
                      "sha256": sha256_file(trace.path) if trace.path else None,
                      "rows": trace.table.num_rows, "meta": trace.meta}

    table = trace.table
    encoded = table.column("model").combine_chunks().dictionary_encode()
    model_names = encoded.dictionary.to_pylist()
    arrival_ns = table.column("arrival_ns").to_numpy()

    if options.concurrency and table.column("session_id").null_count < table.num_rows:
        raise BadInput("a trace with sessions replays open loop (each session is closed loop "
                       "by itself); use --max-inflight to cap what is in flight",
                       key="--concurrency", value=options.concurrency)
    bind = getattr(backend, "bind_trace", None)
    if bind is not None:  # backends that build inputs from the whole trace (prompts.py)
        bind(trace)
    shapes = trace_shapes(trace)
    for m in models:  # what each model can be asked for (the resident backend pre-warms it)
        if m.shapes is None:
            m.shapes = shapes.get(m.name, [])

    clock = clock or RunClock()
    # Claimed exclusively before anything is started: a second run into it exits 2.
    # (A --workers shard writes into the directory its coordinator claimed.)
    claim = (paths.claim_run_dir(run_dir, inputs=_output_inputs(trace)) if worker is None
             else None)
    # SIGINT / SIGTERM are ours from the claim on: before the dispatch the first one calls the
    # setup off (nothing recorded, nothing left); a second one while that is cleaned up is
    # only noted (it used to raise KeyboardInterrupt out of the cleanup, leaving a timeline/
    # without run.json and an unclosed HTTP session).
    # A --workers shard's setup is called off by its driver (over the pipe), not by a signal:
    # one before its dispatch is only noted there, and stops the dispatch as it starts.
    loop = asyncio.get_running_loop()
    interrupts = _Interrupts(asyncio.current_task() if worker is None else None)
    installed = _install_signal_handlers(loop, interrupts)
    try:
        try:
            await backend.start(models, clock)
        except BaseException as exc:
            try:
                await backend.stop()
            finally:
                if claim is not None:
                    if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
                        _discard_setup(claim)
                    else:  # a failed start wrote nothing: an empty directory it made goes
                        claim.release(remove_if_empty=True)
            raise
        return await _replay_claimed(trace, run_dir, backend, options, clock, table, encoded,
                                     model_names, arrival_ns, models, trace_info, worker,
                                     interrupts, claim)
    except asyncio.CancelledError:
        if interrupts.received and not interrupts.dispatching:
            # our own setup cancel (a signal before the schedule started): the caller sees
            # Ctrl-C, as it would without these handlers
            raise SetupInterrupted(interrupts.received[0]) from None
        raise
    finally:
        _remove_signal_handlers(loop, installed)
        if claim is not None:
            claim.release()


class SetupInterrupted(KeyboardInterrupt):
    """SIGINT / SIGTERM before the schedule started: nothing was recorded, and what the setup
    had written into the run directory (and the directory, if the replay created it) is gone.
    ``signal``: the signal's name."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal = signal_name


class _Interrupts:
    """Where SIGINT / SIGTERM go while a replay holds them: during the setup, the first one
    cancels the replay's task; once the dispatch runs, ``dispatcher.interrupt``; any later one
    is only recorded (``received``: the signals' names, in order)."""

    def __init__(self, task) -> None:
        self.task = task
        self.received: list[str] = []
        self.dispatching = False
        self.target = self._cancel_setup

    def _cancel_setup(self) -> None:
        if len(self.received) == 1 and self.task is not None:
            self.task.cancel()

    def __call__(self, name: str) -> None:
        self.received.append(name)
        self.target()

    def start_dispatch(self, dispatcher: Dispatcher) -> None:
        self.dispatching = True
        self.target = dispatcher.interrupt
        if self.received:  # a shard's: noted during its setup, honoured now
            dispatcher.interrupt()


def _discard_setup(claim) -> None:
    """An interrupt before the schedule started: remove what the setup wrote (the claim was
    taken on a new or empty directory, so everything in it but the lock is this run's), then
    release the claim, removing the directory if the replay made it."""
    import shutil

    with contextlib.suppress(OSError):
        for entry in claim.run_dir.iterdir():
            if entry.name == paths.LOCK_NAME:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
    claim.release(remove_if_empty=True)


async def _replay_claimed(trace, run_dir, backend, options, clock, table, encoded, model_names,
                          arrival_ns, models, trace_info, worker, interrupts: _Interrupts,
                          claim) -> RunSummary:

    # -- from here on we write -----------------------------------------------------------------
    loop = asyncio.get_running_loop()
    if options.concurrency:
        offsets = np.zeros(len(arrival_ns), np.int64)  # filled in as slots free up
    else:
        offsets = scaled_ns(arrival_ns, options.time_scale, key="--time-scale",
                            value=options.time_scale)  # refuses what would wrap int64
    recorder = TimelineRecorder(
        run_dir,
        request_id=table.column("request_id").to_numpy(),
        model_codes=encoded.indices.to_numpy(zero_copy_only=False),
        model_names=model_names,
        batch_size=table.column("batch_size").to_numpy(),
        seq_len=table.column("seq_len").to_numpy(),
        max_new_tokens=table.column("max_new_tokens").to_numpy(),
        scheduled_ns=offsets,  # made absolute by Dispatcher.run(origin_ns)
        flush_interval_s=options.flush_interval_s,
        session_id=table.column("session_id").fill_null(NULL_I64).to_numpy(),
        turn=table.column("turn").fill_null(NULL_I32).to_numpy(),
        flusher_cpus=options.flusher_cpus,
        replay_worker=None if worker is None else worker.index,
        scrub=Scrubber(backend_secrets(backend)),
        flusher=options.flusher,
    )
    progress_task = scraper = None
    try:  # until the dispatch owns the recorder: a failure here must not leave its flusher
        describe = _safe_describe(backend)
        manifest = RunManifest(
            run_dir,
            name="run.json" if worker is None else f"workers/w{worker.index:02d}.json",
            backend=backend.name,
            backend_info=describe,
            **{k: describe[k] for k in ("mode", "device", "gpu") if k in describe},
            options=options.to_json(),
            trace=trace_info,
            models=[{"name": m.name, "zoo": m.zoo} for m in models],
        )

        # The dispatcher thread's CPU wait (schedstat), read through the loop's selector where it
        # keeps the file open: the pacer's late waits and the whole schedule's total (_QuietRuntime).
        def probe() -> int | None:
            return run_delay_ns(loop)

        pacer = make_pacer(options.pacer, clock, margin_ns=int(options.spin_margin_ms * 1e6),
                           probe=probe)
        dispatcher = Dispatcher(backend=backend, recorder=recorder, clock=clock, pacer=pacer,
                                model_names=model_names, closed_loop=bool(options.concurrency),
                                inflight_cap=options.inflight_cap, timeout_s=options.timeout_s,
                                duration_s=options.duration_s,
                                drain_timeout_s=options.drain_timeout_s,
                                gc_safe_points=options.gc_safe_points)
        if worker is not None:
            worker.attach(loop, dispatcher)
        # A recorder that cannot write ends the run at once (then status failed, exit 1).
        recorder.on_error = lambda exc: loop.call_soon_threadsafe(dispatcher.interrupt)
        progress_task = (loop.create_task(_show_progress(dispatcher))
                         if options.progress and len(arrival_ns) else None)
        # Its own process (replay/scrape.py); it starts idle, then begin(). With --workers only
        # worker 0 scrapes (one server, one file); the driver copies its summary into run.json.
        if options.scrape_url and (worker is None or worker.index == 0):
            from traceforge.replay.scrape import MetricsScraper

            scraper = MetricsScraper(options.scrape_url, options.scrape_interval_s, clock, run_dir)
            scraper.start()
        gc.collect()
        gc.freeze()  # keep the setup's objects out of every GC pass during the run
        # The origin is taken last, after all preparation, so the first sends are not late.
        if worker is None:
            origin_ns = clock.now() + int(options.start_delay_ms * 1e6)
        else:  # the driver's start barrier: every worker is ready, one origin for all
            origin_ns = await loop.run_in_executor(None, worker.wait_origin)
        if options.warmup_s:
            recorder.warmup_end_ns = origin_ns + int(options.warmup_s * 1e9)
        manifest.update(run_clock={"t0_monotonic_ns": clock.t0_ns, "wall_t0_ns": clock.wall_t0_ns,
                                   "schedule_origin_ns": origin_ns,
                                   "time_scale": options.time_scale})
        # A signal that came during the synchronous setup is delivered by the loop: let it
        # call the setup off here rather than stop a dispatch that has sent nothing.
        for _ in range(3):
            await asyncio.sleep(0)
        if interrupts.received and worker is None:
            raise asyncio.CancelledError
        interrupts.start_dispatch(dispatcher)
        manifest.write()
        if scraper is not None:
            scraper.begin(origin_ns)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            recorder.close()
        if scraper is not None:
            with contextlib.suppress(Exception):
                scraper.finish()
        if progress_task is not None:
            progress_task.cancel()
            await asyncio.gather(progress_task, return_exceptions=True)
        with contextlib.suppress(Exception):  # the dispatch, which stops it, never ran
            await backend.stop()
        if claim is not None and isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
            _discard_setup(claim)  # nothing recorded: nothing left (the message says so)
        raise
    quiet = _QuietRuntime(options, probe)  # GC at safe points, short GIL switch (options.py)
    try:
        summary, failure, cancelled = await _dispatch_and_finish(
            dispatcher, recorder, manifest, backend, pacer, progress_task, options, quiet,
            worker=worker, n_rows=len(arrival_ns), received=interrupts.received, loop=loop,
            run_dir=run_dir, scraper=scraper)
    finally:
        if scraper is not None:
            scraper.finish()
        # (the signal handlers stay until run.json is final: replay_async removes them)
    if options.print_self_check:
        print(format_self_check(summary.self_check), file=sys.stderr)
    if cancelled:  # the caller cancelled us: the run is recorded as interrupted, then re-raise
        raise asyncio.CancelledError
    if failure is not None:
        raise RunFailure(f"replay failed: {type(failure).__name__}: {failure} "
                         f"(partial timeline kept in {run_dir})") from failure
    return summary


async def _dispatch_and_finish(dispatcher: Dispatcher, recorder: TimelineRecorder,
                               manifest: RunManifest, backend: Backend, pacer, progress_task,
                               options: ReplayOptions, quiet: _QuietRuntime, *,
                               worker: WorkerRole | None, n_rows: int,
                               received: list[str], loop, run_dir: Path, scraper=None):
    status, failure, cancelled = "complete", None, False
    started = time.perf_counter()
    try:
        await dispatcher.run(manifest.data["run_clock"]["schedule_origin_ns"])
        if dispatcher.stopping:
            status = "interrupted"
    except asyncio.CancelledError:  # cancelled from outside (replay_async inside a bigger app)
        status, cancelled = "interrupted", True
        dispatcher.interrupt(cancel_main=False)
        await dispatcher.drain()
    except Exception as exc:  # a dispatcher or recorder bug: record it, keep what we have
        status, failure = "failed", exc
        dispatcher.interrupt(cancel_main=False)
        await dispatcher.drain()
    finally:
        quiet.restore()
        gc.unfreeze()
        if progress_task is not None:
            progress_task.cancel()
            await asyncio.gather(progress_task, return_exceptions=True)
        pacer.close()
        try:
            await backend.stop()
        except Exception as exc:
            if failure is None:
                status, failure = "failed", exc
    duration_s = time.perf_counter() - started

    due = dispatcher.due_mask()
    finals = recorder.finalize_pending(
        due, cancelled_msg="cancelled: run interrupted",
        dropped_msg=("not sent before --duration ended (every --max-inflight slot was busy)"
                     if dispatcher.send_cut and not dispatcher.stopping
                     else "not sent before the run stopped"))
    try:
        recorder.close()
    except Exception as exc:
        status, failure = "failed", failure or exc
    if recorder.write_error is not None:  # the timeline writer failed: the run failed, whatever else
        status, failure = "failed", recorder.write_error
    ready_ns = np.maximum(recorder.scheduled_ns, dispatcher.ready_ns)
    sent_mask = recorder.sent_ns != NULL_I64
    os_delay = wakeups = None
    record = wake_record(loop)
    if record is not None:  # the precise loop: which part of send lag was the machine's
        t0 = getattr(dispatcher.clock, "t0_ns", 0)
        late = np.asarray(record[1], np.int64).reshape(-1, 3)
        late[:, :2] -= t0
        busy = np.asarray(recorder.flush_windows, np.int64).reshape(-1, 2) - t0
        os_delay = os_delay_ns(ready_ns, recorder.sent_ns, sent_mask, late, busy)
        wakeups = wake_stats(record[0], late)
        waits = getattr(pacer, "cpu_waits", None)
        if waits:  # the CPU wait the pacer measured in waits that ended late: the machine's too
            os_delay = np.maximum(os_delay, cpu_wait_share_ns(
                ready_ns, recorder.sent_ns, sent_mask, np.asarray(waits, np.int64)))
            wakeups["late_pacer_waits_cpu_busy"] = len(waits)
    check = self_check(
        scheduled_ns=recorder.scheduled_ns, sent_ns=recorder.sent_ns, ready_ns=ready_ns,
        sent_mask=sent_mask, slot_waits=dispatcher.slot_waits,
        closed_loop=dispatcher.closed_loop, pacer=pacer.name, event_loop=describe_loop(loop),
        os_delay=os_delay, wakeups=wakeups, cpu_qos=quiet.qos_state,
        cpu_wait_ms=quiet.cpu_wait_ms,
    )
    check["runtime"] = {"gc": "safe points" if options.gc_safe_points else "automatic",
                        "gc_passes": dispatcher.gc_passes,
                        "switch_interval_us": round(quiet.switch_s * 1e6, 1),
                        "cpu_qos": quiet.qos_state,
                        # the dispatcher thread's time runnable but waiting for a CPU (schedstat)
                        "dispatcher_cpu_wait_ms": quiet.cpu_wait_ms,
                        **recorder.describe_flusher()}
    counts = recorder.counts()
    n_due = int(np.count_nonzero(due))
    # not_due: rows whose time had not come (after --duration or an interrupt): no row by
    # design. rows_lost: due rows that never reached disk (a failed writer): data lost.
    extra: dict[str, Any] = {"counts": counts, "self_check": check, "duration_s": duration_s,
                             "rows_written": recorder.rows_written,
                             "not_due": n_rows - n_due,
                             "rows_lost": max(0, n_due - recorder.rows_written)}
    if dispatcher.drain_expired:
        extra["drain_expired"] = True
    if received:
        extra["interrupted_by"] = received[0]
    elif cancelled:
        extra["interrupted_by"] = "cancelled"
    if finals["dropped"]:
        extra["dropped_unsent"] = finals["dropped"]
    if failure is not None:
        extra["error"] = recorder.scrub(f"{type(failure).__name__}: {failure}")
    if scraper is not None:
        extra["scrape"] = scraper.finish()
    manifest.finish(status, **extra)
    if worker is not None:
        worker.finished({"manifest": manifest.data, "scheduled_ns": recorder.scheduled_ns,
                         "sent_ns": recorder.sent_ns,
                         "ready_ns": ready_ns, "os_delay_ns": os_delay, "wakeups": wakeups,
                         "cpu_qos": quiet.qos_state, "cpu_wait_ms": quiet.cpu_wait_ms,
                         "slot_waits": dispatcher.slot_waits})
    summary = RunSummary(run_dir=run_dir, status=status, counts=counts, self_check=check,
                         duration_s=duration_s)
    return summary, failure, cancelled


class _QuietRuntime:
    """Process-wide settings for the schedule's duration, restored by :meth:`restore`."""

    def __init__(self, options: ReplayOptions, run_delay=run_delay_ns) -> None:
        self._gc_was_enabled = gc.isenabled()
        self._switch_was = sys.getswitchinterval()
        self.qos = None
        if options.cpu_qos:
            from traceforge.replay.cpuqos import CpuLatencyRequest

            self.qos = CpuLatencyRequest(0)
        self.qos_state = self.qos.state if self.qos is not None else "off (--no-cpu-qos)"
        self._run_delay = run_delay
        self._run_delay0 = run_delay()  # the dispatcher thread's wait for a CPU, from here
        self.cpu_wait_ms: float | None = None
        if options.gc_safe_points:
            gc.disable()
        if options.switch_interval_us is not None:
            sys.setswitchinterval(options.switch_interval_us / 1e6)
        self.switch_s = sys.getswitchinterval()

    def restore(self) -> None:
        end = self._run_delay()
        if self._run_delay0 is not None and end is not None:
            self.cpu_wait_ms = round((end - self._run_delay0) / 1e6, 2)
        if self.qos is not None:
            self.qos.release()
        sys.setswitchinterval(self._switch_was)
        if self._gc_was_enabled:
            gc.enable()


def backend_secrets(backend: Backend) -> list[str]:
    """The backend's secret values (optional ``secrets()``: API keys, header values, URL
    credentials), which the recorder masks in every error row."""
    get = getattr(backend, "secrets", None)
    return list(get()) if get is not None else []


def _safe_describe(backend: Backend) -> dict[str, Any]:
    try:
        info = backend.describe()
    except Exception as exc:  # describing must never sink a run
        return {"describe_error": f"{type(exc).__name__}: {exc}"}
    return dict(info) if isinstance(info, dict) else {"describe": str(info)}


def _install_signal_handlers(loop, interrupts: _Interrupts) -> list[tuple[int, Any]]:
    """SIGINT / SIGTERM go to ``interrupts`` (the setup's cancel, then
    ``dispatcher.interrupt``) while the replay lasts; returns (signal, our handler) for
    :func:`_remove_signal_handlers`. Each handler remembers what it replaced: the Python
    handler, and the loop's own callback for the signal where an application (or another
    replay on the same loop) had one -- the Python handler is then only asyncio's placeholder,
    and putting that back would leave the signal doing nothing."""
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        def handler(sig=sig) -> None:
            interrupts(signal.Signals(sig).name)

        # asyncio's registry of loop callbacks (absent on other loops: nothing to give back)
        prior = (getattr(loop, "_signal_handlers", None) or {}).get(sig)
        handler._traceforge_replaced = (signal.getsignal(sig), prior)  # type: ignore[attr-defined]
        handler._traceforge_done = False  # type: ignore[attr-defined]
        try:
            loop.add_signal_handler(sig, handler)
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread / Windows
            continue
        installed.append((sig, handler))
    return installed


def _remove_signal_handlers(loop, installed: list[tuple[int, Any]]) -> None:
    """Give back the handlers the process had before the run. asyncio's
    ``remove_signal_handler`` leaves SIGTERM at SIG_DFL: after the first replay of a profile,
    a demo or a study, SIGTERM killed the process outright (exit 143, no cleanup: a flusher
    process, worker temp directories and the MPS daemon's children were left behind).
    Where another handler was set over ours meanwhile (a second replay on the same loop), it
    stays; when that one goes, it skips the replays already finished."""
    registry = getattr(loop, "_signal_handlers", None)
    for sig, handler in reversed(installed):
        handler._traceforge_done = True
        current = registry.get(sig) if registry is not None else None
        if current is not None and getattr(current, "_callback", None) is not handler:
            continue  # someone else's now: theirs to give back
        previous, prior = handler._traceforge_replaced
        while prior is not None and getattr(prior._callback, "_traceforge_done", False):
            previous, prior = prior._callback._traceforge_replaced  # a finished replay's
        loop.remove_signal_handler(sig)
        with contextlib.suppress(ValueError, OSError, TypeError, RuntimeError,
                                 AttributeError):
            if prior is not None:  # the loop had a callback of its own: that, again
                loop.add_signal_handler(sig, prior._callback, *prior._args)
            elif previous is not None:  # None: not set from Python, nothing to give back
                signal.signal(sig, previous)


async def _show_progress(dispatcher: Dispatcher) -> None:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("replay"), BarColumn(), MofNCompleteColumn(),
               TextColumn("sent {task.fields[sent]}  in flight {task.fields[inflight]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    # Refreshed from this task 4x a second, never per request.
    from rich.console import Console

    # stderr: stdout stays clean for whatever a script pipes out of the command.
    with Progress(*columns, console=Console(stderr=True), transient=False,
                  auto_refresh=False) as progress:
        task = progress.add_task("replay", total=dispatcher.n, sent=0, inflight=0)
        try:
            while True:
                progress.update(task, completed=dispatcher.completed,
                                sent=dispatcher.launched,
                                inflight=dispatcher.launched - dispatcher.completed)
                progress.refresh()
                await asyncio.sleep(0.25)
        finally:
            progress.update(task, completed=dispatcher.completed, sent=dispatcher.launched,
                            inflight=dispatcher.launched - dispatcher.completed)
            progress.refresh()
