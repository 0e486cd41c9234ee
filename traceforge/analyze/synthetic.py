"""Run directories with known latency distributions, for tests and benchmarks of analyze/.

Written through the real recorder (``RunManifest``, ``TimelineWriter``), so they have exactly the
layout a replay writes. Each model's stages are drawn from stated distributions, so a test knows
the true quantiles: send lag ~ Exp(send_lag_ms), queue wait ~ Exp(queue_ms), service ~
LogNormal(median=service_ms, sigma), return transport ~ Exp(transport_ms).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from traceforge.record import RunManifest, TimelineWriter
from traceforge.schema import TIMELINE_SCHEMA


@dataclass(frozen=True)
class SyntheticModel:
    name: str
    rate: float = 100.0  # Poisson arrivals, req/s
    service_ms: float = 10.0  # median of the lognormal service time
    sigma: float = 0.5
    queue_ms: float = 2.0
    send_lag_ms: float = 0.05
    transport_ms: float = 0.3
    max_new_tokens: int = 0  # > 0: generative rows with first_token/tokens_out/itl_ns
    slo_ms: float | None = None
    gpu: bool = False


def synthetic_timeline(models: list[SyntheticModel], *, requests: int, seed: int = 0,
                       error_rate: float = 0.0, with_itl: bool = True) -> pa.Table:
    """A timeline table of ``requests`` rows split across ``models`` by their rates."""
    rng = np.random.default_rng(seed)
    rates = np.array([m.rate for m in models], dtype=float)
    code = rng.choice(len(models), size=requests, p=rates / rates.sum())
    gaps = rng.exponential(1e9 / rates.sum(), size=requests)
    scheduled = np.cumsum(gaps).astype(np.int64) + 1_000_000  # first request ~1 ms into the run

    def per_model(attr: str) -> np.ndarray:
        return np.array([getattr(m, attr) for m in models], dtype=float)[code]

    ms = 1e6
    send_lag = rng.exponential(per_model("send_lag_ms") * ms).astype(np.int64)
    queue = rng.exponential(per_model("queue_ms") * ms).astype(np.int64)
    service = (per_model("service_ms") * ms
               * np.exp(per_model("sigma") * rng.standard_normal(requests))).astype(np.int64)
    service = np.maximum(service, 1)
    transport = rng.exponential(per_model("transport_ms") * ms).astype(np.int64)
    sent = scheduled + send_lag
    service_start = sent + queue
    service_end = service_start + service
    done = service_end + transport

    status = np.full(requests, "ok", dtype=object)
    if error_rate > 0:
        status[rng.random(requests) < error_rate] = "error"
    failed = status != "ok"
    max_new = per_model("max_new_tokens").astype(np.int32)
    generative = max_new > 0
    tokens_out = np.where(generative, max_new, 0).astype(np.int32)
    first_token = np.where(generative, service_start + service // np.maximum(tokens_out, 1), 0)
    gpu_ns = np.where(per_model("gpu").astype(bool), (service * 0.8).astype(np.int64), 0)

    def nullable(values: np.ndarray, valid: np.ndarray, typ: pa.DataType) -> pa.Array:
        return pa.array(values, type=typ, mask=~valid)

    names = np.array([m.name for m in models], dtype=object)[code]
    columns: dict[str, Any] = {
        "request_id": pa.array(np.arange(requests, dtype=np.int64)),
        "model": pa.array(names, type=pa.string()),
        "batch_size": pa.array(np.ones(requests, dtype=np.int32)),
        "seq_len": pa.array(np.full(requests, 128, dtype=np.int32)),
        "max_new_tokens": pa.array(max_new),
        "scheduled_ns": pa.array(scheduled),
        "sent_ns": pa.array(sent),
        "service_start_ns": pa.array(service_start),
        "first_token_ns": nullable(first_token, generative & ~failed, pa.int64()),
        "service_end_ns": nullable(service_end, ~failed, pa.int64()),
        "done_ns": pa.array(done),
        "status": pa.array(status, type=pa.string()),
        "error": nullable(np.full(requests, "synthetic failure", dtype=object), failed,
                          pa.string()),
        "gpu_ns": nullable(gpu_ns, gpu_ns > 0, pa.int64()),
        "tokens_out": nullable(tokens_out, generative & ~failed, pa.int32()),
        "worker": pa.array(np.char.add("w", code.astype(str)).astype(object), type=pa.string()),
        "warmup": pa.array(np.zeros(requests, dtype=bool)),
    }
    if with_itl and np.any(generative):
        # Equal gaps filling done - first_token: exact TPOT/ITL are then known to the test.
        steps = np.maximum(tokens_out.astype(np.int64) - 1, 0)
        gap = np.where(steps > 0, (done - first_token) // np.maximum(steps, 1), 0)
        offsets = np.concatenate([[0], np.cumsum(steps)])
        flat = np.repeat(gap, steps)
        valid = generative & ~failed
        columns["itl_ns"] = pa.ListArray.from_arrays(
            pa.array(offsets.astype(np.int32)), pa.array(flat, type=pa.int64()),
            mask=pa.array(~valid))
    table = pa.table(columns)
    for field in TIMELINE_SCHEMA:
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(requests, field.type))
    return table.select(TIMELINE_SCHEMA.names).cast(TIMELINE_SCHEMA)


def write_synthetic_run(run_dir: Path | str, models: list[SyntheticModel], *, requests: int,
                        seed: int = 0, status: str = "complete", error_rate: float = 0.0,
                        table: pa.Table | None = None, self_check: dict | None = None,
                        backend: str = "synthetic") -> Path:
    """Write run.json + timeline/ for a synthetic run; returns the run directory."""
    run_dir = Path(run_dir)
    if table is None:
        table = synthetic_timeline(models, requests=requests, seed=seed, error_rate=error_rate)
    spec = {"name": "synthetic", "models": {
        m.name: {"arrival": {"process": "poisson", "rate": m.rate},
                 **({"slo_ms": m.slo_ms} if m.slo_ms is not None else {})} for m in models}}
    manifest = RunManifest(run_dir, backend=backend, options={"seed": seed},
                           trace={"path": None, "sha256": None,
                                  "meta": {"schema": "traceforge.trace/1", "spec": spec,
                                           "seed": seed, "source": {"kind": "synthetic"}}})
    if self_check is not None:
        manifest.update(self_check=self_check)
    manifest.write()
    writer = TimelineWriter(run_dir)
    writer.write_table(table)
    writer.close()
    counts = {row["values"]: row["counts"]
              for row in pc.value_counts(table.column("status")).to_pylist()}
    manifest.finish(status, counts=counts)
    return run_dir
