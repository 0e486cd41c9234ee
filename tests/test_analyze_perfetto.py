"""`export perfetto`: valid Trace Event JSON (checked against a checker written from the spec)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from test_analyze_html import write_telemetry
from trace_event_format import check_trace

from traceforge.analyze.perfetto import export_perfetto
from traceforge.analyze.synthetic import SyntheticModel, synthetic_timeline, write_synthetic_run

MODELS = [SyntheticModel("bert", rate=50), SyntheticModel("gpt", rate=10, service_ms=30,
                                                           max_new_tokens=4)]


def serial_workers(table: pa.Table) -> pa.Table:
    """Make each model's worker serve one request at a time (a real resident worker), with
    pairs of requests batched together, so the worker tracks get execution slices."""
    model = table.column("model").to_numpy(zero_copy_only=False)
    start = table.column("service_start_ns").to_numpy().copy()
    end = table.column("service_end_ns").to_numpy().copy()
    sent = table.column("sent_ns").to_numpy()
    for name in np.unique(model):
        idx = np.flatnonzero(model == name)
        free = 0
        for j in range(0, idx.size, 2):  # two requests per batch
            batch = idx[j:j + 2]
            begin = max(free, int(sent[batch].max()))
            duration = int(end[batch[0]] - start[batch[0]])
            start[batch], end[batch] = begin, begin + duration
            free = begin + duration
    done = end + 100_000
    columns = {n: table.column(n) for n in table.column_names}
    columns.update(service_start_ns=pa.array(start), service_end_ns=pa.array(end),
                   done_ns=pa.array(done), first_token_ns=pa.nulls(table.num_rows, pa.int64()))
    return pa.table(columns, schema=table.schema)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("pf")
    table = serial_workers(synthetic_timeline(MODELS, requests=600, seed=2))
    # Interrupted tail: cancelled rows with no service or done time must still close cleanly.
    cut = np.arange(table.num_rows) >= 580
    columns = {n: table.column(n) for n in table.column_names}
    for name in ("service_start_ns", "service_end_ns", "done_ns"):
        columns[name] = pa.array(np.where(cut, None, table.column(name).to_numpy()).tolist(),
                                 pa.int64())
    columns["status"] = pa.array(np.where(cut, "cancelled", "ok"), pa.string())
    table = pa.table(columns, schema=table.schema)
    run = write_synthetic_run(root / "run", MODELS, requests=0, table=table,
                              status="interrupted")
    write_telemetry(run, 20.0)
    path = export_perfetto(run, root / "trace.json")
    return table, json.loads(path.read_text())


def test_trace_validates(exported):
    _, trace = exported
    assert check_trace(trace) == []


def test_checker_catches_violations():
    bad = {"traceEvents": [
        {"ph": "b", "name": "request", "cat": "request", "id": 1, "pid": 1, "tid": 0, "ts": 5},
        {"ph": "e", "name": "request", "cat": "request", "id": 1, "pid": 1, "tid": 0, "ts": 3},
        {"ph": "X", "name": "x", "pid": 1, "tid": 1, "ts": 0},
        {"ph": "C", "name": "c", "pid": 1, "tid": 0, "ts": 1, "args": {"v": "high"}},
        {"ph": "b", "name": "q", "cat": "request", "id": 2, "pid": 1, "tid": 0, "ts": 1},
        {"ph": "Q", "pid": 1, "ts": 1},
    ]}
    problems = check_trace(bad)
    assert len(problems) == 5, problems


def test_trace_content(exported):
    table, trace = exported
    events = trace["traceEvents"]
    names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert names == {"model bert", "model gpt", "GPU 0"}
    requests = [e for e in events if e["ph"] == "b" and e["name"] == "request"]
    assert len(requests) == table.num_rows
    scheduled = table.column("scheduled_ns").to_numpy()
    first = min(requests, key=lambda e: e["id"])
    assert first["ts"] == pytest.approx(scheduled[0] / 1e3)  # µs
    # Every completed request has queue and service children; cancelled ones do not.
    services = [e for e in events if e["ph"] == "b" and e["name"] == "service"]
    assert len(services) == 580
    queues = [e for e in events if e["ph"] == "b" and e["name"] == "queue"]
    assert len(queues) == 580
    # Worker tracks: one execution slice per batch of two.
    executions = [e for e in events if e["ph"] == "X"]
    assert len(executions) == pytest.approx(290, abs=2)
    assert trace["otherData"]["workers_without_execution_track"] == []
    counters = {e["name"] for e in events if e["ph"] == "C"}
    assert counters >= {"in flight", "queued", "utilisation %", "power W"}
    in_flight = [e["args"]["requests"] for e in events if e["ph"] == "C"
                 and e["name"] == "in flight"]
    assert min(in_flight) >= 0
