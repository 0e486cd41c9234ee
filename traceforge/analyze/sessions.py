"""Report sections for multi-turn sessions and for the server's own metrics (``--scrape``).

``sessions``: per turn number, the latency of ok turns (``done − scheduled``: a released turn's
``scheduled_ns`` is its previous turn's ``done_ns`` + think time, so think time is excluded and
queueing included); per session, the duration from the first turn's ``scheduled_ns`` to the last
turn's ``done_ns``, over sessions whose every turn in the analysed rows is ok (``complete``);
``stopped`` counts sessions with a non-ok turn (their later turns are ``dropped`` rows).

``server_metrics``: from ``server_metrics.parquet``, the mean and max of vLLM's running and
waiting requests and KV-cache usage, and the prefix-cache hit rate over the run (the increase of
the hits counter over the increase of the queries counter between the first and last sample).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from traceforge.analyze.rundata import NS_PER_MS, NS_PER_S, RunData
from traceforge.analyze.stats import summarize

MAX_TURN_ROWS = 20  # turns beyond this are pooled into one "21+" entry


def _summary(values: np.ndarray, scale: float) -> dict[str, Any]:
    """stats.summarize's count, mean, p50, p90 and p99, and the max."""
    s = summarize(values, scale=scale)
    return {**{k: s[k] for k in ("count", "mean", "p50", "p90", "p99")},
            "max": float(values.max() / scale) if values.size else None}


def session_report(run: RunData, rows: np.ndarray) -> dict[str, Any] | None:
    """The ``sessions`` report section, or None when the run has no session rows."""
    if "session_id" not in run.table.column_names:
        return None
    sid = run.col("session_id")
    in_session = rows & ~np.isnan(sid)
    if not np.any(in_session):
        return None
    turn = run.col("turn")
    latency = run.latency
    ok = run.ok
    per_turn: dict[str, Any] = {}
    turns = turn[in_session].astype(np.int64)
    for k in range(1, min(int(turns.max()), MAX_TURN_ROWS) + 1):
        sel = in_session & (turn == k)
        per_turn[str(k)] = {"rows": int(np.count_nonzero(sel)),
                            **_summary(latency[sel & ok], NS_PER_MS)}
    if turns.max() > MAX_TURN_ROWS:
        sel = in_session & (turn > MAX_TURN_ROWS)
        per_turn[f"{MAX_TURN_ROWS + 1}+"] = {"rows": int(np.count_nonzero(sel)),
                                            **_summary(latency[sel & ok], NS_PER_MS)}

    idx = np.flatnonzero(in_session)
    keys, inverse = np.unique(sid[idx], return_inverse=True)
    n_sessions = keys.size
    all_ok = np.bincount(inverse, weights=~ok[idx], minlength=n_sessions) == 0
    start = np.full(n_sessions, np.inf)
    np.minimum.at(start, inverse, run.col("scheduled_ns")[idx])
    done = run.col("done_ns")[idx]
    end = np.full(n_sessions, -np.inf)
    np.maximum.at(end, inverse, np.where(np.isnan(done), -np.inf, done))
    length = np.bincount(inverse, minlength=n_sessions)
    complete = all_ok & np.isfinite(end)
    return {
        "sessions": int(n_sessions),
        "complete": int(np.count_nonzero(complete)),
        "stopped": int(n_sessions - np.count_nonzero(all_ok)),
        "turns_per_session": _summary(length.astype(np.float64), 1.0),
        "duration_s": _summary((end - start)[complete], NS_PER_S),
        "turn_latency_ms": per_turn,
    }


# -- server metrics -----------------------------------------------------------------------------
def server_metrics_report(run: RunData) -> dict[str, Any] | None:
    from traceforge.replay.scrape import (
        CACHE_USAGE,
        PREFIX_HITS,
        PREFIX_QUERIES,
        RUNNING,
        WAITING,
        read_server_metrics,
        series,
    )

    table = read_server_metrics(run.run_dir)
    if table is None:
        return None
    out: dict[str, Any] = {"samples": int(np.unique(table.column("t_ns").to_numpy()).size),
                           "scrape": run.manifest.get("scrape")}
    for key, names in (("running", RUNNING), ("waiting", WAITING), ("cache_usage", CACHE_USAGE)):
        s = series(table, names)
        out[key] = None if s is None else {"name": next(n for n in names if _has(table, n)),
                                           "mean": float(s[1].mean()),
                                           "max": float(s[1].max())}
    hits, queries = series(table, PREFIX_HITS), series(table, PREFIX_QUERIES)
    out["prefix_cache_hit_rate"] = None
    if hits is not None and queries is not None and queries[1].size >= 2:
        dq = queries[1][-1] - queries[1][0]
        dh = hits[1][-1] - hits[1][0]
        out["prefix_cache_hit_rate"] = float(dh / dq) if dq > 0 else None
        out["prefix_cache_queries"] = float(dq)
        out["prefix_cache_hits"] = float(dh)
    return out


def _has(table, name: str) -> bool:
    import pyarrow.compute as pc

    return bool(pc.any(pc.equal(table.column("name"), name)).as_py())
