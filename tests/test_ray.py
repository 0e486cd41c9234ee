"""Ray executors on a real local Ray cluster (Ray's own ``cluster_utils.Cluster``): two nodes on
loopback with declared (fake) GPUs. One cluster serves the whole module (Ray starts slowly on a
2-core machine); every test leaves it as it found it, and the fixture shuts it down.

Skipped with a reason where Ray (``traceforge[ray]``) is not installed."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from replay_helpers import make_trace, poisson_arrivals, timeline_rows

from traceforge.replay import ReplayOptions
from traceforge.scale.ray_util import LOOPBACK, import_ray

# Skip only when Ray is absent (make test installs traceforge[ray]); any other failure of
# import_ray is a bug and must fail, not skip, the module.
if importlib.util.find_spec("ray") is None:  # not importorskip: that would import Ray first
    pytest.skip("Ray is not installed; make test installs traceforge[ray]",
                allow_module_level=True)
ray = import_ray(None)  # sets the loopback switch before Ray is first imported

NODE = {"node_ip_address": LOOPBACK, "include_dashboard": False,
        "object_store_memory": 80 * 1024 * 1024}


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, shutdown_at_exit=True,
                head_node_args={**NODE, "num_cpus": 2, "resources": {"head": 1}})
    c.add_node(**NODE, num_cpus=2, num_gpus=1, resources={"gpu_node_a": 1})
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("trace") / "trace.parquet"
    rng = np.random.default_rng(3)
    models = [["a", "b", "c"][k] for k in rng.choice(3, 200, p=[0.6, 0.3, 0.1])]
    from traceforge.schema import read_trace

    make_trace(poisson_arrivals(500, 200, seed=5), models=models, path=path)
    return read_trace(path)


def rows(run_dir):
    return timeline_rows(run_dir)


def test_sharded_null_replay_on_ray_has_the_unsharded_rows(cluster, trace, tmp_path):
    from traceforge.backends import make_backend
    from traceforge.replay import run_replay
    from traceforge.replay.workers import run_sharded

    opts = {"servers": 4, "service_ms": 1.0, "service_dist": "const", "seed": 0}
    one = run_replay(trace, tmp_path / "one", make_backend("null", opts), ReplayOptions())
    two = run_sharded(trace, tmp_path / "two", "null", opts, ReplayOptions(), workers=2,
                      executor="ray", address=cluster.address)
    assert one.status == two.status == "complete"
    assert rows(tmp_path / "two") == rows(tmp_path / "one")
    manifest = json.loads((tmp_path / "two" / "run.json").read_text())
    assert manifest["executor"] == "ray" and manifest["counts"] == {"ok": 200}
    offsets = manifest["clock_offsets"]
    assert [o["worker"] for o in offsets] == [0, 1]
    for o in offsets:  # one host: same kernel clock, nothing applied, the probe's error bounded
        assert o["same_clock"] and o["applied_ns"] == 0
        assert abs(o["offset_ns"]) <= o["uncertainty_ns"] + 1_000_000
    parts = {p.name[:8] for p in (tmp_path / "two" / "timeline").glob("part-*.parquet")}
    assert parts == {"part-w00", "part-w01"}
    assert sorted(p.name for p in (tmp_path / "two" / "workers").iterdir()) == ["w00.json",
                                                                              "w01.json"]
    assert not any(p.name.startswith(".") for p in (tmp_path / "two").rglob("*"))


# -- studies on Ray --------------------------------------------------------------------------
NULL_STUDY = """
name = "ray-null"
backend = "null"
repeats = 1
seed = 9
duration_s = 3.0
[mixes.a.models.m]
arrival = { process = "poisson", rate = 50.0 }
[axes]
servers = [1, 2]
[options]
service_ms = 5.0
"""


class GpuCellsOnRay:
    """RayExecutor whose groups ask for one (fake) GPU each, as resident CUDA cells do; the
    cells themselves are null replays, so they run on this GPU-less machine."""

    def __new__(cls, address):
        import dataclasses

        from traceforge.study.cells import Resources
        from traceforge.study.ray_executor import RayExecutor

        class _Exec(RayExecutor):
            def run(self, groups, **kw):
                gpu = Resources(num_gpus=1.0, num_cpus=1.0)
                super().run([dataclasses.replace(g, resources=gpu) for g in groups], **kw)

        return _Exec(address=address)


def test_study_on_ray_equals_the_local_executor(cluster, tmp_path):
    from study_scale_helpers import cell_rows, write_study

    from traceforge.study.engine import run_study
    from traceforge.study.ray_executor import RayExecutor
    from traceforge.study.spec import load_study

    spec = load_study(write_study(tmp_path))
    run_study(spec, tmp_path / "local")
    result = run_study(spec, tmp_path / "ray", executor=RayExecutor(address=cluster.address))
    assert result["status"] == "complete" and result["executor"] == "ray"
    assert cell_rows(tmp_path / "ray") == cell_rows(tmp_path / "local")
    assert not any(p.name.startswith(".") for p in (tmp_path / "ray" / "cells").iterdir())


def test_gpu_cells_placed_by_resources_and_a_killed_node_costs_only_its_cells(cluster,
                                                                              tmp_path):
    import threading
    import time

    from study_scale_helpers import cell_rows, write_study

    from traceforge.study.engine import run_study
    from traceforge.study.spec import load_study

    # The victim node's workers get their own TMPDIR, so the test sees when a cell group has
    # started there (run_group_packed makes its scratch directory with tempfile).
    victim_tmp = tmp_path / "victim-tmp"
    victim_tmp.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", str(victim_tmp))
        victim = cluster.add_node(**NODE, num_cpus=2, num_gpus=1, resources={"victim": 1})
    cluster.wait_for_nodes()
    deadline = time.monotonic() + 60
    while ray.cluster_resources().get("GPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)  # the victim's GPU is schedulable
    spec = load_study(write_study(tmp_path, NULL_STUDY))
    killed = threading.Event()

    def kill_while_a_cell_runs_there() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any(victim_tmp.glob("traceforge-cells-*")):
                time.sleep(1.0)  # inside the cell's 3 s replay
                cluster.remove_node(victim, allow_graceful=False)
                killed.set()
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_while_a_cell_runs_there, daemon=True)
    killer.start()
    result = run_study(spec, tmp_path / "ray", executor=GpuCellsOnRay(cluster.address))
    killer.join()
    assert killed.is_set(), "no cell group ever started on the victim node"
    assert result["status"] == "complete"
    cells = {c["name"]: c for c in result["cells"]}
    assert sorted(c["attempts"] for c in cells.values()) == [1, 2]  # only the victim's cell
    head_id = cluster.head_node.node_id[:8]
    victim_id = victim.node_id[:8]
    for c in cells.values():
        assert " gpu " in c["where"]  # the task was granted a GPU
        assert head_id not in c["where"] and victim_id not in c["where"]  # finished elsewhere
    run_study(spec, tmp_path / "local")
    assert cell_rows(tmp_path / "ray", full=False) == cell_rows(tmp_path / "local", full=False)
