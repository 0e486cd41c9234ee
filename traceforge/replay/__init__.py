"""Replay: the precise clock, the open/closed-loop dispatcher and the Backend protocol.

Public API: :class:`ReplayOptions`, :func:`run_replay` (sync, owns the loop), :func:`replay_async`,
:class:`RunSummary`; backends implement :class:`traceforge.replay.protocol.Backend`.
"""

from traceforge.replay.options import ReplayOptions, RunSummary
from traceforge.replay.protocol import Backend, ModelInfo, Outcome, Request
from traceforge.replay.run import default_models, replay_async, run_replay

__all__ = ["Backend", "ModelInfo", "Outcome", "ReplayOptions", "Request", "RunSummary",
           "default_models", "replay_async", "run_replay"]
