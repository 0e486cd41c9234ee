"""The executor interface without a shared filesystem: groups pickled to another process, run
there with ``run_group`` into that process's own scratch directory, run directories sent back
as bytes (``pack_run_dir``) and landed by the driver (``unpack_run_dir``). The result must equal
the in-process LocalExecutor's, cell for cell."""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import tempfile
import tomllib
from pathlib import Path

from study_scale_helpers import two_mix_study

from traceforge.study.engine import run_study
from traceforge.study.executor import (
    CellEvent,
    LocalExecutor,
    land_cell,
    pack_run_dir,
    unpack_run_dir,
)
from traceforge.study.spec import parse_study

RAW = tomllib.loads(two_mix_study("x", rate=40.0, cv=2.0, duration_s=3.0, seed=2,
                                  loads=[0.5, 1.0], service_ms=10.0, capacity="""
slo = { metric = "p99", ms = 80.0 }
tolerance = 0.05
repeats = 1
"""))
STABLE = ("name", "kind", "mix", "coords", "repeat", "seed", "load", "status", "outcome")


def _remote_group(group) -> list:
    """What a remote worker does: run the group in its own scratch dir, ship bytes back."""
    from traceforge.study.runner import run_group

    out = []
    with tempfile.TemporaryDirectory() as scratch:
        def emit(event):
            if isinstance(event, CellEvent) and event.run_dir is not None:
                data = pack_run_dir(event.run_dir)
                event.run_dir = None
                out.append((event, data))
            else:
                out.append((event, None))
        run_group(group, Path(scratch), emit)
    return out


class ProcessPoolExecutor:
    """A test executor: every group in a spawned worker process, no shared filesystem."""

    name = "test-processes"

    def run(self, groups, *, study_dir, on_event):
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
            for events in pool.map(_remote_group, groups):  # results in group order
                for event, data in events:
                    if data is not None:
                        unpack_run_dir(study_dir, event.cell.name, data)
                        event.landed = True
                    on_event(event)

    def close(self):
        pass


def test_remote_style_executor_matches_local(tmp_path):
    local = run_study(parse_study(RAW, source="t"), tmp_path / "local", executor=LocalExecutor())
    remote = run_study(parse_study(RAW, source="t"), tmp_path / "remote",
                       executor=ProcessPoolExecutor())
    assert remote["executor"] == "test-processes" and remote["status"] == "complete"
    strip = lambda d: [{k: c.get(k) for k in STABLE} for c in d["cells"]]  # noqa: E731
    assert strip(remote) == strip(local)
    assert len(remote["cells"]) > 0  # not two empty lists: the per-cell checks below run
    assert remote["capacity"] == local["capacity"]
    for cell in remote["cells"]:
        run_dir = tmp_path / "remote" / cell["run_dir"]
        assert (run_dir / "run.json").exists() and (run_dir / "trace.parquet").exists()
        manifest = json.loads((run_dir / "run.json").read_text())
        # the cell's trace moved into its run directory, amended through RunManifest.open:
        # every other key kept
        assert manifest["trace"]["path"] == "trace.parquet"
        assert manifest["status"] == "complete" and manifest["trace"]["rows"] > 0


def test_land_cell_replaces_an_earlier_attempt_atomically(tmp_path):
    study = tmp_path / "s"
    first = tmp_path / "a1"
    first.mkdir()
    (first / "run.json").write_text("1")
    land_cell(study, "c", first)
    second = tmp_path / "a2"
    second.mkdir()
    (second / "run.json").write_text("2")
    land_cell(study, "c", second)
    assert (study / "cells" / "c" / "run.json").read_text() == "2"
    assert sorted(p.name for p in (study / "cells").iterdir()) == ["c"]  # no leftovers
    data = pack_run_dir(study / "cells" / "c")
    unpack_run_dir(study, "d", data)
    assert (study / "cells" / "d" / "run.json").read_text() == "2"
