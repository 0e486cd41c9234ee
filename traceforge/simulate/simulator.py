"""``simulate()``: a trace in, the run directory a replay would write out, in virtual time.

Two service models:

* **null** (the ``null`` backend's analytic model): per model, ``servers`` parallel FIFO servers
  with constant or exponential service of mean ``service_ms``; no transport delay.
* **profile** (``profile=`` and ``mode=``): the resident workers of that sharing mode with the
  alone service times, transport overheads and co-run slowdowns measured by ``traceforge
  profile`` (see :mod:`traceforge.simulate.profile` and docs/simulator.md).

The timeline holds every column a simulation can know: ``sent_ns = scheduled_ns`` (a virtual
dispatcher is never late), worker-side service start/end, ``done_ns``; ``gpu_ns`` stays null.
"""

from __future__ import annotations

import contextlib
import math
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from traceforge.errors import BadInput
from traceforge.limits import check_seconds, check_seed, check_service_ms, scaled_ns
from traceforge.paths import check_run_dir, claim_run_dir
from traceforge.record import RunManifest, TimelineWriter
from traceforge.schema import TIMELINE_SCHEMA, Trace, read_trace, sha256_file
from traceforge.simulate.engine import (
    ModelQueue,
    SizeInterference,
    fifo_pair_handoff,
    fifo_servers,
    fifo_servers_assigned,
    shared_workers,
    timeslice_workers,
)
from traceforge.simulate.profile import SPREAD_QUANTILES, Profile, load_profile

SERVICE_DISTS = ("const", "exp")


@dataclass
class SimulationSummary:
    """What :func:`simulate` returns; the same fields as replay's ``RunSummary``."""

    run_dir: Path
    status: str
    counts: dict[str, int]
    self_check: dict[str, Any]
    elapsed_s: float = 0.0  # wall time the simulation took
    virtual_s: float = 0.0  # virtual time from run start to the last completion
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SimResult:
    """Per-row results in trace order (int64 ns on the virtual run clock)."""

    service_start_ns: np.ndarray
    service_end_ns: np.ndarray
    done_ns: np.ndarray
    first_token_ns: np.ndarray | None = None  # float with NaN for "unknown"
    tokens_out: np.ndarray | None = None  # int with -1 for "none"
    batch_id: np.ndarray | None = None
    batched_with: np.ndarray | None = None
    worker: pa.Array | None = None  # worker name per row
    bucket_seq_len: np.ndarray | None = None  # the padded shape the profile's bucket policy
    bucket_batch_size: np.ndarray | None = None  # gives (profile model with buckets)


