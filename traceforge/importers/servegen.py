"""``trace import servegen POOL_DIR``: sample a trace from a ServeGen client pool.

Not a log of requests: the pool holds fitted per-window arrival laws and length distributions
(generate/servegen.py says how they are sampled). One model, named after the pool folder
(``deepseek-r1``) unless ``--models`` renames it. ``--start`` is the pool time to begin at (s
into its day), ``--duration`` the length (default: the rest of the pool's day), ``--rate-scale``
multiplies every client's rate (time is not compressed: the day keeps its shape),
``--time-scale`` stretches the sampled times, ``--clients`` picks ``all`` (default), the N
busiest, or a comma-separated list of client ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from traceforge import __version__
from traceforge.errors import BadInput
from traceforge.generate.servegen import load_pool, sample_pool
from traceforge.importers import _positive
from traceforge.importers.common import parse_model_names
from traceforge.limits import check_seconds, check_seed, scaled_ns
from traceforge.schema import INT32_MAX, TRACE_SCHEMA_ID, Trace, trace_table


def parse_clients(text: str | None, pool) -> str | int | list[int]:
    if text is None or text.strip() == "all":
        return "all"
    text = text.strip()
    try:
        if "," not in text:
            n = int(text)
            if not 1 <= n <= len(pool.clients):
                raise BadInput(f"must be between 1 and {len(pool.clients)} (the pool's clients)",
                               key="--clients", value=text)
            return n
        ids = [int(x) for x in text.split(",")]
    except ValueError:
        raise BadInput("expected all, N, or client ids ID,ID,...", key="--clients",
                       value=text) from None
    missing = sorted(set(ids) - set(pool.clients.tolist()))
    if missing:
        raise BadInput(f"client {missing[0]} is not in the pool", key="--clients", value=text,
                       allowed=", ".join(map(str, pool.clients[:20].tolist())))
    return sorted(set(ids))


def import_servegen(paths: list[Path], *, models, start_s: float, duration_s: float | None,
                    time_scale: float, rate_scale: float, thin: bool, seed: int,
                    clients: str | None, batch_size: int) -> Trace:
    if len(paths) != 1:
        raise BadInput("servegen takes one pool folder", key="SRC",
                       value=" ".join(map(str, paths)))
    folder = paths[0]
    if not folder.is_dir():
        raise BadInput("not a folder (a ServeGen pool is a folder of chunk-K-* files)",
                       source=folder)
    if thin:
        raise BadInput("servegen samples the pool at --rate-scale directly; --thin does not "
                       "apply", key="--thin", value=True)
    start_s = check_seconds(_positive(start_s, "--start", allow_zero=True), key="--start")
    time_scale = _positive(time_scale, "--time-scale")
    rate_scale = _positive(rate_scale, "--rate-scale")
    seed = check_seed(seed)
    if not 1 <= batch_size <= INT32_MAX:
        raise BadInput(f"must be between 1 and {INT32_MAX}", key="--batch-size",
                       value=batch_size)
    names = parse_model_names(",".join(models) if isinstance(models, list) else models)
    if names is not None and len(names) != 1:
        raise BadInput("servegen writes one model: give one name", key="--models",
                       value=",".join(names))
    name = names[0].split("=", 1)[-1] if names else folder.resolve().name
    pool = load_pool(str(folder.resolve()))
    chosen = parse_clients(clients, pool)
    if duration_s is None:
        duration_s = pool.day_s - start_s
        if duration_s <= 0:
            raise BadInput(f"is past the pool's day ({pool.day_s:g} s); give --duration",
                           key="--start", value=start_s)
    else:
        duration_s = check_seconds(_positive(duration_s, "--duration"), key="--duration")
    # the sampled times run over [0, duration_s): refuse a --time-scale that wraps int64 ns
    check_seconds(time_scale, key="--time-scale", seconds=duration_s * time_scale)
    # Refused before sampling (as a spec's servegen rate_scale is): --rate-scale 1e12 asked
    # numpy for 1.24 PiB and ended in a traceback.
    from traceforge.limits import BYTES_PER_REQUEST, check_memory

    mean_rate = float(pool.rate[pool.select(chosen)].sum(axis=0).mean()) * rate_scale
    check_memory(mean_rate * float(duration_s) * BYTES_PER_REQUEST, key="--rate-scale",
                 value=rate_scale, what=f"~{mean_rate * float(duration_s):.3g} requests")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed)))
    sample = sample_pool(pool, rng, float(duration_s), clients=chosen, rate_scale=rate_scale,
                         start_s=start_s)
    if sample.time_s.size == 0:
        raise BadInput("the window holds no requests (every chosen client is idle)",
                       key="--start", value=start_s)
    n = sample.time_s.size
    table = trace_table(scaled_ns(sample.time_s, time_scale * 1e9, key="--time-scale",
                                  value=time_scale),
                        np.zeros(n, np.int32), [name], np.full(n, batch_size),
                        sample.seq_len, sample.max_new_tokens)
    arrival: dict[str, Any] = {"process": "servegen", "pool": str(folder.resolve()),
                               "clients": chosen, "rate_scale": rate_scale,
                               "start_s": start_s, "mode": "renewal"}
    source = {"kind": "import", "format": "servegen", "importer": f"traceforge {__version__}",
              "pool": str(folder.resolve()), "clients": chosen,
              "clients_in_pool": len(pool.clients),
              "options": {"start_s": start_s, "duration_s": duration_s, "seed": seed,
                          "rate_scale": rate_scale, "time_scale": time_scale,
                          "batch_size": batch_size},
              "expected_per_window": sample.expected.round(3).tolist()}
    spec = {"name": f"servegen:{folder.name}", "duration_s": duration_s * time_scale,
            "models": {name: {"arrival": arrival, "batch_size": batch_size}}}
    meta = {"schema": TRACE_SCHEMA_ID, "spec": spec, "seed": seed, "source": source,
            "duration_s": duration_s * time_scale}
    return Trace(table=table, meta=meta, path=None)
