"""``--rate`` (vLLM ``bench serve`` / guidellm style) and the schedule's range check.

``--rate R``: one factor for the whole trace, ``time_scale = mean_rate / R`` with
``mean_rate = rows / window`` (the trace's ``duration_s``, else its last arrival) — the same
arrivals, closer together or further apart, so the burstiness (CV, the shape of the bursts)
is kept. ``--rate MODEL=R,...``: each listed model's arrivals are rescaled by its own factor
(models not listed keep their times). The streams then interleave differently, so the rows are
re-merged by their new times (stable: ties keep trace order); **every row keeps the trace's
request_id**, so a timeline row still names the trace row it replayed, and its
``scheduled_ns`` is that row's rescaled arrival.

:func:`check_schedule` refuses (exit 2, naming the key) a schedule whose last send lies beyond
int64 nanoseconds or beyond ``MAX_SCHEDULE_S`` — a replay that would wait for a year sends
nothing anyone will see (``--time-scale 1e12`` used to wait forever).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa

from traceforge.errors import BadInput
from traceforge.limits import check_seconds
from traceforge.schema import Trace

MAX_SCHEDULE_S = 366 * 86400.0  # a replay (or simulation) schedule longer than a year


def parse_rate(text: str, key: str = "--rate") -> float | dict[str, float]:
    """``"R"`` -> R; ``"A=R1,B=R2"`` -> {A: R1, B: R2}; each rate finite and > 0."""
    def number(value: str, shown: str) -> float:
        try:
            r = float(value)
        except ValueError:
            raise BadInput("expected R or MODEL=R[,MODEL=R...] (requests per second)",
                           key=key, value=shown) from None
        if not (math.isfinite(r) and r > 0):
            raise BadInput("must be a positive number of requests per second", key=key,
                           value=shown)
        return r

    text = text.strip()
    if "=" not in text:
        return number(text, text)
    out: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = (s.strip() for s in item.partition("="))
        if not sep or not name or not value:
            raise BadInput("expected R or MODEL=R[,MODEL=R...]", key=key, value=text)
        if name in out:
            raise BadInput("model given twice", key=key, value=name)
        out[name] = number(value, item)
    return out


def trace_window_s(trace: Trace) -> float:
    """The window the trace's mean rate is measured over: its ``duration_s``, else the span
    to its last arrival."""
    window = (trace.meta or {}).get("duration_s")
    if isinstance(window, int | float) and math.isfinite(window) and window > 0:
        return float(window)
    arrival = trace.table.column("arrival_ns")
    return float(arrival[-1].as_py()) / 1e9 if len(arrival) else 0.0


def apply_rate(trace: Trace, rate: str | None, time_scale: float,
               key: str = "--rate") -> tuple[Trace, float, dict[str, Any] | None]:
    """(trace to replay, time_scale to use, what ``--rate`` did — for run.json) ."""
    if rate is None:
        return trace, time_scale, None
    if time_scale != 1.0:
        raise BadInput("give either --rate or --time-scale, not both", key=key, value=rate)
    wanted = parse_rate(rate, key)
    window = trace_window_s(trace)
    n = trace.table.num_rows
    if n == 0 or window <= 0:
        raise BadInput("the trace has no arrivals spread over time to rescale", key=key,
                       value=rate)
    if not isinstance(wanted, dict):
        mean = n / window
        factor = mean / wanted
        # named --rate here, not the --time-scale it becomes (the user gave no time scale)
        last = float(trace.table.column("arrival_ns")[-1].as_py()) * factor / 1e9
        check_schedule_seconds(last, key=key, value=rate)
        return trace, factor, {"rate": wanted, "trace_mean_rate": mean, "time_scale": factor}

    models = trace.table.column("model").combine_chunks().dictionary_encode()
    names = models.dictionary.to_pylist()
    codes = models.indices.to_numpy(zero_copy_only=False)
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise BadInput("model not in the trace", key=key, value=unknown[0],
                       allowed=", ".join(sorted(names)))
    counts = np.bincount(codes, minlength=len(names))
    factors = np.ones(len(names))
    per_model = {}
    for i, name in enumerate(names):
        if name in wanted:
            mean = counts[i] / window
            factors[i] = mean / wanted[name]
            per_model[name] = {"rate": wanted[name], "trace_mean_rate": mean,
                               "time_scale": factors[i]}
    arrival = trace.table.column("arrival_ns").to_numpy().astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # inf is refused just below
        scaled = arrival * factors[codes]
    top = float(scaled.max())
    worst = names[int(np.argmax(factors))]
    check_seconds(rate, key=key, seconds=top / 1e9)
    check_schedule_seconds(top / 1e9, key=key, value=f"{worst}={wanted.get(worst, '')}")
    new_ns = np.rint(scaled).astype(np.int64)
    order = np.argsort(new_ns, kind="stable")
    table = trace.table.take(pa.array(order))
    table = table.set_column(table.schema.get_field_index("arrival_ns"),
                             table.schema.field("arrival_ns"), pa.array(new_ns[order]))
    return replace(trace, table=table), 1.0, {"rate": wanted, "per_model": per_model,
                                              "request_ids": "kept from the trace; rows "
                                                             "re-merged by rescaled time"}


def check_schedule_seconds(last_s: float, *, key: str, value: object) -> None:
    check_seconds(value, key=key, seconds=last_s)
    if last_s > MAX_SCHEDULE_S:
        raise BadInput(f"the last request would be sent {last_s:.3g} s after the start "
                       f"(over a year); that replay would sit waiting", key=key, value=value)


def check_schedule(trace: Trace, time_scale: float, *, key: str = "--time-scale",
                   value: object = None) -> None:
    """Refuse a schedule whose last send time wraps int64 ns or lies over a year away."""
    arrival = trace.table.column("arrival_ns")
    if len(arrival) == 0:
        return
    last = float(arrival[-1].as_py()) * time_scale / 1e9
    check_schedule_seconds(last, key=key, value=time_scale if value is None else value)