def simulate(
    trace: Trace | Path | str,
    run_dir: Path | str,
    *,
    servers: int = 1,
    service_ms: float = 10.0,
    service_dist: str = "exp",
    profile: Profile | Path | str | None = None,
    mode: str | None = None,
    max_batch: int = 1,
    max_wait_ms: float = 0.0,
    seed: int = 0,
    time_scale: float = 1.0,
    warmup_s: float = 0.0,
    cold_start: bool | None = None,
    rate: str | None = None,
    duration_s: float | None = None,
    drain_timeout_s: float | None = None,
    time_slice: str | None = None,
    zoo: dict[str, str] | None = None,
) -> SimulationSummary:
    """Simulate ``trace`` and write ``run_dir`` (run.json with backend ``simulate`` + timeline).

    ``time_slice`` (``--time-slice``, ``timeslice`` with a profile only): ``"QUANTUM_MS"`` or
    ``"QUANTUM_MS,SWITCH_MS"`` runs the time-sliced engine with that slice (and switch cost;
    default the profile's fitted one, else 0) whatever the profile holds — a what-if for another
    driver time-slice setting; ``"none"`` runs processor sharing with the co-run slowdowns even
    where the profile has a fitted slice. None: the profile's choice.

    ``cold_start`` (profile model): the backend has just started without pre-warm (``replay
    --no-prewarm``): the first request of each shape (bucket) per model pays the profile's
    ``cold_extra_ms``. False: every shape is warm (the resident backend pre-warms by default).
    None: False for a profile with shape buckets, True for an older profile without them.

    With a bucketed profile a request's service time is its bucket's (the padded shape the
    backend runs), and the timeline's ``bucket_seq_len`` / ``bucket_batch_size`` say which.

    ``duration_s`` / ``drain_timeout_s`` bound the run as replay's ``--duration`` /
    ``--drain-timeout`` do (docs/replay.md): rows scheduled at or after ``duration_s`` are not
    due (no row, ``not_due`` in run.json) and are not simulated at all (they never reach a
    server); once sending has ended (the last due send), requests still out after
    ``drain_timeout_s`` are ``cancelled`` rows, and session turns that would have been released
    after that are not due either.

    Every input is checked before anything is written; bad values raise :class:`BadInput`.
    """
    t_wall = time.perf_counter()
    if not isinstance(trace, Trace):
        trace = read_trace(trace)
    run_dir = Path(run_dir)
    out_inputs = [("the trace being simulated", trace.path),
                  ("the profile", profile.path if isinstance(profile, Profile)
                   else (Path(profile) if profile is not None and Path(profile).is_file()
                         else None))]
    check_run_dir(run_dir, inputs=out_inputs)
    bound, seed = check_run_options(time_scale=time_scale, warmup_s=warmup_s,
                                    max_batch=max_batch, max_wait_ms=max_wait_ms, seed=seed,
                                    duration_s=duration_s, drain_timeout_s=drain_timeout_s)

    from traceforge.replay.rate import apply_rate

    trace, time_scale, rate_info = apply_rate(trace, rate, time_scale)  # --rate (replay/rate.py)
    table = trace.table
    scheduled = _scheduled_ns(table.column("arrival_ns").to_numpy(), time_scale)
    codes, names = _model_codes(table)
    if profile is None:
        if mode is not None:
            raise BadInput("--mode needs --profile", key="--mode", value=mode)
        if time_slice is not None:
            raise BadInput("--time-slice needs --profile and --mode timeslice",
                           key="--time-slice", value=time_slice)
        if cold_start is not None:  # the null model has no warm-up cost to model
            raise BadInput("--cold-start/--warm-start need --profile",
                           key="--cold-start" if cold_start else "--warm-start", value=True)
        if zoo:
            raise BadInput("--zoo needs --profile (the null model has no zoo entries)",
                           key="--zoo", value=",".join(f"{k}={v}" for k, v in zoo.items()))
        if max_batch != 1 or max_wait_ms:
            raise BadInput("dynamic batching needs --profile (the null model serves one "
                           "request at a time)", key="--max-batch", value=max_batch)
        if isinstance(servers, bool) or not isinstance(servers, int) or servers < 1:
            raise BadInput("must be an integer >= 1", key="--servers", value=servers)
        if not (math.isfinite(service_ms) and service_ms >= 0):
            raise BadInput("must be >= 0", key="--service-ms", value=service_ms)
        check_service_ms(service_ms, dist=service_dist, rows=table.num_rows,
                         span_s=float(scheduled.max()) / 1e9 if table.num_rows else 0.0)
        if service_dist not in SERVICE_DISTS:
            raise BadInput("unknown service distribution", key="--service-dist",
                           value=service_dist, allowed=", ".join(SERVICE_DISTS))
        new_tokens = table.column("max_new_tokens").to_numpy()

        def run_once(sched, perm):
            return _simulate_null(sched, codes[perm], names, new_tokens[perm], servers=servers,
                                  service_ns=service_ms * 1e6, dist=service_dist, seed=seed)
        describe = {"name": "simulate", "service_model": "null", "servers": servers,
                    "service_ms": service_ms, "service_dist": service_dist, "seed": seed}
        device = "none"
    else:
        if not isinstance(profile, Profile):
            profile = load_profile(profile)
        if mode is None:
            raise BadInput("--profile needs --mode", key="--mode",
                           allowed=", ".join(profile.modes))
        profile.mode(mode, source=profile.path)
        if time_slice is not None:
            if max_batch > 1:
                # the time-sliced engine serves one request at a time per context (sliced());
                # a batched run would silently use processor sharing
                raise BadInput("the time-sliced engine runs unbatched; drop --max-batch or "
                               "--time-slice", key="--time-slice", value=time_slice)
            profile = _with_time_slice(profile, mode, time_slice)
        mapping = map_models(names, trace, profile, zoo=zoo)
        if cold_start is None:
            cold_start = not any(profile.models[p].bucketed for p in mapping.values())

        def run_once(sched, perm):
            return _simulate_profile(table.take(perm), sched, codes[perm], names, mapping,
                                     profile, mode, max_batch=max_batch,
                                     max_wait_ns=max_wait_ms * 1e6, seed=seed,
                                     cold_start=cold_start)
        sliced = profile.modes[mode].sliced(max_batch)  # the time-sliced engine runs
        time_sliced = sliced is not None
        describe = {"name": "simulate", "service_model": "profile", "mode": mode,
                    "profile": {"path": str(profile.path) if profile.path else None,
                                "sha256": (sha256_file(profile.path)
                                           if profile.path and profile.path.exists() else None),
                                "device": profile.device,
                                "created_at": profile.data.get("created_at")},
                    "models": mapping, "max_batch": max_batch, "max_wait_ms": max_wait_ms,
                    "cold_start": cold_start,
                    # The executor hand-off used per trace model (ms); {} = not in the profile.
                    "handoff_ms": {n: profile.modes[mode].handoff_ms[p]
                                   for n, p in mapping.items()
                                   if p in profile.modes[mode].handoff_ms},
                    # By class, where the profile has it and the mode serves every model from
                    # one worker (exclusive, unbatched): finished -> next -> early/late ms.
                    "handoff_pair_ms": (
                        {a: {b: profile.modes[mode].handoff_pair_ms[pa][pb]
                             for b, pb in mapping.items()
                             if pb in profile.modes[mode].handoff_pair_ms[pa]}
                         for a, pa in mapping.items()
                         if pa in profile.modes[mode].handoff_pair_ms}
                        if mode == "exclusive" and max_batch == 1 else {}),
                    # transport by the worker's idle time (profile inbound_by_idle_ms), per
                    # trace model: [[lo_ms, hi_ms, median_ms], ...]; {} = constant inbound_ms
                    "inbound_by_idle_ms": (
                        {n: [[lo, None if math.isinf(hi) else hi, v] for lo, hi, v in
                             profile.modes[mode].inbound_by_idle_ms[p]]
                         for n, p in mapping.items()
                         if p in profile.modes[mode].inbound_by_idle_ms}
                        if max_batch == 1 else {}),
                    # the way back by the dispatcher's activity (profile
                    # outbound_by_activity_ms), per trace model: [[lo, hi, median_ms], ...];
                    # {} = constant outbound_ms
                    "outbound_by_activity_ms": {
                        n: [[lo, None if math.isinf(hi) else hi, v] for lo, hi, v in
                            profile.modes[mode].outbound_by_activity_ms[p]]
                        for n, p in mapping.items()
                        if p in profile.modes[mode].outbound_by_activity_ms},
                    # the dispatcher's send lag added to every request (profile send_lag_ms)
                    "send_lag_ms": profile.modes[mode].send_lag_ms,
                    # how far the trace's shapes are from those the co-runs measured ({}
                    # with the time-sliced engine: it uses no co-run slowdowns)
                    "interference_shapes": ({} if time_sliced else
                                            interference_shapes(table, codes, names, mapping,
                                                                profile, mode)),
                    # the size tables the interference used (profile slowdown_by_size), per
                    # trace model: the other trace model -> [[size, slowdown], ...]; {} =
                    # each pair's reference slowdown whatever runs beside
                    "slowdown_by_size": ({} if mode == "exclusive" or time_sliced else
                                         _size_tables_used(profile, mode, mapping)),
                    # timeslice with the profile's fitted time slice: the time-sliced engine
                    # ({"quantum_ms", "switch_ms"}); None = processor sharing with slowdowns
                    "time_slice": ({"quantum_ms": sliced[0], "switch_ms": sliced[1]}
                                   if time_sliced else None),
                    # --time-slice as given (None: the profile's choice)
                    "time_slice_override": time_slice,
                    "seed": seed}
        device = f"simulated: {profile.device.get('name', 'unknown device')}"

    scheduled, result, session_info = _with_sessions(table, scheduled, run_once, bound)
    due, cancelled = bound.outcome(scheduled, result.done_ns, session_info.pop("follow"))
    out = _timeline_table(table, scheduled, result, warmup_ns=round(warmup_s * 1e9),
                          cancelled=cancelled, cancelled_msg=bound.cancelled_msg)
    if not due.all():
        out = out.filter(pa.array(due))
    n = table.num_rows
    n_due = int(np.count_nonzero(due))
    n_cancelled = int(np.count_nonzero(cancelled))
    self_check = {"send_lag_us": {"p50": 0.0, "p99": 0.0, "max": 0.0},
                  "achieved_rate_ratio": 1.0, "generator_limited": False, "warning": None}
    counts = {k: v for k, v in (("ok", n_due - n_cancelled), ("cancelled", n_cancelled)) if v}
    served = due & ~cancelled
    virtual_s = float(result.done_ns[served].max()) / 1e9 if served.any() else 0.0
    if n_cancelled:
        virtual_s = max(virtual_s, bound.drain_end_ns / 1e9)
    # As replay's run.json: rows whose time had not come (no row), and the drain outcome.
    extra: dict[str, Any] = {"rows_written": n_due, "not_due": n - n_due, "rows_lost": 0}
    if n_cancelled:
        extra["drain_expired"] = True

    claim = claim_run_dir(run_dir, inputs=out_inputs)  # exclusive: a second simulate exits 2
    manifest = None
    try:
        manifest = RunManifest(
            run_dir,
            backend="simulate",
            backend_info=describe,
            mode=mode,
            device=device,
            options={"time_scale": time_scale, "warmup_s": warmup_s, "concurrency": None,
                     "max_inflight": None, "timeout_s": None, "seed": seed, "rate": rate_info,
                     "duration_s": duration_s, "drain_timeout_s": drain_timeout_s},
            trace={"path": str(trace.path) if trace.path else None,
                   "sha256": sha256_file(trace.path) if trace.path else None,
                   "rows": table.num_rows, "meta": trace.meta},
            virtual_time=True,
        )
        manifest.write()
        writer = TimelineWriter(run_dir)
        writer.write_table(out)
        writer.close()
        elapsed = time.perf_counter() - t_wall
        manifest.finish("complete", counts=counts, self_check=self_check, **extra,
                        simulation={"elapsed_s": round(elapsed, 4), "virtual_s": virtual_s,
                                    **session_info})
    except BaseException as exc:
        if manifest is not None:
            # Leave a readable outcome, never "running". Ctrl-C / SIGTERM (KeyboardInterrupt;
            # cli.main maps SIGTERM to it): "interrupted" with what the parts on disk hold, as
            # an interrupted replay keeps what it recorded; anything else: "failed".
            with _signals_held(), contextlib.suppress(Exception):
                if isinstance(exc, KeyboardInterrupt):
                    manifest.finish("interrupted", self_check=self_check,
                                    **_written_so_far(run_dir, out, n=n, n_due=n_due),
                                    interrupted_by="KeyboardInterrupt (SIGINT or SIGTERM)",
                                    simulation={"elapsed_s": round(time.perf_counter() - t_wall,
                                                                   4),
                                                "virtual_s": virtual_s, **session_info})
                else:
                    manifest.finish("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        # The lock goes on every path; the directory too if this call made it and a failure
        # left nothing in it (the trace's hash failed before run.json), as replay does.
        claim.release(remove_if_empty=True)
    return SimulationSummary(run_dir=run_dir, status="complete", counts=counts,
                             self_check=self_check, elapsed_s=elapsed, virtual_s=virtual_s,
                             extra=extra)


def _written_so_far(run_dir: Path, out: pa.Table, *, n: int, n_due: int) -> dict[str, Any]:
    """run.json's counts for a simulate stopped while writing its timeline: the parts on disk
    (each written whole, then renamed) hold the first rows of ``out``, in order. They are counted
    on disk, not by the writer, so an interrupt between a part's rename and the writer's count
    still counts that part. ``rows_lost``: due rows that have no row (never written)."""
    import pyarrow.parquet as pq

    written = 0
    for part in sorted((run_dir / "timeline").glob("part-*.parquet")):
        try:
            written += pq.read_metadata(part).num_rows
        except Exception:  # unreadable part: count nothing from it (report will say so)
            continue
    written = min(written, out.num_rows)
    statuses = out.column("status").slice(0, written)
    counts = {row["values"]: int(row["counts"])
              for row in pc.value_counts(statuses).to_pylist()} if written else {}
    return {"counts": counts, "rows_written": written, "not_due": n - n_due,
            "rows_lost": max(0, n_due - written)}


@contextlib.contextmanager
def _signals_held():
    """A second Ctrl-C / SIGTERM while the interrupted run.json is written is ignored (the run is
    already on its way out with exit 130); the handlers found are put back. Only the main thread
    can set handlers: elsewhere nothing changes."""
    import signal
    import threading

    saved = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError, OSError):
                saved[sig] = signal.signal(sig, lambda signum, frame: None)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


