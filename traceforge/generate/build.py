"""Spec -> trace table: sample each model's stream, shapes, then merge all streams by time.

Seeding: every random stream has its own ``SeedSequence(seed, spawn_key=(crc32(name), part))``,
so a model's arrivals do not change when another model is added, and its shapes do not change
when its arrival process does. Streams are merged with a stable sort on ``arrival_ns``: requests
with equal nanosecond times keep spec order of models, then their own order (deterministic).
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from traceforge import __version__
from traceforge.errors import BadInput
from traceforge.generate.arrivals import DiurnalArrivals, MMPPArrivals, state_path_bytes
from traceforge.generate.sessions import expand_sessions
from traceforge.generate.spec import SHAPE_FIELDS, WorkloadSpec, seed_sequence, stable_model_key
from traceforge.limits import (
    BYTES_PER_REQUEST,
    BYTES_PER_SESSION_TURN,
    MAX_TIME_S,
    TooManyArrivals,
    check_memory,
    check_seconds,
    range_message,
    seconds_to_ns,
)
from traceforge.schema import TRACE_SCHEMA_ID, Trace, sha256_file, trace_table

DEFAULT_SEED = 0
_ARRIVALS, _SHAPE_PARTS = 0, {"batch_size": 1, "seq_len": 2, "max_new_tokens": 3}
_SESSION_PARTS = {"turns": 4, "think": 5}  # sessions: two more streams per model
_MODULATION_TAG = 0x6D6F64  # keeps modulation streams apart from model streams


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed_sequence(seed, *keys)))


def sample_columns(spec: WorkloadSpec, seed: int, horizon_s: float) -> dict[str, np.ndarray]:
    """All arrivals in ``[0, horizon_s)`` as merged numpy columns (model as int codes)."""
    paths = {}
    for name, mod in spec.modulations.items():
        try:
            paths[name] = mod.sample_path(_rng(seed, _MODULATION_TAG, stable_model_key(name)),
                                          horizon_s)
        except TooManyArrivals as exc:
            raise BadInput(f"sampling drew {exc}, more than the available memory holds",
                           source=spec.path, key=f"modulations.{name}.mean_dwell_s",
                           value=list(mod.mean_dwell_s)) from None
    arrivals, shapes = [], {f: [] for f in SHAPE_FIELDS}
    sessions, turns = [], []
    for model in spec.models.values():
        key = stable_model_key(model.name)
        rng = _rng(seed, key, _ARRIVALS)
        provided: dict[str, np.ndarray] = {}  # shapes the arrival process draws itself
        arrival_key = f"models.{model.name}.arrival"
        try:
            if hasattr(model.arrival, "sample_with_shapes"):  # servegen (never modulated)
                times, provided = model.arrival.sample_with_shapes(rng, horizon_s)
            elif model.modulation is None:
                times = model.arrival.sample(rng, horizon_s)
            else:
                clock = spec.modulations[model.modulation].clock(paths[model.modulation],
                                                                 model.multipliers)
                times = clock.inverse(model.arrival.sample(rng,
                                                           float(clock.forward(horizon_s))))
                times = times[: np.searchsorted(times, horizon_s, side="left")]
        except TooManyArrivals as exc:
            raise BadInput(f"sampling drew {exc} in {horizon_s:g} s, more than the available "
                           "memory holds (a huge cv or tiny dwell times make the count explode)",
                           source=spec.path, key=arrival_key,
                           value=model.arrival.to_dict()) from None
        times = model.arrival.thin(rng, times)
        if model.sessions is not None:  # the arrivals start sessions; one row per turn
            parts = {**_SHAPE_PARTS, **_SESSION_PARTS}
            rows = expand_sessions(model.sessions, times,
                                   {p: _rng(seed, key, k) for p, k in parts.items()},
                                   model.seq_len, model.max_new_tokens, model.batch_size,
                                   key=f"models.{model.name}.sessions.turns", source=spec.path)
            by_time = np.argsort(rows["times"], kind="stable")
            # the times past the first turn are starts plus think times: name those
            arrivals.append(seconds_to_ns(rows["times"][by_time],
                                          key=f"models.{model.name}.sessions.think_time_s",
                                          value=model.sessions.think_time_s.to_spec(),
                                          source=spec.path))
            for f in SHAPE_FIELDS:
                shapes[f].append(rows[f][by_time])
            sessions.append(rows["session"][by_time])
            turns.append(rows["turn"][by_time])
            continue
        arrivals.append(seconds_to_ns(times, key=arrival_key, value=model.arrival.to_dict(),
                                      source=spec.path))
        for f in SHAPE_FIELDS:
            shapes[f].append(provided[f] if f in provided else
                             model.shape(f).sample(_rng(seed, key, _SHAPE_PARTS[f]), times.size))
        sessions.append(np.full(times.size, -1, np.int64))
        turns.append(np.full(times.size, -1, np.int64))
    counts = [a.size for a in arrivals]
    codes = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
    arrival_ns = np.concatenate(arrivals)
    # Each stream is sorted, so timsort ("stable") sees k runs and merges them in O(n log k).
    order = np.argsort(arrival_ns, kind="stable")
    out = {"arrival_ns": arrival_ns[order], "model_code": codes[order]}
    for f in SHAPE_FIELDS:
        out[f] = np.concatenate(shapes[f])[order]
    if any(m.sessions is not None for m in spec.models.values()):
        out["session_id"], out["turn"] = _number_sessions(
            out["model_code"], np.concatenate(sessions)[order], np.concatenate(turns)[order])
    return out


def _number_sessions(codes: np.ndarray, local: np.ndarray, turn: np.ndarray):
    """Global session ids 0..S-1 in order of each session's first turn (-1: no session)."""
    sid = np.full(local.size, -1, np.int64)
    rows = np.flatnonzero(local >= 0)
    if rows.size:
        key = codes[rows].astype(np.int64) << 40 | local[rows]
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        rank = np.empty(first.size, np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(first.size)
        sid[rows] = rank[inverse]
    return sid, np.where(sid >= 0, turn, -1)


def generate_trace(spec: WorkloadSpec, *, seed: int | None = None,
                   duration_s: float | None = None) -> Trace:
    """Sample a trace. ``seed`` and ``duration_s`` override the spec's.

    With ``requests = N`` (and no duration override) the horizon is grown until the merged
    streams hold N arrivals and the first N are kept; the trace then spans up to the N-th.
    """
    seed = seed if seed is not None else spec.seed if spec.seed is not None else DEFAULT_SEED
    requests, duration_s, horizon, key, value = _horizon(spec, duration_s)
    names = list(spec.models)
    if requests is None:
        columns = sample_columns(spec, seed, duration_s)
        window_s = float(duration_s)
    else:
        while True:
            columns = sample_columns(spec, seed, horizon)
            if columns["arrival_ns"].size >= requests:
                break
            horizon *= 2.0
            _check_horizon(spec, horizon, requests)
            _check_memory(spec, horizon, key, value)
        columns = {k: v[:requests] for k, v in columns.items()}
        window_s = float(columns["arrival_ns"][-1]) / 1e9
    optional = {}
    if "session_id" in columns:
        sid, no_session = columns["session_id"], columns["session_id"] < 0
        optional = {"session_id": pa.array(sid, pa.int64(), mask=no_session),
                    "turn": pa.array(columns["turn"].astype(np.int32), pa.int32(),
                                     mask=no_session)}
    table = trace_table(columns["arrival_ns"], columns["model_code"], names,
                        columns["batch_size"], columns["seq_len"], columns["max_new_tokens"],
                        **optional)

    spec_dict = spec.to_dict()
    spec_dict["seed"] = seed
    if requests is None:
        spec_dict.pop("requests", None)
        spec_dict["duration_s"] = float(duration_s)
    source = {"kind": "generate", "generator": f"traceforge {__version__}"}
    if spec.path is not None:
        source["spec_file"] = spec.path.name
        source["spec_sha256"] = sha256_file(spec.path)
    meta = {"schema": TRACE_SCHEMA_ID, "spec": spec_dict, "seed": seed, "source": source,
            "duration_s": window_s}
    return Trace(table=table, meta=meta, path=None)


def _horizon(spec: WorkloadSpec, duration_s: float | None):
    """Every check :func:`generate_trace` makes before sampling (time range, memory); returns
    ``(requests, duration_s, horizon, key, value)``: the first horizon to sample and the spec
    key (with its value) that sets the trace's length."""
    override = duration_s is not None  # --duration, not the spec's own key
    if override:
        if not (duration_s > 0 and math.isfinite(duration_s)):
            raise BadInput("must be > 0", key="--duration", value=duration_s)
        check_seconds(duration_s, key="--duration")
    requests = None if override else spec.requests
    duration_s = duration_s if duration_s is not None else spec.duration_s
    if duration_s is None and requests is None:
        raise BadInput("missing: give duration_s or requests in the spec, or --duration",
                       source=spec.path, key="duration_s")
    key = "requests" if requests is not None else "--duration" if override else "duration_s"
    value = requests if requests is not None else duration_s
    if requests is None:
        check_seconds(duration_s, key=key, source=None if override else spec.path)
        horizon = float(duration_s)
    else:
        rate = row_rate(spec)
        longest_dwell = max((max(m.mean_dwell_s) for m in spec.modulations.values()),
                            default=0.0)
        horizon = requests / rate * 1.1 + 10.0 * longest_dwell + 1.0
        _check_horizon(spec, horizon, requests)
    _check_memory(spec, horizon, key, value)
    return requests, duration_s, horizon, key, value


def preflight(spec: WorkloadSpec, *, duration_s: float | None = None) -> float:
    """Check ``spec`` as :func:`generate_trace` would, without sampling (a study checks every
    mix at its highest load before running a cell); returns the expected number of rows."""
    requests, duration_s, _, _, _ = _horizon(spec, duration_s)
    return float(requests) if requests is not None else row_rate(spec) * duration_s


def _check_horizon(spec: WorkloadSpec, horizon: float, requests: int) -> None:
    if not horizon < MAX_TIME_S:
        raise BadInput(f"at the long-run rate {spec.long_run_rate():.3g}/s this "
                       + range_message(horizon), source=spec.path, key="requests",
                       value=requests)


_TURNS_PROBE = 4096  # draws of a turns distribution to estimate its mean and a likely maximum


def session_turns(model) -> tuple[float, float]:
    """(mean, likely largest) turns per session of ``model`` ((1, 1) without sessions), from a
    fixed-seed sample of its turns distribution: one rule for every distribution kind."""
    if model.sessions is None:
        return 1.0, 1.0
    draws = model.sessions.turns.sample(np.random.default_rng(0), _TURNS_PROBE)
    draws = np.asarray(draws, dtype=np.float64)
    return float(draws.mean()), float(draws.max())


def row_rate(spec: WorkloadSpec) -> float:
    """Trace rows per second over a long horizon: arrivals, times turns per session."""
    return sum(m.long_run_rate(spec.modulations) * session_turns(m)[0]
               for m in spec.models.values())


def sampling_bytes(spec: WorkloadSpec, horizon: float) -> dict[tuple[str, object], float]:
    """Peak memory of sampling ``horizon`` seconds, per spec key that drives it:
    BYTES_PER_REQUEST per expected request (the thinned diurnal counts its candidates at the
    peak rate) under ``None``, plus every Markov state path (MMPP/on-off processes and shared
    modulations) under its ``mean_dwell_s`` key, whose segments cost memory too. A model with
    sessions has one row per turn, each costing BYTES_PER_SESSION_TURN (at least one session's
    worth); when its turns outnumber its sessions the turns key is the one named."""
    parts: dict[tuple[str, object], float] = {}
    requests = 0.0
    for model in spec.models.values():
        rate = model.long_run_rate(spec.modulations)
        if isinstance(model.arrival, DiurnalArrivals):
            rate *= model.arrival.peak_rate / model.arrival.rate
        starts = rate * horizon
        if model.sessions is None:
            requests += starts * BYTES_PER_REQUEST
        else:
            mean_turns, most_turns = session_turns(model)
            nbytes = max(starts * mean_turns, most_turns) * BYTES_PER_SESSION_TURN
            if mean_turns > starts:
                parts[(f"models.{model.name}.sessions.turns",
                       _plain(model.sessions.turns.to_spec()))] = nbytes
            else:
                requests += nbytes
        if isinstance(model.arrival, MMPPArrivals):
            dwell = model.arrival.mean_dwell_s
            key = "mean_on_s" if model.arrival.process == "onoff" else "mean_dwell_s"
            parts[(f"models.{model.name}.arrival.{key}", dwell[0] if key == "mean_on_s"
                   else tuple(dwell))] = state_path_bytes(dwell, horizon)
    for name, mod in spec.modulations.items():
        parts[(f"modulations.{name}.mean_dwell_s", tuple(mod.mean_dwell_s))] = \
            state_path_bytes(mod.mean_dwell_s, horizon)
    parts[(None, None)] = requests
    return parts


def _plain(value):
    """A spec value as a hashable key part (dict -> tuple of items, list -> tuple)."""
    if isinstance(value, dict):
        return tuple((k, _plain(v)) for k, v in value.items())
    return tuple(_plain(v) for v in value) if isinstance(value, list) else value


def _check_memory(spec: WorkloadSpec, horizon: float, key: str, value) -> None:
    """Refuse before sampling when the estimate exceeds the memory available, naming the key
    that contributes most (the duration or request count, or a tiny dwell time)."""
    parts = sampling_bytes(spec, horizon)
    (big_key, big_value), _ = max(parts.items(), key=lambda kv: kv[1])
    if big_key is None:
        big_key, big_value = key, value
    elif isinstance(big_value, tuple):
        big_value = (dict(big_value) if big_value and isinstance(big_value[0], tuple)
                     else list(big_value))
    expected = row_rate(spec) * horizon
    why = ("" if big_key == key else ", in long sessions" if big_key.endswith(".turns")
           else ", plus its state changes")
    # A CLI flag (--duration) is not a key of the spec file: no file named for it.
    check_memory(sum(parts.values()), key=big_key, value=big_value,
                 source=None if big_key.startswith("--") else spec.path,
                 what=f"sampling {horizon:.3g} s (about {expected:.3g} requests{why})")
