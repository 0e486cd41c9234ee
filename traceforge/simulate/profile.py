"""GPU profiles: what the simulator knows about a device, read from ``traceforge profile`` output.

A profile is one JSON file (schema ``traceforge.profile/1``, documented in docs/simulator.md):

* per model, the mean service time (ms) of one request over a grid of batch size x seq_len,
  measured alone; for generative models the same grid holds the time to the first token, and a
  second grid the per-token decode time at context ``seq_len + new_tokens/2``;
* per sharing mode, the alone-time scale of each model in that mode (relative to the grid's mode),
  the transport overhead dispatcher -> worker (``inbound_ms``) and back (``outbound_ms``), and
  the co-run slowdown of each model for each measured set of busy models, and the executor's
  hand-off after each request (``handoff_ms``; optional, older profiles lack it).

:class:`Profile` turns that into what the engine needs: vectorised alone service times for trace
rows (bilinear in the grid, linear beyond its top edge, flat below it) and a rate table per busy
set. The measuring code lives in :mod:`traceforge.simulate.measure`; it imports torch only
through the replay and resident packages, and only when called.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from traceforge.errors import BadInput
from traceforge.paths import missing_file_reason

PROFILE_SCHEMA_ID = "traceforge.profile/1"
MODES = ("exclusive", "timeslice", "mps", "streams")


def corun_key(models: list[str] | tuple[str, ...] | frozenset[str]) -> str:
    """The JSON key of a co-run set: sorted model names joined by ``+``."""
    return "+".join(sorted(models))


@dataclass(frozen=True)
class ModelProfile:
    name: str
    zoo: str | None
    kind: str
    generative: bool
    batch_sizes: np.ndarray  # int, increasing
    seq_lens: np.ndarray  # int, increasing
    service_ms: np.ndarray  # [batch, seq]: forward time, or time to first token if generative
    service_cv: float  # pooled coefficient of variation of alone service times
    decode_ms_per_token: np.ndarray | None = None  # [batch, seq]: per-token decode time
    new_tokens: int = 0  # tokens generated per request while measuring decode
    reference: dict[str, int] = field(default_factory=dict)
    cold_extra_ms: np.ndarray | None = None  # [batch, seq]: first-request excess, fresh backend
    # Shape buckets of the measured backend ("buckets.seq_buckets" in the JSON): None = the
    # profile predates buckets (requests are looked up at their own shape).
    seq_buckets: tuple[int, ...] | None = None
    bucketed: bool = False

    def bucket_shapes(self, batch_size, seq_len, new_tokens, *, batch_buckets: bool = False
                      ) -> tuple[np.ndarray, np.ndarray]:
        """The (batch, seq_len) each request runs at: its bucket, as the resident backend
        pads it (zoo/buckets.py); the request's own shape for a profile without buckets."""
        bs = np.asarray(batch_size, np.int64)
        seq = np.asarray(seq_len, np.int64)
        if not self.bucketed:
            return bs, seq
        from traceforge.zoo.buckets import BucketPolicy

        policy = BucketPolicy(kind=self.kind or ("decoder" if self.generative else "encoder"),
                              seq_buckets=self.seq_buckets, batch_buckets=batch_buckets,
                              max_positions=None)
        new = np.asarray(new_tokens, np.int64)
        keys = np.stack([np.broadcast_to(bs, seq.shape), seq, np.broadcast_to(new, seq.shape)])
        keys = keys.reshape(3, -1)
        if keys.size and keys.min() >= 0 and keys.max() < 1 << 21:
            # One int64 per shape: a 1-D unique sorts 1M requests in ~0.1 s, where the
            # column-wise unique (axis=1) took ~1 s (2-core VM, 2026-12-01).
            packed = (keys[0] << 42) | (keys[1] << 21) | keys[2]
            upacked, inverse = np.unique(packed, return_inverse=True)
            uniq = np.stack([upacked >> 42, (upacked >> 21) & ((1 << 21) - 1),
                             upacked & ((1 << 21) - 1)])
        else:
            uniq, inverse = np.unique(keys, axis=1, return_inverse=True)
        out_b = np.empty(uniq.shape[1], np.int64)
        out_s = np.empty(uniq.shape[1], np.int64)
        for k in range(uniq.shape[1]):
            b, s, n = (int(x) for x in uniq[:, k])
            try:
                bucket = policy.bucket(b, s, n)
                out_b[k], out_s[k] = bucket.batch, bucket.seq
            except ValueError:  # beyond the largest bucket: the real backend errors; keep it
                out_b[k], out_s[k] = b, s
        inverse = inverse.reshape(-1)
        return out_b[inverse].reshape(seq.shape), out_s[inverse].reshape(seq.shape)

    def reference_bucket(self) -> tuple[int, int] | None:
        """The reference shape (the co-runs') at its bucket, ``(batch, seq)``; None without
        one."""
        ref = self.reference or {}
        if not ref.get("batch_size") or not ref.get("seq_len"):
            return None
        rb, rs = self.bucket_shapes([ref["batch_size"]], [ref["seq_len"]],
                                    [ref.get("max_new_tokens", 0)])
        return int(rb[0]), int(rs[0])

    def size_over_reference(self, batch: np.ndarray, seq: np.ndarray) -> np.ndarray | None:
        """Requests' size at the shape they run at (``batch``, ``seq``: their bucket) over the
        size of this model's reference shape (the co-runs'), at its bucket: tokens (batch x
        seq), pixels for vision models (batch x side^2). None without a reference shape."""
        ref = self.reference_bucket()
        if ref is None:
            return None
        power = 2 if self.kind == "vision" else 1
        batch = np.asarray(batch, np.float64)
        seq = np.asarray(seq, np.float64)
        return batch * seq**power / float(ref[0] * float(ref[1]) ** power)

    def reference_label(self) -> str | None:
        """The reference shape at its bucket, ``"BxS"``; None without one."""
        ref = self.reference_bucket()
        return None if ref is None else f"{ref[0]}x{ref[1]}"

    def cold_ns(self, batch_size, seq_len) -> np.ndarray:
        """Extra time (float ns) of the first request of a shape after the backend starts."""
        if self.cold_extra_ms is None:
            return np.zeros(np.broadcast(np.asarray(batch_size), np.asarray(seq_len)).shape)
        return _bilinear(self.batch_sizes, self.seq_lens, self.cold_extra_ms,
                         np.asarray(batch_size, np.float64),
                         np.asarray(seq_len, np.float64)) * 1e6

    def service_ns(self, batch_size: np.ndarray, seq_len: np.ndarray,
                   new_tokens: np.ndarray) -> np.ndarray:
        """Alone service time (float ns) of requests with these shapes."""
        bs = np.asarray(batch_size, dtype=np.float64)
        seq = np.asarray(seq_len, dtype=np.float64)
        out = _bilinear(self.batch_sizes, self.seq_lens, self.service_ms, bs, seq)
        if self.generative and self.decode_ms_per_token is not None:
            n = np.asarray(new_tokens, dtype=np.float64)
            # Decode step t attends to seq + t tokens: per-token time is (close to) linear in the
            # context, so n-1 steps cost (n-1) x the time at the mean context seq + n/2. The
            # decode grid's columns were measured at context seq_lens + new_tokens/2.
            ctx_axis = self.seq_lens + self.new_tokens / 2.0
            per_token = _bilinear(self.batch_sizes, ctx_axis, self.decode_ms_per_token,
                                  bs, seq + n / 2.0)
            out = out + np.maximum(n - 1.0, 0.0) * per_token
        return out * 1e6

    def prefill_fraction(self, batch_size, seq_len, new_tokens) -> np.ndarray:
        """Share of a request's alone service time spent before its first token."""
        total = self.service_ns(batch_size, seq_len, new_tokens)
        first = _bilinear(self.batch_sizes, self.seq_lens, self.service_ms,
                          np.asarray(batch_size, np.float64),
                          np.asarray(seq_len, np.float64)) * 1e6
        return np.clip(first / np.maximum(total, 1.0), 0.0, 1.0)