# -- building blocks ----------------------------------------------------------------------------
MAX_SESSION_ROUNDS = 500


@dataclass
class RunBound:
    """``--duration`` / ``--drain-timeout`` in virtual time, with the replay's rules.

    The replay's open loop walks the rows that leave on the schedule (every row but session
    follow-up turns) and stops before the first at or after ``duration``; its drain window
    starts when the last of them has left, and ends ``drain_timeout`` later. Rows scheduled at
    or after the cut (``duration``; for released session turns also the drain's end) are not
    due; due rows not done by the drain's end are cancelled.
    """

    duration_ns: int | None = None
    drain_ns: int | None = None
    drain_end_ns: int | None = None  # set by :meth:`start` once the walk is known

    @classmethod
    def checked(cls, duration_s: float | None, drain_timeout_s: float | None) -> RunBound:
        from traceforge.replay.options import ReplayOptions

        # replay's own checks of the two flags (same messages, same int64 ns bound)
        ReplayOptions(duration_s=duration_s, drain_timeout_s=drain_timeout_s).validate()
        return cls(None if duration_s is None else round(duration_s * 1e9),
                   None if drain_timeout_s is None else round(drain_timeout_s * 1e9))

    @property
    def cancelled_msg(self) -> str:
        return (f"cancelled: still in flight when --drain-timeout "
                f"({(self.drain_ns or 0) / 1e9:g} s) ended")

    def start(self, walked_ns: np.ndarray) -> None:
        """The drain's end from the schedule of the rows the open loop walks."""
        if self.drain_ns is None:
            return
        sent = walked_ns if self.duration_ns is None else walked_ns[walked_ns < self.duration_ns]
        self.drain_end_ns = (int(sent.max()) if sent.size else 0) + self.drain_ns

    def due(self, scheduled: np.ndarray, follow: np.ndarray | None = None) -> np.ndarray:
        """Rows whose time came: before ``duration``; a released session turn (``follow``)
        also before the drain's end."""
        due = np.ones(scheduled.size, bool)
        if self.duration_ns is not None:
            due &= scheduled < self.duration_ns
        if self.drain_end_ns is not None and follow is not None:
            due &= ~(follow & (scheduled >= self.drain_end_ns))
        return due

    def outcome(self, scheduled: np.ndarray, done: np.ndarray,
                follow: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(due, cancelled) masks in trace order."""
        due = self.due(scheduled, follow)
        if self.drain_end_ns is None:
            return due, np.zeros(scheduled.size, bool)
        return due, due & (done > self.drain_end_ns)


def _cut(run_once, bound: RunBound, follow: np.ndarray | None = None):
    """``run_once`` on the due rows only (the rest never reach a server: in a shared or batching
    model a later arrival would change earlier rows). Rows left out get ``done = scheduled``,
    so a session turn after them is not due either."""
    if bound.duration_ns is None and bound.drain_end_ns is None:
        return run_once

    def run(sched, perm):
        keep = bound.due(sched, None if follow is None else follow[perm])
        if keep.all():
            return run_once(sched, perm)
        # Due rows form a prefix of the sorted schedule except for released turns after the
        # drain's end: simulate the kept rows (still sorted), then put every row back.
        idx = np.flatnonzero(keep)
        rest = np.flatnonzero(~keep)
        r = _pad(run_once(sched[idx], perm[idx]), sched[rest])
        order = np.concatenate([idx, rest])
        return _unpermute(r, order)
    return run


def _pad(r: SimResult, rest: np.ndarray) -> SimResult:
    """``r`` extended by rows that were not simulated (done at their schedule, no values)."""
    m = rest.size
    fill = {"first_token_ns": np.nan, "tokens_out": -1, "batch_id": 0, "batched_with": 1}
    out = {}
    for name in SimResult.__dataclass_fields__:
        a = getattr(r, name)
        if a is None:
            out[name] = None
        elif isinstance(a, pa.Array):
            out[name] = pa.concat_arrays([a, pa.nulls(m, a.type)])
        elif name in ("service_start_ns", "service_end_ns", "done_ns"):
            out[name] = np.concatenate([a, rest.astype(a.dtype)])
        else:
            out[name] = np.concatenate([a, np.full(m, fill.get(name, 0), a.dtype)])
    return SimResult(**out)


def _with_sessions(table: pa.Table, scheduled: np.ndarray, run_once, bound: RunBound):
    """Run the service model; for a trace with sessions, with replay's release rule.

    ``run_once(sched, perm)`` simulates rows ``perm`` (sorted by ``sched``). Without sessions
    that is one call. With sessions, turn k+1 is scheduled at ``done_k + think`` (think = the
    nominal arrival gap, × time scale), which depends on the simulation itself: the schedule is
    iterated to a fixed point, starting from the nominal times (a lower bound). With FIFO
    workers a row's completion depends only on rows scheduled before it, so each round settles
    the rows up to the next release; rounds stop when the schedule no longer changes (run.json
    ``simulation.session_rounds``). A schedule that never settles fails the simulation rather
    than guess.
    """
    from traceforge.record.recorder import NULL_I64
    from traceforge.replay.dispatcher import session_links

    n = table.num_rows
    sid = table.column("session_id").fill_null(NULL_I64).to_numpy()
    if n == 0 or not (sid != NULL_I64).any():
        perm = np.arange(n)
        bound.start(scheduled)
        return scheduled, _cut(run_once, bound)(scheduled, perm), {"follow": None}
    _, prev = session_links(sid)
    follow = np.flatnonzero(prev >= 0)
    bound.start(scheduled[prev < 0])  # first turns and rows without a session: fixed times
    run_once = _cut(run_once, bound, prev >= 0)
    think = scheduled[follow] - scheduled[prev[follow]]
    sched = scheduled.copy()
    for rounds in range(1, MAX_SESSION_ROUNDS + 1):
        perm = np.argsort(sched, kind="stable")
        r = _unpermute(run_once(sched[perm], perm), perm)
        new = sched.copy()
        new[follow] = r.done_ns[prev[follow]] + think
        if np.array_equal(new, sched):
            return sched, r, {"session_rounds": rounds, "follow": prev >= 0}
        sched = new
    raise RuntimeError(f"session schedule did not settle in {MAX_SESSION_ROUNDS} rounds")


def _unpermute(r: SimResult, perm: np.ndarray) -> SimResult:
    """Results computed for rows ``perm`` back in trace order."""
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size)

    def back(a):
        return None if a is None else (a.take(pa.array(inv)) if isinstance(a, pa.Array)
                                       else a[inv])

    return SimResult(**{f: back(getattr(r, f)) for f in SimResult.__dataclass_fields__})


def check_run_options(*, time_scale: float = 1.0, warmup_s: float = 0.0, max_batch: int = 1,
                      max_wait_ms: float = 0.0, seed: object = 0,
                      duration_s: float | None = None, drain_timeout_s: float | None = None
                      ) -> tuple[RunBound, int]:
    """The checks of :func:`simulate`'s scalar options that need no trace or profile (keys as
    the CLI spells them). A study runs them for every configuration before it writes anything.
    Returns the run bound and the seed as an int."""
    # Written as "not (x > 0)" so that NaN is refused too.
    if (isinstance(time_scale, bool) or not isinstance(time_scale, (int, float))
            or not (math.isfinite(time_scale) and time_scale > 0)):
        raise BadInput("must be a positive number", key="--time-scale", value=time_scale)
    if (isinstance(warmup_s, bool) or not isinstance(warmup_s, (int, float))
            or not (math.isfinite(warmup_s) and warmup_s >= 0)):
        raise BadInput("must be >= 0", key="--warmup", value=warmup_s)
    check_seconds(warmup_s, key="--warmup")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise BadInput("must be an integer >= 1", key="--max-batch", value=max_batch)
    if (isinstance(max_wait_ms, bool) or not isinstance(max_wait_ms, (int, float))
            or not (math.isfinite(max_wait_ms) and max_wait_ms >= 0)):
        raise BadInput("must be >= 0", key="--max-wait-ms", value=max_wait_ms)
    check_seconds(max_wait_ms, key="--max-wait-ms", seconds=max_wait_ms / 1e3)
    bound = RunBound.checked(duration_s, drain_timeout_s)
    return bound, check_seed(seed)


def _scheduled_ns(arrival_ns: np.ndarray, time_scale: float) -> np.ndarray:
    return scaled_ns(np.asarray(arrival_ns, dtype=np.int64), float(time_scale),
                     key="--time-scale", value=time_scale)


def _model_codes(table: pa.Table) -> tuple[np.ndarray, list[str]]:
    """Integer code per row and the sorted model names (code i = names[i])."""
    if table.num_rows == 0:
        return np.empty(0, np.int32), []
    enc = pc.dictionary_encode(table.column("model")).combine_chunks()
    labels = enc.dictionary.to_pylist()
    order = sorted(range(len(labels)), key=labels.__getitem__)
    remap = np.empty(len(labels), np.int32)
    remap[order] = np.arange(len(labels), dtype=np.int32)
    codes = remap[enc.indices.to_numpy(zero_copy_only=False)]
    return codes, [labels[i] for i in order]


def _rows_by_model(codes: np.ndarray, k: int) -> list[np.ndarray]:
    # One stable argsort groups every model's rows in arrival order.
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(k + 1))
    return [order[bounds[m]:bounds[m + 1]] for m in range(k)]


# A request more than this many times its model's reference size (interference_shapes).
LARGE_SHAPE_RATIO = 2.0


def interference_shapes(table: pa.Table, codes: np.ndarray, names: list[str],
                        mapping: dict[str, str], profile: Profile, mode: str
                        ) -> dict[str, dict[str, float]]:
    """Per trace model whose requests interfere with others (two or more models, a sharing
    mode): its requests' size at their bucket over the size of the reference shape the
    profile's co-runs used (ModelProfile.size_over_reference), the largest size the profile
    measured its interference at (``measured_up_to``: the smallest, over the other models, of
    the largest size in their ``slowdown_by_size`` table beside it; 1 without tables), the
    share of requests more than LARGE_SHAPE_RATIO x that, and the largest ratio. A larger
    co-runner slows the others more (docs/simulator.md, Limitations, with the H200's numbers);
    beyond the measured sizes the simulator keeps the largest one's slowdown. {} in exclusive
    mode, with one model, or for models whose profile has no reference shape."""
    if mode == "exclusive" or len(names) < 2:
        return {}
    bs = table.column("batch_size").to_numpy().astype(np.int64)
    seq = table.column("seq_len").to_numpy().astype(np.int64)
    new = table.column("max_new_tokens").to_numpy().astype(np.int64)
    by_size = profile.modes[mode].slowdown_by_size
    out: dict[str, dict[str, float]] = {}
    for m, name in enumerate(names):
        pm = profile.models[mapping[name]]
        label = pm.reference_label()
        rows = codes == m
        if label is None or not rows.any():
            continue
        measured = min(
            (max(1.0, float(by_size[(mapping[v], mapping[name])][0][-1]))
             if (mapping[v], mapping[name]) in by_size else 1.0)
            for v in names if v != name)
        ratio = pm.size_over_reference(*pm.bucket_shapes(bs[rows], seq[rows], new[rows]))
        out[name] = {"reference": label, "measured_up_to": round(measured, 2),
                     "above_2x_share": round(float(np.mean(
                         ratio > LARGE_SHAPE_RATIO * measured)), 4),
                     "max_ratio": round(float(ratio.max()), 2)}
    return out


def interference_note(shapes: dict[str, dict[str, float]]) -> str | None:
    """One line for the simulate command when some model sends requests far larger than the
    sizes its co-run slowdowns were measured at; None when none does."""
    # run.json is read back by `report`: anything but {model: {numbers}} is ignored
    large = {m: v for m, v in shapes.items() if isinstance(v, dict)
             and isinstance(v.get("above_2x_share"), int | float) and v["above_2x_share"] > 0
             and isinstance(v.get("max_ratio"), int | float)}
    if not large:
        return None

    def upto(v: dict) -> float:  # runs simulated before size tables: the reference only
        x = v.get("measured_up_to", 1.0)
        return float(x) if isinstance(x, int | float) and x >= 1 else 1.0

    parts = ", ".join(f"{m} {v['above_2x_share']:.0%} (up to {v['max_ratio']:g}x its "
                      f"{v['reference']} reference, measured up to {upto(v):g}x)"
                      for m, v in sorted(large.items()))
    return (f"note: requests larger than {LARGE_SHAPE_RATIO:g}x the largest size the co-runs "
            f"measured: {parts}; the simulator keeps the largest measured size's slowdown for "
            "them, so the slowdown they cause beside other models is likely under-estimated "
            "(docs/simulator.md, Limitations; profile with --corun-sizes up to your shapes)")


def _simulate_null(scheduled: np.ndarray, codes: np.ndarray, names: list[str],
                   new_tokens: np.ndarray, *, servers: int, service_ns: float, dist: str,
                   seed: int) -> SimResult:
    n = scheduled.size
    start = np.empty(n, np.int64)
    end = np.empty(n, np.int64)
    server = np.zeros(n, np.int32)
    for m, rows in enumerate(_rows_by_model(codes, len(names))):
        if dist == "const":
            svc = np.full(rows.size, int(service_ns), np.int64)
        else:
            # The null backend's stream: one generator per (seed, model name), so a simulated
            # run draws exactly the service times a real `replay --backend null` run draws.
            rng = np.random.default_rng([seed, zlib.crc32(names[m].encode())])
            svc = np.rint(rng.exponential(service_ns, rows.size)).astype(np.int64)
        # More servers than rows never changes the answer (row i takes server i): clamped, so
        # a huge --servers costs nothing.
        start[rows], end[rows], server[rows] = fifo_servers_assigned(
            scheduled[rows], svc, min(servers, max(rows.size, 1)))
    # Worker names as the null backend writes them: "<model>/<server index>", made only for
    # the (model, server) pairs that served something.
    key = codes.astype(np.int64) * servers + server
    used, inverse = np.unique(key, return_inverse=True)
    labels = pa.array([f"{names[k // servers]}/{k % servers}" for k in used.tolist()],
                      pa.string())
    worker = labels.take(pa.array(inverse.astype(np.int64)))
    tokens = new_tokens.astype(np.int64)
    return SimResult(service_start_ns=start, service_end_ns=end, done_ns=end.copy(),
                     tokens_out=np.where(tokens > 0, tokens, -1), worker=worker)


def map_models(names: list[str], trace: Trace, profile: Profile,
               zoo: dict[str, str] | None = None) -> dict[str, str]:
    """Trace model -> profile model: the ``zoo`` override's entry (``--zoo``, or the zoo a
    replay ran the model as), else the same name, else the trace spec's ``zoo`` entry."""
    spec_models = ((trace.meta or {}).get("spec") or {}).get("models") or {}
    by_zoo = {p.zoo: key for key, p in profile.models.items() if p.zoo}
    zoo = dict(zoo or {})
    unknown = sorted(set(zoo) - set(names))
    if unknown:
        raise BadInput("model not in the trace", key="--zoo", value=unknown[0],
                       allowed=", ".join(names))
    mapping: dict[str, str] = {}
    for name in names:
        override = zoo.get(name)
        if override is not None:
            if override in profile.models:
                mapping[name] = override
            elif override in by_zoo:
                mapping[name] = by_zoo[override]
            else:
                raise BadInput("zoo entry has no entry in the profile", source=profile.path,
                               key="--zoo", value=f"{name}={override}",
                               allowed=", ".join(profile.models))
            continue
        if name in profile.models:
            mapping[name] = name
            continue
        zoo_entry = (spec_models.get(name) or {}).get("zoo")
        if zoo_entry in profile.models:
            mapping[name] = zoo_entry
        elif zoo_entry in by_zoo:
            mapping[name] = by_zoo[zoo_entry]
        else:
            raise BadInput("trace model has no entry in the profile (matched by name, then by "
                           "the spec's zoo entry; --zoo MODEL=ENTRY picks one)",
                           source=profile.path, key="models",
                           value=name if zoo_entry is None else f"{name} (zoo {zoo_entry})",
                           allowed=", ".join(profile.models))
    return mapping


