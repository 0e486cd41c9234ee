"""Backends implementing ``traceforge.replay.protocol.Backend``: null, http, resident.

Each backend module exposes ``from_options(opts: dict) -> Backend`` for the CLI.
"""

from __future__ import annotations

import importlib
from typing import Any

BACKENDS = ("null", "http", "resident")


def make_backend(name: str, opts: dict[str, Any]):
    """The backend ``name`` built from its CLI options (each replay worker builds its own)."""
    if name not in BACKENDS:
        from traceforge.errors import BadInput

        raise BadInput("unknown backend", key="--backend", value=name, allowed=", ".join(BACKENDS))
    return importlib.import_module(f"traceforge.backends.{name}").from_options(opts)
