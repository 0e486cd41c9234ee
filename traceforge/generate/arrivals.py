"""Arrival processes: vectorised samplers of arrival times (float64 seconds, sorted).

Each process draws from its own ``numpy.random.Generator`` and returns every arrival in
``[0, horizon)``. Two mechanisms cover all of them:

- **renewal**: i.i.d. gaps drawn in blocks and ``cumsum``-ed (constant, Poisson, Gamma, Weibull);
  the first arrival comes one gap after 0 (an ordinary renewal process), except ``constant``,
  whose arrivals are exactly ``k / rate`` for k = 0, 1, ...
- **time change**: a unit-rate process run on a clock that ticks ``r(t)`` times as fast as real
  time, where ``r`` is piecewise constant (:class:`PiecewiseClock`). A unit Poisson process under
  the clock of a Markov state path with rates ``λᵢ`` is exactly an MMPP; the same clock with
  multipliers ``mᵢ`` is the *shared modulation* that makes bursts correlated across models.

``diurnal`` is a homogeneous Poisson process at the peak rate, thinned in real time with
probability ``λ(t) / λmax`` (Lewis & Shedler).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from traceforge.limits import MAX_TIME_S, TooManyArrivals, max_elements

if TYPE_CHECKING:
    from traceforge.generate.spec import SpecReader

# process -> (required parameters, optional parameters)
PROCESS_PARAMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "constant": (("rate",), ()),
    "poisson": (("rate",), ()),
    "gamma": (("rate", "cv"), ()),
    "weibull": (("rate", "shape"), ()),
    "mmpp": (("rates", "mean_dwell_s"), ()),
    "onoff": (("rate", "mean_on_s", "mean_off_s"), ("off_rate",)),
    "diurnal": (("rate", "amplitude", "period_s"), ("phase_s",)),
    "servegen": (("pool",), ("clients", "window_s", "rate_scale", "start_s", "mode")),
}


# Below this Weibull shape the gap CV exceeds 1e14 and Γ(1 + 2/shape) leaves float64 (at about
# 0.012); use mmpp or onoff for bursts that extreme.
WEIBULL_MIN_SHAPE = 0.02
# Above this Gamma CV (shape 1e-6) nearly every gap is below 1 ns and a window's count is a few
# giant bursts; far above it numpy's sampler returns only zeros. cv → 0 is handled exactly.
GAMMA_MAX_CV = 1000.0
# Every rate is at most one request per nanosecond (the trace's resolution), and every time
# parameter (dwell, period) between 1 ns and the int64-ns range: outside these, float64
# products of rates and times overflow, and the trace could not hold the result anyway.
MAX_RATE = 1e9
MIN_TIME_S = 1e-9


def renewal_times(rng: np.random.Generator, draw_gaps, mean_gap: float, cv: float,
                  horizon: float) -> np.ndarray:
    """Arrival times of a renewal process with gap sampler ``draw_gaps(n)`` in ``[0, horizon)``.

    The first block is sized to cover the horizon with overwhelming probability (mean + 6 sd of
    the count, CLT), so the loop almost never runs twice; it is deterministic either way. A huge
    CV makes that bound useless (and most gaps round to 0 ns), so the first block is capped at
    twice the expected count and later blocks grow geometrically; more draws than the memory
    budget holds raise :class:`TooManyArrivals` instead of asking numpy for the impossible.
    """
    if horizon <= 0:
        return np.empty(0)
    limit = max_elements()
    expected = horizon / mean_gap
    block = int(min(expected + 6.0 * max(cv, 1.0) * math.sqrt(expected),
                    2.0 * expected + 1e6, limit) + 16)
    chunks = []
    total = 0.0
    drawn = 0
    while True:
        times = np.cumsum(draw_gaps(block))
        times += total
        chunks.append(times)
        drawn += block
        total = float(times[-1])
        if total >= horizon:
            break
        if drawn > limit:
            raise TooManyArrivals(limit)
        block = max(int(0.25 * expected) + 1024, drawn if len(chunks) > 1 else 0)
    times = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    return times[: np.searchsorted(times, horizon, side="left")]


# Bytes per segment of a Markov state path while it is sampled and used as a clock: about a dozen
# 8-byte arrays of one entry per segment (steps, states, dwell, their cumsums and concatenations,
# bounds, rates[states], the clock's cumulative sums), times 1.5 for the first block's margin.
# Estimated from the arrays sample_state_path and PiecewiseClock allocate, not measured.
STATE_SEGMENT_BYTES = 144


def state_path_bytes(mean_dwell_s, horizon: float) -> float:
    """Memory a state path over ``horizon`` needs (segments ≈ horizon / mean dwell)."""
    return horizon / float(np.mean(mean_dwell_s)) * STATE_SEGMENT_BYTES


@dataclass(frozen=True)
class PiecewiseClock:
    """Operational time ``Λ(t) = ∫₀ᵗ r(s) ds`` for a piecewise-constant ``r``.

    ``bounds`` are segment edges (``bounds[0] = 0``, last edge ≥ the horizon) and ``rates`` the
    rate of each segment (``len(bounds) - 1`` of them, ≥ 0).
    """

    bounds: np.ndarray
    rates: np.ndarray

    @property
    def cumulative(self) -> np.ndarray:
        return np.concatenate(([0.0], np.cumsum(np.diff(self.bounds) * self.rates)))

    def forward(self, t: np.ndarray | float) -> np.ndarray:
        """Real time -> operational time."""
        t = np.asarray(t, dtype=np.float64)
        seg = np.clip(np.searchsorted(self.bounds, t, side="right") - 1, 0, len(self.rates) - 1)
        return self.cumulative[seg] + self.rates[seg] * (t - self.bounds[seg])

    def inverse(self, u: np.ndarray) -> np.ndarray:
        """Operational time -> real time (``u`` sorted). ``side='right'`` skips zero-rate
        segments, whose cumulative value repeats, so the division is never by zero."""
        cum = self.cumulative
        seg = np.clip(np.searchsorted(cum, u, side="right") - 1, 0, len(self.rates) - 1)
        return self.bounds[seg] + (u - cum[seg]) / self.rates[seg]


def sample_state_path(rng: np.random.Generator, mean_dwell_s: np.ndarray,
                      horizon: float) -> tuple[np.ndarray, np.ndarray]:
    """A continuous-time Markov state path on ``[0, horizon]``.

    The first state is drawn from the stationary law (time share ``dᵢ / Σd``; dwell times are
    memoryless, so the path is stationary from t = 0); each dwell is exponential with mean
    ``dᵢ``; each jump goes to one of the other states uniformly at random. Returns segment
    edges (``len = m + 1``, last edge ≥ horizon) and the state of each of the ``m`` segments.
    """
    k = len(mean_dwell_s)
    state = int(rng.choice(k, p=mean_dwell_s / mean_dwell_s.sum()))
    limit = max_elements(STATE_SEGMENT_BYTES)
    block = int(min(horizon / float(mean_dwell_s.mean()) * 1.5, limit)) + 16
    states_chunks, dwell_chunks = [], []
    total = 0.0
    drawn = 0
    while True:
        if drawn > limit:
            raise TooManyArrivals(limit, "state changes")
        drawn += block
        # state after each jump: previous + uniform{1..k-1} (mod k) never repeats a state
        steps = rng.integers(1, k, size=block) if k > 2 else np.ones(block, dtype=np.int64)
        states = (state + np.concatenate(([0], np.cumsum(steps[:-1])))) % k
        dwell = rng.standard_exponential(block) * mean_dwell_s[states]
        states_chunks.append(states)
        dwell_chunks.append(dwell)
        total += float(dwell.sum())
        if total >= horizon:
            break
        state = int((states[-1] + steps[-1]) % k)
    states = np.concatenate(states_chunks)
    ends = np.cumsum(np.concatenate(dwell_chunks))
    m = int(np.searchsorted(ends, horizon, side="left")) + 1  # segments needed to cover
    bounds = np.concatenate(([0.0], ends[:m]))
    return bounds, states[:m]


@dataclass(frozen=True)
class Modulation:
    """A shared Markov state process whose state multiplies the rate of every model using it."""

    name: str
    mean_dwell_s: tuple[float, ...]
    multipliers: tuple[float, ...]

    def mean_multiplier(self, multipliers: tuple[float, ...] | None = None) -> float:
        m = np.asarray(multipliers or self.multipliers)
        d = np.asarray(self.mean_dwell_s)
        return float((d * m).sum() / d.sum())

    def sample_path(self, rng: np.random.Generator, horizon: float):
        return sample_state_path(rng, np.asarray(self.mean_dwell_s), horizon)

    def clock(self, path, multipliers: tuple[float, ...] | None = None) -> PiecewiseClock:
        bounds, states = path
        m = np.asarray(multipliers or self.multipliers, dtype=np.float64)
        return PiecewiseClock(bounds, m[states])

    def to_dict(self) -> dict[str, Any]:
        return {"mean_dwell_s": list(self.mean_dwell_s), "multipliers": list(self.multipliers)}


class ArrivalProcess:
    """Base: ``sample`` gives times on the process's own clock; ``thin`` (diurnal only) then
    acts in real time, after any shared modulation has mapped the times."""

    process: ClassVar[str]

    @property
    def mean_rate(self) -> float:
        raise NotImplementedError

    def sample(self, rng: np.random.Generator, horizon: float) -> np.ndarray:
        raise NotImplementedError

    def thin(self, rng: np.random.Generator, times: np.ndarray) -> np.ndarray:
        return times

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"process": self.process}
        out.update({k: (list(v) if isinstance(v, tuple) else v)
                    for k, v in self.__dict__.items()})
        return out


@dataclass(frozen=True)
class ConstantArrivals(ArrivalProcess):
    rate: float
    process: ClassVar[str] = "constant"

    @property
    def mean_rate(self) -> float:
        return self.rate

    def sample(self, rng, horizon):
        n = max(0, math.ceil(horizon * self.rate))
        times = np.arange(n, dtype=np.float64) / self.rate
        return times[: np.searchsorted(times, horizon, side="left")]


@dataclass(frozen=True)
class PoissonArrivals(ArrivalProcess):
    rate: float
    process: ClassVar[str] = "poisson"

    @property
    def mean_rate(self) -> float:
        return self.rate

    def sample(self, rng, horizon):
        scale = 1.0 / self.rate
        return renewal_times(rng, lambda n: rng.standard_exponential(n) * scale, scale, 1.0,
                             horizon)


@dataclass(frozen=True)
class GammaArrivals(ArrivalProcess):
    """Gamma renewal: gaps ~ Gamma(shape k = 1/cv², scale θ = cv²/rate); mean 1/rate, CV cv."""

    rate: float
    cv: float
    process: ClassVar[str] = "gamma"

    @property
    def mean_rate(self) -> float:
        return self.rate

    @property
    def shape(self) -> float:
        # cv → 0 is the exact limit of constant gaps: cv² underflows to 0, shape is infinite
        v = self.cv**2
        return 1.0 / v if v > 0 else math.inf

    @property
    def scale(self) -> float:
        return self.cv**2 / self.rate

    def sample(self, rng, horizon):
        k, theta = self.shape, self.scale
        if not math.isfinite(k):  # gaps of exactly 1/rate, the first one gap after 0
            times = np.arange(1, max(1, math.ceil(horizon * self.rate)) + 1) / self.rate
            return times[: np.searchsorted(times, horizon, side="left")]
        return renewal_times(rng, lambda n: rng.gamma(k, theta, n), 1.0 / self.rate, self.cv,
                             horizon)


@dataclass(frozen=True)
class WeibullArrivals(ArrivalProcess):
    """Weibull renewal: gaps = λ·W(k) with scale λ = 1 / (rate·Γ(1 + 1/k)) so the mean is 1/rate."""

    rate: float
    shape: float
    process: ClassVar[str] = "weibull"

    @property
    def mean_rate(self) -> float:
        return self.rate

    @property
    def scale(self) -> float:
        return 1.0 / (self.rate * math.gamma(1.0 + 1.0 / self.shape))

    @property
    def cv(self) -> float:
        # in log space: Γ(1 + 2/k) overflows for k below ~0.012 (the spec's minimum is
        # WEIBULL_MIN_SHAPE); max(0, ·) because rounding makes the k → ∞ limit slightly negative
        ratio = math.exp(min(math.lgamma(1.0 + 2.0 / self.shape)
                             - 2.0 * math.lgamma(1.0 + 1.0 / self.shape), 700.0))
        return math.sqrt(max(0.0, ratio - 1.0))

    def sample(self, rng, horizon):
        k, scale = self.shape, self.scale
        return renewal_times(rng, lambda n: rng.weibull(k, n) * scale, 1.0 / self.rate,
                             self.cv, horizon)


@dataclass(frozen=True)
class MMPPArrivals(ArrivalProcess):
    """Markov-modulated Poisson: state i lasts Exp(mean dᵢ), arrivals at rate λᵢ while in it.
    Long-run rate Σ dᵢλᵢ / Σ dᵢ."""

    rates: tuple[float, ...]
    mean_dwell_s: tuple[float, ...]
    process: ClassVar[str] = "mmpp"

    @property
    def mean_rate(self) -> float:
        d, lam = np.asarray(self.mean_dwell_s), np.asarray(self.rates)
        return float((d * lam).sum() / d.sum())

    def sample(self, rng, horizon):
        rates = np.asarray(self.rates, dtype=np.float64)
        dwell = np.asarray(self.mean_dwell_s, dtype=np.float64)
        bounds, states = sample_state_path(rng, dwell, horizon)
        clock = PiecewiseClock(bounds, rates[states])
        unit = renewal_times(rng, rng.standard_exponential, 1.0, 1.0,
                             float(clock.forward(horizon)))
        return clock.inverse(unit)


@dataclass(frozen=True)
class OnOffArrivals(MMPPArrivals):
    """Two-state MMPP shorthand: Poisson at ``rate`` while on, ``off_rate`` (default 0) while off."""

    rates: tuple[float, ...] = ()
    mean_dwell_s: tuple[float, ...] = ()
    rate: float = 1.0
    mean_on_s: float = 1.0
    mean_off_s: float = 1.0
    off_rate: float = 0.0
    process: ClassVar[str] = "onoff"

    @classmethod
    def build(cls, rate, mean_on_s, mean_off_s, off_rate=0.0) -> OnOffArrivals:
        return cls(rates=(rate, off_rate), mean_dwell_s=(mean_on_s, mean_off_s), rate=rate,
                   mean_on_s=mean_on_s, mean_off_s=mean_off_s, off_rate=off_rate)

    def to_dict(self) -> dict[str, Any]:
        return {"process": "onoff", "rate": self.rate, "mean_on_s": self.mean_on_s,
                "mean_off_s": self.mean_off_s, "off_rate": self.off_rate}


@dataclass(frozen=True)
class DiurnalArrivals(ArrivalProcess):
    """Poisson with rate λ(t) = rate·(1 + amplitude·sin(2π(t − phase_s)/period_s)), by thinning."""

    rate: float
    amplitude: float
    period_s: float
    phase_s: float = 0.0
    process: ClassVar[str] = "diurnal"

    @property
    def mean_rate(self) -> float:
        return self.rate  # over whole periods

    @property
    def peak_rate(self) -> float:
        return self.rate * (1.0 + self.amplitude)

    def rate_at(self, t: np.ndarray) -> np.ndarray:
        # reduce the phase offset modulo the period first (exact for floats), so a huge phase_s
        # cannot overflow 2π·(t − phase_s) into sin(inf)
        offset = math.fmod(self.phase_s, self.period_s)
        phase = 2.0 * np.pi * (np.asarray(t) - offset) / self.period_s
        return self.rate * (1.0 + self.amplitude * np.sin(phase))

    def sample(self, rng, horizon):
        # candidates at the peak rate, thinned by thin() to the sinusoidal rate
        return PoissonArrivals(self.peak_rate).sample(rng, horizon)

    def thin(self, rng, times):
        keep = rng.random(times.size) * self.peak_rate < self.rate_at(times)
        return times[keep]


@dataclass(frozen=True)
class ServeGenArrivals(ArrivalProcess):
    """A ServeGen client pool (generate/servegen.py): each client a stationary renewal process
    per window with the window's fitted law, summed; it also draws each arrival's lengths."""

    pool: str  # the pool folder (resolved)
    clients: str | int | tuple[int, ...] = "all"
    window_s: float | None = None  # None: the pool's own (600 s)
    rate_scale: float = 1.0
    start_s: float = 0.0
    mode: str = "renewal"
    process: ClassVar[str] = "servegen"

    def _pool(self):
        from traceforge.generate.servegen import load_pool

        return load_pool(self.pool)

    @property
    def mean_rate(self) -> float:
        """Over the pool's whole day (the rate varies from window to window)."""
        pool = self._pool()
        return float(pool.rate[pool.select(self._clients())].sum(axis=0).mean()
                     * self.rate_scale)

    def _clients(self):
        return list(self.clients) if isinstance(self.clients, tuple) else self.clients

    def sample_with_shapes(self, rng, horizon):
        from traceforge.generate.servegen import sample_pool

        s = sample_pool(self._pool(), rng, horizon, clients=self._clients(),
                        rate_scale=self.rate_scale, start_s=self.start_s,
                        window_s=self.window_s, mode=self.mode)
        return s.time_s, {"seq_len": s.seq_len, "max_new_tokens": s.max_new_tokens}

    def sample(self, rng, horizon):
        return self.sample_with_shapes(rng, horizon)[0]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"process": "servegen", "pool": self.pool,
                               "clients": self._clients(), "rate_scale": self.rate_scale,
                               "start_s": self.start_s, "mode": self.mode}
        if self.window_s is not None:
            out["window_s"] = self.window_s
        return out


