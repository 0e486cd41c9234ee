"""Backends implementing ``traceforge.replay.protocol.Backend``: null, http, resident.

Each backend module exposes ``from_options(opts: dict) -> Backend`` for the CLI.
"""