# The quantiles at which a profile keeps the spread of single transports around their medians
# (ModeProfile.inbound_spread_ms / outbound_spread_ms): every 5 %, the extremes as 1 % / 99 %
# so that one outlier in a few hundred requests does not become a simulated floor or ceiling.
SPREAD_QUANTILES = (0.01, *(i / 20 for i in range(1, 20)), 0.99)


@dataclass(frozen=True)
class ModeProfile:
    alone_scale: dict[str, float]
    inbound_ms: dict[str, float]
    outbound_ms: dict[str, float]
    slowdown: dict[str, dict[str, float]]  # corun_key -> model -> slowdown (>= ~1)
    # Executor hand-off (ms) after a request of the model ends, before its worker can start
    # the next one already waiting (``handoff_ms`` in the JSON; absent in profiles made before
    # it was measured: then 0, the old model, unless the caller supplies values).
    handoff_ms: dict[str, float] = field(default_factory=dict)
    # The same by class (``handoff_pair_ms``: finished model -> next model -> ``early`` /
    # ``late`` ms, measure.handoff_classes); used for exclusive mode, where one worker serves
    # every model. Empty in older profiles.
    handoff_pair_ms: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    # Transport to the worker by how long it had been idle (``inbound_by_idle_ms``: model ->
    # [[lo_ms, hi_ms or None, median_ms, n], ...], measure.idle_transport_bins). Empty in older
    # profiles: then ``inbound_ms`` for every request.
    inbound_by_idle_ms: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)
    # The way back by the dispatcher's activity before the request's service end
    # (``outbound_by_activity_ms``: model -> [[lo, hi or None, median_ms, n], ...], activity =
    # sends and completions in the 10 ms before; measure.outbound_activity_bins). Empty in
    # older profiles: then ``outbound_ms`` for every request.
    outbound_by_activity_ms: dict[str, list[tuple[float, float, float]]] = field(
        default_factory=dict)
    # The dispatcher's median send lag (``sent - scheduled``) in the mode's mixed reference
    # phase (``send_lag_ms``); a replay's latency counts from the scheduled time, so the
    # simulator adds it to every request. 0 in older profiles.
    send_lag_ms: float = 0.0
    # How far single transports fall from those medians (``inbound_spread_ms``: model ->
    # quantiles of transport - its idle bin's median, at SPREAD_QUANTILES; ``outbound_spread_ms``:
    # the same for the way back around ``outbound_ms``), so simulated transports vary as
    # measured ones do (measure.idle_transport_spread, measure.outbound_spread). Empty in older profiles: the medians alone.
    inbound_spread_ms: dict[str, tuple[float, ...]] = field(default_factory=dict)
    outbound_spread_ms: dict[str, tuple[float, ...]] = field(default_factory=dict)
    # the way back's spread around its activity bin's median (``outbound_by_activity_spread_ms``,
    # measure.outbound_activity_spread): used with ``outbound_by_activity_ms``, in place of
    # ``outbound_spread_ms`` (which stays the spread around ``outbound_ms``)
    outbound_by_activity_spread_ms: dict[str, tuple[float, ...]] = field(default_factory=dict)
    # A model's co-run slowdown by the size of the other model's request beside it
    # (``slowdown_by_size``: pair key -> victim -> {"aggressor", "size": [...], "slowdown":
    # [...]}; sizes are the aggressor's request size over its reference shape's, increasing;
    # measure._measure_corun_sizes). Parsed: (victim, aggressor) -> (sizes, slowdowns). Empty
    # in older profiles: the pair's one slowdown whatever runs beside.
    slowdown_by_size: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict)
    # ``timeslice`` only: the GPU's time slice and context-switch cost, ms, fitted to the
    # mode's mixed pass (``time_slice``: {"quantum_ms", "switch_ms", ...};
    # measure.fit_time_slice). With it the simulator runs the time-sliced engine
    # (engine.timeslice_workers: one context on the GPU at a time, alone speed, waiting for a
    # slice) instead of processor sharing with co-run slowdowns. None in older profiles.
    time_slice: tuple[float, float] | None = None
    # whether the simulator uses it (``time_slice.applied``: the fit beat processor sharing)
    time_slice_applied: bool = False

    def sliced(self, max_batch: int = 1) -> tuple[float, float] | None:
        """(quantum_ms, switch_ms) when the time-sliced engine runs (a fitted slice that is
        applied, no batching), else None: processor sharing with the co-run slowdowns."""
        return self.time_slice if self.time_slice_applied and max_batch == 1 else None

    def idle_inbound_ms(self, model: str, idle_ms: float) -> float | None:
        """The transport of a request sent to ``model``'s worker idle for ``idle_ms``: the
        median of its bin; beyond the measured bins, the nearest one's. None without a table."""
        rows = self.inbound_by_idle_ms.get(model)
        if not rows:
            return None
        for lo, hi, value in rows:
            if lo <= idle_ms < hi:
                return value
        return rows[0][2] if idle_ms < rows[0][0] else rows[-1][2]

    def activity_outbound_ms(self, model: str, activity) -> np.ndarray | float | None:
        """The way back of ``model``'s requests after ``activity`` dispatcher events (scalar or
        array): the median of its activity bin; beyond the measured bins, the nearest one's.
        None without a table."""
        rows = self.outbound_by_activity_ms.get(model)
        if not rows:
            return None
        a = np.asarray(activity, np.float64)
        out = np.full(a.shape, rows[-1][2])
        out[a < rows[0][0]] = rows[0][2]
        for lo, hi, value in rows:
            out[(a >= lo) & (a < hi)] = value
        return float(out) if out.ndim == 0 else out

    def pair_gap_ms(self, prev: str, nxt: str, early: bool) -> float:
        """The class's hand-off; falls back to the other timing of the pair, then to
        ``handoff_ms[prev]``, then 0."""
        entry = self.handoff_pair_ms.get(prev, {}).get(nxt, {})
        first, second = ("early", "late") if early else ("late", "early")
        for label in (first, second):
            if label in entry:
                return entry[label]
        return self.handoff_ms.get(prev, 0.0)


