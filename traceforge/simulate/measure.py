"""The measuring code behind ``traceforge profile``: service grids and co-run slowdowns.

Everything is measured through the public replay API and the resident backend, so a profile
holds exactly what a replay measures: each phase is a closed-loop ``replay_async`` run of a
synthetic trace, and service times are read from its timeline (``service_end_ns -
service_start_ns``). Per sharing mode the backend starts once (models load once) and a thin
wrapper (:class:`_KeepStarted`) lets every phase's replay "start" and "stop" it without reloading,
shifting the worker-side times onto each phase's run clock.

Phases, per mode:

1. grid (first mode only): every model alone (``concurrency=1``), ``warmup`` requests per batch
   size x seq_len point back to back, then ``repeats`` rounds over all points; generative models
   generate ``new_tokens`` tokens, which gives time to first token and per-token decode time;
2. reference: every model alone at its reference shape: the mode's alone time, its ratio to the
   first mode's, applied as ``alone_scale`` for graph-captured models when it differs from 1
   by more than 3 standard errors (:func:`alone_scale`; eager: 1, see there) and transport
   overheads (``service_start - sent``, ``done - service_end``, medians);
   The open-loop alone phases (``alone_utilisation`` > 0) also give the executor's hand-off
   (``handoff_ms``: :func:`handoff_gaps`, the mean gap between a request's end and the start
   of the next one already waiting on the same worker, by the model that finished). In the
   first mode the reference open-loop pass also gives the grid's tail and CV
   (:func:`reanchor_tail`). Modes with a worker per model add a mixed pass (``reference-mix``:
   every model in one stream at serving rates) for ``send_lag_ms`` and, pooled with the
   co-run phases (:func:`pooled_outbound_ms`), ``outbound_ms``; a sparse pass
   (``reference-idle``) adds long idle gaps; the idle-transport table pools the reference
   passes only;
3. co-run (not in ``exclusive``): each pair and the full set at the reference shapes, open
   loop: every model's requests arrive as a Poisson stream at ``corun_utilisation`` of its
   alone capacity (a realistic load, not back-to-back closed-loop pressure), ``corun_repeats``
   times with different seeds. Each repeat's slowdown is estimated by
   :func:`estimate_slowdowns`, which inverts the simulator's own processor-sharing model over
   the measured busy intervals (so partial overlap still gives an unbiased slowdown); the
   profile keeps the median, every repeat and their spread, and a median below 1.0 only when
   every repeat is below 1.0 (interference does not speed a model up; one noisy repeat must not
   say it does).

The grid's seq_lens are snapped to the backend's shape buckets (``seq_buckets``), so each grid
point is the service time of one bucket, which is what a request padded to it costs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from traceforge.errors import BadInput, RunFailure
from traceforge.schema import conform_trace_table, read_trace, write_trace
from traceforge.simulate.profile import MODES, PROFILE_SCHEMA_ID, corun_key

Log = Callable[[str], None]


MAX_COUNT = 10_000  # --repeats / --warmup


@dataclass
class ProfileSettings:
    models: list[str]  # zoo entries
    device: str = "cuda"
    modes: list[str] | None = None  # default: every mode the device supports
    batch_sizes: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    seq_lens: list[int] = field(default_factory=lambda: [32, 128, 512])
    image_sides: list[int] = field(default_factory=lambda: [224])  # seq_len axis for vision
    new_tokens: int = 16  # tokens generated per generative request in the grid
    repeats: int = 10  # timed requests per grid point / reference phase
    warmup: int = 3  # untimed requests first
    corun_seconds: float = 4.0  # target length of each co-run phase
    # pairs+all | pairs. The full set's slowdown is estimated given the pairs' (its co-run
    # spends time with only two models busy too), so pairs are always measured.
    corun_sets: str = "pairs+all"
    corun_depth: int = 2  # requests in flight per model during a co-run (closed loop)
    reference_batch: int = 1
    reference_seq: int = 128
    reference_new_tokens: int | None = None  # default: new_tokens
    # Per-model reference shapes (batch_size, seq_len, max_new_tokens or None = default): the
    # shapes the co-runs use, best set to the shapes the workload serves.
    references: dict[str, tuple[int, int, int | None]] = field(default_factory=dict)
    keep_runs: Path | None = None  # keep every phase's run directory here
    # Serving variant and shape buckets of the measured backend (None: its defaults). The grid's
    # seq_lens are snapped to buckets, so each grid point is one bucket's service time.
    compile: str | None = None
    seq_buckets: list[int] | None = None
    # Co-runs are open loop: each model's requests arrive as a Poisson stream at this share of
    # its alone capacity, repeated with different seeds (the spread goes into the profile).
    corun_utilisation: float = 0.5
    corun_repeats: int = 3
    # Each pair's slowdowns again with one model's requests at these sizes (x its reference
    # size: tokens, pixels for vision) and the other's at its reference: a model's co-run
    # slowdown grows with the size of the request beside it (H200, MPS, three profiles of
    # 2026-12-01: distilgpt2 1.14-1.17 beside distilbert-base at 1 x 128, 1.74-1.78 beside
    # 8 x 256; docs/results/simulator-fidelity-h200.md).
    # A size needs a grid shape within a factor sqrt(2) of it; [] measures the reference only.
    corun_sizes: list[float] = field(default_factory=lambda: [4.0, 8.0, 16.0])
    corun_size_repeats: int = 2
    # Alone service times (grid and reference) are re-measured open loop at this utilisation
    # (Poisson gaps of mean service / utilisation), because a GPU that idles between requests
    # runs them slower than back to back (clocks, caches): replays run at such loads. 0 keeps
    # the closed-loop measurement.
    alone_utilisation: float = 0.5

    def resolved_modes(self) -> list[str]:
        if self.modes:
            return list(self.modes)
        if self.device.startswith("cuda"):
            return list(MODES)
        return ["exclusive", "timeslice", "streams"]

    def validate(self) -> ProfileSettings:
        if not self.models:
            raise BadInput("at least one model is needed", key="--models", value="")
        if len(set(self.models)) != len(self.models):
            raise BadInput("models repeat", key="--models", value=",".join(self.models))
        for m in self.resolved_modes():
            if m not in MODES:
                raise BadInput("unknown mode", key="--modes", value=m, allowed=", ".join(MODES))
        if len(set(self.resolved_modes())) != len(self.resolved_modes()):
            raise BadInput("modes repeat", key="--modes", value=",".join(self.resolved_modes()))
        if self.compile is not None:
            # checked before any backend starts (it was refused by the first mode's backend,
            # after its "starting backend" line)
            from traceforge.zoo import COMPILE_MODES

            if self.compile not in COMPILE_MODES:
                raise BadInput("unknown compile variant", key="--compile", value=self.compile,
                               allowed=", ".join(COMPILE_MODES))
            if self.compile != "eager" and not self.device.startswith("cuda"):
                raise BadInput("CUDA graphs need a CUDA device (use --compile eager on the "
                               "CPU)", key="--compile", value=self.compile)
        for key, values in (("--batch-sizes", self.batch_sizes), ("--seq-lens", self.seq_lens),
                            ("--image-sides", self.image_sides)):
            if not values or any(v < 1 for v in values) or sorted(set(values)) != list(values):
                raise BadInput("must be increasing integers >= 1", key=key,
                               value=",".join(map(str, values)))
        for key, value, low in (("--new-tokens", self.new_tokens, 2),
                                ("--repeats", self.repeats, 2), ("--warmup", self.warmup, 0),
                                ("--reference-batch", self.reference_batch, 1),
                                ("--reference-seq", self.reference_seq, 1)):
            if value < low:
                raise BadInput(f"must be >= {low}", key=key, value=value)
        # Counts of timed requests: beyond these a profile would run for days (as a study's
        # repeats are capped).
        for key, value, high in (("--repeats", self.repeats, MAX_COUNT),
                                 ("--warmup", self.warmup, MAX_COUNT),
                                 ("--corun-repeats", self.corun_repeats, 1000)):
            if value > high:
                raise BadInput(f"must be <= {high}", key=key, value=value)
        for model, shape in self.references.items():
            if model not in self.models:
                raise BadInput("not one of --models", key="--reference", value=model,
                               allowed=",".join(self.models))
            if shape[0] < 1 or shape[1] < 1 or (shape[2] is not None and shape[2] < 0):
                raise BadInput("batch and seq_len must be >= 1, new tokens >= 0",
                               key=f"--reference {model}", value=shape)
        if not 0 < self.corun_seconds <= 86_400:
            raise BadInput("must be in (0, 86400] seconds", key="--corun-seconds",
                           value=self.corun_seconds)
        if not 0 <= self.alone_utilisation < 1:
            raise BadInput("must be in [0, 1)", key="--alone-utilisation",
                           value=self.alone_utilisation)
        if not 0 < self.corun_utilisation < 1:
            raise BadInput("must be in (0, 1)", key="--corun-utilisation",
                           value=self.corun_utilisation)
        if self.corun_repeats < 1:
            raise BadInput("must be >= 1", key="--corun-repeats", value=self.corun_repeats)
        if not 1 <= self.corun_size_repeats <= 1000:
            raise BadInput("must be in [1, 1000]", key="--corun-size-repeats",
                           value=self.corun_size_repeats)
        sizes = list(self.corun_sizes)
        if (any(not math.isfinite(x) or x <= 0 or x == 1.0 for x in sizes)
                or sorted(set(sizes)) != sizes):
            raise BadInput("must be increasing sizes > 0 other than 1 (x the reference size)",
                           key="--corun-sizes", value=",".join(f"{x:g}" for x in sizes))
        if self.corun_sets not in ("pairs+all", "pairs"):
            raise BadInput("unknown co-run set choice", key="--corun-sets",
                           value=self.corun_sets, allowed="pairs+all, pairs")
        return self

    def corun_groups(self) -> list[tuple[str, ...]]:
        names = sorted(self.models)
        groups: list[tuple[str, ...]] = list(itertools.combinations(names, 2))
        if self.corun_sets == "pairs+all" and len(names) > 2:
            groups.append(tuple(names))
        return groups


# -- estimation (pure functions, tested without a GPU) ------------------------------------------

def busy_segments(intervals: dict[str, tuple[np.ndarray, np.ndarray]]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Cut time into elementary segments on which the set of busy models is constant.

    ``intervals[m] = (start_ns, end_ns)``: model ``m``'s service intervals (disjoint: one worker
    per model). Returns segment midpoints and durations, the busy bitmask of each segment (bit i = names[i]) and
    the sorted names.
    """
    names = sorted(intervals)
    bounds = np.unique(np.concatenate([np.concatenate(intervals[m]) for m in names]))
    if bounds.size < 2:
        return np.empty(0), np.empty(0), np.empty(0, np.int64), names
    mid = (bounds[:-1] + bounds[1:]) / 2.0
    mask = np.zeros(mid.size, np.int64)
    for bit, m in enumerate(names):
        start, end = (np.asarray(a, np.float64) for a in intervals[m])
        order = np.argsort(start, kind="stable")
        start, end = start[order], end[order]
        idx = np.searchsorted(start, mid, side="right") - 1
        inside = (idx >= 0) & (mid < end[np.maximum(idx, 0)])
        mask |= inside.astype(np.int64) << bit
    return mid, np.diff(bounds).astype(np.float64), mask, names


