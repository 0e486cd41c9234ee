"""Replay configuration and result: small value classes validated once, at the edge."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from traceforge.errors import BadInput
from traceforge.replay.protocol import ModelInfo

PACERS = ("spin", "thread", "sleep")
EVENT_LOOPS = ("auto", "precise", "asyncio", "uvloop")


@dataclass
class ReplayOptions:
    """How to replay a trace. Flag names in errors match the CLI (``--max-inflight``...).

    ``pacer`` picks how the dispatcher waits for a send time (docs/replay.md): ``spin`` (default:
    loop sleep to ~``spin_margin_ms`` before the target, then yield-spin on the monotonic
    clock), ``thread`` (a pacing thread wakes the loop), ``sleep`` (plain ``asyncio.sleep`` to the
    absolute target: the baseline, and the right choice in virtual-time tests).
    """

    time_scale: float = 1.0
    concurrency: int | None = None
    max_inflight: int | None = None
    timeout_s: float | None = None
    warmup_s: float = 0.0
    progress: bool = False
    models: list[ModelInfo] | None = None
    pacer: str = "spin"
    # How long before a send time the spin pacer stops sleeping and starts spinning. It must
    # cover the loop's timer error (up to 1 ms on stock loops) *and* the time a sleeping process
    # takes to get a CPU back on a busy machine; 0.3 ms on the timerfd loop gave clearly worse
    # p99s than 1.5 ms on the shared 2-vCPU VM (docs/replay.md).
    spin_margin_ms: float = 1.5
    flush_interval_s: float = 0.5
    start_delay_ms: float = 10.0  # lead between "ready" and the first send, so the loop is warm
    print_self_check: bool = False
    # run_replay only. auto = precise: asyncio with timerfd-backed timers (replay/loop.py) where
    # available, else stock asyncio; uvloop (optional dependency) on request.
    event_loop: str = "auto"
    # --duration: stop sending at this many seconds of the schedule; --drain-timeout: then wait
    # at most this long for in-flight requests (None: until they finish).
    duration_s: float | None = None
    drain_timeout_s: float | None = None
    # Sample this Prometheus text endpoint during the run into server_metrics.parquet
    # (replay/scrape.py); warnings, never failures, when it is dead or malformed.
    scrape_url: str | None = None
    scrape_interval_s: float = 0.5
    rate: dict[str, Any] | None = None  # what --rate did (replay/rate.py), kept in run.json
    # During the schedule: automatic GC off, young generations collected by the dispatcher at safe
    # points (dispatcher.py); and the GIL switch interval shortened so a thread holding the GIL
    # (the flusher, a backend's helper thread) hands it back to the dispatcher within this many
    # µs instead of Python's 5 ms. None = leave each as Python has it. Measured in docs/scale.md.
    gc_safe_points: bool = True
    switch_interval_us: float | None = 100.0
    # CPUs for the timeline flusher thread (None: inherit the process's): a dispatcher pinned
    # to one core keeps that core to itself (bench_pacing.py, replay workers).
    flusher_cpus: set[int] | None = None
    # Who writes the timeline parts: "process" (a child process reading the recorder's
    # memory-mapped columns: no GIL shared with the dispatcher) or "thread" (a thread of this
    # process). record/recorder.py; measured in docs/scale.md.
    flusher: str = "process"
    # Hold a 0 µs PM QoS CPU latency request for the schedule (replay/cpuqos.py): idle CPUs
    # poll instead of halting, so a sleeping dispatcher wakes on time. Where the device is not
    # writable, run.json says it was not held. --no-cpu-qos turns it off.
    cpu_qos: bool = True

    def validate(self) -> ReplayOptions:
        def positive(name: str, value: float | None, *, integer: bool = False) -> None:
            if value is None:
                return
            bad = (not isinstance(value, (int, float)) or isinstance(value, bool)
                   or not math.isfinite(value) or value <= 0
                   or (integer and int(value) != value))
            if bad:
                raise BadInput("must be a positive " + ("integer" if integer else "number"),
                               key=name, value=value)

        positive("--time-scale", self.time_scale)
        positive("--concurrency", self.concurrency, integer=True)
        positive("--max-inflight", self.max_inflight, integer=True)  # = --max-concurrency
        positive("--timeout", self.timeout_s)
        positive("--duration", self.duration_s)
        if self.drain_timeout_s is not None and (
                not isinstance(self.drain_timeout_s, (int, float))
                or isinstance(self.drain_timeout_s, bool)
                or not math.isfinite(self.drain_timeout_s) or self.drain_timeout_s < 0):
            raise BadInput("must be >= 0", key="--drain-timeout", value=self.drain_timeout_s)
        if (not isinstance(self.warmup_s, (int, float)) or not math.isfinite(self.warmup_s)
                or self.warmup_s < 0):
            raise BadInput("must be >= 0", key="--warmup", value=self.warmup_s)
        from traceforge.limits import check_seconds

        # Each becomes an int64 ns bound or a timer delay: huge values are refused, not wrapped
        # (or an OverflowError from the event loop's timer).
        for key, value in (("--warmup", self.warmup_s), ("--duration", self.duration_s),
                           ("--drain-timeout", self.drain_timeout_s),
                           ("--timeout", self.timeout_s)):
            if value is not None:
                check_seconds(value, key=key)
        if self.concurrency is not None and self.max_inflight is not None:
            raise BadInput("--concurrency (closed loop) and --max-inflight (open loop cap) "
                           "exclude each other", key="--max-inflight", value=self.max_inflight)
        if self.pacer not in PACERS:
            raise BadInput("unknown pacer", key="--pacer", value=self.pacer,
                           allowed=", ".join(PACERS))
        if self.event_loop not in EVENT_LOOPS:
            raise BadInput("unknown event loop", key="--event-loop", value=self.event_loop,
                           allowed=", ".join(EVENT_LOOPS))
        if self.event_loop == "uvloop":
            import importlib.util

            if importlib.util.find_spec("uvloop") is None:
                raise BadInput("uvloop is not installed (pip install uvloop)",
                               key="--event-loop", value="uvloop")
        from traceforge.replay.scrape import check_url

        check_url(self.scrape_url, self.scrape_interval_s)
        if not (0 <= self.spin_margin_ms <= 100):
            raise BadInput("must be in [0, 100]", key="spin_margin_ms", value=self.spin_margin_ms)
        if self.switch_interval_us is not None and not (1 <= self.switch_interval_us <= 100_000):
            raise BadInput("must be in [1, 100000] µs", key="switch_interval_us",
                           value=self.switch_interval_us)
        from traceforge.record.recorder import FLUSHERS

        if self.flusher not in FLUSHERS:
            raise BadInput("unknown flusher", key="--flusher", value=self.flusher,
                           allowed=", ".join(FLUSHERS))
        if not (0 < self.flush_interval_s <= 1.0):
            raise BadInput("must be in (0, 1] (parts are closed at least every second)",
                           key="flush_interval_s", value=self.flush_interval_s)
        return self

    @property
    def loop_mode(self) -> str:
        return "closed" if self.concurrency else "open"

    @property
    def inflight_cap(self) -> int | None:
        return self.concurrency or self.max_inflight

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        # Shapes: how many, not the list (one entry per distinct shape of the trace: tens of
        # thousands for a real trace, which made run.json megabytes; the trace has them).
        out["models"] = None if self.models is None else [
            {**asdict(m), "shapes": None if m.shapes is None else len(m.shapes)}
            for m in self.models]
        out["loop"] = self.loop_mode
        from traceforge.redact import redact_url

        out["scrape_url"] = redact_url(self.scrape_url)  # run.json: no credentials
        return out


@dataclass
class RunSummary:
    run_dir: Path
    status: str  # complete | interrupted | failed
    counts: dict[str, int] = field(default_factory=dict)
    self_check: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0
    error: str | None = None  # run.json's error (a failed run)
