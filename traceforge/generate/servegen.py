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
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from traceforge.errors import BadInput
from traceforge.schema import INT32_MAX

MODES = ("renewal", "rescale")
_CHUNK = re.compile(r"^chunk-(\d+)-trace\.csv$")
_PAIR = re.compile(r"(-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*:\s*(-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)")
MEDIA = ("image", "audio", "video")


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
            try:
                cache[client] = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise BadInput(f"cannot read the client's length distributions ({exc})"[:300],
                               source=path) from exc
            if not isinstance(cache[client], dict):
                raise BadInput("expected {window_start_s: {field: distribution}}", source=path)
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
    out[w] = np.sqrt(np.exp(_lgamma(1 + 2 / c) - 2 * _lgamma(1 + 1 / c)) - 1)
    return out


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
        table = []
        with open(p, newline="", encoding="utf-8") as fh:
            for line_no, row in enumerate(csv.reader(fh), start=1):
                if not row:
                    continue
                try:
                    start, rate = float(row[0]), float(row[1])
                    pattern = row[3].strip()
                    p1 = float(row[4]) if row[4].strip() else 0.0
                except (IndexError, ValueError):
                    raise BadInput("expected window_start_s,rate,cv,pattern,p1,p2",
                                   source=f"{p}:{line_no}", value=",".join(row)[:60]) from None
                law = {"": 0, "Gamma": 1, "Weibull": 2}.get(pattern)
                if law is None:
                    raise BadInput("unknown pattern", source=f"{p}:{line_no}", key="pattern",
                                   value=pattern, allowed="Gamma, Weibull, (empty)")
                if not (math.isfinite(rate) and rate >= 0) or (rate > 0 and not
                                                              (law and p1 > 0)):
                    raise BadInput("rate must be >= 0, with a Gamma/Weibull law of shape > 0 "
                                   "when > 0", source=f"{p}:{line_no}", value=",".join(row)[:60])
                table.append((start, rate, law, p1))
        ids.append(client)
        rows.append(table)
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
def _parse_pdf(text) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(text, dict):
        items = [(float(k), float(v)) for k, v in text.items()]
    else:
        items = [(float(a), float(b)) for a, b in _PAIR.findall(str(text))]
    if not items:
        return np.zeros(1), np.ones(1)
    values, probs = np.asarray(items).T
    order = np.argsort(values)
    values, probs = values[order], np.clip(probs[order], 0, None)
    cdf = np.cumsum(probs)
    cdf = cdf / cdf[-1] if cdf[-1] > 0 else np.linspace(1 / len(cdf), 1, len(cdf))
    return values, cdf


def _draw(rng: np.random.Generator, dist, n: int) -> np.ndarray:
    values, cdf = dist
    return values[np.minimum(np.searchsorted(cdf, rng.random(n), side="right"),
                             len(values) - 1)]


def _fields(pool: Pool, client: int, window_start: float) -> dict:
    """Parsed distributions of the latest dataset window at or before ``window_start`` (as
    ServeGen's ClientPool picks them; these pools hold one every 6 h)."""
    data = pool.dataset(client)
    stamps = sorted((float(k), k) for k in data if not isinstance(k, tuple))
    if not stamps:
        raise BadInput("no length distributions", source=pool.path / f"chunk-{client}-dataset.json")
    at = [k for t, k in stamps if t <= window_start]
    chosen = at[-1] if at else stamps[0][1]
    key = ("parsed", chosen)  # parsed distributions live beside the raw ones
    if key not in data:
        window = data[chosen]
        if not isinstance(window, dict):
            raise BadInput("expected {field: distribution}",
                           source=pool.path / f"chunk-{client}-dataset.json", key=chosen)
        data[key] = {name: _parse_pdf(text) for name, text in window.items()}
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
    return (np.clip(np.rint(seq), 1, INT32_MAX).astype(np.int64),
            np.clip(np.rint(out), 0, INT32_MAX).astype(np.int64))


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