def _simulate_profile(table: pa.Table, scheduled: np.ndarray, codes: np.ndarray,
                      names: list[str], mapping: dict[str, str], profile: Profile, mode: str,
                      *, max_batch: int, max_wait_ns: float, seed: int,
                      cold_start: bool) -> SimResult:
    n = table.num_rows
    k = len(names)
    mp = profile.modes[mode]
    bs_all = table.column("batch_size").to_numpy()
    seq_all = table.column("seq_len").to_numpy()
    new_all = table.column("max_new_tokens").to_numpy()
    rows_by_model = _rows_by_model(codes, k)
    # The shape each request runs at: its bucket when the profile has buckets (and batching is
    # off; batches are bucketed as a whole below).
    run_bs = bs_all.astype(np.int64)
    run_seq = seq_all.astype(np.int64)
    any_bucketed = False
    for m, rows in enumerate(rows_by_model):
        pm = profile.models[mapping[names[m]]]
        if pm.bucketed and rows.size:
            any_bucketed = True
            run_bs[rows], run_seq[rows] = pm.bucket_shapes(bs_all[rows], seq_all[rows],
                                                           new_all[rows])
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(k)]
    # When the dispatcher actually sends: the schedule plus its measured median send lag
    # (profile send_lag_ms; the timeline's sent_ns column stays the scheduled time).
    sent = scheduled.astype(np.float64) + mp.send_lag_ms * 1e6
    # Single transports vary around their medians (profile inbound/outbound_spread_ms): one
    # draw per request and direction from the measured quantiles. The way in shifts the moment
    # the request leaves the dispatcher by its deviation (so the worker's idle-time bin, and
    # with it the median, follows from the shifted time); the way back is added to done.
    dev_in, dev_out = _transport_deviations(mp, rows_by_model, names, mapping, n, seed)
    reach = sent + dev_in

    queues: list[ModelQueue] = []
    noise: list[np.ndarray] = []
    scale: list[float] = []
    inbound = np.zeros(k)
    outbound = np.zeros(k)
    handoff = np.zeros(k)  # executor hand-off after each request (0: profile without it)
    for m, name in enumerate(names):
        pm_name = mapping[name]
        pm = profile.models[pm_name]
        rows = rows_by_model[m]
        scale.append(mp.alone_scale.get(pm_name, 1.0))
        inbound[m] = mp.inbound_ms.get(pm_name, 0.0) * 1e6
        outbound[m] = mp.outbound_ms.get(pm_name, 0.0) * 1e6
        handoff[m] = mp.handoff_ms.get(pm_name, 0.0) * 1e6
        cv = pm.service_cv
        if cv > 0:
            # Gamma with mean 1 and the measured coefficient of variation.
            noise.append(rngs[m].gamma(1.0 / cv**2, cv**2, rows.size))
        else:
            noise.append(np.ones(rows.size))
        work = None
        if max_batch == 1:
            work = (pm.service_ns(run_bs[rows], run_seq[rows], new_all[rows])
                    * scale[m] * noise[m])
            if cold_start and rows.size:
                # The first request of each shape (in this worker's FIFO order) pays the
                # profile's first-request excess.
                shape = ((run_bs[rows] << 42) | (run_seq[rows] << 21) | new_all[rows])
                _, first = np.unique(shape, return_index=True)
                work[first] += pm.cold_ns(run_bs[rows][first], run_seq[rows][first])
        queue = ModelQueue(arrival_ns=np.maximum(reach[rows] + inbound[m], sent[rows]),
                           work_ns=work)
        if max_batch == 1 and pm_name in mp.inbound_by_idle_ms:
            # Transport by how long the worker had been idle (profile inbound_by_idle_ms).
            queue.sent_ns = reach[rows]
            queue.idle_inbound = (lambda idle_ns, p=pm_name:
                                  mp.idle_inbound_ms(p, idle_ns / 1e6) * 1e6)
        queues.append(queue)

    batch_work = None
    if max_batch > 1:
        cache: dict[tuple[int, int, int, int], float] = {}
        bs_m = [bs_all[r].tolist() for r in rows_by_model]
        seq_m = [seq_all[r].tolist() for r in rows_by_model]
        new_m = [new_all[r].tolist() for r in rows_by_model]
        noise_l = [x.tolist() for x in noise]

        def batch_work(m: int, i: int, j: int) -> float:
            # A batch runs as one execution: batch sizes add up, sequences pad to the longest
            # and generation runs for the longest max_new_tokens (as the resident executor).
            if j == i + 1:
                key = (m, bs_m[m][i], seq_m[m][i], new_m[m][i])
            else:
                key = (m, sum(bs_m[m][i:j]), max(seq_m[m][i:j]), max(new_m[m][i:j]))
            base = cache.get(key)
            if base is None:  # the first batch of this shape
                pm = profile.models[mapping[names[m]]]
                b_run, s_run = pm.bucket_shapes(key[1], key[2], key[3], batch_buckets=True)
                base = float(pm.service_ns(b_run, s_run, key[3])) * scale[m]
                cache[key] = base
                if cold_start:
                    return base * noise_l[m][i] + float(pm.cold_ns(b_run, s_run))
            return base * noise_l[m][i]

    exclusive = mode == "exclusive"
    start = np.empty(n, np.int64)
    end = np.empty(n, np.int64)
    batch_id = np.zeros(n, np.int64)
    batched = np.ones(n, np.int32)
    if exclusive and max_batch == 1:
        # One global FIFO server and no batching: Lindley on the merged worker-arrival stream.
        arrive = np.empty(n)
        work = np.empty(n)
        for m, rows in enumerate(rows_by_model):
            arrive[rows] = queues[m].arrival_ns
            work[rows] = queues[m].work_ns
        order = np.argsort(arrive, kind="stable")
        pm_names = [mapping[x] for x in names]
        idle_table = any(p in mp.inbound_by_idle_ms for p in pm_names)
        if mp.handoff_pair_ms or idle_table:
            # The hand-off by (finished model, next model, next already waiting at the start):
            # measured by the profile's mixed phase (simulate/measure.handoff_classes); the
            # transport of a request sent to the idle worker by how long it had been idle.
            def gap_ns(prev: int, nxt: int, early: bool) -> float:
                if mp.handoff_pair_ms:
                    return mp.pair_gap_ms(pm_names[prev], pm_names[nxt], early) * 1e6
                return float(handoff[prev])

            def idle_inbound(m: int, idle_ns: float) -> float:  # the queues' (above)
                f = queues[m].idle_inbound
                return inbound[m] if f is None else f(idle_ns)

            s, e = fifo_pair_handoff(np.rint(arrive[order]).astype(np.int64),
                                     np.rint(work[order]).astype(np.int64), codes[order],
                                     gap_ns,
                                     np.rint(reach[order]).astype(np.int64) if idle_table
                                     else None,
                                     idle_inbound if idle_table else None)
        else:
            s, e = fifo_servers(np.rint(arrive[order]).astype(np.int64),
                                np.rint(work[order]).astype(np.int64), 1,
                                handoff_ns=(np.rint(handoff[codes[order]]).astype(np.int64)
                                            if handoff.any() else None))
        start[order] = s
        end[order] = e
        batch_id[order] = np.arange(n)
    else:
        sliced = mp.sliced(max_batch)
        if sliced is not None:
            # One context on the GPU at a time (engine.timeslice_workers), with the slice and
            # switch cost the profile fitted: a decoder yields at its first token.
            quantum_ms, switch_ms = sliced
            results = timeslice_workers(queues, quantum_ms * 1e6,
                                        yield_ns=_first_token_work(profile, mapping, names,
                                                                   rows_by_model, run_bs,
                                                                   run_seq, new_all, queues),
                                        switch_ns=switch_ms * 1e6)
        else:
            rates = None if exclusive else _rate_table(profile, mode,
                                                       [mapping[x] for x in names])
            sized = None if exclusive else _size_interference(
                profile, mode, [mapping[x] for x in names], rows_by_model, run_bs, run_seq,
                (bs_all, seq_all, new_all) if max_batch > 1 else None)
            results = shared_workers(queues, exclusive=exclusive, rates=rates,
                                     max_batch=max_batch, max_wait_ns=max_wait_ns,
                                     batch_work=batch_work,
                                     handoff_ns=handoff.tolist() if handoff.any() else None,
                                     sized=sized)
        for m, rows in enumerate(rows_by_model):
            r = results[m]
            start[rows] = np.rint(r.start_ns).astype(np.int64)
            end[rows] = np.rint(r.end_ns).astype(np.int64)
            batch_id[rows] = r.batch_id
            batched[rows] = r.batched_with
    way_back = outbound[codes]
    if n and mp.outbound_by_activity_ms:
        way_back = _activity_outbound(mp, names, mapping, rows_by_model, sent, end, way_back)
    done = (end + np.rint(np.maximum(way_back + dev_out, 0.0)).astype(np.int64)
            if n else end.copy())

    first_token = np.full(n, np.nan)
    # As the resident executor reports it: batch_size x max_new_tokens for generation, else 0.
    tokens_out = np.zeros(n, np.int64)
    for m, rows in enumerate(rows_by_model):
        pm = profile.models[mapping[names[m]]]
        if not pm.generative:
            continue
        gen = rows[new_all[rows] > 0]
        if gen.size == 0:
            continue
        frac = pm.prefill_fraction(run_bs[gen], run_seq[gen], new_all[gen])
        first_token[gen] = start[gen] + frac * (end[gen] - start[gen])
        tokens_out[gen] = bs_all[gen].astype(np.int64) * new_all[gen]
    # Worker names as the resident backend writes them.
    if exclusive:
        worker = pa.repeat(pa.scalar("exclusive"), n)
    else:
        prefix = "stream" if mode == "streams" else mode
        labels = pa.array([f"{prefix}-{m}" for m in names], pa.string())
        worker = labels.take(pa.array(codes, pa.int32()))
    bucket_seq = bucket_batch = None
    if any_bucketed and max_batch == 1:
        bucket_seq, bucket_batch = run_seq.astype(np.int32), run_bs.astype(np.int32)
    return SimResult(service_start_ns=start, service_end_ns=end, done_ns=done,
                     first_token_ns=first_token, tokens_out=tokens_out, batch_id=batch_id,
                     batched_with=batched, worker=worker, bucket_seq_len=bucket_seq,
                     bucket_batch_size=bucket_batch)


