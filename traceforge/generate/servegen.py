"""ServeGen client pools (alibaba/ServeGen ``data/``; arXiv 2505.09999) as an arrival process.

A pool folder holds, per client K, ``chunk-K-trace.csv`` (rows ``window_start_s, rate_per_s, cv,
pattern, p1, p2``: the fitted inter-arrival law of each 600 s window, ``Gamma`` or ``Weibull``
with shape p1 and scale p2; empty and rate 0 when idle) and ``chunk-K-dataset.json`` (per window,
``{field: "{value: probability, ...}"}`` length distributions).

**Semantics (our choice).** Each client, in each window, is a *stationary renewal process*: gaps
from the window's law with its shape p1 and the scale set so the mean gap is 1 / (rate ×
rate_scale) — the pool's own scale p2 does not match its rate (ServeGen rescales it too) — and
the first gap drawn from the law's equilibrium (forward-recurrence) distribution, so the expected
count in a window is exactly rate × window_s and, for a renewal process, its variance is
≈ CV² × that mean (not the Poisson mean). The model's stream is the sum over clients. ServeGen
itself instead draws ceil(rate × 600) gaps and rescales them to fill the window, so its counts
barely vary; ``mode = "rescale"`` reproduces that. Windows follow the pool's day (144 × 600 s)
from ``start_s``, repeating after the last one.

Gamma(a = p1) has CV 1/√a, the pool's ``cv`` column; for Weibull windows the column's ``cv`` is
the empirical one and differs from the fitted law's (up to 78 % in these pools): we sample the
law, as ServeGen does.

**Lengths.** Per arrival from its client's window: ``input_tokens`` (deepseek-r1) → seq_len, or,
for multimodal pools, ``text_tokens`` plus one ``image_tokens`` / ``audio_tokens`` /
``video_tokens`` draw per item of the sampled ``*_count`` (what the LLM's prompt holds);
``output_tokens`` → max_new_tokens. ``reason_ratio`` (the reasoning share of the output) is not
used: output_tokens already counts it. Zero-token entries become seq_len 1 (the trace's floor).
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from traceforge.errors import BadInput
from traceforge.generate.arrivals import GAMMA_MAX_CV, MAX_RATE
from traceforge.limits import MAX_TIME_S
from traceforge.schema import INT32_MAX

MODES = ("renewal", "rescale")
_CHUNK = re.compile(r"^chunk-(\d+)-trace\.csv$")
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
MEDIA = ("image", "audio", "video")

# What a pool's rows may hold, checked when the pool is loaded (both `trace import servegen`
# and a spec's servegen arrival read pools through load_pool). Found by trying the samplers
# below: renewal mode draws ~6 × CV × sqrt(expected) spare gaps per window, so a CV far above
# 1000 asks for absurd arrays (Weibull shape 0.02: CV 3e14, 742 PiB), and below ~0.007 the
# Weibull sampler's Γ(1 + 1/c) leaves float64 (numpy overflow warnings). Gamma's CV is 1/√a, so
# a >= 1e-6 is arrivals.py's GAMMA_MAX_CV; Weibull CV 1000 is shape 0.0888. Large shapes
# sample fine (CV → 0) up to the largest float. Real pools: Gamma 0.0118–400, Weibull 0.256–2.07.
GAMMA_MIN_SHAPE = 1.0 / GAMMA_MAX_CV**2
WEIBULL_MIN_SHAPE = 0.09  # CV 905
# A positive rate below one request per 292 years has a mean gap beyond the int64-ns range
# (and 1 / rate is inf below 5.6e-309); above MAX_RATE (one per ns) float products overflow.
MIN_RATE = 1.0 / MAX_TIME_S


@dataclass(frozen=True)
class Pool:
    """A loaded pool: per-(client, window) arrays, clients in ascending id."""

    path: Path
    clients: np.ndarray  # client ids (chunk numbers)
    window_s: float  # the pool's window length (spacing of window_start_s)
    starts: np.ndarray  # window start times (s), shared by every client
    rate: np.ndarray  # [client, window] requests/s
    law: np.ndarray  # [client, window] 0 idle, 1 Gamma, 2 Weibull
    shape: np.ndarray  # [client, window] p1

    @property
    def day_s(self) -> float:
        return len(self.starts) * self.window_s

    def cv(self) -> np.ndarray:
        """CV of each window's law (NaN where idle)."""
        return law_cv(self.law, self.shape)

    def select(self, clients) -> np.ndarray:
        """Row indices for ``clients``: "all", N (the N busiest by mean rate), or a list."""
        if clients == "all" or clients is None:
            return np.arange(len(self.clients))
        if isinstance(clients, int):
            busiest = np.argsort(-self.rate.mean(axis=1), kind="stable")
            return np.sort(busiest[:clients])
        rows = np.searchsorted(self.clients, clients)
        return np.asarray(rows)

    _datasets: dict[int, dict] = field(default_factory=dict, compare=False, repr=False)

    def dataset(self, client: int) -> dict:
        cache = self._datasets
        if client not in cache:
            path = self.path / f"chunk-{client}-dataset.json"
            if path.exists() and not path.is_file():  # a folder (or a FIFO: read would block)
                raise BadInput("not a regular file", source=path)
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise BadInput(f"cannot read the client's length distributions ({exc})"[:300],
                               source=path) from exc
            if not isinstance(data, dict):
                raise BadInput("expected {window_start_s: {field: distribution}}", source=path)
            cache[client] = data
        return cache[client]