@dataclass(frozen=True)
class Profile:
    data: dict[str, Any]  # the JSON as loaded
    models: dict[str, ModelProfile]
    modes: dict[str, ModeProfile]
    path: Path | None = None

    @property
    def device(self) -> dict[str, Any]:
        return self.data.get("device", {})

    def mode(self, mode: str, *, source: object = None) -> ModeProfile:
        if mode not in self.modes:
            raise BadInput("mode not measured in this profile", source=source, key="--mode",
                           value=mode, allowed=", ".join(self.modes) or "none")
        return self.modes[mode]

    def slowdown(self, mode: str, model: str, busy: list[str]) -> float:
        """Slowdown of ``model`` while every model in ``busy`` (which includes it) is busy.

        A measured set is used as measured; any other set (e.g. a triple when only pairs and the
        full set of four were measured) adds up the pairwise excess slowdowns.
        """
        if len(busy) <= 1:
            return 1.0
        table = self.modes[mode].slowdown
        exact = table.get(corun_key(busy))
        if exact is not None and model in exact:
            return float(exact[model])
        total = 1.0
        others = list(busy)
        others.remove(model)
        for other in others:
            pair = table.get(corun_key([model, other])) if other != model else None
            if pair is None or model not in pair:
                # Two trace models simulated as one profile entry (--zoo, or two spec models
                # with the same zoo entry): no profile measures a model beside itself, and
                # counting no interference between them was silently wrong.
                what = (f"{model} beside itself (two trace models are simulated as this one "
                        "profile entry)" if other == model else corun_key([model, other]))
                raise BadInput(f"no co-run slowdown measured for {what}",
                               source=self.path, key=f"modes.{mode}.slowdown",
                               allowed=", ".join(table) or "none")
            total += float(pair[model]) - 1.0
        return total

    def size_excess(self, mode: str, model: str, other: str, ratio) -> np.ndarray | None:
        """How much more (or less) ``model`` is slowed while ``other`` runs a request of
        ``ratio`` times its reference size than at the reference size the pair's slowdown was
        measured at: the profile's ``slowdown_by_size`` for the pair, linear in size between
        the measured sizes and flat beyond them, minus its value at size 1. None when the
        profile has no such table for the pair (older profiles: size-blind)."""
        entry = self.modes[mode].slowdown_by_size.get((model, other))
        if entry is None:
            return None
        sizes, slow = entry
        ratio = np.asarray(ratio, np.float64)
        return np.interp(ratio, sizes, slow) - float(np.interp(1.0, sizes, slow))


