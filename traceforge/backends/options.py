"""Typed backend options: one dataclass per backend, one field per option.

The field name is the option's name everywhere: the CLI flag with ``-`` for ``_`` (``--max-batch``
↔ ``max_batch``), a study's ``[options]`` key or ``[axes]`` name, and the key in run.json. A study
axis is "a field of the backend's options", so an unknown axis is one line listing the fields.

:func:`option_fields` lists a backend's fields (replay-level fields included for backends that
replay); :func:`coerce_options` checks the types of a plain dict against them. Range and
enumeration checks stay where they were (each backend's constructor / ``from_options`` and
``simulate``), so the CLI and a study refuse exactly the same values.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from traceforge.errors import BadInput


@dataclass
class ReplayFields:
    """Options of the replay itself (every backend but ``simulate``)."""

    time_scale: float = 1.0
    concurrency: int | None = None
    max_inflight: int | None = None
    timeout_s: float | None = None
    warmup_s: float = 0.0
    pacer: str = "spin"
    event_loop: str = "auto"
    scrape_url: str | None = None
    scrape_interval_s: float = 0.5
    duration_s: float | None = None  # --duration: stop sending at S s of the schedule
    drain_timeout_s: float | None = None  # --drain-timeout: then in-flight -> cancelled
    cpu_qos: bool = True  # --cpu-qos/--no-cpu-qos: PM QoS latency request (replay/cpuqos.py)
    flusher: str = "process"  # --flusher process|thread: who writes the parts (record/recorder.py)


@dataclass
class NullOptions:
    servers: int = 1
    service_ms: float = 10.0
    service_dist: str = "exp"
    seed: int = 0


@dataclass
class HttpOptions:
    url: str | None = None
    api: str = "openai-completions"
    api_key_env: str | None = None  # the variable's name; the key itself never reaches disk
    model_name: dict[str, str] = field(default_factory=dict)
    body_template: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    stream: bool = True
    ignore_eos: bool = True
    tokenizer: str | None = None
    max_connections: int | None = None  # None: derived from the open-file limit
    prompt_seed: int | None = None  # None: a fresh seed per run (recorded in run.json)


@dataclass
class ResidentOptions:
    mode: str = "exclusive"
    device: str = "cpu"
    sm_percent: dict[str, int] = field(default_factory=dict)
    max_batch: int = 1
    max_wait_ms: float = 0.0
    zoo: dict[str, str] = field(default_factory=dict)
    telemetry: bool = True
    # graphs | compiled | eager (None: the backend's default for the device)
    compile: str | None = None
    seq_buckets: list[int] | None = None  # seq_len padding buckets (None: the default ladder)
    prewarm: bool = True
    # exclusive/streams: an idle executor's graph-captured requests are launched and completed
    # by the event loop's thread (no thread hand-off; executor.py)
    inline: bool = True


@dataclass
class SimulateOptions:
    servers: int = 1
    service_ms: float = 10.0
    service_dist: str = "exp"
    profile: str | None = None
    mode: str | None = None
    max_batch: int = 1
    max_wait_ms: float = 0.0
    seed: int = 0
    cold_start: bool | None = None  # None: simulate()'s default
    time_scale: float = 1.0
    warmup_s: float = 0.0
    duration_s: float | None = None  # as replay's --duration / --drain-timeout
    drain_timeout_s: float | None = None
    time_slice: str | None = None  # --time-slice (timeslice with a profile): "Q[,S]" or "none"
    zoo: dict[str, str] = field(default_factory=dict)  # --zoo: model -> profile entry


BACKEND_OPTIONS: dict[str, tuple[type, ...]] = {
    "null": (NullOptions, ReplayFields),
    "http": (HttpOptions, ReplayFields),
    "resident": (ResidentOptions, ReplayFields),
    "simulate": (SimulateOptions,),
}
BACKENDS = tuple(BACKEND_OPTIONS)


def option_fields(backend: str) -> dict[str, tuple[Any, Any]]:
    """``{name: (type, default)}`` for every option of ``backend``, in declaration order."""
    out: dict[str, tuple[Any, Any]] = {}
    for cls in BACKEND_OPTIONS[backend]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = (f.default_factory() if f.default_factory is not dataclasses.MISSING
                       else f.default)
            out[f.name] = (hints[f.name], default)
    return out


def split_options(backend: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Defaults filled in, one dict per options class of ``backend`` (backend's, then replay's)."""
    out = []
    for cls in BACKEND_OPTIONS[backend]:
        names = [f.name for f in dataclasses.fields(cls)]
        out.append(dataclasses.asdict(cls(**{k: v for k, v in values.items() if k in names})))
    return out


def _type_name(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    origin = typing.get_origin(tp)
    plural = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}
    if origin is dict:
        return f"a table of {plural.get(args[1], str(args[1]))}"
    if origin is list:
        return f"a list of {plural.get(args[0], str(args[0]))}"
    if args and origin is not dict:
        return _type_name(args[0]) + " (or omit it)"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, str(tp))


def _check(tp: Any, value: Any) -> tuple[bool, Any]:
    """(ok, value converted) for one value against one annotation."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return True, None
        for arg in args:
            if arg is not type(None):
                ok, out = _check(arg, value)
                if ok:
                    return True, out
        return False, value
    if origin is dict:
        if not isinstance(value, dict):
            return False, value
        out = {}
        for k, v in value.items():
            ok, conv = _check(args[1], v)
            if not ok or not isinstance(k, str):
                return False, value
            out[k] = conv
        return True, out
    if origin is list:
        if not isinstance(value, list):
            return False, value
        out_list = []
        for v in value:
            ok, conv = _check(args[0], v)
            if not ok:
                return False, value
            out_list.append(conv)
        return True, out_list
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if tp is str:
        return isinstance(value, str) and value != "", value
    return True, value


def coerce_options(backend: str, values: dict[str, Any], *, source: object,
                   keys: dict[str, str]) -> dict[str, Any]:
    """Type-check ``values`` against ``backend``'s fields. ``keys[name]`` is the key path used
    in errors (``options.device``, ``axes.mode[2]``...). Unknown names list the fields."""
    fields = option_fields(backend)
    out = {}
    for name, value in values.items():
        if name not in fields:
            raise BadInput(f"not an option of the {backend} backend", source=source,
                           key=keys.get(name, name), value=name, allowed=", ".join(fields))
        ok, conv = _check(fields[name][0], value)
        if not ok:
            raise BadInput(f"must be {_type_name(fields[name][0])}", source=source,
                           key=keys.get(name, name), value=value)
        out[name] = conv
    return out