def parse_time_slice(value: object, mode: str | None, *, key: str = "--time-slice"
                     ) -> tuple[float, float | None] | None:
    """``--time-slice`` (or a study's ``time_slice``): ``"QUANTUM_MS"``, ``"QUANTUM_MS,
    SWITCH_MS"`` -> ``(quantum, switch or None)``; ``"none"`` -> None. Refused (BadInput naming
    ``key``) unless ``mode`` is ``timeslice`` and the value has that form."""
    if mode != "timeslice":
        raise BadInput("only mode timeslice has a time slice", key=key, value=value)
    text = str(value).strip().lower()
    if text == "none":
        return None
    parts = text.split(",")
    try:
        nums = [float(x) for x in parts]
    except ValueError:
        nums = []
    if (isinstance(value, bool) or len(parts) not in (1, 2) or len(nums) != len(parts)
            or not all(math.isfinite(x) for x in nums) or nums[0] <= 0
            or (len(nums) == 2 and nums[1] < 0)):
        raise BadInput("give QUANTUM_MS (> 0), QUANTUM_MS,SWITCH_MS (>= 0) or none", key=key,
                       value=value)
    from traceforge.simulate.profile import MAX_PROFILE_MS, MIN_TIME_SLICE_MS

    if not MIN_TIME_SLICE_MS <= nums[0] <= MAX_PROFILE_MS:
        raise BadInput(f"the slice must be between {MIN_TIME_SLICE_MS:g} ms (1 µs) and "
                       f"{MAX_PROFILE_MS:g} ms", key=key, value=value)
    if len(nums) == 2 and nums[1] >= nums[0]:
        # A switch as long as the slice leaves the GPU switching half its time or more: almost
        # surely µs given as ms (1.25,25 simulated latencies 10^4 x the measured ones).
        raise BadInput("the switch cost must be shorter than the slice (both in ms: 25 µs is "
                       "0.025)", key=key, value=value)
    return nums[0], (nums[1] if len(nums) == 2 else None)