def shipped_profiles() -> dict[str, Path]:
    """Profiles that ship with traceforge (``traceforge/data/profiles/NAME.json``), by name."""
    folder = Path(__file__).resolve().parents[1] / "data" / "profiles"
    return {p.stem: p for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def load_profile(path: Path | str) -> Profile:
    """Read and validate a profile: a JSON file, or the name of a shipped profile (``h100``).

    Every problem is a one-line BadInput."""
    path = Path(path)
    if not path.exists():
        shipped = shipped_profiles()
        if path.name == str(path) and path.name in shipped:
            path = shipped[path.name]
        else:
            raise BadInput("no such file or shipped profile", source=path,
                           allowed=", ".join(shipped) or "no shipped profiles")
    if not path.is_file():  # a directory, a FIFO...: refused before reading
        raise BadInput(f"{missing_file_reason(path)} (--profile takes a profile JSON file or "
                       f"a shipped profile's name)", source=path)
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"not JSON ({exc})", source=path) from exc
    return profile_from_dict(data, source=path)


# Bounds of a profile's numbers (a hand-edited or corrupted profile is refused naming the key,
# never simulated into garbage: a NaN way back once gave every row done_ns = INT64_MIN, status
# ok): a per-request time in ms at most MAX_PROFILE_MS (~2.8 hours), a slowdown or scale at
# most MAX_PROFILE_FACTOR, a service-time CV at most MAX_PROFILE_CV, a time slice at least
# MIN_TIME_SLICE_MS (1 µs: below it the time-sliced engine's clock hardly moves per slice, and
# at 1e-300 ms it never did).
MAX_PROFILE_MS = 1e7
MAX_PROFILE_FACTOR = 1e4
MAX_PROFILE_CV = 100.0
# A non-zero service-time CV is refused below MIN_PROFILE_CV rather than run as deterministic:
# the simulator draws gamma(1/cv², cv²) noise, and at cv = 1e-300 cv² underflows to 0 (a
# ZeroDivisionError); near the underflow the shape 1/cv² is astronomically large. Refusing
# names the key instead of silently changing the model; measured profiles round their CV to
# 4 decimals (0 or >= 1e-4), so no measured profile is refused, and a CV of 1e-6 is already
# indistinguishable from constant service (a spread of 1 ns in a 1 ms service time).
MIN_PROFILE_CV = 1e-6
MIN_TIME_SLICE_MS = 0.001


