"""A checker for the Chrome Trace Event Format, written from the spec (Google doc "Trace Event
Format", JSON Object Format), independent of the exporter it tests.

Rules checked (per the spec):
* the file is a JSON object with a ``traceEvents`` array (or a bare array of events);
  ``displayTimeUnit``, if present, is "ms" or "ns";
* every event is an object with a one-character ``ph`` from the known phases;
* ``pid`` and ``tid`` are integers (or strings, which the spec allows) on every event;
* ``ts`` is a finite number of microseconds on every event except metadata (``M``);
* ``X`` (complete) events carry ``dur`` >= 0; ``B``/``E`` balance per thread;
* ``b``/``e``/``n`` (nestable async) carry ``cat`` and ``id``; per (cat, id) the begins and ends
  nest properly (LIFO by name), every ``e`` has an open ``b`` and ``ts(e) >= ts(b)``, and nothing
  stays open;
* ``C`` (counter) events carry a ``name`` and ``args`` whose values are all numbers;
* ``M`` (metadata) events have a known name and ``args.name`` (or ``args.sort_index``);
* ``X`` events on one thread nest (no partial overlap), since viewers drop those that do not.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

PHASES = set("BEXiIbneCMsftPOND") | {"(", ")"}
TOLERANCE_US = 0.0005
METADATA_NAMES = {"process_name", "process_labels", "process_sort_index", "thread_name",
                  "thread_sort_index", "process_uptime_seconds", "num_cpus"}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_trace(obj: Any) -> list[str]:
    """Return a list of problems (empty when the trace conforms)."""
    problems: list[str] = []
    if isinstance(obj, dict):
        events = obj.get("traceEvents")
        if not isinstance(events, list):
            return ["top-level object has no traceEvents array"]
        unit = obj.get("displayTimeUnit")
        if unit is not None and unit not in ("ms", "ns"):
            problems.append(f"displayTimeUnit {unit!r} not ms|ns")
    elif isinstance(obj, list):
        events = obj
    else:
        return ["trace is neither an object nor an array"]

    open_async: dict[tuple, list[tuple[str, float]]] = defaultdict(list)
    open_sync: dict[tuple, list[float]] = defaultdict(list)
    complete: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for i, ev in enumerate(events):
        if len(problems) > 20:
            break
        where = f"event {i}"
        if not isinstance(ev, dict):
            problems.append(f"{where}: not an object")
            continue
        ph = ev.get("ph")
        if ph not in PHASES:
            problems.append(f"{where}: unknown ph {ph!r}")
            continue
        for key in ("pid", "tid"):
            if key in ev and not isinstance(ev[key], int | str):
                problems.append(f"{where}: {key} is not an int or string")
        if "pid" not in ev:
            problems.append(f"{where}: missing pid")
        ts = ev.get("ts")
        if ph != "M" and not _number(ts):
            problems.append(f"{where}: ts missing or not a finite number ({ts!r})")
            continue
        if ph not in ("M",) and not isinstance(ev.get("name", ""), str):
            problems.append(f"{where}: name is not a string")
        thread = (ev.get("pid"), ev.get("tid"))
        if ph == "X":
            dur = ev.get("dur")
            if not _number(dur) or dur < 0:
                problems.append(f"{where}: X without a dur >= 0")
            else:
                complete[thread].append((ts, ts + dur))
        elif ph == "B":
            open_sync[thread].append(ts)
        elif ph == "E":
            if not open_sync[thread]:
                problems.append(f"{where}: E without B on {thread}")
            elif ts < open_sync[thread].pop():
                problems.append(f"{where}: E before its B")
        elif ph in ("b", "e", "n"):
            if "cat" not in ev or not isinstance(ev["cat"], str):
                problems.append(f"{where}: async event without a cat")
            if "id" not in ev and "id2" not in ev:
                problems.append(f"{where}: async event without an id")
                continue
            key = (ev.get("cat"), str(ev.get("id", ev.get("id2"))))
            if ph == "b":
                open_async[key].append((ev.get("name"), ts))
            elif ph == "e":
                stack = open_async[key]
                if not stack:
                    problems.append(f"{where}: e without an open b for {key}")
                    continue
                name, begin = stack.pop()
                if ev.get("name") not in (None, name):
                    problems.append(f"{where}: e {ev.get('name')!r} closes b {name!r} "
                                    f"(improper nesting) for {key}")
                if ts < begin:
                    problems.append(f"{where}: e at {ts} before its b at {begin}")
        elif ph == "C":
            args = ev.get("args")
            if not isinstance(ev.get("name"), str):
                problems.append(f"{where}: counter without a name")
            if not isinstance(args, dict) or not args:
                problems.append(f"{where}: counter without args")
            elif not all(_number(v) for v in args.values()):
                problems.append(f"{where}: counter args not all numbers: {args}")
        elif ph == "M":
            name, args = ev.get("name"), ev.get("args")
            if name not in METADATA_NAMES:
                problems.append(f"{where}: unknown metadata name {name!r}")
            elif not isinstance(args, dict) or not ("name" in args or "sort_index" in args
                                                    or "labels" in args):
                problems.append(f"{where}: metadata without args.name/sort_index")
    for key, stack in open_async.items():
        if stack:
            problems.append(f"async {key} left open: {[n for n, _ in stack]}")
            break
    for thread, stack in open_sync.items():
        if stack:
            problems.append(f"B events left open on {thread}")
    for thread, spans in complete.items():
        spans.sort(key=lambda s: (s[0], -s[1]))
        stack: list[float] = []
        for begin, end in spans:
            # ts/dur are decimal µs: allow half a nanosecond of float rounding (viewers parse
            # them to integer ns).
            while stack and stack[-1] <= begin + TOLERANCE_US:
                stack.pop()
            if stack and end > stack[-1] + TOLERANCE_US:
                problems.append(f"X events partially overlap on {thread} at ts {begin}")
                break
            stack.append(end)
    return problems