def _with_time_slice(profile: Profile, mode: str, value: str) -> Profile:
    """``profile`` with its ``timeslice`` mode's time slice replaced by ``--time-slice``
    (``QUANTUM_MS[,SWITCH_MS]``, or ``none`` for processor sharing; the switch defaults to the
    profile's fitted one, else 0)."""
    import dataclasses

    parsed = parse_time_slice(value, mode)
    mp = profile.modes[mode]
    modes = dict(profile.modes)
    if parsed is None:  # processor sharing; the fitted slice stays in the profile, unused
        modes[mode] = dataclasses.replace(mp, time_slice_applied=False)
    else:
        quantum, switch = parsed
        if switch is None:
            switch = mp.time_slice[1] if mp.time_slice else 0.0
            if switch >= quantum:
                raise BadInput(f"the profile's switch cost ({switch:g} ms) is not shorter than "
                               "this slice; give QUANTUM_MS,SWITCH_MS", key="--time-slice",
                               value=value)
        modes[mode] = dataclasses.replace(mp, time_slice=(quantum, switch),
                                          time_slice_applied=True)
    return dataclasses.replace(profile, modes=modes)


def _first_token_work(profile: Profile, mapping: dict[str, str], names: list[str],
                      rows_by_model: list[np.ndarray], run_bs: np.ndarray,
                      run_seq: np.ndarray, new_all: np.ndarray,
                      queues: list[ModelQueue]) -> list[np.ndarray | None]:
    """Per model, the work (ns) each request has done when its first token is out (the
    decoder's host waits for it there: timeslice_workers' yield point); None for models that
    do not generate, NaN for their requests without new tokens."""
    out: list[np.ndarray | None] = []
    for m, rows in enumerate(rows_by_model):
        pm = profile.models[mapping[names[m]]]
        if not pm.generative or not rows.size:
            out.append(None)
            continue
        frac = pm.prefill_fraction(run_bs[rows], run_seq[rows], new_all[rows])
        out.append(np.where(new_all[rows] > 0, frac * queues[m].work_ns, np.nan))
    return out