def _make_servegen(r: SpecReader, key: str, table: dict) -> ServeGenArrivals:
    from pathlib import Path

    from traceforge.errors import BadInput
    from traceforge.generate.servegen import MODES, load_pool

    raw = r.string(table["pool"], f"{key}.pool")
    path = Path(raw).expanduser()
    if not path.is_absolute() and r.base_dir is not None:
        path = r.base_dir / path
    if not path.is_dir():
        r.fail(f"{key}.pool", raw, "no such ServeGen pool folder")
    try:
        pool = load_pool(str(path.resolve()))
    except BadInput as exc:
        r.fail(f"{key}.pool", raw, str(exc))
    clients: str | int | tuple[int, ...] = table.get("clients", "all")
    if isinstance(clients, list):
        ids = r.int_list(clients, f"{key}.clients", low=0)
        missing = sorted(set(ids) - set(pool.clients.tolist()))
        if missing:
            r.fail(f"{key}.clients", clients, f"client {missing[0]} is not in the pool",
                   ", ".join(map(str, pool.clients[:20].tolist())))
        clients = tuple(sorted(set(ids)))
    elif isinstance(clients, int) and not isinstance(clients, bool):
        clients = r.integer(clients, f"{key}.clients", low=1, high=len(pool.clients))
    elif clients != "all":
        r.fail(f"{key}.clients", clients, 'must be "all", a number of clients, or a list of '
               "client ids")
    mode = table.get("mode", "renewal")
    if mode not in MODES:
        r.fail(f"{key}.mode", mode, "unknown mode", ", ".join(MODES))
    # window_s >= 1 s: each pool window becomes a segment per client, so a window of 1e-6 s
    # over a minute was 6e7 segments per client (7.5 GB, then killed) — and a pool window
    # replayed in under a second of trace time is no longer that window's process.
    window_s = (r.number(table["window_s"], f"{key}.window_s", low=1.0)
                if "window_s" in table else None)
    rate_scale = (r.number(table["rate_scale"], f"{key}.rate_scale", low=0, low_open=True)
                  if "rate_scale" in table else 1.0)
    # the pool's day repeats; beyond ~31 years of pool time the window index leaves int64
    start_s = (r.number(table["start_s"], f"{key}.start_s", low=0, high=1e9)
               if "start_s" in table else 0.0)
    return ServeGenArrivals(pool=str(path.resolve()), clients=clients, window_s=window_s,
                            rate_scale=rate_scale, start_s=start_s, mode=mode)


