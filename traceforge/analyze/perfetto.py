"""export_perfetto: a run as Chrome Trace Event JSON, for ui.perfetto.dev and chrome://tracing.

Layout (Trace Event Format, JSON object form; ``ts``/``dur`` in microseconds, fractional to keep
nanoseconds):

* one process per model (``pid`` 1..M, named by ``M`` metadata events). Each request is a
  nestable async slice ``request`` (``b``/``e``, ``cat`` = ``request``, ``id`` = request_id)
  from scheduled to done, with nested children ``send lag``, ``queue`` and ``service`` where the
  timestamps are known. Async slices may overlap, which concurrent requests do.
* one thread per worker inside the model's process, with a complete event (``X``) per execution
  (batched requests share one). Complete events must nest on a thread, so a worker whose
  executions overlap (e.g. an HTTP endpoint serving many at once) keeps only its async slices.
* counters (``C``): ``in flight`` and ``queued`` per model; GPU utilisation, memory and power per
  GPU from telemetry.parquet when present (a process per GPU).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from traceforge.analyze.rundata import RunData, load_run
from traceforge.schema import atomic_write

MAX_COUNTER_POINTS = 50_000  # per counter series; denser series are sampled on a uniform grid


def _us(ns: np.ndarray | float) -> Any:
    return np.round(np.asarray(ns, dtype=float) / 1e3, 3)


def _meta(kind: str, pid: int, name: str, tid: int = 0) -> str:
    return json.dumps({"ph": "M", "name": kind, "pid": pid, "tid": tid, "ts": 0,
                       "args": {"name": name}})


def _counter_series(up: np.ndarray, down: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Times (ns) and values of a count that rises at ``up`` and falls at ``down``."""
    up = np.sort(up[~np.isnan(up)])
    down = np.sort(down[~np.isnan(down)])
    if up.size == 0:
        return np.empty(0), np.empty(0)
    times = np.unique(np.concatenate([up, down]))
    if times.size > MAX_COUNTER_POINTS:
        times = np.linspace(times[0], times[-1], MAX_COUNTER_POINTS)
    values = np.searchsorted(up, times, "right") - np.searchsorted(down, times, "right")
    return times, values


def _request_events(run: RunData, pid_of_code: np.ndarray) -> list[str]:
    rid = run.col("request_id").astype(np.int64)
    scheduled, sent = run.col("scheduled_ns"), run.col("sent_ns")
    start, end, done = run.col("service_start_ns"), run.col("service_end_ns"), run.col("done_ns")
    # A request that never completed (cancelled, dropped) closes at its last known time.
    last = np.fmax(np.fmax(np.fmax(scheduled, sent), np.fmax(start, end)), done)
    pids = pid_of_code[run.model_code]
    status = run.status
    batch = run.col("batch_size").astype(np.int64)
    events: list[str] = []
    phases = (("send lag", scheduled, sent), ("queue", sent, start), ("service", start, end))
    ts_b, ts_e = _us(scheduled), _us(last)
    phase_us = [(name, _us(a), _us(b), ~np.isnan(a) & ~np.isnan(b) & (b >= a))
                for name, a, b in phases]
    for i in range(run.n):  # one pass over requests, formatting only
        pid, r = int(pids[i]), int(rid[i])
        head = f'"cat":"request","id":{r},"pid":{pid},"tid":0'
        events.append(f'{{"ph":"b","name":"request",{head},"ts":{ts_b[i]},'
                      f'"args":{{"request_id":{r},"status":{json.dumps(status[i])},'
                      f'"batch_size":{int(batch[i])}}}}}')
        for name, a_us, b_us, known in phase_us:
            if known[i]:
                events.append(f'{{"ph":"b","name":"{name}",{head},"ts":{a_us[i]}}}')
                events.append(f'{{"ph":"e","name":"{name}",{head},"ts":{b_us[i]}}}')
        events.append(f'{{"ph":"e","name":"request",{head},"ts":{ts_e[i]}}}')
    return events


def _worker_events(run: RunData, pid_of_code: np.ndarray) -> tuple[list[str], list[str]]:
    """Thread names and one ``X`` per execution on workers whose executions do not overlap."""
    events, skipped = [], []
    worker = run.col("worker")
    start, end = run.col("service_start_ns"), run.col("service_end_ns")
    known = (worker != "") & ~np.isnan(start) & ~np.isnan(end)
    if not np.any(known):
        return events, skipped
    for code, model in enumerate(run.models):
        pid = int(pid_of_code[code])
        in_model = known & (run.model_code == code)
        for tid, name in enumerate(sorted(set(worker[in_model])), start=1):
            rows = in_model & (worker == name)
            spans = np.unique(np.stack([start[rows], end[rows]], axis=1), axis=0)  # sorted
            if spans.shape[0] > 1 and np.any(spans[1:, 0] < spans[:-1, 1]):
                skipped.append(f"{model}/{name}")
                continue
            events.append(_meta("thread_name", pid, f"worker {name}", tid))
            ts, dur = _us(spans[:, 0]), _us(spans[:, 1] - spans[:, 0])
            events.extend(f'{{"ph":"X","name":"execute","cat":"worker","pid":{pid},'
                          f'"tid":{tid},"ts":{t},"dur":{d}}}' for t, d in zip(ts, dur,
                                                                             strict=True))
    return events, skipped