def estimate_slowdowns(intervals: dict[str, tuple[np.ndarray, np.ndarray]],
                       alone_ns: dict[str, float],
                       known: Callable[[str, list[str]], float],
                       counted: dict[str, np.ndarray] | None = None) -> dict[str, dict[str, Any]]:
    """Slowdown of each model while *all* the others in ``intervals`` are busy.

    The simulator's model: a request needs ``alone_ns`` of work and progresses at rate
    ``1/slowdown(m, busy set)``. Over the counted requests of ``m``, the work done equals the
    time spent under each busy set divided by that set's slowdown; every set but the full one is
    ``known(m, busy)`` (1 alone, pairs measured earlier), which leaves one unknown:

        sum(alone) = sum_{U != full} T_U / known(U) + T_full / slowdown_full

    ``counted[m]``: boolean per interval of ``m`` (default all); uncounted intervals still make
    the others busy. Returns ``{m: {"slowdown", "overlap", "requests"}}`` where ``overlap`` is
    T_full over m's total busy time (how much evidence there is).
    """
    mids, durations, masks, names = busy_segments(intervals)
    full = (1 << len(names)) - 1
    out: dict[str, dict[str, Any]] = {}
    for m in names:
        start, end = (np.asarray(a, np.float64) for a in intervals[m])
        keep = np.ones(start.size, bool) if counted is None else np.asarray(counted[m], bool)
        # Segments inside a counted interval of m.
        order = np.argsort(start, kind="stable")
        s_sorted, e_sorted, keep_sorted = start[order], end[order], keep[order]
        idx = np.searchsorted(s_sorted, mids, side="right") - 1
        ok = idx >= 0
        j = np.maximum(idx, 0)
        in_m = ok & (mids < e_sorted[j]) & keep_sorted[j]
        seg_masks = masks[in_m]
        seg_dur = durations[in_m]
        work = float(keep.sum()) * float(alone_ns[m])
        explained = 0.0
        t_full = 0.0
        for mask in np.unique(seg_masks):
            t = float(seg_dur[seg_masks == mask].sum())
            if mask == full:
                t_full = t
                continue
            busy = [names[i] for i in range(len(names)) if mask >> i & 1]
            explained += t / known(m, busy)
        total = float(seg_dur.sum())
        left = work - explained
        method = "balance"
        if t_full <= 0:
            slowdown = math.nan
        elif left > 0.05 * work:
            slowdown = t_full / left
        else:
            # The partial-overlap segments already took as long as all the work needs (their
            # known slowdowns are too optimistic for this co-run, or noise): the balance has no
            # room left. Fall back to the plain ratio busy time / work, which cannot blow up.
            slowdown = total / work if work > 0 else math.nan
            method = "ratio"
        out[m] = {"slowdown": slowdown, "overlap": t_full / total if total else 0.0,
                  "requests": int(keep.sum()), "method": method}
    return out


def _waiting_pairs(worker, model, sent_ns, start_ns, end_ns,
                   transport_ns: dict[str, float] | None):
    """Consecutive requests on each worker, in service-start order: the models of both sides,
    whether the second was already waiting as the first ended (``waiting``), whether it had
    arrived before the first *started* (``early``), and the gap ``start[k+1] - end[k]``."""
    worker = np.asarray(worker)
    model = np.asarray(model)
    sent = np.asarray(sent_ns, dtype=np.float64)
    start = np.asarray(start_ns, dtype=np.float64)
    end = np.asarray(end_ns, dtype=np.float64)
    if transport_ns is None:
        transport_ns = idle_transport_ns(worker, model, sent, start, end)
    order = np.lexsort((start, worker))
    w, m = worker[order], model[order]
    se, st, en = sent[order], start[order], end[order]
    same = w[1:] == w[:-1]
    reach = se + np.array([transport_ns.get(x, 0.0) for x in m.tolist()], dtype=np.float64)
    waiting = same & (reach[1:] <= en[:-1])
    early = reach[1:] <= st[:-1]
    return m[:-1], m[1:], waiting, early, st[1:] - en[:-1]