def make_process(r: SpecReader, key: str, process: str, table: dict) -> ArrivalProcess:
    """Build a validated process from its (already key-checked) spec table."""

    def pos(name: str) -> float:
        if name.endswith("rate"):
            return r.number(table[name], f"{key}.{name}", low=0, low_open=True, high=MAX_RATE)
        return r.number(table[name], f"{key}.{name}", low=MIN_TIME_S, high=MAX_TIME_S)

    if process == "constant":
        return ConstantArrivals(rate=pos("rate"))
    if process == "poisson":
        return PoissonArrivals(rate=pos("rate"))
    if process == "gamma":
        cv = r.number(table["cv"], f"{key}.cv", low=0, low_open=True, high=GAMMA_MAX_CV)
        return GammaArrivals(rate=pos("rate"), cv=cv)
    if process == "weibull":
        shape = r.number(table["shape"], f"{key}.shape", low=WEIBULL_MIN_SHAPE)
        return WeibullArrivals(rate=pos("rate"), shape=shape)
    if process == "mmpp":
        rates = r.number_list(table["rates"], f"{key}.rates", low=0, min_len=2, high=MAX_RATE)
        dwell = r.number_list(table["mean_dwell_s"], f"{key}.mean_dwell_s", low=MIN_TIME_S,
                              min_len=2, high=MAX_TIME_S)
        if len(dwell) != len(rates):
            r.fail(f"{key}.mean_dwell_s", table["mean_dwell_s"],
                   f"needs one entry per state ({len(rates)}, as rates)")
        if not any(x > 0 for x in rates):
            r.fail(f"{key}.rates", table["rates"], "at least one rate must be > 0")
        return MMPPArrivals(rates=rates, mean_dwell_s=dwell)
    if process == "onoff":
        off_rate = (r.number(table["off_rate"], f"{key}.off_rate", low=0, high=MAX_RATE)
                    if "off_rate" in table else 0.0)
        return OnOffArrivals.build(pos("rate"), pos("mean_on_s"), pos("mean_off_s"), off_rate)
    if process == "servegen":
        return _make_servegen(r, key, table)
    if process == "diurnal":
        amplitude = r.number(table["amplitude"], f"{key}.amplitude", low=0, high=1)
        phase = (r.number(table["phase_s"], f"{key}.phase_s", low=-MAX_TIME_S, high=MAX_TIME_S)
                 if "phase_s" in table else 0.0)
        return DiurnalArrivals(rate=pos("rate"), amplitude=amplitude, period_s=pos("period_s"),
                               phase_s=phase)
    raise AssertionError(process)  # PROCESS_PARAMS and this function list the same names
