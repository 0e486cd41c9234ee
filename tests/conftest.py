"""Shared test fixtures. Fakes live in the package (the null backend); this file only locates
shared data and offers small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# ../shared/data beside the clone (CI); TRACEFORGE_SHARED_DATA points elsewhere (a worktree).
SHARED_DATA = Path(os.environ.get("TRACEFORGE_SHARED_DATA") or REPO.parent / "shared" / "data")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # The parallel phase (`make test`): the other test processes keep both cores busy, and CPU
    # resident workers at their replay priority (nice 10 + SCHED_IDLE, so the pacer wins a
    # core) starve behind them -- a 10 s resident test took 111 s, 196 s beside three busy
    # loops. Normal priority here; the test of the priority itself clears these, and the
    # realtime phase (one test at a time, no xdist) keeps the replay's defaults.
    os.environ.setdefault("TRACEFORGE_CPU_WORKER_NICE", "0")
    os.environ.setdefault("TRACEFORGE_CPU_SCHED_IDLE", "0")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not present at {SHARED_DATA}")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # torch absent or broken: no GPU tests
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="no CUDA device on this machine")
    for item in items:
        # the marker, not ``"gpu" in item.keywords``: keywords hold the names of parent nodes
        # too, so a checkout in a folder named gpu skipped every test
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