def handoff_gaps(worker: np.ndarray, model: np.ndarray, sent_ns: np.ndarray,
                 start_ns: np.ndarray, end_ns: np.ndarray,
                 transport_ns: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """The executor's hand-off gaps in one timeline (ok rows), by the model that finished.

    On each worker, in service-start order: when request ``k+1`` was already waiting as ``k``
    ended (sent, plus its model's transport to the worker, no later than ``k``'s
    ``service_end``), ``start[k+1] - end[k]`` is time the worker spent on neither request:
    reporting the result, taking the next job, launching it. ``transport_ns`` per model: the
    dispatcher-to-worker delay; by default the median ``start - sent`` of the requests that
    found their worker idle. Gaps may be negative where the executor pipelines (a graph launched
    behind the previous one); they are returned as measured.
    """
    done, _, waiting, _, gaps = _waiting_pairs(worker, model, sent_ns, start_ns, end_ns,
                                               transport_ns)
    return {name: gaps[waiting & (done == name)] for name in np.unique(model).tolist()}


def handoff_classes(worker: np.ndarray, model: np.ndarray, sent_ns: np.ndarray,
                    start_ns: np.ndarray, end_ns: np.ndarray,
                    transport_ns: dict[str, float] | None = None
                    ) -> dict[tuple[str, str, bool], np.ndarray]:
    """:func:`handoff_gaps` split by the pair (finished model, next model) and by whether the
    next request had already reached the worker when the finished one *started* (``early``:
    it could be launched behind it) or only while it ran. Measured on an H200 (exclusive,
    distilbert-base ``enc`` + distilgpt2 ``gen``, 2026-11-30 16:03 UTC) the classes differ
    far more than the per-model mean shows: enc→enc 31–35 µs early vs 99–258 µs late,
    enc→gen 210–267 µs, gen→enc 434–535 µs, gen→gen 369–476 µs; which classes a workload
    produces depends on its mix and burstiness, so a per-model mean from one workload does
    not carry to another (docs/results/simulator-fidelity-h200.md)."""
    done, nxt, waiting, early, gaps = _waiting_pairs(worker, model, sent_ns, start_ns, end_ns,
                                                     transport_ns)
    out = {}
    names = np.unique(model).tolist()
    for a in names:
        for b in names:
            for e in (True, False):
                k = waiting & (done == a) & (nxt == b) & (early == e)
                if k.any():
                    out[(a, b, e)] = gaps[k]
    return out


def handoff_pair_ms(classes: list[dict[tuple[str, str, bool], np.ndarray]], *,
                    minimum: int = 5) -> dict[str, dict[str, dict[str, float]]]:
    """``{finished: {next: {"early": ms, "late": ms, "n_early": k, "n_late": k}}}``: the mean
    gap (>= 0) of each class with at least ``minimum`` pairs over several timelines."""
    pooled: dict[tuple[str, str, bool], list[np.ndarray]] = {}
    for c in classes:
        for key, values in c.items():
            pooled.setdefault(key, []).append(values)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (a, b, e), parts in sorted(pooled.items()):
        values = np.concatenate(parts)
        if values.size >= minimum:
            entry = out.setdefault(a, {}).setdefault(b, {})
            label = "early" if e else "late"
            entry[label] = round(max(0.0, float(np.mean(values))) / 1e6, 6)
            entry[f"n_{label}"] = int(values.size)
    return out


def handoff_ms(gaps: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Per model, the mean hand-off (ms, >= 0) over the gaps of several timelines."""
    pooled: dict[str, list[np.ndarray]] = {}
    for g in gaps:
        for name, values in g.items():
            pooled.setdefault(name, []).append(values)
    out = {}
    for name, parts in sorted(pooled.items()):
        values = np.concatenate(parts)
        if values.size:
            # The mean, not the median: queueing adds up every gap, and the distribution has
            # a long right tail (e.g. p50 160 µs, p90 250 µs for distilgpt2 on an H200).
            out[name] = round(max(0.0, float(np.mean(values))) / 1e6, 6)
    return out


def timeline_gaps(timeline: pa.Table, transport_ms: dict[str, float] | None = None, *,
                  classes: bool = False) -> dict:
    """:func:`handoff_gaps` of a timeline's ok rows (``transport_ms`` per model, optional);
    ``classes``: :func:`handoff_classes` instead."""
    import pyarrow.compute as pc

    t = timeline.filter(pc.equal(timeline.column("status"), "ok"))
    if t.num_rows == 0:
        return {}

    def col(name: str) -> np.ndarray:
        return np.asarray(t.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)

    worker = np.asarray(t.column("worker").fill_null("").to_pylist())
    model = np.asarray(t.column("model").to_pylist())
    transport = None if transport_ms is None else {k: v * 1e6 for k, v in transport_ms.items()}
    fn = handoff_classes if classes else handoff_gaps
    return fn(worker, model, col("sent_ns"), col("service_start_ns"), col("service_end_ns"),
              transport)


def idle_for_ns(worker: np.ndarray, sent_ns: np.ndarray, start_ns: np.ndarray,
                end_ns: np.ndarray) -> np.ndarray:
    """Per row: ``sent`` − the ``service_end`` of the request before it on the same worker (in
    service-start order); +inf for a worker's first. Positive: the request found the worker
    idle, for that long."""
    worker = np.asarray(worker)
    sent = np.asarray(sent_ns, dtype=np.float64)
    order = np.lexsort((np.asarray(start_ns, dtype=np.float64), worker))
    w = worker[order]
    prev_end = np.full(order.size, -np.inf)
    prev_end[1:] = np.where(w[1:] == w[:-1], np.asarray(end_ns, dtype=np.float64)[order][:-1],
                            -np.inf)
    out = np.empty(order.size)
    out[order] = sent[order] - prev_end
    return out


def found_worker_idle(worker: np.ndarray, sent_ns: np.ndarray, start_ns: np.ndarray,
                      end_ns: np.ndarray) -> np.ndarray:
    """Per row: whether the request found its worker idle — sent after the request before it
    on the same worker (in service-start order) had ended, or the worker's first."""
    return idle_for_ns(worker, sent_ns, start_ns, end_ns) > 0


def idle_transport_ns(worker, model, sent_ns, start_ns, end_ns) -> dict[str, float]:
    """Per model, the transport to the worker: median ``service_start − sent`` over the requests
    that found their worker idle (:func:`found_worker_idle`; a queued request's wait is not
    transport). Models that never found it idle are left out."""
    model = np.asarray(model)
    delay = np.asarray(start_ns, dtype=np.float64) - np.asarray(sent_ns, dtype=np.float64)
    idle = found_worker_idle(worker, sent_ns, start_ns, end_ns)
    return {name: float(np.median(delay[idle & (model == name)]))
            for name in np.unique(model).tolist() if (idle & (model == name)).any()}


def pooled_outbound_ms(samples: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Per model, the median ``done − service_end`` (ms) over every phase in ``samples``: in
    modes with a worker per model, the mixed pass (~135 req/s, the system mostly idle) and the
    co-run phases (each model open loop at half its capacity, both busy). Held-out replays at
    50-80 % of capacity fall between the two; the pool is mostly co-run requests. Measured
    offline on three H200 calls (MPS, distilbert-base, 2026-11-30, profile runs and held-out
    replays saved by gpu_fidelity.sh): replays 104-184 µs, mixed pass alone 178-262 µs,
    pooled 81-113 µs; over the 12 MPS replays of those calls the encoder's p50 error went from
    +3.3…+18.0 % (mixed pass alone) to −3.8…+8.5 % (docs/results/simulator-fidelity-h200.md)."""
    pooled: dict[str, list[np.ndarray]] = {}
    for sample in samples:
        for name, back in sample.items():
            if back.size:
                pooled.setdefault(name, []).append(back)
    return {name: round(float(np.median(np.concatenate(parts))) / 1e6, 6)
            for name, parts in sorted(pooled.items())}


# Fewer requests than this for a model: no spread (its medians alone).
SPREAD_MIN_SAMPLES = 20


def _spread(deviations: np.ndarray) -> list[float] | None:
    from traceforge.simulate.profile import SPREAD_QUANTILES

    if deviations.size < SPREAD_MIN_SAMPLES:
        return None
    return [round(float(v) / 1e6, 6) for v in np.quantile(deviations, SPREAD_QUANTILES)]


def idle_transport_spread(samples: list[dict[str, tuple[np.ndarray, np.ndarray]]],
                          bins: dict[str, list[list[float]]]) -> dict[str, list[float]]:
    """Per model, quantiles (ms, at profile.SPREAD_QUANTILES) of ``transport − the median the
    simulator uses for that request`` (its idle bin's, the nearest bin's beyond them: the
    lookup of ``ModeProfile.idle_inbound_ms``) over the same samples as
    :func:`idle_transport_bins`. A median per bin reproduces the middle of each transport but
    none of its spread, and the p50 of a sum of right-skewed parts is above the sum of their
    medians: H200, MPS, distilbert-base, three calls of 2026-11-30, held-out replays measured
    0.1-0.2 ms of transport spread between p50 and p90."""
    from traceforge.simulate.profile import ModeProfile

    lookup = ModeProfile({}, {}, {}, {}, inbound_by_idle_ms={
        m: [(lo, math.inf if hi is None else hi, med) for lo, hi, med, _n in rows]
        for m, rows in bins.items()})
    out: dict[str, list[float]] = {}
    for name in sorted(bins):
        devs = []
        for sample in samples:
            if name in sample:
                gap, transport = sample[name]
                med = np.array([lookup.idle_inbound_ms(name, g / 1e6) for g in gap]) * 1e6
                devs.append(transport - med)
        spread = _spread(np.concatenate(devs)) if devs else None
        if spread is not None:
            out[name] = spread
    return out


def outbound_spread(samples: list[dict[str, np.ndarray]], medians_ms: dict[str, float]
                    ) -> dict[str, list[float]]:
    """Per model, quantiles (ms) of ``done − service_end − outbound_ms`` over ``samples`` (the
    phases the median came from): the way back's spread around its median."""
    out: dict[str, list[float]] = {}
    for name, med in sorted(medians_ms.items()):
        parts = [s[name] for s in samples if name in s and s[name].size]
        spread = _spread(np.concatenate(parts) - med * 1e6) if parts else None
        if spread is not None:
            out[name] = spread
    return out


# The mixed transport pass (reference-mix): at most this long where the models are slow, and
# never fewer requests per model than this.
MIX_PHASE_MAX_S = 10.0
MIX_PHASE_MIN = 20


def mix_phase_requests(count: int, alone_ns: list[float], utilisation: float) -> int:
    """Requests per model in the mixed transport pass: ``3 x count``, fewer where the merged
    stream (mean gap = mean alone time / utilisation) would run past MIX_PHASE_MAX_S, never
    fewer than MIX_PHASE_MIN."""
    gap_s = float(np.mean(alone_ns)) / utilisation / 1e9
    fit = int(MIX_PHASE_MAX_S / max(gap_s, 1e-9) / max(len(alone_ns), 1))
    return max(MIX_PHASE_MIN, min(count * 3, fit))


IDLE_BINS_MS = (0.0, 0.3, 1.0, 3.0, 10.0, math.inf)
# The profile's sparse phase: per model and mode this many requests, exponential gaps of this
# mean (ms): about 60 % of them find the worker idle for more than 10 ms. ~0.5 s per model.
IDLE_PHASE_REQUESTS = 24
IDLE_PHASE_GAP_MS = 20.0


def idle_transport_samples(worker, model, sent_ns, start_ns, end_ns
                           ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per model, for the requests that found their worker idle (:func:`found_worker_idle`):
    how long the worker had been idle when the request was sent (``sent`` − the previous
    request's ``service_end`` on that worker; inf for its first) and the transport
    ``service_start − sent``, both ns."""
    model = np.asarray(model)
    sent = np.asarray(sent_ns, dtype=np.float64)
    start = np.asarray(start_ns, dtype=np.float64)
    idle_for = idle_for_ns(worker, sent, start, end_ns)
    idle = idle_for > 0  # found_worker_idle
    out = {}
    for name in np.unique(model).tolist():
        k = idle & (model == name)
        if k.any():
            out[name] = (idle_for[k], (start - sent)[k])
    return out


def idle_transport_bins(samples: list[dict[str, tuple[np.ndarray, np.ndarray]]], *,
                        minimum: int = 5) -> dict[str, list[list[float]]]:
    """``{model: [[lo_ms, hi_ms, median_ms, n], ...]}`` over :data:`IDLE_BINS_MS` (``hi`` None
    for the open last bin), from :func:`idle_transport_samples` of several timelines; bins
    with fewer than ``minimum`` requests are left out. Measured on an H200 (distilbert-base
    under MPS, held-out replays, 2026-11-30): 0.17-0.25 ms after < 0.3 ms idle, 0.53-0.62 ms
    after > 10 ms — a single median carries whichever idle gaps its phase happened to have."""
    return _median_bins(samples, IDLE_BINS_MS, minimum, x_scale=1e6)


def _median_bins(samples: list[dict[str, tuple[np.ndarray, np.ndarray]]], edges: tuple,
                 minimum: int, *, x_scale: float) -> dict[str, list[list[float]]]:
    """Per model, pooled over ``samples`` (model -> (x, y ns)): the median of ``y`` (ms) in
    each bin ``[lo, hi)`` of ``x / x_scale`` over consecutive ``edges`` (the last bin open);
    rows ``[lo, hi or None, median_ms, n]``, bins with fewer than ``minimum`` left out."""
    pooled: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for sample in samples:
        for name, pair in sample.items():
            pooled.setdefault(name, []).append(pair)
    out: dict[str, list[list[float]]] = {}
    for name, parts in sorted(pooled.items()):
        x = np.concatenate([p[0] for p in parts]) / x_scale
        y = np.concatenate([p[1] for p in parts]) / 1e6
        rows = []
        for lo, hi in itertools.pairwise(edges):
            k = (x >= lo) & ((x < hi) | math.isinf(hi))  # idle gaps: the first request's is inf
            if int(k.sum()) >= minimum:
                rows.append([lo, None if math.isinf(hi) else hi,
                             round(float(np.median(y[k])), 6), int(k.sum())])
        if rows:
            out[name] = rows
    return out


# The way back by the dispatcher's activity just before it (``outbound_by_activity_ms``): the
# number of dispatcher events (sends and completions received, any model) in the
# ACTIVITY_WINDOW_MS before the request's service end, binned by ACTIVITY_BINS.
ACTIVITY_WINDOW_MS = 10.0
ACTIVITY_BINS = (0.0, 2.0, 5.0, 10.0, 20.0, math.inf)


# Modes whose profile carries ``outbound_by_activity_ms``. Checked offline against the
# held-out replays of four H200 calls of 2026-12-01 (profile phases and replays saved by
# gpu_fidelity.sh; an ad-hoc script, not shipped, rebuilt each call's tables from its saved
# phase runs with back_activity_samples / outbound_activity_bins and scored the replays with
# fidelity.compare_run; the way back's median per replay against the prediction at the
# replay's own activity): MPS encoder 183-216 µs predicted vs 215-293 measured (one pooled median: 156),
# decoder 418 vs 364-395 (285); with it the 10:47 call's MPS cells went from 5 to 8 of 8 within
# 5 % / 10 % (both replays of both mixes). timeslice: the way back is predicted better too (decoder 249-342 vs
# 257-342 measured, pooled 191-255), but its encoder p50, already over-predicted by the
# time-sliced engine, moved further up (mean |error| 5.5 → 8.1 % over six replays): not used
# there until the engine's waits are right. exclusive (one worker: the way back is tied to the
# next request's hand-off) and streams (its open-loop phases run a GIL-saturated process):
# the prediction was as often worse as better.
ACTIVITY_OUTBOUND_MODES = ("mps",)


def dispatcher_activity(sent_ns, done_ns, at_ns, window_ms: float = ACTIVITY_WINDOW_MS
                        ) -> np.ndarray:
    """For each moment in ``at_ns``: how many sends (``sent_ns``) and completions
    (``done_ns``) fall in ``[at − window, at)``. The simulator counts the same way on its own
    timeline (simulator._activity_outbound), so a profile's bins and a simulation's lookups
    mean the same thing."""
    events = np.sort(np.concatenate((np.asarray(sent_ns, np.float64),
                                     np.asarray(done_ns, np.float64))))
    at = np.asarray(at_ns, np.float64)
    return (np.searchsorted(events, at, "left")
            - np.searchsorted(events, at - window_ms * 1e6, "left")).astype(np.int64)


def back_activity_samples(model, sent_ns, end_ns, done_ns
                          ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per model of one open-loop timeline (ok rows): the dispatcher's activity before each
    request's service end (:func:`dispatcher_activity`) and its way back ``done − service_end``
    (ns)."""
    model = np.asarray(model)
    end = np.asarray(end_ns, np.float64)
    back = np.asarray(done_ns, np.float64) - end
    activity = dispatcher_activity(sent_ns, done_ns, end)
    return {name: (activity[model == name], back[model == name])
            for name in np.unique(model).tolist()}


def outbound_activity_bins(samples: list[dict[str, tuple[np.ndarray, np.ndarray]]], *,
                           minimum: int = 8) -> dict[str, list[list[float]]]:
    """``{model: [[lo, hi, median_ms, n], ...]}`` over :data:`ACTIVITY_BINS` (``hi`` None for
    the open last bin) from :func:`back_activity_samples` of several timelines; bins with fewer
    than ``minimum`` requests are left out.

    Why: the way back (worker's reply → the dispatcher's event loop) is longer the quieter the
    dispatcher was before it. H200, MPS, distilbert-base, the 10:47 UTC call of 2026-12-01
    (profile phases and held-out replays saved by gpu_fidelity.sh): medians 321–383 µs with
    fewer than 2 events in the 10 ms before, 197–220 µs with 10–20, in all four held-out
    replays, and 373 / 165–182 µs in the profile's mixed pass / co-runs at the same activity;
    one pooled median (156 µs, mostly co-run requests) against 218–293 µs measured."""
    return _median_bins(samples, ACTIVITY_BINS, minimum, x_scale=1.0)


def outbound_activity_spread(samples: list[dict[str, tuple[np.ndarray, np.ndarray]]],
                             bins: dict[str, list[list[float]]]) -> dict[str, list[float]]:
    """Per model, quantiles (ms) of ``way back − its activity bin's median`` (the nearest bin's
    beyond the measured ones: ModeProfile.activity_outbound_ms) over the samples of
    :func:`outbound_activity_bins`."""
    from traceforge.simulate.profile import ModeProfile

    lookup = ModeProfile({}, {}, {}, {}, outbound_by_activity_ms={
        m: [(lo, math.inf if hi is None else hi, med) for lo, hi, med, _n in rows]
        for m, rows in bins.items()})
    out: dict[str, list[float]] = {}
    for name in sorted(bins):
        devs = [back - lookup.activity_outbound_ms(name, activity) * 1e6
                for sample in samples if name in sample
                for activity, back in (sample[name],)]
        spread = _spread(np.concatenate(devs)) if devs else None
        if spread is not None:
            out[name] = spread
    return out


def idle_inbound_ns(worker: np.ndarray, sent_ns: np.ndarray, start_ns: np.ndarray,
                    end_ns: np.ndarray, rows: np.ndarray, *, minimum: int = 8) -> float:
    """The profile's ``inbound_ms`` for ``rows`` (one model's timed requests of a phase): the
    median transport over those that found their worker idle (:func:`found_worker_idle`). In an
    open-loop phase at 50 % utilisation about half the requests queue behind another, so a
    median over all of them mixes queueing wait into the transport; the simulator adds the
    queueing itself. Falls back to all ``rows`` when fewer than ``minimum`` found it idle."""
    idle = found_worker_idle(worker, sent_ns, start_ns, end_ns)
    rows = np.asarray(rows, bool)
    pick = rows & idle if int((rows & idle).sum()) >= minimum else rows
    return float(np.median(np.asarray(start_ns)[pick] - np.asarray(sent_ns)[pick]))


def demand_starts(reached_ns: np.ndarray, start_ns: np.ndarray, end_ns: np.ndarray,
                  handoff_ns: float = 0.0) -> np.ndarray:
    """When each request of one model *could* have started: it had reached the worker and the
    model's previous request had ended, plus the executor's hand-off ``handoff_ns`` (the worker
    is FIFO; the hand-off is modelled separately, so it must not count as interference).

    A co-run delays some starts beyond that — a thread waiting for the GIL in ``streams`` mode,
    a process waiting for the CPU — and that wait is interference just as much as slower kernels
    are. Counting the worker busy from this moment (never later than the real start) puts such
    waits into the slowdown, so the simulator's processor-sharing model reproduces the latency.
    """
    order = np.argsort(start_ns, kind="stable")
    prev_end = np.empty(order.size)
    prev_end[0] = -np.inf
    prev_end[1:] = end_ns[order][:-1] + handoff_ns
    eff = np.minimum(start_ns[order], np.maximum(reached_ns[order], prev_end))
    out = np.empty_like(eff)
    out[order] = eff
    return out


def interleave(alone_ns: dict[str, float], seconds: float, *, minimum: int = 8,
               maximum: int = 20000) -> list[str]:
    """Row order for a co-run: model m's i-th row at virtual time (i + 1/2) x alone_ns[m], so
    that in a closed loop every model keeps about one request in flight.

    Every model's rows span the same window — ``seconds``, or longer if the slowest model needs
    it for its ``minimum`` rows — so that all of them are busy together until the end (a model
    whose rows ran out early would leave the others running alone).
    """
    window = max(seconds * 1e9, max(minimum * max(a, 1.0) for a in alone_ns.values()))
    keys: list[tuple[float, int, str]] = []
    for k, (m, a) in enumerate(sorted(alone_ns.items())):
        n = int(min(max(math.ceil(window / max(a, 1.0)), minimum), maximum))
        keys += [((i + 0.5) * a, k, m) for i in range(n)]
    keys.sort()
    return [m for _, _, m in keys]


# -- measuring ----------------------------------------------------------------------------------

class _KeepStarted:
    """Wraps a started backend so consecutive replays reuse it (models stay loaded).

    ``replay_async`` starts and stops its backend around every run; this wrapper's start only
    notes the run's clock, and ``submit`` shifts the inner backend's worker-side times (stamped on
    the clock the inner backend was started with) onto that run clock.
    """

    def __init__(self, inner, clock) -> None:
        self.inner = inner
        self.name = inner.name
        self._base = clock
        self._shift = 0

    async def start(self, models, clock) -> None:
        self._shift = self._base.t0_ns - clock.t0_ns

    async def submit(self, request):
        outcome = await self.inner.submit(request)
        shift = self._shift
        if shift:
            for attr in ("service_start_ns", "first_token_ns", "service_end_ns"):
                value = getattr(outcome, attr)
                if value is not None:
                    setattr(outcome, attr, value + shift)
        return outcome

    async def stop(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()


@dataclass
class _Phase:
    """A synthetic trace and what each row is for."""

    models: list[str] = field(default_factory=list)
    batch_size: list[int] = field(default_factory=list)
    seq_len: list[int] = field(default_factory=list)
    new_tokens: list[int] = field(default_factory=list)
    group: list[int] = field(default_factory=list)  # grid point / reference id per row
    timed: list[bool] = field(default_factory=list)
    arrival_ns: list[int] = field(default_factory=list)  # open-loop phases only

    def add(self, model: str, bs: int, seq: int, new: int, group: int, timed: bool,
            arrival_ns: int = 0) -> None:
        self.arrival_ns.append(arrival_ns)
        self.models.append(model)
        self.batch_size.append(bs)
        self.seq_len.append(seq)
        self.new_tokens.append(new)
        self.group.append(group)
        self.timed.append(timed)

    def table(self) -> pa.Table:
        n = len(self.models)
        return conform_trace_table(pa.table({
            "request_id": np.arange(n, dtype=np.int64),
            "arrival_ns": np.asarray(self.arrival_ns, np.int64),
            "model": self.models,
            "batch_size": np.asarray(self.batch_size, np.int32),
            "seq_len": np.asarray(self.seq_len, np.int32),
            "max_new_tokens": np.asarray(self.new_tokens, np.int32),
        }))


def measure_profile(settings: ProfileSettings, *, command: str | None = None,
                    log: Log | None = None,
                    on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Measure a profile on ``settings.device``; returns the profile as a JSON-ready dict.

    ``on_update(profile)`` is called after the grid and after every mode with the profile so far
    (``"status": "partial"``), so a run cut short still leaves the modes it finished.
    """
    settings.validate()
    from traceforge.zoo import get_entry

    entries = {m: get_entry(m, key="--models") for m in settings.models}
    if settings.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise BadInput("CUDA is not available on this machine", key="--device",
                           value=settings.device, allowed="cpu")
    elif settings.device != "cpu":
        raise BadInput("unknown device", key="--device", value=settings.device,
                       allowed="cpu, cuda, cuda:N")
    if "mps" in settings.resolved_modes() and not settings.device.startswith("cuda"):
        raise BadInput("mps needs a CUDA device", key="--modes", value="mps")
    # The loop `traceforge replay` and studies run on (timerfd waits), so that transport and
    # hand-offs are measured as replays will see them. On stock asyncio, waits round up to whole
    # milliseconds; the H200 profiles of 2026-11-30 14:23 and 14:30 UTC (stock loop) measured
    # distilbert-base's exclusive transport at 2.6 and 1.5 ms where the held-out replays of the
    # 14:17 and 14:30 calls measured 0.26-0.30 ms (requests that found the worker idle). Not yet re-measured
    # on this loop (docs/results/simulator-fidelity-h200.md).
    from traceforge.replay.loop import new_event_loop

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(_measure(settings, entries, command=command, log=log or _stderr,
                                   on_update=on_update or (lambda profile: None)))


def _loop_name() -> str:
    from traceforge.replay.loop import describe_loop

    return describe_loop(asyncio.get_running_loop())


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def _measure(settings: ProfileSettings, entries: dict, *, command: str | None,
                   log: Log, on_update: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    from traceforge.backends import resident
    from traceforge.clock import RunClock
    from traceforge.replay import ModelInfo

    started = time.perf_counter()
    models = sorted(settings.models)
    infos = [ModelInfo(name=m, zoo=m) for m in models]
    ref_new = (settings.new_tokens if settings.reference_new_tokens is None
               else settings.reference_new_tokens)
    grids = {m: _grid_axes(settings, entries[m]) for m in models}
    refs = {m: _reference_shape(settings, entries[m], grids[m], ref_new) for m in models}
    tmp = tempfile.TemporaryDirectory(prefix="traceforge-profile-")
    runs_root = Path(settings.keep_runs) if settings.keep_runs else Path(tmp.name)
    runs_root.mkdir(parents=True, exist_ok=True)
    profile: dict[str, Any] = {
        "schema": PROFILE_SCHEMA_ID,
        "status": "partial",
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command,
        "host": platform.node(),
        "event_loop": _loop_name(),
        "device": _device_info(settings.device),
        "versions": _versions(),
        "units": {"*_ms": "milliseconds, mean over timed requests (transport: median)",
                  "service_cv": "standard deviation / mean of alone service times",
                  "slowdown": "co-run progress rate relative to alone (1 = no interference)"},
        "settings": {k: (str(v) if isinstance(v, Path) else v)
                     for k, v in asdict(settings).items()},
        "models": {},
        "modes": {},
    }

    async def _measure_mode(mode: str, *, grid_first: bool) -> None:
        log(f"[{time.perf_counter() - started:7.1f} s] mode {mode}: starting backend")
        backend = resident.from_options({
            "mode": mode, "device": settings.device, "sm_percent": {}, "max_batch": 1,
            "max_wait_ms": 0.0, "zoo": {m: m for m in models}, "telemetry": False,
            "compile": settings.compile, "seq_buckets": settings.seq_buckets})
        clock = RunClock()
        try:
            await backend.start(infos, clock)
            replay = _Replayer(_KeepStarted(backend, clock), runs_root / mode, infos,
                               kept=settings.keep_runs is not None)
            if grid_first:
                log(f"[{time.perf_counter() - started:7.1f} s] {mode}: service grid")
                for m in models:
                    profile["models"][m] = await _measure_grid(
                        replay, m, entries[m], grids[m], refs[m], settings)
                profile["elapsed_s"] = round(time.perf_counter() - started, 1)
                on_update(profile)
            baseline = next(iter(profile["modes"].values()), None)
            mode_entry = await _measure_reference(replay, models, refs, settings, baseline,
                                                  graphs=_compile_of(settings) != "eager",
                                                  mixed=mode == "exclusive", mode=mode)
            if grid_first:
                for m, tail in mode_entry["tail"].items():
                    reanchor_tail(profile["models"][m], tail)
            mode_entry["handoff_ms"] = handoff_ms(replay.alone_gaps)
            mode_entry["handoff_pairs"] = {
                m: int(sum(g[m].size for g in replay.alone_gaps if m in g)) for m in models}
            mode_entry["handoff_pair_ms"] = handoff_pair_ms(replay.alone_classes)
            mode_entry["backend"] = _safe(backend.describe)
            log(f"[{time.perf_counter() - started:7.1f} s] {mode}: alone "
                + ", ".join(f"{m} {v:.3f} ms" for m, v in mode_entry["alone_ms"].items()))
            if mode != "exclusive":
                await _measure_corun(replay, mode, mode_entry, refs, settings, log, started)
                if settings.corun_sizes:
                    await _measure_corun_sizes(replay, mode, mode_entry, refs, grids,
                                               profile["models"], settings, log, started)
            # The way back and its spread around that median, from the open-loop phases where
            # every model is sent: pooled over the mixed pass and the co-runs in modes with a
            # worker per model (pooled_outbound_ms), else (exclusive, or one model) the
            # reference-open pass; without any, the closed-loop reference phase's median stays.
            # In TRANSPORT_FROM_MIX_MODES, the mixed pass alone (the co-runs there measure a
            # GIL-saturated process).
            pooled_from = (("reference-mix",) if mode in TRANSPORT_FROM_MIX_MODES
                           else ("reference-mix", "corun-"))
            mixed = [sample for label, sample in replay.back_samples
                     if label.startswith(pooled_from)]
            back = mixed if mode != "exclusive" and mixed else [
                sample for label, sample in replay.back_samples
                if label.startswith("reference-open")]
            mode_entry["outbound_ms"].update(pooled_outbound_ms(back))
            mode_entry["outbound_spread_ms"] = outbound_spread(back, mode_entry["outbound_ms"])
            if mode in ACTIVITY_OUTBOUND_MODES:
                # the way back by the dispatcher's activity before it, and its spread around
                # those medians (ACTIVITY_OUTBOUND_MODES says why only there)
                bins = outbound_activity_bins(replay.back_activity)
                if bins:
                    mode_entry["outbound_by_activity_ms"] = bins
                    mode_entry["outbound_by_activity_spread_ms"] = outbound_activity_spread(
                        replay.back_activity, bins)
            # Transport by how long the worker had been idle, over the mode's reference phases,
            # and the spread of single transports around those medians.
            mode_entry["inbound_by_idle_ms"] = idle_transport_bins(replay.transport_samples)
            mode_entry["inbound_spread_ms"] = idle_transport_spread(
                replay.transport_samples, mode_entry["inbound_by_idle_ms"])
            if mode == "timeslice" and "reference-mix" in replay.runs:
                t0 = time.perf_counter()
                try:
                    fit = fit_time_slice(profile["models"], mode_entry,
                                         *replay.runs["reference-mix"])
                except Exception as exc:  # the mode's measurements stand without the fit
                    fit = None
                    mode_entry["time_slice_error"] = f"{type(exc).__name__}: {exc}"[:500]
                    log(f"[{time.perf_counter() - started:7.1f} s] timeslice: time slice not "
                        f"fitted ({mode_entry['time_slice_error']}); processor sharing stays")
                if fit is not None:
                    mode_entry["time_slice"] = fit
                    log(f"[{time.perf_counter() - started:7.1f} s] timeslice: time slice "
                        f"{fit['quantum_ms']:g} ms, switch {fit['switch_ms'] * 1e3:.0f} µs "
                        f"(fit to the mixed pass: rms log error {fit['fit_rms']:.3f}, "
                        f"processor sharing {fit['ps_rms']:.3f}; "
                        f"{'applied' if fit['applied'] else 'not applied'}; "
                        f"{time.perf_counter() - t0:.1f} s)")
            profile["modes"][mode] = mode_entry
            profile["elapsed_s"] = round(time.perf_counter() - started, 1)
            on_update(profile)
        finally:
            await backend.stop()

    try:
        for mode_index, mode in enumerate(settings.resolved_modes()):
            try:
                await _measure_mode(mode, grid_first=mode_index == 0)
            except Exception as exc:
                if mode_index == 0:  # no grid, no profile
                    if isinstance(exc, (BadInput, RunFailure)):
                        raise
                    raise RunFailure(f"profile failed in mode {mode}: "
                                     f"{type(exc).__name__}: {exc}") from exc
                # One mode failing (e.g. no MPS on this host) must not lose the others.
                message = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:500]
                profile.setdefault("errors", {})[mode] = message
                log(f"[{time.perf_counter() - started:7.1f} s] {mode}: FAILED, skipped: "
                    f"{message}")
                on_update(profile)
    finally:
        tmp.cleanup()
    profile["elapsed_s"] = round(time.perf_counter() - started, 1)
    profile["status"] = "complete"
    return profile


class ProfileInterrupted(KeyboardInterrupt):
    """SIGINT / SIGTERM during a profile phase: the profile stops (the CLI exits 130); what
    ``on_update`` last wrote -- the modes finished before, ``"status": "partial"`` -- stays."""


class _Replayer:
    """Runs one closed-loop phase through ``replay_async`` and returns its timeline."""

    def __init__(self, backend, root: Path, infos, *, kept: bool = False) -> None:
        self.backend = backend
        self.root = root
        self.kept = kept  # the runs outlive the profile (--keep-runs), else a temp dir
        self.infos = infos
        self.count = 0
        # Hand-off gaps of the alone open-loop phases (grid-open, reference-open) of this mode,
        # per finished model and per class (handoff_classes).
        self.alone_gaps: list[dict[str, np.ndarray]] = []
        self.alone_classes: list[dict] = []
        # (idle gap, transport) of requests that found their worker idle, reference phases
        self.transport_samples: list[dict] = []
        # (phase label, per model ``done - service_end``: result back to the dispatcher) of
        # the mixed phases and co-runs: pooled_outbound_ms, outbound_spread
        self.back_samples: list[tuple[str, dict[str, np.ndarray]]] = []
        # (dispatcher activity, way back) per model of every open-loop phase with a reference
        # model in it (reference-open, reference-mix, co-runs, co-runs by size):
        # outbound_activity_bins
        self.back_activity: list[dict[str, tuple[np.ndarray, np.ndarray]]] = []
        # phase label -> (its trace, its run directory), for fits that re-simulate a phase
        self.runs: dict[str, tuple[Path, Path]] = {}

    async def run(self, phase: _Phase, concurrency: int | None, label: str) -> pa.Table:
        from traceforge.record import read_timeline
        from traceforge.replay import ReplayOptions, replay_async

        self.count += 1
        run_dir = self.root / f"{self.count:02d}-{label}"
        trace_path = self.root / f"{self.count:02d}-{label}.trace.parquet"
        names = sorted(set(phase.models))
        write_trace(phase.table(), trace_path, {
            "spec": {"models": {m: {"zoo": m} for m in names}},
            "source": {"kind": "traceforge profile", "phase": label}})
        trace = read_trace(trace_path)
        options = ReplayOptions(concurrency=concurrency,
                                models=[i for i in self.infos if i.name in names])
        summary = await replay_async(trace, run_dir, self.backend, options)
        if summary.status == "interrupted":
            # The replay's own handlers took the SIGINT / SIGTERM and ended the phase: the
            # profile stops here. (It was taken for a failed mode: "0 requests failed (first:
            # interrupted)", and the profile went on with the next mode.)
            raise ProfileInterrupted(f"profile phase {label} interrupted")
        self.runs[label] = (trace_path, run_dir)
        timeline = read_timeline(run_dir)
        bad = timeline.filter(pa.compute.not_equal(timeline.column("status"), "ok"))
        if summary.status != "complete" or bad.num_rows:
            where = (f"run kept in {run_dir}" if self.kept
                     else "--keep-runs DIR keeps the phase runs for inspection")
            if bad.num_rows:
                what = (f"{bad.num_rows} requests failed "
                        f"(first: {bad.column('error')[0].as_py()})")
            else:
                what = f"the replay {summary.status}: {summary.error or 'no reason recorded'}"
            raise RunFailure(f"profile phase {label}: {what}; {where}")
        ok = timeline.filter(pa.compute.equal(timeline.column("status"), "ok"))
        # Transport by idle time from the reference phases only (serving rates, the sparse
        # pass): the grid's and co-runs' open-loop phases send at ~1,200 req/s, where the
        # dispatcher and the workers never sleep. H200, MPS, distilbert-base, 18:21 UTC call:
        # after a 3-10 ms idle gap, 0.357 ms pooled over every phase (mostly co-runs) against
        # 0.458-0.489 ms in held-out replays at 210-240 req/s.
        if ok.num_rows and label.startswith("reference"):
            self.transport_samples.append(idle_transport_samples(
                np.asarray(ok.column("worker").fill_null("").to_pylist()),
                np.asarray(ok.column("model").to_pylist()),
                *(ok.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
                  for c in ("sent_ns", "service_start_ns", "service_end_ns"))))
        if ok.num_rows and label.startswith(("reference-open", "reference-mix", "corun-")):
            back = (ok.column("done_ns").to_numpy(zero_copy_only=False).astype(np.float64)
                    - ok.column("service_end_ns").to_numpy(zero_copy_only=False)
                    .astype(np.float64))
            model = np.asarray(ok.column("model").to_pylist())
            self.back_samples.append(
                (label, {m: back[model == m] for m in np.unique(model).tolist()}))
        if ok.num_rows and label.startswith(("reference-open", "reference-mix", "corun-",
                                             "cosize-")):
            self.back_activity.append(back_activity_samples(
                np.asarray(ok.column("model").to_pylist()),
                *(ok.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
                  for c in ("sent_ns", "service_end_ns", "done_ns"))))
        if concurrency is None and label.startswith(("grid-open", "reference-open")):
            self.alone_gaps.append(timeline_gaps(timeline))
            if label.startswith("reference-open"):
                # Classes from the reference phase only. The grid's open-loop phases send one
                # model's small requests at ~1,200 req/s (50 % of a 0.4 ms service): the
                # dispatcher then spins between sends nearly all the time and the executor
                # thread waits for the GIL. H200, exclusive, distilbert-base, same call:
                # enc->enc "early" gaps mean 233 µs (p50 68, p90 835) in the grid phase,
                # -21 µs in the mixed reference phase (~140 req/s), 23-35 µs in held-out mixes
                # at 200-270 req/s. The hand-off depends on the send rate; the mixed phase is the
                # one near serving rates.
                self.alone_classes.append(timeline_gaps(timeline, classes=True))
        return timeline


def _grid_axes(settings: ProfileSettings, entry) -> tuple[list[int], list[int], int]:
    if entry.kind == "vision":
        seqs = [s for s in settings.image_sides if s >= getattr(entry, "min_side", 1)]
        new = 0
    else:
        new = settings.new_tokens if entry.kind == "decoder" else 0
        limit = getattr(entry, "max_positions", None) or 10**9
        from traceforge.zoo.buckets import BucketPolicy

        policy = BucketPolicy.for_entry(entry, settings.seq_buckets)
        snapped = set()
        for s in settings.seq_lens:
            try:
                snapped.add(policy.bucket(1, s, new).seq)
            except ValueError:
                continue
        seqs = sorted(x for x in snapped if x + new <= limit)
    if not seqs:
        raise BadInput(f"no grid point fits {entry.name}", key="--seq-lens",
                       value=",".join(map(str, settings.seq_lens)))
    return list(settings.batch_sizes), seqs, new


def _reference_shape(settings: ProfileSettings, entry, grid, ref_new: int) -> tuple[int, int, int]:
    _, seqs, _ = grid
    given = settings.references.get(entry.name)
    if given is not None:
        bs, seq, new = given
        new = (ref_new if new is None else new) if entry.kind == "decoder" else 0
        if given[2] and entry.kind != "decoder":
            raise BadInput(f"{entry.name} is not generative: new tokens must be 0",
                           key=f"--reference {entry.name}", value=given[2])
        return bs, seq, new
    seq = settings.reference_seq
    if entry.kind == "vision" or seq not in range(seqs[0], seqs[-1] + 1):
        seq = seqs[len(seqs) // 2]
    return settings.reference_batch, seq, (ref_new if entry.kind == "decoder" else 0)


async def _measure_grid(replay: _Replayer, model: str, entry, grid, ref, settings
                        ) -> dict[str, Any]:
    batch_sizes, seqs, new = grid
    phase = _Phase()
    points = list(itertools.product(range(len(batch_sizes)), range(len(seqs))))
    # Each point's warm-up requests back to back (the first one gives the cold-start excess),
    # then the timed requests round-robin over the points: every point's samples spread over
    # the whole phase, so a drift of the host's state biases no point against another, and no
    # shape runs twice in a row (as in serving).
    for g, (i, j) in enumerate(points):
        for _ in range(max(settings.warmup, 1)):
            phase.add(model, batch_sizes[i], seqs[j], new, g, False)
    for _ in range(settings.repeats):
        for g, (i, j) in enumerate(points):
            phase.add(model, batch_sizes[i], seqs[j], new, g, True)
    timeline = await replay.run(phase, 1, f"grid-{model}")
    start, end, first = _times(timeline)
    group = np.asarray(phase.group)
    timed = np.asarray(phase.timed)
    generative = entry.kind == "decoder"
    cold_start, cold_end = start, end
    cold_group = group
    if settings.alone_utilisation > 0:
        # Open-loop pass at a realistic utilisation: each point's timed requests again, spaced
        # by Poisson gaps of mean (its closed-loop service) / utilisation; these give the grid.
        est = {g: float(np.mean(end[(group == g) & timed] - start[(group == g) & timed]))
               for g in range(len(points))}
        phase = _open_loop_phase(model, points, batch_sizes, seqs, new, est, settings)
        timeline = await replay.run(phase, None, f"grid-open-{model}")
        start, end, first = _times(timeline)
        group = np.asarray(phase.group)
        timed = np.asarray(phase.timed)
    service = np.zeros((len(batch_sizes), len(seqs)))
    decode = np.zeros_like(service)
    cold = np.zeros_like(service)
    cvs = []
    totals, prefills, decodes = [], [], []
    for g in range(len(points)):
        rows = (group == g) & timed
        total = end[rows] - start[rows]
        totals.append(total)
        cvs.append(float(np.std(total) / np.mean(total)))
        if generative:
            if np.isnan(first[rows]).any():
                raise RunFailure(f"{model}: the backend reported no first_token_ns for a "
                                 "generative request; cannot split prefill from decode")
            prefills.append(first[rows] - start[rows])
            decodes.append((end[rows] - first[rows]) / (new - 1))
    medians, factor = pooled_tail(prefills if generative else totals)
    means = medians * factor
    decode_medians, decode_factor = pooled_tail(decodes) if generative else (None, 1.0)
    decode_means = decode_medians * decode_factor if generative else None
    for g, (i, j) in enumerate(points):
        service[i, j] = means[g] / 1e6
        if generative:
            decode[i, j] = decode_means[g] / 1e6
        # The first request of a shape in a fresh backend pays one-time costs (kernel selection,
        # allocator growth, lazy module loading): its excess over the warm mean.
        first_row = int(np.flatnonzero(cold_group == g)[0])
        cold[i, j] = max(0.0, float(cold_end[first_row] - cold_start[first_row]
                                    - np.mean(totals[g])) / 1e6)
    entry_out: dict[str, Any] = {
        "zoo": model, "kind": entry.kind, "generative": generative,
        "batch_sizes": batch_sizes, "seq_lens": seqs,
        "service_ms": np.round(service, 6).tolist(),
        # The body (per-point medians) and the grid's own pooled tail factor: the reference
        # phase may replace the tail (reanchor_tail).
        "service_median_ms": np.round(medians.reshape(service.shape) / 1e6, 6).tolist(),
        "tail_factor": ({"grid": {"prefill": round(factor, 4),
                                  "decode": round(decode_factor, 4)}, "used": "grid"}
                        if generative else {"grid": round(factor, 4), "used": "grid"}),
        "service_cv": round(float(np.mean(cvs)), 4),
        "cold_extra_ms": np.round(cold, 6).tolist(),
        "reference": {"batch_size": ref[0], "seq_len": ref[1], "max_new_tokens": ref[2]},
        "buckets": _bucket_info(entry, settings),
    }
    if generative:
        entry_out["new_tokens"] = new
        entry_out["decode_ms_per_token"] = np.round(decode, 6).tolist()
        entry_out["decode_median_ms_per_token"] = np.round(
            decode_medians.reshape(service.shape) / 1e6, 6).tolist()
    return entry_out


def pooled_tail(samples: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """Each grid point's median and a tail factor pooled over every point (the mean of sample /
    its point's median); a point's mean service is their product. From a few samples of a
    heavy-tailed distribution the shape decides the body (GPU time grows smoothly with batch
    and length); the tail (a late wake-up, a host hiccup) does not depend on the shape.
    Measured on an H200 (distilbert-base graphs, 20 points × 5 samples, 2026-11-30 10:03 UTC
    profile): plain per-point means ranged 0.40–1.02 ms, non-monotonic in batch and length,
    while the held-out replays of the same buckets measured 0.36–0.83 ms medians and
    mean/median ≈ 1.2 — one slow sample in five moved a point's mean by up to 2.6×."""
    medians = np.array([float(np.median(v)) if len(v) else np.nan for v in samples])
    ratios = [v / m for v, m in zip(samples, medians, strict=True) if len(v) and m > 0]
    factor = float(np.mean(np.concatenate(ratios))) if ratios else 1.0
    return medians, factor


def tail_of(samples: np.ndarray) -> float:
    """One shape's tail factor: mean / median of its finite samples (:func:`pooled_tail` of
    one point; 1.0 when empty)."""
    samples = np.asarray(samples, dtype=np.float64)
    return pooled_tail([samples[np.isfinite(samples)]])[1]


# The reference phase re-anchors the grid's tail when it has at least this many timed samples
# of a model (reanchor_tail).
TAIL_MIN_SAMPLES = 20


def reanchor_tail(entry: dict[str, Any], tail: dict[str, Any]) -> None:
    """Replace the grid's tail (``entry``: a profile model entry from the grid) by the one the
    reference open-loop phase measured (``tail``: from :func:`_measure_reference`): each grid
    point's service becomes its median times the reference phase's mean/median, and the
    service CV the reference phase's.

    Why: the grid's open-loop phases send one model's small requests at ~1,200 req/s, where the
    spinning dispatcher and the executor thread contend for the CPU, and a few samples per
    thousand run several times their point's median; the pooled tail then lifts every point.
    Measured on an H200 (distilbert-base, exclusive, four calls on 2026-11-30): grid tail factor
    1.038, 1.075, 1.031, 1.224 and service CV 0.10, 0.15, 0.08, 0.39, against 0.99-1.02 and
    0.03-0.16 in the reference open-loop phase (~140 req/s) and 1.004-1.032 and 0.04-0.15 in
    the held-out replays of the same calls (per bucket); the 1.224 call simulated the encoder's
    service 18 % too high (0.525 vs 0.443 ms). The body (medians by shape) stays the grid's."""
    generative = entry.get("generative") and "decode_median_ms_per_token" in entry
    if (int(tail.get("n", 0)) < TAIL_MIN_SAMPLES or "service_median_ms" not in entry
            or (generative and "prefill" not in tail)):
        return
    info = entry.setdefault("tail_factor", {})
    if generative:
        entry["service_ms"] = np.round(np.asarray(entry["service_median_ms"])
                                       * tail["prefill"], 6).tolist()
        entry["decode_ms_per_token"] = np.round(
            np.asarray(entry["decode_median_ms_per_token"]) * tail["decode"], 6).tolist()
        info["reference"] = {"prefill": round(tail["prefill"], 4),
                             "decode": round(tail["decode"], 4)}
    else:
        entry["service_ms"] = np.round(np.asarray(entry["service_median_ms"])
                                       * tail["service"], 6).tolist()
        info["reference"] = round(tail["service"], 4)
    entry["service_cv_grid"] = entry.get("service_cv")
    entry["service_cv"] = round(float(tail["cv"]), 4)
    info["used"] = "reference"
    info["reference_samples"] = int(tail["n"])


def _open_loop_phase(model: str, points, batch_sizes, seqs, new: int, est_ns: dict,
                     settings: ProfileSettings) -> _Phase:
    rng = np.random.default_rng(len(points))
    phase = _Phase()
    t = 0.0
    for _ in range(settings.repeats):
        for g, (i, j) in enumerate(points):
            t += rng.exponential(est_ns[g] / settings.alone_utilisation)
            phase.add(model, batch_sizes[i], seqs[j], new, g, True, arrival_ns=int(t))
    return phase


def _bucket_info(entry, settings: ProfileSettings) -> dict[str, Any]:
    from traceforge.zoo.buckets import BucketPolicy

    policy = BucketPolicy.for_entry(entry, settings.seq_buckets)
    return {"seq_buckets": None if policy.seq_buckets is None else list(policy.seq_buckets),
            "compile": _compile_of(settings)}


def _compile_of(settings: ProfileSettings) -> str:
    return settings.compile or ("graphs" if settings.device.startswith("cuda") else "eager")


def alone_scale(ratio: float, ratio_se: float, *, graphs: bool) -> float:
    """The factor the simulator applies to the grid in a mode: the mode's alone time over the
    grid mode's at the reference shape, when the models run graph-captured and the ratio is
    more than 3 standard errors from 1; else 1.

    Why graphs only: with eager models (launch-bound) the alone time moved by 30-50 % between
    phases of the *same* mode on the H200 (process state, not the mode), so one small sample
    must not rescale a mode. Graph-captured models hold still, and the mode effect is real:
    2026-11-30 14:17 UTC profile (docs/results/simulator-fidelity-h200.md), distilgpt2 alone
    under MPS 1.159x its exclusive time (se 0.001), distilbert-base 1.032x (se 0.009) -- the
    held-out MPS replays measured the decoder's service 17-18 % above what the simulator gave
    without this scale. The
    co-run slowdowns are estimated against this mode's alone time, so the grid must be scaled
    to it for the two to compose."""
    if not graphs or not math.isfinite(ratio) or ratio <= 0:
        return 1.0
    if abs(ratio - 1.0) <= 3.0 * max(ratio_se, 0.0):
        return 1.0
    return float(ratio)


# Requests per model in the exclusive mode's mixed open-loop pass (reference-open), in units of
# max(repeats, 40). The pass gives the hand-off classes (handoff_pair_ms), and a queued
# encoder's hand-off decides the capacity of a bursty mix: at 2 x 40 per model it held 12-14
# early encoder -> encoder pairs, and that mean came out 8-195 µs over five H200 calls of
# 2026-12-01 against 49-143 µs in the same calls' held-out replays (1,000-2,000 pairs each;
# 10:47-14:43 UTC). 14:43 call, re-scored offline with the replays' 50 µs instead of the
# profile's 8 µs: bursty exclusive encoder p50 -19.2 / -11.1 % -> -10.0 / -0.8 % (two replays).
# 8 x 40: about four times the pairs, ~5 s more per profile on the H200.
MIXED_OPEN_FACTOR = 8


async def _measure_reference(replay: _Replayer, models: list[str], refs, settings,
                             baseline: dict[str, Any] | None, *,
                             graphs: bool = False, mixed: bool = False,
                             mode: str | None = None) -> dict[str, Any]:
    """Alone times at the reference shapes in this mode; ``baseline`` is the first mode's.

    ``mixed`` (exclusive: one worker serves every model, so they are never busy together):
    the open-loop phase interleaves the models' requests at random instead of one model after
    the other, so the hand-off between *different* models (handoff_classes) is measured too.
    In TRANSPORT_FROM_MIX_MODES ``inbound_ms`` comes from the mixed pass (``reference-mix``)."""
    phase = _Phase()
    for g, m in enumerate(models):
        for _ in range(settings.warmup):
            phase.add(m, *refs[m], g, False)
    for _ in range(settings.repeats):  # round-robin, as in the grid
        for g, m in enumerate(models):
            phase.add(m, *refs[m], g, True)
    timeline = await replay.run(phase, 1, "reference")
    start, end, first = _times(timeline)
    group = np.asarray(phase.group)
    timed = np.asarray(phase.timed)
    if settings.alone_utilisation > 0:
        # Open loop at the same utilisation as the grid (see _measure_grid), one model at a
        # time: alone times, transport and the co-runs' baseline all at a realistic load.
        est = {g: float(np.mean(end[(group == g) & timed] - start[(group == g) & timed]))
               for g in range(len(models))}
        rng = np.random.default_rng(7)
        phase = _Phase()
        t = 0.0
        count = max(settings.repeats, 40)  # 40: enough waiting pairs for handoff_ms
        if mixed and len(models) > 1:
            # One merged Poisson stream at the same utilisation, models in random order;
            # MIXED_OPEN_FACTOR x count requests per model (the hand-off classes come from it).
            picks = rng.permutation(np.repeat(np.arange(len(models)), count * MIXED_OPEN_FACTOR))
            mean_est = float(np.mean([est[int(g)] for g in picks]))
            for g in picks.tolist():
                t += rng.exponential(mean_est / settings.alone_utilisation)
                phase.add(models[g], *refs[models[g]], g, True, arrival_ns=int(t))
        else:
            for g, m in enumerate(models):
                for _ in range(count):
                    t += rng.exponential(est[g] / settings.alone_utilisation)
                    phase.add(m, *refs[m], g, True, arrival_ns=int(t))
                t += 10 * est[g]  # a gap between models: never both busy
        timeline = await replay.run(phase, None, "reference-open")
        start, end, first = _times(timeline)
        group = np.asarray(phase.group)
        timed = np.asarray(phase.timed)
        mix_timeline = timeline if mixed or len(models) == 1 else None
        if mix_timeline is None:
            # A worker per model: the pass above sends one model at a time, so the dispatcher
            # spins between sends nearly all the time (distilbert-base: ~1,250 req/s) and its
            # transports are those of a busy dispatcher. One merged stream of every model at
            # the same total utilisation (the exclusive mode's mixed pass; they overlap here
            # and their service times are not used) gives the transports at serving rates:
            # H200, MPS, distilbert-base, 2026-11-30 18:21 UTC: result to dispatcher median
            # 114 µs in the per-model pass against 150-199 µs in held-out replays at 210-240
            # req/s (measured by how long the dispatcher had been idle, docs/results).
            mix = _Phase()
            t = 0.0
            # 3 x count requests per model, fewer where that would take longer than
            # MIX_PHASE_MAX_S (slow models: a 0.4 s decode at 50 % is one request per 0.8 s),
            # never fewer than MIX_PHASE_MIN per model.
            per_model = mix_phase_requests(count, list(est.values()),
                                           settings.alone_utilisation)
            picks = rng.permutation(np.repeat(np.arange(len(models)), per_model))
            mean_est = float(np.mean([est[int(g)] for g in picks]))
            for g in picks.tolist():
                t += rng.exponential(mean_est / settings.alone_utilisation)
                mix.add(models[g], *refs[models[g]], g, True, arrival_ns=int(t))
            mix_timeline = await replay.run(mix, None, "reference-mix")
        send_lag = _send_lag_ms(mix_timeline)
        # A sparse pass, one model at a time: requests ~IDLE_PHASE_GAP_MS apart, so the
        # transport after long idle gaps is measured too (idle_transport_bins; only that is
        # taken from this phase). The phases above leave a worker idle for milliseconds at most.
        sparse = _Phase()
        t = 0.0
        for g, m in enumerate(models):
            for _ in range(IDLE_PHASE_REQUESTS):
                t += rng.exponential(IDLE_PHASE_GAP_MS * 1e6)
                sparse.add(m, *refs[m], g, True, arrival_ns=int(t))
        await replay.run(sparse, None, "reference-idle")
    else:
        send_lag = None
    sent = timeline.column("sent_ns").to_numpy(zero_copy_only=False).astype(np.float64)
    done = timeline.column("done_ns").to_numpy(zero_copy_only=False).astype(np.float64)
    worker = np.asarray(timeline.column("worker").fill_null("").to_pylist())
    inbound_mix = None
    if mode in TRANSPORT_FROM_MIX_MODES and send_lag is not None:
        inbound_mix = _mix_inbound_ns(mix_timeline, models)
    out: dict[str, Any] = {"alone_ms": {}, "alone_se_ms": {}, "alone_ratio": {},
                           "alone_ratio_se": {}, "alone_scale": {}, "inbound_ms": {},
                           "outbound_ms": {}, "slowdown": {}, "corun": {}, "tail": {}}
    for g, m in enumerate(models):
        rows = (group == g) & timed
        service = (end[rows] - start[rows]) / 1e6
        alone = float(np.mean(service))
        se = float(np.std(service, ddof=1) / np.sqrt(service.size)) if service.size > 1 else 0.0
        out["alone_ms"][m] = round(alone, 6)
        out["alone_se_ms"][m] = round(se, 6)
        ratio, ratio_se = 1.0, 0.0
        if baseline is not None:
            base, base_se = baseline["alone_ms"][m], baseline["alone_se_ms"][m]
            ratio = alone / base
            ratio_se = ratio * math.hypot(se / alone, base_se / base)
        out["alone_ratio_se"][m] = round(ratio_se, 4)
        scale = alone_scale(ratio, ratio_se, graphs=graphs) if baseline is not None else 1.0
        out["alone_ratio"][m] = round(ratio, 4)
        out["alone_scale"][m] = round(scale, 4)
        inbound = (inbound_mix[m] if inbound_mix and m in inbound_mix
                   else idle_inbound_ns(worker, sent, start, end, rows))
        out["inbound_ms"][m] = round(inbound / 1e6, 6)
        # replaced by the open-loop phases' where there are any (_measure, pooled_outbound_ms)
        out["outbound_ms"][m] = round(float(np.median(done[rows] - end[rows])) / 1e6, 6)
        # The tail at the reference shape at this phase's (serving-like) load: reanchor_tail.
        tail = {"n": int(rows.sum()), "service": tail_of(service),
                "cv": float(np.std(service) / np.mean(service)) if service.size else 0.0}
        new = refs[m][2]
        if new > 0 and np.isfinite(first[rows]).all():
            tail["prefill"] = tail_of(first[rows] - start[rows])
            tail["decode"] = (tail_of((end[rows] - first[rows]) / (new - 1)) if new > 1
                              else 1.0)
        out["tail"][m] = {k: round(v, 4) if isinstance(v, float) else v
                          for k, v in tail.items()}
    if send_lag is not None:
        out["send_lag_ms"] = send_lag
    return out


# The time-sliced engine's parameters tried by fit_time_slice (ms): a coarse grid, then the
# half steps around its best point.
TIME_SLICE_QUANTA_MS = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0)
TIME_SLICE_SWITCH_MS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4)


def fit_time_slice(models_data: dict[str, Any], mode_entry: dict[str, Any], trace_path: Path,
                   run_dir: Path) -> dict[str, Any] | None:
    """The time slice and context-switch cost of ``timeslice`` (``modes.timeslice.time_slice``):
    the pair (from TIME_SLICE_QUANTA_MS x TIME_SLICE_SWITCH_MS, then the half steps around the
    best) with which the simulator, given the rest of the mode's profile (``mode_entry``),
    reproduces the mixed pass (``reference-mix``: every model at serving rates, one merged
    stream) best: the smallest root mean square of log(simulated / measured) over each model's
    p50, mean and p90 latency. The same is scored for processor sharing with the co-run
    slowdowns (``ps_rms``); ``applied`` is whether the time-sliced engine fits better (the
    simulator uses it only then). None when the pass has no ok latency to compare.

    Why a fit and not the co-runs: time-sliced contexts do not share the GPU at a rate, they
    take turns (H200, 2026-12-01 10:58 UTC call: the encoder's GPU time in the held-out
    timeslice replays was its alone time, 0.371 / 0.489 ms mean, while the co-run slowdown of
    2.14 made it 0.622 / 0.678 ms in the simulation; the wait moved before the start, 0.92 /
    1.63 ms median from send to start). The co-runs at half each model's capacity saturate a
    time-sliced GPU (the encoder's median send to start per co-run phase: 25-176 ms), so they
    say little about a slice."""
    import copy
    import tempfile

    from traceforge.simulate.fidelity import latencies_by_model
    from traceforge.simulate.profile import PROFILE_SCHEMA_ID, profile_from_dict
    from traceforge.simulate.simulator import simulate

    measured = {m: v["latency_ms"] for m, v in latencies_by_model(run_dir).items()
                if v["latency_ms"].size}
    if not measured:
        return None
    trace = read_trace(trace_path)
    stats = (lambda x: np.percentile(x, 50), np.mean, lambda x: np.percentile(x, 90))
    base = {"schema": PROFILE_SCHEMA_ID, "models": models_data,
            "modes": {"timeslice": copy.deepcopy(mode_entry)}}
    base["modes"]["timeslice"].pop("time_slice", None)

    def rms(time_slice: tuple[float, float] | None) -> float:
        data = copy.copy(base)
        if time_slice is not None:
            data["modes"] = {"timeslice": {**base["modes"]["timeslice"], "time_slice": {
                "quantum_ms": time_slice[0], "switch_ms": time_slice[1]}}}
        with tempfile.TemporaryDirectory(prefix="traceforge-slice-fit-") as tmp:
            simulate(trace, Path(tmp) / "sim", profile=profile_from_dict(data),
                     mode="timeslice", seed=0, cold_start=False)
            sim = latencies_by_model(Path(tmp) / "sim")
        errors = [math.log(max(f(sim[m]["latency_ms"]), 1e-9) / max(f(x), 1e-9))
                  for m, x in measured.items() if m in sim and sim[m]["latency_ms"].size
                  for f in stats]
        return math.sqrt(float(np.mean(np.square(errors)))) if errors else math.inf

    scores = {(q, sw): rms((q, sw)) for q in TIME_SLICE_QUANTA_MS for sw in TIME_SLICE_SWITCH_MS}
    q0, sw0 = min(scores, key=lambda k: (scores[k], k))
    dq, dsw = 0.25, 0.025
    for q in (q0 - dq, q0 + dq):
        for sw in (sw0 - dsw, sw0, sw0 + dsw):
            if q > 0 and sw >= 0 and (q, sw) not in scores:
                scores[(q, sw)] = rms((q, sw))
    for sw in (sw0 - dsw, sw0 + dsw):
        if sw >= 0 and (q0, sw) not in scores:
            scores[(q0, sw)] = rms((q0, sw))
    quantum, switch = min(scores, key=lambda k: (scores[k], k))
    best, shared = scores[(quantum, switch)], rms(None)
    return {"quantum_ms": round(quantum, 4), "switch_ms": round(switch, 4),
            "fit_rms": round(best, 4), "ps_rms": round(shared, 4), "applied": best < shared,
            "phase": "reference-mix", "candidates": len(scores),
            "method": "grid fit of the time-sliced engine to the mixed pass (p50, mean, p90 "
                      "latency per model)"}


def _mix_inbound_ns(timeline: pa.Table, models: list[str]) -> dict[str, float]:
    """Per model, :func:`idle_inbound_ns` over the ok rows of the mixed pass (every row is
    timed there); models with no ok row are left out."""
    import pyarrow.compute as pc

    ok = timeline.filter(pc.equal(timeline.column("status"), "ok"))
    if not ok.num_rows:
        return {}
    cols = [ok.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
            for c in ("sent_ns", "service_start_ns", "service_end_ns")]
    worker = np.asarray(ok.column("worker").fill_null("").to_pylist())
    model = np.asarray(ok.column("model").to_pylist())
    return {m: idle_inbound_ns(worker, *cols, model == m) for m in models
            if (model == m).any()}


def _send_lag_ms(timeline: pa.Table) -> float:
    """The dispatcher's median send lag (``sent - scheduled`` of the ok rows, every model) in
    an open-loop mixed phase at serving rates: the simulator adds it to every request, since a
    replay's latency counts from the scheduled time."""
    import pyarrow.compute as pc

    ok = timeline.filter(pc.equal(timeline.column("status"), "ok"))
    lag = (ok.column("sent_ns").to_numpy(zero_copy_only=False).astype(np.float64)
           - ok.column("scheduled_ns").to_numpy(zero_copy_only=False).astype(np.float64))
    return round(max(0.0, float(np.median(lag))) / 1e6, 6) if lag.size else 0.0


# Modes whose co-run slowdowns count each worker busy from its requests' measured service
# start, not from when they could have started (demand_starts). In these (a process per model)
# the wait before a start is transport, which the simulator models on its own (idle-time bins
# and their spread); demand_starts measures "could have started" with the median transport, so
# every transport above the median became slowdown (below it was cut off at the real start).
# H200, MPS, distilbert-base beside distilgpt2, three calls of 2026-11-30: 1.30-1.50 that way
# against 1.17-1.20 from the service starts, and 1.18-1.21 as the plain ratio of the median
# service of requests fully overlapped by the other model to that of requests not overlapped
# at all, in the co-runs and in every held-out replay alike (every bucket from b1 s32 to
# b8 s256: 1.17-1.24). streams (threads of one process, where a start can wait for the GIL)
# kept demand_starts until it was measured: H200, 2026-12-01 10:58 UTC call, distilbert-base
# beside distilgpt2, reference co-runs 2.05-2.18 that way (its transport under load is long:
# 3.7-12 ms to start) against 1.33-1.38 from the service starts, and the simulated mean
# service of the held-out streams replays 0.741 / 0.787 ms against 0.475 / 0.508 measured
# (0.519 / 0.552 from the service starts; docs/results/simulator-fidelity-h200.md).
SERVICE_START_MODES = ("mps", "timeslice", "streams")

# Modes whose transports (inbound_ms, outbound_ms and its spread) come from the mixed pass at
# serving rates only. In streams every model's executor is a thread of the dispatcher's
# process, so a transport waits for the GIL as long as the others keep it: the per-model
# open-loop pass (~1,250 req/s of one model) and the co-runs (both models at half capacity,
# the encoder queueing 3.7-270 ms) measure a saturated process. Same call: the encoder's
# transport to start 1.454 ms in the per-model pass, 0.212 ms in the mixed pass, 0.194 ms
# (median, send to start) in the steady held-out replay; its way back 0.268 ms pooled with the
# co-runs, 0.083 ms in the mixed pass, 0.086 / 0.164 ms in the replays.
TRANSPORT_FROM_MIX_MODES = ("streams",)


def _poisson_rows(rng: np.random.Generator, models: list[str], alone_ns: dict[str, float],
                  settings: ProfileSettings) -> list[tuple[float, str, int]]:
    """A co-run phase's arrivals: per model (drawn in the given order), a Poisson stream at
    ``corun_utilisation`` of its alone capacity over ``corun_seconds`` (8 to 20,000 requests);
    ``(arrival ns, model, index within the model)``, merged in time order."""
    rows = []
    for m in models:
        rate = settings.corun_utilisation / (alone_ns[m] / 1e9)
        n = int(min(max(rate * settings.corun_seconds, 8), 20000))
        times = np.cumsum(rng.exponential(1e9 / rate, n))
        rows += [(float(t), m, i) for i, t in enumerate(times)]
    rows.sort()
    return rows


def _corun_intervals(mode: str, mode_entry: dict[str, Any], group, phase: _Phase,
                     timeline: pa.Table) -> tuple[dict, dict]:
    """A co-run phase's busy intervals per model (from the service starts in
    SERVICE_START_MODES, else from when each request could have started: demand_starts) and
    which of its requests count (``phase.timed``), for :func:`estimate_slowdowns`."""
    start, end, _ = _times(timeline)
    sent = timeline.column("sent_ns").to_numpy(zero_copy_only=False).astype(np.float64)
    models_col = np.asarray(phase.models)
    timed = np.asarray(phase.timed)
    intervals = {}
    for m in group:
        sel = models_col == m
        if mode in SERVICE_START_MODES:
            intervals[m] = (start[sel], end[sel])
            continue
        gap = mode_entry.get("handoff_ms", {}).get(m, 0.0) * 1e6
        intervals[m] = (demand_starts(sent[sel] + mode_entry["inbound_ms"][m] * 1e6,
                                      start[sel], end[sel], gap), end[sel])
    return intervals, {m: timed[models_col == m] for m in group}


async def _measure_corun(replay: _Replayer, mode: str, mode_entry: dict[str, Any], refs,
                         settings: ProfileSettings, log: Log, started: float) -> None:
    from traceforge.simulate.profile import ModeProfile, Profile

    def known(model: str, busy: list[str]) -> float:
        view = Profile(data={}, models={}, modes={mode: ModeProfile(
            {}, {}, {}, mode_entry["slowdown"])})
        return view.slowdown(mode, model, busy)

    refs_ms = mode_entry["alone_ms"]
    for group in settings.corun_groups():
        alone_ns = {m: refs_ms[m] * 1e6 for m in group}
        key = corun_key(group)
        t0 = time.perf_counter()
        estimates: dict[str, list[float]] = {m: [] for m in group}
        overlaps: dict[str, list[float]] = {m: [] for m in group}
        counts: dict[str, int] = dict.fromkeys(group, 0)
        for rep in range(settings.corun_repeats):
            # Open loop at a realistic utilisation: every model's requests arrive as a Poisson
            # stream at corun_utilisation x its alone capacity, all over the same window, so
            # the models overlap as they do in a replay (not back to back as in a closed loop).
            rng = np.random.default_rng([rep, len(group), *map(len, group)])
            phase = _Phase()
            for t, m, i in _poisson_rows(rng, sorted(group), alone_ns, settings):
                # The first request per model is uncounted (it starts the overlap).
                phase.add(m, *refs[m], 0, i >= 1, arrival_ns=int(t))
            timeline = await replay.run(phase, None, f"corun-{key}-r{rep}")
            intervals, counted = _corun_intervals(mode, mode_entry, group, phase, timeline)
            est = estimate_slowdowns(intervals, alone_ns, known, counted)
            for m, e in est.items():
                if not math.isnan(e["slowdown"]):
                    estimates[m].append(float(e["slowdown"]))
                overlaps[m].append(e["overlap"])
                counts[m] += e["requests"]
        slow = {m: _median_slowdown(estimates[m]) for m in group}
        mode_entry["slowdown"][key] = slow
        mode_entry["corun"][key] = {
            "method": "open loop, Poisson at corun_utilisation of alone capacity",
            "utilisation": settings.corun_utilisation,
            "repeats": {m: [round(v, 4) for v in estimates[m]] for m in group},
            "spread": {m: (round(max(estimates[m]) - min(estimates[m]), 4)
                           if estimates[m] else None) for m in group},
            "overlap": {m: round(float(np.mean(overlaps[m])), 4) for m in group},
            "requests": counts,
            "wall_s": round(time.perf_counter() - t0, 2)}
        log(f"[{time.perf_counter() - started:7.1f} s] {mode}: co-run {key}: slowdown "
            + ", ".join(f"{m} {v:.3f}" for m, v in slow.items()) + " (repeats "
            + "; ".join(f"{m} " + ",".join(f"{v:.2f}" for v in estimates[m]) for m in group)
            + ")")


def size_candidates(pm, grid, level: float) -> list[tuple[int, int, float]]:
    """The grid shapes ``(batch, seq, size)`` whose size over the model's reference shape
    (ModelProfile.size_over_reference: the grid entry's ``reference``, the co-runs' shape) is
    within a factor sqrt(2) of ``level``, closest first (then larger batches first)."""
    batch_sizes, seqs, _ = grid
    b, sq = (a.ravel() for a in np.meshgrid(batch_sizes, seqs, indexing="ij"))
    size = pm.size_over_reference(b, sq)
    if size is None:
        return []
    out = [(int(x), int(y), float(r)) for x, y, r in zip(b, sq, size, strict=True)
           if abs(math.log2(r / level)) <= 0.5 + 1e-9]
    return sorted(out, key=lambda x: (abs(math.log2(x[2] / level)), -x[0], x[1]))


async def _measure_corun_sizes(replay: _Replayer, mode: str, mode_entry: dict[str, Any], refs,
                               grids, models_data: dict[str, Any], settings: ProfileSettings,
                               log: Log, started: float) -> None:
    """Each pair again with one model (the aggressor) at each of ``corun_sizes`` x its
    reference size and the other (the victim) at its reference: open loop at
    ``corun_utilisation`` each, as the reference co-runs, ``corun_size_repeats`` times. The
    victim's slowdown per size goes to ``modes.MODE.slowdown_by_size`` (size 1: the pair's
    reference co-run); the simulator interpolates it by the size of the request running
    beside (Profile.size_excess). The aggressor's own slowdown at that size is kept as
    ``aggressor_slowdown`` (not used by the simulator). The aggressor's requests cycle over
    every grid shape of the size (e.g. 4 x 128 and 2 x 256 for 4x of 1 x 128)."""
    from traceforge.simulate.profile import PROFILE_SCHEMA_ID as schema
    from traceforge.simulate.profile import profile_from_dict

    pms = profile_from_dict({"schema": schema, "models": models_data}).models
    refs_ms = mode_entry["alone_ms"]
    table = mode_entry.setdefault("slowdown_by_size", {})
    for group in settings.corun_groups():
        if len(group) != 2:
            continue
        key = corun_key(group)
        for victim, aggressor in (group, group[::-1]):
            pm = pms[aggressor]
            scale = mode_entry["alone_scale"].get(aggressor, 1.0)
            new = refs[aggressor][2]
            sizes = [1.0]
            slow = [mode_entry["slowdown"][key][victim]]
            reps = [mode_entry["corun"][key]["repeats"][victim]]
            own: list[float | None] = [mode_entry["slowdown"][key][aggressor]]
            shapes = [[pm.reference_label()]]
            for li, level in enumerate(settings.corun_sizes):
                cands = size_candidates(pm, grids[aggressor], level)
                if not cands:
                    log(f"[{time.perf_counter() - started:7.1f} s] {mode}: {aggressor} has no "
                        f"grid shape of {level:g}x its reference; size skipped")
                    continue
                mean_size = round(float(np.mean([c[2] for c in cands])), 6)
                if mean_size in sizes:  # the same shapes as a size already measured
                    continue
                b_c, s_c = np.array([c[0] for c in cands]), np.array([c[1] for c in cands])
                mean_alone = float(np.mean(pm.service_ns(b_c, s_c, np.full(b_c.size, new))
                                           * scale))
                alone_ns = {victim: refs_ms[victim] * 1e6, aggressor: mean_alone}
                est_v: list[float] = []
                est_a: list[float] = []
                for rep in range(settings.corun_size_repeats):
                    rng = np.random.default_rng([rep, 101, li, len(victim), len(aggressor)])
                    phase = _Phase()
                    for t, m, i in _poisson_rows(rng, [victim, aggressor], alone_ns,
                                                 settings):
                        shape = (refs[m] if m == victim else
                                 (*cands[i % len(cands)][:2], new))
                        phase.add(m, *shape, 0, i >= 1, arrival_ns=int(t))
                    timeline = await replay.run(
                        phase, None, f"cosize-{victim}-by-{aggressor}-{level:g}x-r{rep}")
                    intervals, counted = _corun_intervals(mode, mode_entry, group, phase,
                                                          timeline)
                    est = estimate_slowdowns(intervals, alone_ns, lambda m, busy: 1.0, counted)
                    if not math.isnan(est[victim]["slowdown"]):
                        est_v.append(float(est[victim]["slowdown"]))
                    if not math.isnan(est[aggressor]["slowdown"]):
                        est_a.append(float(est[aggressor]["slowdown"]))
                sizes.append(mean_size)
                slow.append(_median_slowdown(est_v))
                reps.append([round(v, 4) for v in est_v])
                own.append(round(float(np.median(est_a)), 4) if est_a else None)
                shapes.append([f"{b}x{sq}" for b, sq, _ in cands])
                log(f"[{time.perf_counter() - started:7.1f} s] {mode}: {victim} beside "
                    f"{aggressor} at {sizes[-1]:g}x ({', '.join(shapes[-1])}): slowdown "
                    f"{slow[-1]:.3f} (repeats " + ",".join(f"{v:.2f}" for v in est_v) + ")")
            if len(sizes) > 1:
                order = np.argsort(sizes, kind="stable").tolist()  # sizes below 1 first

                def by_size(values: list, order: list[int] = order) -> list:
                    return [values[i] for i in order]

                table.setdefault(key, {})[victim] = {
                    "aggressor": aggressor, "size": by_size(sizes), "slowdown": by_size(slow),
                    "repeats": by_size(reps), "aggressor_slowdown": by_size(own),
                    "shapes": by_size(shapes),
                    "method": "open loop, Poisson at corun_utilisation of alone capacity; "
                              "the aggressor at each size, the victim at its reference"}


def _median_slowdown(repeats: list[float]) -> float:
    """The slowdown a co-run's repeats give: their median, clamped (:func:`_clamp`); below
    1.0 only when every repeat is (interference never speeds a model up: one noisy repeat
    must not say it does)."""
    med = float(np.median(repeats)) if repeats else math.nan
    if repeats and med < 1.0 and not all(v < 1.0 for v in repeats):
        med = 1.0
    return round(_clamp(med), 4)


def _clamp(slowdown: float) -> float:
    # A slowdown outside [0.5, 50] means the co-run gave no usable evidence (e.g. no overlap
    # or noise larger than the effect); keep the number finite and say so through "overlap".
    if math.isnan(slowdown):
        return 1.0
    return float(min(max(slowdown, 0.5), 50.0))


def _times(timeline: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    def col(name: str) -> np.ndarray:
        c = timeline.column(name)
        return np.asarray(c.to_numpy(zero_copy_only=False), dtype=np.float64)

    start = col("service_start_ns")
    end = col("service_end_ns")
    if np.isnan(start).any() or np.isnan(end).any():
        raise RunFailure("the backend left service_start_ns/service_end_ns empty; a profile "
                         "needs worker-side times")
    return start, end, col("first_token_ns")


def _device_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"kind": "cuda" if device.startswith("cuda") else "cpu",
                            "device": device}
    if info["kind"] == "cuda":
        import torch

        index = torch.device(device).index or 0
        info.update(name=torch.cuda.get_device_name(index), index=index,
                    cuda=torch.version.cuda,
                    capability=".".join(map(str, torch.cuda.get_device_capability(index))))
        try:
            import pynvml

            pynvml.nvmlInit()
            info["driver"] = pynvml.nvmlSystemGetDriverVersion()
            pynvml.nvmlShutdown()
        except Exception as exc:  # NVML is optional: say why the driver is unknown
            info["driver"] = f"unknown ({type(exc).__name__})"
    else:
        info["name"] = _cpu_name()
        import os

        info["cores"] = os.cpu_count()
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str]:
    from traceforge.record.manifest import package_versions

    return package_versions()


def _safe(fn) -> Any:
    try:
        return fn()
    except Exception as exc:
        return {"describe_error": f"{type(exc).__name__}: {exc}"}