def _activity_outbound(mp, names: list[str], mapping: dict[str, str],
                       rows_by_model: list[np.ndarray], sent: np.ndarray, end: np.ndarray,
                       way_back: np.ndarray) -> np.ndarray:
    """The way back of each request (ns) by the dispatcher's activity before its service end
    (profile ``outbound_by_activity_ms``; measure.dispatcher_activity on the simulated
    timeline: sends, and completions at ``end`` + the model's median way back); models without
    a table keep their median ``way_back``."""
    from traceforge.simulate.measure import dispatcher_activity

    activity = dispatcher_activity(sent, end + way_back, end)
    out = way_back.astype(np.float64).copy()
    for name, rows in zip(names, rows_by_model, strict=True):
        value = mp.activity_outbound_ms(mapping[name], activity[rows]) if rows.size else None
        if value is not None:
            out[rows] = np.asarray(value) * 1e6
    return out


def _transport_deviations(mp, rows_by_model: list[np.ndarray], names: list[str],
                          mapping: dict[str, str], n: int, seed: int
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Per request, ns: how far its transport to the worker and back falls from the profile's
    median, drawn from the mode's ``inbound_spread_ms`` / ``outbound_spread_ms`` quantiles
    (inverse CDF, linear between quantiles, the 1 % / 99 % ones beyond); zeros for models
    without them. The way in never goes below minus the smallest median (a transport is never
    negative). Each model and direction has its own stream, so adding a model or a spread
    leaves the others' draws as they were."""
    dev = (np.zeros(n), np.zeros(n))
    for m, rows in enumerate(rows_by_model):
        p = mapping[names[m]]
        if not rows.size:
            continue
        # the way back: around its activity bin's median where the profile has that table
        back = (mp.outbound_by_activity_spread_ms if mp.outbound_by_activity_ms.get(p)
                else mp.outbound_spread_ms)
        for d, (table, floor) in enumerate((
                (mp.inbound_spread_ms, -min([mp.inbound_ms.get(p, 0.0)]
                                            + [r[2] for r in mp.inbound_by_idle_ms.get(p, [])])),
                (back, -math.inf))):
            q = table.get(p)
            if q is None:
                continue
            rng = np.random.default_rng([max(int(seed), 0), 17, m, d])
            draw = np.interp(rng.random(rows.size), SPREAD_QUANTILES, q)
            dev[d][rows] = np.maximum(draw, floor) * 1e6
    return dev


def _size_tables_used(profile: Profile, mode: str, mapping: dict[str, str]
                      ) -> dict[str, dict[str, list[list[float]]]]:
    """Per trace model, the size tables its interference uses: the other trace model ->
    ``[[size, slowdown], ...]`` (profile ``slowdown_by_size``)."""
    tables = profile.modes[mode].slowdown_by_size
    out: dict[str, dict[str, list[list[float]]]] = {}
    for v, pv in mapping.items():
        for a, p_a in mapping.items():
            if a != v and (pv, p_a) in tables:
                sizes, slow = tables[(pv, p_a)]
                out.setdefault(v, {})[a] = [[float(x), float(y)] for x, y in zip(
                    sizes, slow, strict=True)]
    return out


def _size_interference(profile: Profile, mode: str, pnames: list[str],
                       rows_by_model: list[np.ndarray], run_bs: np.ndarray, run_seq: np.ndarray,
                       batch_shapes: tuple[np.ndarray, np.ndarray, np.ndarray] | None
                       ) -> SizeInterference | None:
    """The profile's size-dependent co-run slowdowns (``slowdown_by_size``) for the engine:
    each request's size class (its distinct size over its model's reference, at the shape it
    runs at) and, per class, how much it adds to every other model's slowdown. None when the
    profile has no such table for any pair of these models (the engine stays size-blind).
    ``batch_shapes`` (the trace's batch, seq and new-token columns) when batching: a batch's
    class comes from the bucket the whole batch runs at, as its work does."""
    mp = profile.modes[mode]
    k = len(pnames)
    if not mp.slowdown_by_size or not any(
            (pnames[w], pnames[u]) in mp.slowdown_by_size
            for w in range(k) for u in range(k) if u != w):
        return None
    ratio_class: list[dict[float, int]] = [{} for _ in range(k)]
    excess: list[list[list[float]]] = [[] for _ in range(k)]

    def class_of(u: int, ratio: float) -> int:
        c = ratio_class[u].get(ratio)
        if c is None:
            c = ratio_class[u][ratio] = len(excess[u])
            row = []
            for w in range(k):
                e = None if w == u else profile.size_excess(mode, pnames[w], pnames[u], ratio)
                row.append(0.0 if e is None else float(e))
            excess[u].append(row)
        return c

    classes: list[list[int]] = []
    for u, rows in enumerate(rows_by_model):
        pm = profile.models[pnames[u]]
        ratio = pm.size_over_reference(run_bs[rows], run_seq[rows]) if rows.size else None
        if ratio is None:  # no reference shape: every request counts as the reference size
            classes.append([class_of(u, 1.0)] * rows.size)
            continue
        uniq, inverse = np.unique(np.round(ratio, 9), return_inverse=True)
        codes = [class_of(u, float(x)) for x in uniq]
        classes.append(np.asarray(codes, np.int64)[inverse.reshape(-1)].tolist())
    batch_class = None
    if batch_shapes is not None:
        bs_m, seq_m, new_m = ([col[r].tolist() for r in rows_by_model] for col in batch_shapes)
        cache: dict[tuple[int, int, int, int], int] = {}

        def batch_class(u: int, i: int, j: int) -> int:
            key = (u, sum(bs_m[u][i:j]), max(seq_m[u][i:j]), max(new_m[u][i:j]))
            c = cache.get(key)
            if c is None:
                pm = profile.models[pnames[u]]
                b_run, s_run = pm.bucket_shapes(key[1], key[2], key[3], batch_buckets=True)
                ratio = pm.size_over_reference(b_run, s_run)
                c = cache[key] = class_of(u, 1.0 if ratio is None
                                          else round(float(ratio), 9))
            return c

    return SizeInterference(classes=classes, excess=excess, batch_class=batch_class)


def _rate_table(profile: Profile, mode: str, pnames: list[str]) -> dict[int, list[float]]:
    k = len(pnames)
    if k > 16:
        raise BadInput("the interference model handles at most 16 models", key="models",
                       value=k)
    rates: dict[int, list[float]] = {}
    for mask in range(1, 1 << k):
        busy = [pnames[m] for m in range(k) if mask >> m & 1]
        if len(busy) < 2:
            continue
        rates[mask] = [1.0 / profile.slowdown(mode, pnames[m], busy) if mask >> m & 1 else 1.0
                       for m in range(k)]
    return rates


def _timeline_table(trace: pa.Table, scheduled: np.ndarray, r: SimResult, *,
                    warmup_ns: int, cancelled: np.ndarray | None = None,
                    cancelled_msg: str = "") -> pa.Table:
    """The timeline of every trace row; ``cancelled`` rows as replay records them: sent, no
    outcome (service times, done, tokens and worker null), status and error saying why."""
    n = trace.num_rows
    f = TIMELINE_SCHEMA.field
    if cancelled is None or not cancelled.any():
        cancelled = None

    def opt(values: np.ndarray | None, name: str, null_mask: np.ndarray | None = None):
        if values is None:
            return pa.nulls(n, f(name).type)
        if cancelled is not None:
            null_mask = cancelled if null_mask is None else (null_mask | cancelled)
        return pa.array(values, type=f(name).type, mask=null_mask)

    first = None
    first_mask = None
    if r.first_token_ns is not None:
        first_mask = np.isnan(r.first_token_ns)
        first = np.where(first_mask, 0, np.rint(np.nan_to_num(r.first_token_ns))).astype(np.int64)
    tokens = None
    tokens_mask = None
    if r.tokens_out is not None:
        tokens_mask = r.tokens_out < 0
        tokens = np.where(tokens_mask, 0, r.tokens_out)
    columns = {
        "request_id": trace.column("request_id"),
        "model": trace.column("model"),
        "batch_size": trace.column("batch_size"),
        "seq_len": trace.column("seq_len"),
        "max_new_tokens": trace.column("max_new_tokens"),
        "scheduled_ns": pa.array(scheduled, pa.int64()),
        "sent_ns": pa.array(scheduled, pa.int64()),
        "service_start_ns": opt(r.service_start_ns, "service_start_ns"),
        "first_token_ns": opt(first, "first_token_ns", first_mask),
        "service_end_ns": opt(r.service_end_ns, "service_end_ns"),
        "done_ns": opt(r.done_ns, "done_ns"),
        "status": (pa.repeat(pa.scalar("ok"), n) if cancelled is None
                   else pc.if_else(pa.array(cancelled), "cancelled", "ok")),
        "error": (pa.nulls(n, pa.string()) if cancelled is None
                  else pc.if_else(pa.array(cancelled), cancelled_msg,
                                  pa.scalar(None, pa.string()))),
        "gpu_ns": pa.nulls(n, pa.int64()),
        "batch_id": opt(r.batch_id, "batch_id"),
        "batched_with": opt(r.batched_with, "batched_with"),
        "tokens_out": opt(tokens, "tokens_out", tokens_mask),
        "worker": (pa.nulls(n, pa.string()) if r.worker is None
                   else r.worker if cancelled is None
                   else pc.if_else(pa.array(cancelled), pa.scalar(None, pa.string()),
                                   r.worker.cast(pa.string()))),
        "warmup": pa.array(scheduled < warmup_ns, pa.bool_()),
        "itl_ns": pa.nulls(n, f("itl_ns").type),
        "session_id": trace.column("session_id"),
        "turn": trace.column("turn"),
        "replay_worker": pa.nulls(n, pa.int32()),
        "bucket_seq_len": opt(r.bucket_seq_len, "bucket_seq_len"),
        "bucket_batch_size": opt(r.bucket_batch_size, "bucket_batch_size"),
    }
    for fld in TIMELINE_SCHEMA:  # columns only a real backend knows (http timing...): null
        columns.setdefault(fld.name, pa.nulls(n, fld.type))
    return pa.table(columns, schema=TIMELINE_SCHEMA)
