"""Shared helpers for the replay tests: build small traces in memory or on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from traceforge.schema import Trace, write_trace


def make_trace(arrival_ns, *, models=None, max_new_tokens=0, seq_len=16,
               path: Path | None = None, meta: dict | None = None) -> Trace:
    arrival_ns = np.asarray(arrival_ns, np.int64)
    n = len(arrival_ns)
    if models is None:
        models = ["m"] * n
    table = pa.table({
        "request_id": np.arange(n, dtype=np.int64),
        "arrival_ns": arrival_ns,
        "model": pa.array(list(models), pa.string()),
        "batch_size": np.ones(n, np.int32),
        "seq_len": np.full(n, seq_len, np.int32),
        "max_new_tokens": np.full(n, max_new_tokens, np.int32),
    })
    meta = meta or {"spec": {"models": {}}}
    if path is not None:
        from traceforge.schema import read_trace

        write_trace(table, path, meta)
        return read_trace(path)
    from traceforge.schema import conform_trace_table

    return Trace(table=conform_trace_table(table), meta=meta, path=None)


def poisson_arrivals(rate: float, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.exponential(1e9 / rate, n)).astype(np.int64)


MS = 1_000_000
ORIGIN = 10 * MS  # ReplayOptions.start_delay_ms: the schedule starts 10 ms after backend start


def replay_virtual(trace, run_dir, backend, before=None, **opts):
    """Replay ``trace`` in virtual time (exact timestamps); returns (summary, timeline dict).

    The thread flusher unless a test asks for another: virtual time measures no real time, so
    who writes the parts cannot matter here, and a flusher process costs 0.55 CPU-s and
    0.8 s per replay (real-time replays in the suite keep the default, the process)."""
    from traceforge.record import read_timeline
    from traceforge.replay import ReplayOptions, replay_async
    from traceforge.replay.virtual import VirtualClock, VirtualTimeLoop

    loop = VirtualTimeLoop()
    try:
        if before is not None:
            before(loop)
        options = ReplayOptions(pacer="sleep", **{"flusher": "thread", **opts})
        summary = loop.run_until_complete(
            replay_async(trace, run_dir, backend, options, clock=VirtualClock(loop)))
    finally:
        loop.close()
    return summary, read_timeline(run_dir).to_pydict()


def manifest(run_dir: Path) -> dict:
    import json

    return json.loads((Path(run_dir) / "run.json").read_text())


def timeline_rows(run_dir: Path, *, worker: bool = False) -> tuple[list, ...]:
    """A real-time run's rows as comparable lists: request ids, models, scheduled times
    relative to the schedule origin (and the replay_worker column with ``worker``)."""
    import json

    from traceforge.record import read_timeline

    tl = read_timeline(run_dir)
    origin = json.loads((Path(run_dir) / "run.json").read_text())["run_clock"][
        "schedule_origin_ns"]
    out = (tl.column("request_id").to_pylist(), tl.column("model").to_pylist(),
           (tl.column("scheduled_ns").to_numpy() - origin).tolist())
    return (*out, tl.column("replay_worker").to_pylist()) if worker else out


def children_of(pid: int, marker: bytes) -> list[int]:
    """The live processes whose parent is ``pid`` and whose command line holds ``marker``
    (read from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and marker in cmd:
            out.append(int(entry.name))
    return out


def two_model_trace(directory: Path, rows: int) -> Path:
    """``rows`` requests 1 ms apart alternating models a and b, written to DIRECTORY/t.parquet
    (the audit tests' module fixture)."""
    path = Path(directory) / "t.parquet"
    make_trace([k * 1_000_000 for k in range(rows)], models=["a", "b"] * (rows // 2), path=path)
    return path