def _counter_events(pid: int, name: str, times: np.ndarray, values: dict[str, np.ndarray]
                    ) -> list[str]:
    ts = _us(times)
    keys = list(values)
    cols = [values[k] for k in keys]
    out = []
    for i in range(times.size):
        args = ",".join(f'"{k}":{float(c[i]):g}' for k, c in zip(keys, cols, strict=True)
                        if np.isfinite(c[i]))
        out.append(f'{{"ph":"C","name":"{name}","pid":{pid},"tid":0,"ts":{ts[i]},'
                   f'"args":{{{args}}}}}')
    return out


def _telemetry_events(run: RunData, first_pid: int) -> list[str]:
    table = run.telemetry
    if table is None or table.num_rows == 0 or "t_ns" not in table.column_names:
        return []
    events = []
    t = table.column("t_ns").to_numpy().astype(float)
    gpus = (table.column("gpu_index").to_numpy() if "gpu_index" in table.column_names
            else np.zeros(t.size, dtype=int))

    def column(name: str) -> np.ndarray:
        if name not in table.column_names:
            return np.full(t.size, np.nan)
        return table.column(name).to_numpy(zero_copy_only=False).astype(float)

    util, mem_util = column("util_gpu_pct"), column("util_mem_pct")
    mem_gib, power = column("mem_used_bytes") / 2**30, column("power_w")
    for offset, gpu in enumerate(np.unique(gpus)):
        pid = first_pid + offset
        pick = np.flatnonzero(gpus == gpu)
        pick = pick[np.argsort(t[pick], kind="stable")]
        events.append(_meta("process_name", pid, f"GPU {int(gpu)}"))
        events += _counter_events(pid, "utilisation %", t[pick],
                                  {"gpu": util[pick], "memory": mem_util[pick]})
        events += _counter_events(pid, "memory used GiB", t[pick], {"used": mem_gib[pick]})
        events += _counter_events(pid, "power W", t[pick], {"power": power[pick]})
    return events


def build_trace_events(run: RunData) -> dict[str, Any]:
    """The Trace Event JSON object as a dict whose ``traceEvents`` are pre-serialised strings."""
    pid_of_code = np.arange(1, len(run.models) + 1)
    events = [_meta("process_name", int(pid_of_code[c]), f"model {m}")
              for c, m in enumerate(run.models)]
    events += [json.dumps({"ph": "M", "name": "process_sort_index", "pid": int(pid_of_code[c]),
                           "tid": 0, "ts": 0, "args": {"sort_index": c}})
               for c in range(len(run.models))]
    events += _request_events(run, pid_of_code)
    worker_events, skipped = _worker_events(run, pid_of_code)
    events += worker_events
    sent, start, done = run.col("sent_ns"), run.col("service_start_ns"), run.col("done_ns")
    for code, _model in enumerate(run.models):
        pid = int(pid_of_code[code])
        rows = run.model_code == code
        # A request leaves "in flight" when done; one never completed stays until the end.
        times, values = _counter_series(sent[rows], done[rows])
        events += _counter_events(pid, "in flight", times, {"requests": values})
        has_start = rows & ~np.isnan(start)
        if np.any(has_start):
            times, values = _counter_series(sent[has_start], start[has_start])
            events += _counter_events(pid, "queued", times, {"requests": values})
    events += _telemetry_events(run, first_pid=len(run.models) + 1)
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"run_dir": str(run.run_dir), "status": run.manifest.get("status"),
                          "backend": str(run.manifest.get("backend")),
                          "clock": "run clock: microseconds since run start (CLOCK_MONOTONIC)",
                          "workers_without_execution_track": skipped}}


def export_perfetto(run_dir: Path | str, path: Path | str, *, run: RunData | None = None
                    ) -> Path:
    """Write ``run_dir``'s timeline as Chrome Trace Event JSON to ``path`` (atomically)."""
    run = run if run is not None else load_run(run_dir)
    trace = build_trace_events(run)
    events = trace.pop("traceEvents")
    path = Path(path)

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write('{"traceEvents":[\n')
            for start in range(0, len(events), 100_000):
                chunk = ",\n".join(events[start:start + 100_000])
                fh.write(("" if start == 0 else ",\n") + chunk)
            fh.write("\n],\n")
            fh.write(json.dumps(trace)[1:])  # the remaining keys, without the opening brace
        tmp.chmod(0o644)

    atomic_write(path, write)
    return path
