"""The Backend protocol, owned by the dispatcher: backends implement it and import nothing else
from ``traceforge.replay``.

A backend receives one :class:`Request` per trace row and returns an :class:`Outcome`. The
dispatcher stamps ``scheduled_ns``, ``sent_ns`` and ``done_ns`` itself; the backend fills in what
only it can know (worker-side times on the run clock, GPU time, batching, tokens). A backend
reports per-request failure by returning ``Outcome(status="error", error=...)``; raising is also
caught and recorded, but never stops the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from traceforge.clock import RunClock


@dataclass(slots=True)
class ModelInfo:
    name: str  # the model name used in the trace
    zoo: str | None = None  # model-zoo entry (resident backend), from the spec or --zoo
    # Distinct (batch_size, seq_len, max_new_tokens) the trace asks of this model (filled in by
    # replay before backend.start: the resident backend pre-warms their buckets).
    shapes: list[tuple[int, int, int]] | None = None
    seq_buckets: list[int] | None = None  # per-model padding buckets from the spec


@dataclass(slots=True)
class Request:
    request_id: int
    model: str
    batch_size: int
    seq_len: int
    max_new_tokens: int
    scheduled_ns: int
    session_id: int | None = None  # multi-turn sessions (docs/replay.md); None = no session
    turn: int | None = None


@dataclass(slots=True)
class Outcome:
    status: str = "ok"
    error: str | None = None
    service_start_ns: int | None = None
    first_token_ns: int | None = None
    service_end_ns: int | None = None
    gpu_ns: int | None = None
    batch_id: int | None = None
    batched_with: int | None = None
    tokens_out: int | None = None
    worker: str | None = None
    itl_ns: list[int] | None = None
    bucket_seq_len: int | None = None  # the padded shape that ran (resident buckets)
    bucket_batch_size: int | None = None
    # HTTP: when the request was written (on the run clock; the timeline's sent_ns, replacing
    # the dispatcher's hand-over time), the wait for a pooled connection and the time to open
    # one; a stream that ended short without [DONE] (status stays ok).
    wire_sent_ns: int | None = None
    conn_wait_ns: int | None = None
    connect_ns: int | None = None
    truncated: bool | None = None


@runtime_checkable
class Backend(Protocol):
    name: str

    async def start(self, models: list[ModelInfo], clock: RunClock) -> None:
        """Make every model ready; raise ``BadInput`` for configuration problems."""

    async def submit(self, request: Request) -> Outcome:
        """Serve one request; cancellation (timeout, Ctrl-C) may interrupt it."""

    async def stop(self) -> None:
        """Release everything; must be safe to call after a failed ``start``."""

    def describe(self) -> dict[str, Any]:
        """Settings and environment for run.json (mode, device, GPU, versions...).

        Optional: ``secrets() -> list[str]``, values the recorder masks in every error row
        (redact.py); a backend need not scrub error text itself."""