def _number(v, *, source: object, key: str, lo: float = 0.0, hi: float = MAX_PROFILE_MS,
            lo_open: bool = False, what: str = "ms") -> float:
    """A finite number in [lo, hi] (``(lo, hi]`` with ``lo_open``); BadInput naming ``key``."""
    try:
        x = math.nan if isinstance(v, bool) else float(v)
    except (TypeError, ValueError, OverflowError):
        x = math.nan
    if not math.isfinite(x) or x < lo or (lo_open and x == lo) or x > hi:
        bound = f"> {lo:g}" if lo_open else f">= {lo:g}"
        raise BadInput(f"must be a finite number {bound} and <= {hi:g} ({what})",
                       source=source, key=key, value=v)
    return x


def _grid(m: dict, name: str, *, source: object, key: str, shape: tuple[int, int] | None,
          lo: float, lo_open: bool) -> np.ndarray | None:
    """A numeric grid (or axis, ``shape`` None) of finite values within the profile's bounds."""
    value = m.get(name)
    if value is None:
        return None
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise BadInput("must be numbers", source=source, key=f"{key}.{name}",
                       value=str(value)[:80]) from None
    want = 1 if shape is None else 2
    if arr.ndim != want or (shape is not None and arr.shape != shape):
        what = "a list" if shape is None else f"a {shape[0]}x{shape[1]} grid"
        raise BadInput(f"must be {what} of numbers", source=source, key=f"{key}.{name}",
                       value=str(value)[:80])
    hi = MAX_PROFILE_MS if shape is not None else float(1 << 21)
    if (not np.all(np.isfinite(arr)) or np.any(arr < lo) or (lo_open and np.any(arr == lo))
            or np.any(arr > hi)):
        bound = f"> {lo:g}" if lo_open else f">= {lo:g}"
        raise BadInput(f"values must be finite, {bound} and <= {hi:g}", source=source,
                       key=f"{key}.{name}", value=str(value)[:80])
    return arr


