"""Multi-turn sessions: ``[models.X.sessions]`` turns one arrival into a chain of turns.

The model's arrival process gives the *session starts*. Each session has ``turns`` turns
(an integer distribution, >= 1). Turn k's new user text has ``u_k`` tokens drawn from the
model's ``seq_len`` distribution and asks for ``max_new_tokens_k`` (the model's distribution).
With ``context_growth = "append"`` a turn's prompt is the previous prompt + the previous
output + the new user text, so the trace row of turn k holds the *full* context::

    seq_len_1 = u_1,   seq_len_k = seq_len_{k-1} + max_new_tokens_{k-1} + u_k

(the previous output counted at ``max_new_tokens``: replays ask for exactly that many tokens).
``context_growth = "none"``: every turn's prompt is its new text only (``seq_len_k = u_k``).
``max_context`` (optional) ends a session before the turn whose prompt would exceed it.

The row's ``arrival_ns`` is the turn's *nominal* time: the session start plus the think times
of turns 2..k, as if every answer were instant. Replay reads ``think_k = arrival_k −
arrival_{k−1}`` back from the trace and sends turn k at ``done_{k−1} + think_k``
(docs/replay.md), so the trace needs no column beyond ``session_id`` and ``turn``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from traceforge.generate.shapes import ShapeDist, make_dist
from traceforge.schema import INT32_MAX

if TYPE_CHECKING:
    from traceforge.generate.spec import SpecReader

SESSION_KEYS = ("turns", "think_time_s", "context_growth", "max_context")
CONTEXT_GROWTH = ("append", "none")
# think_time_s: dist -> (required, optional) parameters; seconds, floats.
THINK_PARAMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "const": (("value",), ()),
    "uniform": (("low", "high"), ()),
    "exponential": (("mean",), ()),
    "lognormal": (("median", "sigma"), ("max",)),
}


@dataclass(frozen=True)
class ThinkDist:
    """A non-negative real distribution of think times in seconds."""

    dist: str
    params: tuple[tuple[str, float], ...]
    kinds: ClassVar[tuple[str, ...]] = tuple(THINK_PARAMS)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        p = dict(self.params)
        if self.dist == "const":
            return np.full(n, p["value"])
        if self.dist == "uniform":
            return rng.uniform(p["low"], p["high"], n)
        if self.dist == "exponential":
            return rng.exponential(p["mean"], n)
        with np.errstate(over="ignore"):  # an overflow becomes inf, refused as out of range
            x = p["median"] * np.exp(p["sigma"] * rng.standard_normal(n))
        return np.minimum(x, p["max"]) if "max" in p else x

    def to_spec(self) -> Any:
        if self.dist == "const":
            return dict(self.params)["value"]
        return {"dist": self.dist, **dict(self.params)}


@dataclass(frozen=True)
class SessionSpec:
    turns: ShapeDist
    think_time_s: ThinkDist
    context_growth: str = "append"
    max_context: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"turns": self.turns.to_spec(), "think_time_s": self.think_time_s.to_spec(),
               "context_growth": self.context_growth}
        if self.max_context is not None:
            out["max_context"] = self.max_context
        return out


def parse_sessions(r: SpecReader, key: str, value: object) -> SessionSpec:
    table = r.table(value, key)
    r.check_keys(table, key, SESSION_KEYS)
    if "turns" not in table:
        r.missing(f"{key}.turns", "an integer distribution >= 1, e.g. {dist = \"uniform\", "
                                  "low = 1, high = 8}")
    turns_raw = table["turns"]
    if isinstance(turns_raw, dict):
        from traceforge.generate.shapes import DIST_PARAMS
        from traceforge.generate.spec import _checked_tagged_table

        dist = _checked_tagged_table(r, f"{key}.turns", turns_raw, "dist", DIST_PARAMS,
                                     "distribution")
        turns = make_dist(r, f"{key}.turns", dist, turns_raw, 1)
    else:
        turns = make_dist(r, f"{key}.turns", "const", {"value": turns_raw}, 1)
    think = _parse_think(r, f"{key}.think_time_s", table.get("think_time_s", 0.0))
    growth = table.get("context_growth", "append")
    if growth not in CONTEXT_GROWTH:
        r.fail(f"{key}.context_growth", growth, "unknown context growth",
               ", ".join(CONTEXT_GROWTH))
    max_context = (r.integer(table["max_context"], f"{key}.max_context", low=1)
                   if "max_context" in table else None)
    return SessionSpec(turns=turns, think_time_s=think, context_growth=growth,
                       max_context=max_context)


def _parse_think(r: SpecReader, key: str, value: object) -> ThinkDist:
    if not isinstance(value, dict):
        return ThinkDist("const", (("value", r.number(value, key, low=0)),))
    from traceforge.generate.spec import _checked_tagged_table

    dist = _checked_tagged_table(r, key, value, "dist", THINK_PARAMS, "think-time distribution")
    required, optional = THINK_PARAMS[dist]
    params = []
    for name in (*required, *optional):
        if name not in value:
            continue
        low_open = name in ("mean", "median", "sigma", "max")
        params.append((name, r.number(value[name], f"{key}.{name}", low=0, low_open=low_open)))
    p = dict(params)
    if dist == "uniform" and p["high"] < p["low"]:
        r.fail(f"{key}.high", p["high"], f"must be >= low ({p['low']:g})")
    return ThinkDist(dist, tuple(params))


def expand_sessions(spec: SessionSpec, starts_s: np.ndarray, rngs: dict[str, np.random.Generator],
                    seq_dist: ShapeDist, new_dist: ShapeDist, batch_dist: ShapeDist,
                    *, key: str = "sessions.turns", source: object = None,
                    ) -> dict[str, np.ndarray]:
    """One row per turn for sessions starting at ``starts_s`` (sorted seconds), rows grouped
    by session. Returns ``times`` (nominal seconds), ``session`` (local index), ``turn`` and
    the shape columns; ``rngs`` holds one generator per part (turns, think, seq_len,
    max_new_tokens, batch_size)."""
    s = starts_s.size
    turns = spec.turns.sample(rngs["turns"], s).astype(np.int64)
    rows = int(turns.sum())
    # The estimate before sampling (build.sampling_bytes) probes the turns law; a rare huge
    # value it never drew (choice [1, 2**31 - 1] weighted 30000:1) asked for 32 GiB here.
    from traceforge.limits import BYTES_PER_SESSION_TURN, check_memory

    check_memory(rows * BYTES_PER_SESSION_TURN, key=key, value=spec.turns.to_spec(),
                 source=source, what=f"{s:,} sessions of {rows:,} turns in all")
    session = np.repeat(np.arange(s, dtype=np.int64), turns)
    first = np.zeros(s, np.int64)
    np.cumsum(turns[:-1], out=first[1:])
    turn = np.arange(rows, dtype=np.int64) - first[session] + 1
    head = turn == 1
    think = spec.think_time_s.sample(rngs["think"], rows)
    think[head] = 0.0
    with np.errstate(over="ignore", invalid="ignore"):  # inf think times: refused by the caller
        times = starts_s[session] + _segment_cumsum(think, first, session)
    user = seq_dist.sample(rngs["seq_len"], rows).astype(np.int64)
    new = new_dist.sample(rngs["max_new_tokens"], rows).astype(np.int64)
    if spec.context_growth == "append":
        grow = user.copy()
        grow[~head] += new[np.flatnonzero(~head) - 1]  # the previous turn's output
        seq = _segment_cumsum(grow, first, session)
    else:
        seq = user
    limit = spec.max_context if spec.max_context is not None else INT32_MAX
    keep = (seq <= limit) | head  # prompts grow: a session ends before its first long turn
    # ... and never resumes: drop every turn after the first one over the limit.
    over = ~keep
    if over.any():
        cut = np.zeros(rows, np.int64)
        cut[over] = 1
        keep &= _segment_cumsum(cut, first, session) == 0
    seq = np.minimum(seq, limit)
    batch = batch_dist.sample(rngs["batch_size"], rows)
    return {"times": times[keep], "session": session[keep], "turn": turn[keep],
            "seq_len": seq[keep].astype(np.int32), "max_new_tokens": new[keep].astype(np.int32),
            "batch_size": batch[keep]}


def _segment_cumsum(values: np.ndarray, first: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """Cumulative sum restarting at each segment (``first[s]`` = start row of segment s)."""
    total = np.cumsum(values)
    before = np.concatenate(([0], total))[first]  # the running sum before each segment
    return total - before[segment]