def _lgamma(x: np.ndarray) -> np.ndarray:
    from scipy.special import gammaln

    return gammaln(x)


def law_cv(law: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """CV of Gamma(a) (1/√a) or Weibull(c) (√(Γ(1+2/c)/Γ(1+1/c)² − 1)); NaN where idle."""
    out = np.full(np.shape(law), np.nan)
    g, w = law == 1, law == 2
    out[g] = 1.0 / np.sqrt(shape[g])
    c = shape[w]
    # max(0, ·): rounding makes the c → ∞ limit slightly negative (c = 1e16: sqrt(-2e-16))
    out[w] = np.sqrt(np.maximum(np.exp(_lgamma(1 + 2 / c) - 2 * _lgamma(1 + 1 / c)) - 1, 0))
    return out


def _read_chunk(p: Path) -> list[tuple[float, float, int, float]]:
    """(window start, rate, law, shape) per row of one ``chunk-K-trace.csv``, every value
    checked (module constants above)."""
    if not p.is_file():  # a folder named chunk-K-trace.csv was "Is a directory", exit 1
        raise BadInput("not a regular file", source=p)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read ({exc.strerror or exc})", source=p) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise BadInput(f"not UTF-8 text ({exc.reason})", source=f"{p}:{line}") from None
    table = []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            if row:
                table.append(_check_row(row, f"{p}:{reader.line_num}"))
    except csv.Error as exc:
        raise BadInput(f"not CSV ({exc})", source=f"{p}:{reader.line_num}") from None
    return table


def _check_row(row: list[str], where: str) -> tuple[float, float, int, float]:
    try:
        start, rate = float(row[0]), float(row[1])
        pattern = row[3].strip()
        p1 = float(row[4]) if row[4].strip() else 0.0
    except (IndexError, ValueError):
        raise BadInput("expected window_start_s,rate,cv,pattern,p1,p2", source=where,
                       value=",".join(row)[:60]) from None
    law = {"": 0, "Gamma": 1, "Weibull": 2}.get(pattern)
    if law is None:
        raise BadInput("unknown pattern", source=where, key="pattern", value=pattern,
                       allowed="Gamma, Weibull, (empty)")
    if not (math.isfinite(rate) and rate >= 0) or (rate > 0 and not law):
        raise BadInput("rate must be >= 0, with a Gamma/Weibull law when > 0",
                       source=where, value=",".join(row)[:60])
    if not (math.isfinite(start) and 0 <= start <= MAX_TIME_S):
        raise BadInput(f"must be a finite time in [0, {MAX_TIME_S:.3g}] s (the int64-ns range)",
                       source=where, key="window_start_s", value=start)
    if rate > 0 and not MIN_RATE <= rate <= MAX_RATE:
        # 1e300 reached the memory check, which blamed --rate-scale = 1.0
        raise BadInput(f"must be 0 (idle) or in [{MIN_RATE:.3g}, {MAX_RATE:.3g}] requests/s",
                       source=where, key="rate", value=rate)
    if law:
        low = GAMMA_MIN_SHAPE if law == 1 else WEIBULL_MIN_SHAPE
        # Weibull 1e-300: numpy overflow warnings, then "every chosen client is idle"
        if not (math.isfinite(p1) and p1 >= low):
            raise BadInput(f"{pattern} shape must be a finite number >= {low:g} (CV <= "
                           f"{GAMMA_MAX_CV:g})", source=where, key="p1", value=p1)
        try:
            p2 = float(row[5])
        except (IndexError, ValueError):
            raise BadInput(f"{pattern} scale must be a number", source=where, key="p2",
                           value=row[5] if len(row) > 5 else None) from None
        # not used (the scale is set by the rate), but a pool with a broken one is broken
        if not (math.isfinite(p2) and p2 > 0):
            raise BadInput(f"{pattern} scale must be a finite number > 0", source=where,
                           key="p2", value=p2)
    return start, rate, law, p1


@functools.lru_cache(maxsize=8)
def load_pool(path: str) -> Pool:
    """Read a pool folder's ``chunk-K-trace.csv`` files; every problem is a :class:`BadInput`."""
    folder = Path(path)
    if not folder.is_dir():
        raise BadInput("no such pool folder", source=folder)
    files = sorted((int(m.group(1)), p) for p in folder.iterdir()
                   if (m := _CHUNK.match(p.name)))
    if not files:
        raise BadInput("no chunk-K-trace.csv files (not a ServeGen client pool)", source=folder)
    ids, rows = [], []
    for client, p in files:
        ids.append(client)
        rows.append(_read_chunk(p))
    starts = np.asarray([r[0] for r in rows[0]])
    for (_, p), table in zip(files, rows, strict=True):
        if len(table) != len(starts) or any(r[0] != s for r, s in zip(table, starts,
                                                                         strict=True)):
            raise BadInput("window starts differ from the other clients'", source=p)
    steps = np.diff(starts)
    if len(starts) < 1 or (len(steps) and (np.any(steps <= 0) or np.ptp(steps) > 1e-9)):
        raise BadInput("window starts must be evenly spaced and increasing", source=files[0][1])
    arr = np.asarray(rows, dtype=np.float64)  # [client, window, 4]
    return Pool(path=folder, clients=np.asarray(ids), window_s=float(steps[0]) if len(steps)
                else 600.0, starts=starts, rate=arr[:, :, 1], law=arr[:, :, 2].astype(np.int8),
                shape=arr[:, :, 3])


# -- arrivals ------------------------------------------------------------------------------------
def _gaps(rng: np.random.Generator, law: np.ndarray, shape: np.ndarray,
          mean: np.ndarray) -> np.ndarray:
    """One gap per element: Gamma(a=shape) or Weibull(c=shape), scaled to ``mean``."""
    out = np.empty(len(law))
    g, w = law == 1, law == 2
    if g.any():
        out[g] = rng.gamma(shape[g], mean[g] / shape[g])
    if w.any():
        c = shape[w]
        out[w] = rng.weibull(c) * mean[w] / np.exp(_lgamma(1 + 1 / c))
    return out


def _residual(rng: np.random.Generator, law: np.ndarray, shape: np.ndarray,
              mean: np.ndarray) -> np.ndarray:
    """Equilibrium first gaps: U × a length-biased gap. Length-biased Gamma(a, θ) is
    Gamma(a + 1, θ); for Weibull(c, λ), (X/λ)^c length-biased is Gamma(1 + 1/c)."""
    out = np.empty(len(law))
    g, w = law == 1, law == 2
    if g.any():
        out[g] = rng.gamma(shape[g] + 1, mean[g] / shape[g])
    if w.any():
        c = shape[w]
        scale = mean[w] / np.exp(_lgamma(1 + 1 / c))
        out[w] = scale * rng.gamma(1 + 1 / c) ** (1 / c)
    return out * rng.random(len(law))


def renewal_in_windows(rng: np.random.Generator, law: np.ndarray, shape: np.ndarray,
                       rate: np.ndarray, length: np.ndarray, *,
                       mode: str = "renewal") -> tuple[np.ndarray, np.ndarray]:
    """Arrival offsets in ``[0, length_i)`` for each segment i (vectorised over segments).

    Returns (offsets, segment index), grouped by segment, sorted within it."""
    k = len(law)
    mean = 1.0 / np.where(rate > 0, rate, 1.0)
    expected = rate * length
    if mode == "rescale":  # ServeGen: ceil(n) gaps rescaled to fill the window exactly
        counts = np.ceil(expected).astype(np.int64)
        seg = np.repeat(np.arange(k), counts)
        gaps = _gaps(rng, law[seg], shape[seg], mean[seg])
        ends = np.cumsum(gaps)
        first = np.concatenate(([0], np.cumsum(counts)))[:-1]
        base = np.repeat(ends[first] - gaps[first], counts)
        # the window's total from the same cumsum, so the last time is exactly length (x/x = 1)
        total = np.repeat(ends[np.maximum(first + counts - 1, 0)], counts) - base
        times = (ends - base) / np.where(total > 0, total, 1.0) * length[seg]
        keep = times < length[seg]
        return times[keep], seg[keep]
    cv = np.nan_to_num(law_cv(law, shape), nan=1.0)
    # enough gaps to pass the window end with overwhelming probability (CLT, 6 sd)
    counts = np.where(rate > 0, np.ceil(expected + 6 * np.maximum(cv, 1) *
                                        np.sqrt(expected) + 8), 0).astype(np.int64)
    pieces_t, pieces_s = [], []
    start = np.zeros(k)  # time reached so far per segment
    active = np.flatnonzero(counts > 0)
    first_round = True
    while active.size:
        c = counts[active]
        seg = np.repeat(active, c)
        gaps = _gaps(rng, law[seg], shape[seg], mean[seg])
        heads = np.concatenate(([0], np.cumsum(c)))[:-1]
        if first_round:
            gaps[heads] = _residual(rng, law[active], shape[active], mean[active])
        ends = np.cumsum(gaps)
        base = np.repeat(ends[heads] - gaps[heads] - start[active], c)
        times = ends - base
        keep = times < length[seg]
        pieces_t.append(times[keep])
        pieces_s.append(seg[keep])
        last = times[heads + c - 1]
        start[active] = last
        more = last < length[active]
        active = active[more]
        counts[active] = np.maximum(counts[active] // 4, 64)
        first_round = False
    if not pieces_t:
        return np.empty(0), np.empty(0, np.int64)
    times, seg = np.concatenate(pieces_t), np.concatenate(pieces_s)
    order = np.lexsort((times, seg))
    return times[order], seg[order]


# -- lengths -------------------------------------------------------------------------------------
def _show(value: object) -> object:
    """A value for a message: a JSON integer of 400 digits is shown by its head and length."""
    text = repr(value)
    return value if len(text) <= 40 else f"{text[:16]}... ({len(text)} characters)"


def _strip(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


def _number(value: object, *, source: Path, key: str, what: str) -> float:
    """A JSON number, or a number written as a string, as a float (inf where it is too large:
    the caller's range check refuses it)."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # a JSON integer of hundreds of digits
            return math.inf
    raise BadInput(f"{what} is not a number", source=source, key=key, value=_show(value))


def _pairs(text: object, *, source: Path, key: str) -> tuple[list, np.ndarray | None]:
    """The (value, probability) pairs of one distribution, a JSON object or ServeGen's string
    ``"{value: probability, ...}"``, read whole: a pair that is not two numbers is refused (the
    old regex skipped it). For a string, also the pairs as an [n, 2] float array."""
    if isinstance(text, dict):
        return list(text.items()), None
    body = text.strip() if isinstance(text, str) else ""
    if not (body.startswith("{") and body.endswith("}")):
        raise BadInput("expected {value: probability, ...}", source=source, key=key,
                       value=_show(text))
    parts = body[1:-1].split(",")
    if parts[-1].strip() == "":  # "{}" and a trailing comma
        parts.pop()
    pairs = [part.split(":") for part in parts]
    try:
        if all(len(pair) == 2 for pair in pairs):
            # numpy reads these as float() does ("1e400" is inf: refused by the caller)
            return pairs, np.asarray(pairs, dtype=np.float64).reshape(-1, 2)
    except ValueError:
        pass
    for part, pair in zip(parts, pairs, strict=True):
        try:
            if len(pair) == 2:
                float(pair[0]), float(pair[1])
                continue
        except ValueError:
            pass
        raise BadInput("expected value: probability (two numbers)", source=source, key=key,
                       value=_show(part.strip()))
    raise BadInput("expected {value: probability, ...}", source=source, key=key,
                   value=_show(text))


def _parse_pdf(text: object, *, source: Path, key: str,
               counts: bool) -> tuple[np.ndarray, np.ndarray]:
    """(sorted values, CDF) of one distribution; ``counts``: values are token or item counts,
    integers the trace's int32 columns hold. An empty distribution is the value 0."""
    items, table = _pairs(text, source=source, key=key)
    if not items:
        return np.zeros(1), np.ones(1)
    if table is not None:
        values, probs = table.T
    else:
        values = np.asarray([_number(v, source=source, key=key, what="value")
                             for v, _ in items])
        probs = np.asarray([_number(p, source=source, key=f"{key}[{v}]", what="probability")
                            for v, p in items])
    bad = ~np.isfinite(values)
    if counts:
        bad |= ~((values >= 0) & (values <= INT32_MAX)) | (np.floor(values) != values)
    if bad.any():
        # 1e400 tokens became seq_len 2147483647 (clipped) and the import exited 0
        v = items[int(np.argmax(bad))][0]
        raise BadInput(f"token/item counts must be integers in [0, {INT32_MAX}] (the trace's "
                       "int32 columns)" if counts else "value must be a finite number",
                       source=source, key=key, value=_show(_strip(v)))
    bad = ~(np.isfinite(probs) & (probs >= 0))
    if bad.any():
        v, p = items[int(np.argmax(bad))]
        raise BadInput("probability must be a finite number >= 0", source=source,
                       key=f"{key}[{_strip(v)}]", value=_show(_strip(p)))
    top = probs.max()
    if not top > 0:
        raise BadInput("probabilities must not all be 0", source=source, key=key,
                       value=_show(text))
    # scaled by the largest first: 1e300 + 1e300 would overflow the sum (1e400 was inf / inf,
    # numpy's "invalid value encountered in divide", and exit 0)
    order = np.argsort(values, kind="stable")
    cdf = np.cumsum(probs[order] / top)
    return values[order], cdf / cdf[-1]


def _draw(rng: np.random.Generator, dist, n: int) -> np.ndarray:
    values, cdf = dist
    return values[np.minimum(np.searchsorted(cdf, rng.random(n), side="right"),
                             len(values) - 1)]


def _window_start(key: str, source: Path) -> float:
    value = float(key) if _NUMBER.fullmatch(key.strip()) else math.nan
    if not math.isfinite(value):  # "abc" was ValueError: could not convert string to float
        raise BadInput("window key must be a finite number (its window_start_s)",
                       source=source, key="window_start_s", value=_show(key))
    return value


def _fields(pool: Pool, client: int, window_start: float) -> dict:
    """Parsed distributions of the latest dataset window at or before ``window_start`` (as
    ServeGen's ClientPool picks them; these pools hold one every 6 h). Each window is checked
    when it is first used, before anything is written."""
    data = pool.dataset(client)
    source = pool.path / f"chunk-{client}-dataset.json"
    if ("stamps",) not in data:
        data[("stamps",)] = sorted((_window_start(k, source), k) for k in data
                                   if not isinstance(k, tuple))
    stamps = data[("stamps",)]
    if not stamps:
        raise BadInput("no length distributions", source=source)
    at = [k for t, k in stamps if t <= window_start]
    chosen = at[-1] if at else stamps[0][1]
    key = ("parsed", chosen)  # parsed distributions live beside the raw ones
    if key not in data:
        window = data[chosen]
        if not isinstance(window, dict):
            raise BadInput("expected {field: distribution}", source=source, key=chosen,
                           value=_show(window))
        parsed = {name: _parse_pdf(text, source=source, key=f"{chosen}.{name}",
                                   counts=name.endswith(("_tokens", "_count")))
                  for name, text in window.items()}
        if "input_tokens" not in parsed:
            # the largest prompt: text plus, per medium, the most items of the most tokens
            worst = parsed["text_tokens"][0][-1] if "text_tokens" in parsed else 0.0
            for media in MEDIA:
                if f"{media}_count" in parsed and f"{media}_tokens" in parsed:
                    worst += parsed[f"{media}_count"][0][-1] * parsed[f"{media}_tokens"][0][-1]
            if worst > INT32_MAX:
                raise BadInput(f"the largest prompt (text plus the most items of the largest "
                               f"media) exceeds the trace's int32 seq_len ({INT32_MAX})",
                               source=source, key=f"{chosen}.text_tokens+media",
                               value=int(worst))
        data[key] = parsed
    return data[key]


def sample_lengths(pool: Pool, rng: np.random.Generator, client: int, window_start: float,
                   n: int) -> tuple[np.ndarray, np.ndarray]:
    """(seq_len, max_new_tokens) for ``n`` requests of a client's window (module docstring)."""
    fields = _fields(pool, client, float(window_start))
    if "input_tokens" in fields:
        seq = _draw(rng, fields["input_tokens"], n)
    else:
        seq = _draw(rng, fields["text_tokens"], n) if "text_tokens" in fields else np.zeros(n)
        for media in MEDIA:
            count_dist, token_dist = fields.get(f"{media}_count"), fields.get(f"{media}_tokens")
            if count_dist is None or token_dist is None:
                continue
            counts = _draw(rng, count_dist, n).astype(np.int64)
            if counts.max(initial=0) > 0:
                draws = _draw(rng, token_dist, int(counts.sum()))
                owner = np.repeat(np.arange(n), counts)
                np.add.at(seq, owner, draws)
    out = _draw(rng, fields["output_tokens"], n) if "output_tokens" in fields else np.zeros(n)
    # every value is an integer in int32 and their sums were checked (_fields): no clipping
    return np.maximum(np.rint(seq), 1).astype(np.int64), np.rint(out).astype(np.int64)


# -- the whole stream ----------------------------------------------------------------------------
@dataclass
class PoolSample:
    time_s: np.ndarray  # sorted arrival times, s from the start
    client: np.ndarray  # client id of each arrival
    window: np.ndarray  # pool window index of each arrival
    seq_len: np.ndarray
    max_new_tokens: np.ndarray
    expected: np.ndarray  # per horizon window: expected count (Σ rate × length)
    variance: np.ndarray  # per horizon window: ≈ Σ CV² × rate × length (renewal)
    window_edges: np.ndarray  # horizon window edges (s from the start)


def sample_pool(pool: Pool, rng: np.random.Generator, horizon: float, *, clients="all",
                rate_scale: float = 1.0, start_s: float = 0.0, window_s: float | None = None,
                mode: str = "renewal", lengths: bool = True) -> PoolSample:
    """Every arrival of the selected clients in ``[0, horizon)`` (pool time ``start_s`` onward;
    ``window_s`` replays each pool window over that many seconds, default the pool's own)."""
    rows = pool.select(clients)
    win = float(window_s or pool.window_s)
    n_win = len(pool.starts)
    first = math.floor(start_s / win)
    last = math.ceil((start_s + horizon) / win)
    edges_abs = np.arange(first, last + 1) * win
    lo = np.maximum(edges_abs[:-1], start_s) - start_s
    hi = np.minimum(edges_abs[1:], start_s + horizon) - start_s
    widx = np.arange(first, last) % n_win  # the pool's day repeats
    # segments: (client row, horizon window)
    r_idx, w_idx = np.meshgrid(rows, np.arange(last - first), indexing="ij")
    r_idx, w_idx = r_idx.ravel(), w_idx.ravel()
    rate = pool.rate[r_idx, widx[w_idx]] * rate_scale
    law = pool.law[r_idx, widx[w_idx]]
    shape = pool.shape[r_idx, widx[w_idx]]
    length = (hi - lo)[w_idx]
    live = (rate > 0) & (length > 0)
    seg_ids = np.flatnonzero(live)
    offsets, seg = renewal_in_windows(rng, law[live], shape[live], rate[live], length[live],
                                      mode=mode)
    seg = seg_ids[seg]
    times = lo[w_idx[seg]] + offsets
    cv = pool.cv()[r_idx, widx[w_idx]]
    expected = np.zeros(last - first)
    variance = np.zeros(last - first)
    np.add.at(expected, w_idx[live], (rate * length)[live])
    np.add.at(variance, w_idx[live], (np.nan_to_num(cv) ** 2 * rate * length)[live])
    seq = np.ones(len(times), np.int64)
    new = np.zeros(len(times), np.int64)
    if lengths and len(times):
        # one draw per segment, in segment order: reproducible, vectorised inside
        bounds = np.flatnonzero(np.diff(np.concatenate(([-1], seg, [-1]))))
        for a, b in itertools.pairwise(bounds):
            s = seg[a]
            client = int(pool.clients[r_idx[s]])
            seq[a:b], new[a:b] = sample_lengths(pool, rng, client,
                                                pool.starts[widx[w_idx[s]]], b - a)
    order = np.argsort(times, kind="stable")
    return PoolSample(time_s=times[order], client=pool.clients[r_idx[seg]][order],
                      window=widx[w_idx[seg]][order], seq_len=seq[order],
                      max_new_tokens=new[order], expected=expected, variance=variance,
                      window_edges=np.append(lo, hi[-1]))