def profile_from_dict(data: dict[str, Any], *, source: object = None) -> Profile:
    if not isinstance(data, dict) or data.get("schema") != PROFILE_SCHEMA_ID:
        raise BadInput("not a traceforge profile", source=source, key="schema",
                       value=data.get("schema") if isinstance(data, dict) else None,
                       allowed=PROFILE_SCHEMA_ID)
    models: dict[str, ModelProfile] = {}
    raw_models = data.get("models") or {}
    if not isinstance(raw_models, dict):
        raise BadInput("must be a table of models", source=source, key="models",
                       value=str(raw_models)[:80])
    if "device" in data and not isinstance(data["device"], dict):
        # read as a table (its "name" labels the simulated run's device)
        device = data["device"]
        raise BadInput("must be a JSON object (the device the profile was measured on)",
                       source=source, key="device",
                       value=device if isinstance(device, (int, float, type(None)))
                       else str(device)[:80])
    for name, m in raw_models.items():
        key = f"models.{name}"
        if not isinstance(m, dict):
            raise BadInput("must be a table", source=source, key=key, value=str(m)[:80])
        for axis in ("batch_sizes", "seq_lens"):
            if axis not in m:
                raise BadInput("missing", source=source, key=f"{key}.{axis}")
            _grid(m, axis, source=source, key=key, shape=None, lo=0.0, lo_open=True)
        grid_shape = (len(m["batch_sizes"]), len(m["seq_lens"]))
        _grid(m, "decode_ms_per_token", source=source, key=key, shape=grid_shape, lo=0.0,
              lo_open=False)
        reference = m.get("reference")
        if reference is not None and not (
                isinstance(reference, dict) and all(
                    isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 31
                    for v in reference.values())):
            raise BadInput("must be a table of shape integers (batch_size, seq_len, "
                           "max_new_tokens)", source=source, key=f"{key}.reference",
                           value=str(reference)[:80])
        if m.get("buckets") is not None and not isinstance(m["buckets"], dict):
            raise BadInput("must be a table (seq_buckets)", source=source, key=f"{key}.buckets",
                           value=str(m["buckets"])[:80])
        service_cv = _number(m.get("service_cv", 0.0), source=source, key=f"{key}.service_cv",
                             hi=MAX_PROFILE_CV, what="a coefficient of variation")
        if 0.0 < service_cv < MIN_PROFILE_CV:
            raise BadInput(f"must be 0 (deterministic service) or >= {MIN_PROFILE_CV:g} (a "
                           "coefficient of variation)", source=source, key=f"{key}.service_cv",
                           value=m.get("service_cv"))
        new_tokens = m.get("new_tokens", 0)
        if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or not (
                0 <= new_tokens < 1 << 31):
            raise BadInput("must be an integer >= 0", source=source, key=f"{key}.new_tokens",
                           value=new_tokens)
        for text_key in ("zoo", "kind"):
            if m.get(text_key) is not None and not isinstance(m[text_key], str):
                raise BadInput("must be a string", source=source, key=f"{key}.{text_key}",
                               value=m[text_key])
        try:
            bs = np.asarray(m["batch_sizes"], dtype=np.float64)
            seq = np.asarray(m["seq_lens"], dtype=np.float64)
            svc = np.asarray(m["service_ms"], dtype=np.float64)
            dec = m.get("decode_ms_per_token")
            dec = None if dec is None else np.asarray(dec, dtype=np.float64)
            cold = m.get("cold_extra_ms")
            cold = None if cold is None else np.asarray(cold, dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInput(f"malformed model entry ({exc!r})", source=source, key=key) from exc
        shape = (bs.size, seq.size)
        if bs.size == 0 or seq.size == 0 or svc.shape != shape:
            raise BadInput(f"service_ms must be a {shape[0]}x{shape[1]} grid", source=source,
                           key=f"{key}.service_ms")
        if np.any(np.diff(bs) <= 0) or np.any(np.diff(seq) <= 0):
            raise BadInput("grid axes must increase", source=source, key=key)
        if not np.all(np.isfinite(svc)) or np.any(svc <= 0) or np.any(svc > MAX_PROFILE_MS):
            raise BadInput(f"service times must be finite, > 0 and <= {MAX_PROFILE_MS:g} ms",
                           source=source, key=f"{key}.service_ms")
        if dec is not None and dec.shape != shape:
            raise BadInput(f"decode_ms_per_token must be a {shape[0]}x{shape[1]} grid",
                           source=source, key=f"{key}.decode_ms_per_token")
        if cold is not None and (cold.shape != shape or np.any(~np.isfinite(cold))
                                 or np.any(cold < 0) or np.any(cold > MAX_PROFILE_MS)):
            raise BadInput(f"cold_extra_ms must be a {shape[0]}x{shape[1]} grid of values >= 0",
                           source=source, key=f"{key}.cold_extra_ms")
        models[name] = ModelProfile(
            name=name, zoo=m.get("zoo"), kind=str(m.get("kind", "")),
            generative=bool(m.get("generative", dec is not None)),
            batch_sizes=bs, seq_lens=seq, service_ms=svc,
            service_cv=service_cv,
            decode_ms_per_token=dec, new_tokens=new_tokens,
            reference=dict(m.get("reference") or {}), cold_extra_ms=cold,
            seq_buckets=_seq_buckets(m, source, key), bucketed="buckets" in m,
        )
    if not models:
        raise BadInput("no models", source=source, key="models")
    modes: dict[str, ModeProfile] = {}
    raw_modes = data.get("modes") or {}
    if not isinstance(raw_modes, dict):
        raise BadInput("must be a table of modes", source=source, key="modes",
                       value=str(raw_modes)[:80])
    for mode, md in raw_modes.items():
        if mode not in MODES:
            raise BadInput("unknown mode", source=source, key="modes", value=mode,
                           allowed=", ".join(MODES))

        def ms(v, key: str) -> float:  # a time in ms (hand-off, send lag): finite and >= 0
            return _number(v, source=source, key=key)

        def table(value, key: str) -> dict:
            if not isinstance(value, dict):
                raise BadInput("must be a table", source=source, key=key, value=value)
            return value

        table(md, f"modes.{mode}")
        slow = {k: {mm: _number(v, source=source, key=f"modes.{mode}.slowdown.{k}.{mm}",
                                lo=0.0, lo_open=True, hi=MAX_PROFILE_FACTOR,
                                what="a slowdown factor")
                    for mm, v in table(d, f"modes.{mode}.slowdown.{k}").items()}
                for k, d in table(md.get("slowdown") or {}, f"modes.{mode}.slowdown").items()}

        def per_model(field_name: str, mode=mode, md=md, **bounds) -> dict[str, float]:
            return {k: _number(v, source=source, key=f"modes.{mode}.{field_name}.{k}",
                               **bounds)
                    for k, v in table(md.get(field_name) or {},
                                      f"modes.{mode}.{field_name}").items()}

        handoff = {k: ms(v, f"modes.{mode}.handoff_ms.{k}")
                   for k, v in table(md.get("handoff_ms") or {},
                                     f"modes.{mode}.handoff_ms").items()}
        pairs: dict[str, dict[str, dict[str, float]]] = {}
        key = f"modes.{mode}.handoff_pair_ms"
        for a, nexts in table(md.get("handoff_pair_ms") or {}, key).items():
            for b, entry in table(nexts or {}, f"{key}.{a}").items():
                for label in ("early", "late"):
                    if label in table(entry, f"{key}.{a}.{b}"):
                        pairs.setdefault(a, {}).setdefault(b, {})[label] = ms(
                            entry[label], f"{key}.{a}.{b}.{label}")
        binned: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
        for field_name, unit in (("inbound_by_idle_ms", "lo_ms, hi_ms"),
                                 ("outbound_by_activity_ms", "lo, hi")):
            binned[field_name] = {}
            for name, rows in table(md.get(field_name) or {},
                                    f"modes.{mode}.{field_name}").items():
                key = f"modes.{mode}.{field_name}.{name}"
                parsed = []
                try:
                    for row in rows:
                        lo, hi, value = float(row[0]), (math.inf if row[1] is None
                                                        else float(row[1])), float(row[2])
                        if not (0 <= lo < hi and math.isfinite(value)
                                and 0 <= value <= MAX_PROFILE_MS):
                            raise ValueError
                        parsed.append((lo, hi, value))
                except (TypeError, ValueError, IndexError):
                    raise BadInput(f"rows must be [{unit} or null, median_ms >= 0, n] with "
                                   "lo < hi", source=source, key=key, value=rows) from None
                binned[field_name][name] = sorted(parsed)
        spreads: dict[str, dict[str, tuple[float, ...]]] = {}
        for field_name in ("inbound_spread_ms", "outbound_spread_ms",
                           "outbound_by_activity_spread_ms"):
            spreads[field_name] = {}
            for name, qs in table(md.get(field_name) or {},
                                  f"modes.{mode}.{field_name}").items():
                key = f"modes.{mode}.{field_name}.{name}"
                try:
                    values = tuple(math.nan if isinstance(v, bool) else float(v) for v in qs)
                except (TypeError, ValueError):
                    values = ()
                if (len(values) != len(SPREAD_QUANTILES)
                        or not all(math.isfinite(v) and abs(v) <= MAX_PROFILE_MS
                                   for v in values)
                        or any(b < a for a, b in itertools.pairwise(values))):
                    raise BadInput(f"must be {len(SPREAD_QUANTILES)} finite, non-decreasing "
                                   "ms values (quantiles of transport - its median)",
                                   source=source, key=key, value=qs)
                spreads[field_name][name] = values
        by_size = _slowdown_by_size(table(md.get("slowdown_by_size") or {},
                                          f"modes.{mode}.slowdown_by_size"),
                                    f"modes.{mode}.slowdown_by_size", source)
        lag = md.get("send_lag_ms")
        time_slice, applied = None, False
        if md.get("time_slice") is not None:
            key = f"modes.{mode}.time_slice"
            if mode != "timeslice":
                raise BadInput("only the timeslice mode has a time slice", source=source,
                               key=key)
            entry = table(md["time_slice"], key)
            applied = entry.get("applied", True)  # false: fitted, but sharing fit better
            if not isinstance(applied, bool):
                raise BadInput("must be true or false", source=source, key=f"{key}.applied",
                               value=applied)
            quantum = _number(entry.get("quantum_ms"), source=source, key=f"{key}.quantum_ms",
                              lo=MIN_TIME_SLICE_MS)
            switch = ms(entry.get("switch_ms", 0.0), f"{key}.switch_ms")
            if switch >= quantum:
                raise BadInput("the switch cost must be shorter than the slice", source=source,
                               key=f"{key}.switch_ms", value=entry.get("switch_ms"))
            time_slice = (quantum, switch)
        modes[mode] = ModeProfile(
            time_slice=time_slice, time_slice_applied=applied,
            slowdown_by_size=by_size,
            inbound_spread_ms=spreads["inbound_spread_ms"],
            outbound_spread_ms=spreads["outbound_spread_ms"],
            outbound_by_activity_spread_ms=spreads["outbound_by_activity_spread_ms"],
            send_lag_ms=0.0 if lag is None else ms(lag, f"modes.{mode}.send_lag_ms"),
            alone_scale=per_model("alone_scale", lo=0.0, lo_open=True, hi=MAX_PROFILE_FACTOR,
                                  what="a scale factor"),
            inbound_ms=per_model("inbound_ms"),
            outbound_ms=per_model("outbound_ms"),
            slowdown=slow, handoff_ms=handoff, handoff_pair_ms=pairs,
            inbound_by_idle_ms=binned["inbound_by_idle_ms"],
            outbound_by_activity_ms=binned["outbound_by_activity_ms"],
        )
    return Profile(data=data, models=models, modes=modes,
                   path=None if source is None else Path(str(source)))


def _slowdown_by_size(value: dict, key: str, source: object
                      ) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    out: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    for pair, victims in value.items():
        if not isinstance(victims, dict):
            raise BadInput("must be a table of models", source=source, key=f"{key}.{pair}",
                           value=victims)
        for victim, entry in victims.items():
            where = f"{key}.{pair}.{victim}"
            aggressor = entry.get("aggressor") if isinstance(entry, dict) else None
            members = pair.split("+")
            if (not isinstance(aggressor, str) or victim not in members
                    or aggressor not in members or aggressor == victim or len(members) != 2):
                raise BadInput("must name the other model of the pair as 'aggressor'",
                               source=source, key=where, value=entry)
            try:
                sizes = np.asarray([math.nan if isinstance(v, bool) else float(v)
                                    for v in entry["size"]], np.float64)
                slow = np.asarray([math.nan if isinstance(v, bool) else float(v)
                                   for v in entry["slowdown"]], np.float64)
            except (KeyError, TypeError, ValueError, OverflowError):
                sizes = slow = np.zeros(0)
            if (sizes.size == 0 or sizes.shape != slow.shape
                    or not np.all(np.isfinite(sizes)) or not np.all(np.isfinite(slow))
                    or np.any(sizes <= 0) or np.any(np.diff(sizes) <= 0) or np.any(slow <= 0)
                    or np.any(slow > MAX_PROFILE_FACTOR)):
                raise BadInput("'size' (increasing, > 0) and 'slowdown' (> 0) must be lists "
                               "of finite numbers of one length", source=source, key=where,
                               value={k: entry.get(k) for k in ("size", "slowdown")})
            out[(victim, aggressor)] = (sizes, slow)
    return out


def _seq_buckets(m: dict, source: object, key: str) -> tuple[int, ...] | None:
    buckets = (m.get("buckets") or {}).get("seq_buckets")
    if buckets is None:
        return None
    from traceforge.zoo.buckets import parse_buckets

    if not isinstance(buckets, list):
        raise BadInput("must be a list of integers", source=source,
                       key=f"{key}.buckets.seq_buckets", value=buckets)
    return tuple(parse_buckets(list(buckets), key=f"{key}.buckets.seq_buckets", source=source))


def _axis_weights(axis: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left grid index and weight of the right neighbour: flat below the axis, linear above."""
    if axis.size == 1:
        return np.zeros(x.shape, np.intp), np.zeros(x.shape)
    i = np.clip(np.searchsorted(axis, x, side="right") - 1, 0, axis.size - 2)
    w = (x - axis[i]) / (axis[i + 1] - axis[i])
    return i, np.maximum(w, 0.0)  # w > 1 extrapolates the last segment


def _bilinear(ax0: np.ndarray, ax1: np.ndarray, grid: np.ndarray, x0: np.ndarray,
              x1: np.ndarray) -> np.ndarray:
    x0, x1 = np.broadcast_arrays(np.asarray(x0, np.float64), np.asarray(x1, np.float64))
    i, wi = _axis_weights(np.asarray(ax0, np.float64), x0)
    j, wj = _axis_weights(np.asarray(ax1, np.float64), x1)
    i1 = np.minimum(i + 1, grid.shape[0] - 1)
    j1 = np.minimum(j + 1, grid.shape[1] - 1)
    out = ((1 - wi) * (1 - wj) * grid[i, j] + wi * (1 - wj) * grid[i1, j]
           + (1 - wi) * wj * grid[i, j1] + wi * wj * grid[i1, j1])
    # Linear extrapolation of a falling segment could go below zero: keep a floor at the
    # smallest measured time.
    return np.maximum(out, grid.min())
