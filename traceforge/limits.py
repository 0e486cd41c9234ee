"""The two hard limits every stage that computes times or allocates columns checks first.

- **Time range**: every time a trace or timeline holds is int64 nanoseconds, so no time may
  exceed ``2**63 - 1`` ns (about 292 years). A float converted past that wraps silently in
  numpy, so every product of a time and a user factor (spec durations, ``--time-scale``,
  ``--rate-scale``, ``--rate``, importer time columns, ``--start``) goes through
  :func:`check_seconds` or :func:`scaled_ns` and is refused naming the key instead.
- **Memory**: :func:`check_memory` compares an estimate in bytes with the memory the system
  says is available and refuses *before* allocating. ``BYTES_PER_REQUEST`` is the measured
  peak of ``trace gen`` per generated request (71–73 B for the demo and correlated-bursts
  specs at 5–10 M requests, ``ru_maxrss`` delta; 75 B with a margin).
  ``BYTES_PER_SESSION_TURN`` is the same peak per row of a model with sessions, whose
  expansion (turn numbering, think-time and context cumulative sums, the sort by time) holds
  about a dozen more per-row arrays: 209 B per row at 1–4 M rows (10 turns per session,
  slope of the ``ru_maxrss`` delta, where the same spec without sessions measured 106 B).
"""

from __future__ import annotations

import os

import numpy as np

from traceforge.errors import BadInput

INT64_MAX = 2**63 - 1
# Largest float that converts to int64 without wrapping (floats just below 2**63 are exact
# multiples of 1024, so "< 2**63" is the whole condition).
_NS_CEILING = float(2**63)
MAX_TIME_S = INT64_MAX / 1e9  # about 9.22e9 s = 292 years
BYTES_PER_REQUEST = 75
BYTES_PER_SESSION_TURN = 210
MEMORY_SHARE = 0.8  # of MemAvailable: leave room for the interpreter and the writer


def range_message(seconds: float) -> str:
    return (f"gives times up to {seconds:.3g} s, beyond the int64-nanosecond range of "
            f"the trace ({MAX_TIME_S:.3g} s, about 292 years)")


def check_seconds(value: float, *, key: str, source: object = None, shown: object = None,
                  seconds: float | None = None) -> float:
    """Refuse a time (or a time that ``value`` leads to: ``seconds``) outside int64 ns."""
    seconds = value if seconds is None else seconds
    if not np.isfinite(seconds) or abs(seconds) * 1e9 >= _NS_CEILING:
        raise BadInput(range_message(seconds), source=source, key=key,
                       value=value if shown is None else shown)
    return value


def check_service_ms(service_ms: float, *, dist: str, rows: float, span_s: float,
                     key: str = "--service-ms", source: object = None) -> None:
    """Null/simulated service: even with every one of ``rows`` requests queued behind the
    others, the last must end inside int64 ns (exponential service: the sum of n draws stays
    below twice its mean, plus a tail allowance)."""
    worst_s = service_ms / 1e3 * (rows * (1 if dist == "const" else 2) + 50) + span_s
    check_seconds(service_ms, key=key, source=source, seconds=worst_s)


def check_seed(seed: object, *, key: str = "--seed", source: object = None) -> int:
    """A random seed: an integer >= 0 (numpy refuses negative seeds with a traceback)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise BadInput("must be an integer >= 0", source=source, key=key, value=seed)
    return int(seed)


def scaled_ns(ns: np.ndarray, factor: float, *, key: str, value: object,
              source: object = None) -> np.ndarray:
    """``rint(ns * factor)`` as a new int64 array, refusing (naming ``key``) where it would
    wrap."""
    ns = np.asarray(ns)
    if factor == 1.0 and ns.dtype == np.int64:
        return ns.copy()
    if ns.size:
        top = float(np.max(np.abs(ns))) * factor
        if not np.isfinite(top):  # nan (inf - inf upstream) reads as "beyond any range"
            top = float("inf")
        if top >= _NS_CEILING:
            raise BadInput(range_message(top / 1e9), source=source, key=key, value=value)
    return np.rint(ns * factor).astype(np.int64)


def seconds_to_ns(times_s: np.ndarray, *, key: str, value: object,
                  source: object = None) -> np.ndarray:
    """Float seconds -> int64 ns, refusing values beyond the range instead of wrapping."""
    return scaled_ns(np.asarray(times_s, dtype=np.float64), 1e9, key=key, value=value,
                     source=source)


def available_memory() -> int | None:
    """Bytes the system can give without swapping: MemAvailable from /proc/meminfo (Linux),
    else free pages × page size; None where neither exists."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def memory_budget() -> float:
    avail = available_memory()
    return float("inf") if avail is None else avail * MEMORY_SHARE


def check_memory(nbytes: float, *, key: str, value: object, what: str,
                 source: object = None) -> None:
    """Refuse before allocating ``nbytes`` (an estimate) when it exceeds the budget."""
    budget = memory_budget()
    if not nbytes <= budget:  # also catches nan/inf estimates
        raise BadInput(f"{what} needs about {_gib(nbytes)} of memory; "
                       f"{_gib(budget)} is available", source=source, key=key, value=value)


def _gib(n: float) -> str:
    if not np.isfinite(n):
        return "unbounded"
    return f"{n / 2**30:.3g} GiB" if n >= 2**27 else f"{n / 2**20:.3g} MiB"


class TooManyArrivals(Exception):
    """Raised by a sampler whose realised arrivals (or state segments) exceed the memory
    budget; the generator turns it into a BadInput naming the model's key."""

    def __init__(self, count: int, what: str = "arrivals") -> None:
        super().__init__(f"more than {count:,} {what}")
        self.count = count
        self.what = what


def max_elements(bytes_each: float = BYTES_PER_REQUEST) -> int:
    budget = memory_budget()
    return int(budget / bytes_each) if np.isfinite(budget) else 2**62
