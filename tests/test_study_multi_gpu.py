"""`--executor local --gpus 0,1`: cell groups in parallel worker processes, one per GPU, with
CUDA_VISIBLE_DEVICES pinned. On a CPU machine the simulate cells ignore the GPU, so what is tested
here is the process pool: every cell lands, each worker saw its own pinned device, and the
per-request rows equal the sequential local executor's."""

from __future__ import annotations

import json

import pytest
from study_scale_helpers import cell_rows, write_study

from traceforge.errors import BadInput
from traceforge.study.engine import run_study
from traceforge.study.executor import make_executor
from traceforge.study.spec import load_study


def test_two_gpu_pool_gives_the_sequential_results(tmp_path):
    spec = load_study(write_study(tmp_path))
    run_study(spec, tmp_path / "seq")
    gpus = make_executor("local", gpus=[0, 1])
    assert gpus.name == "local-gpus"
    result = run_study(spec, tmp_path / "par", executor=gpus)
    assert result["status"] == "complete"
    assert cell_rows(tmp_path / "par") == cell_rows(tmp_path / "seq")
    where = {c["where"] for c in result["cells"]}
    # 4 groups (mix x servers) over 2 workers, each on its own GPU in its own process. Which
    # worker takes which group is a race (one queue, millisecond cells): a worker that is ready
    # seconds before the other can take all four, as it did once on the loaded 2-core VM
    # (2026-12-01, full suite), so each cell must name one of the two, not both be used.
    assert {w.split(" (")[0] for w in where} <= {"gpu 0", "gpu 1"}
    assert all(c["attempts"] == 1 for c in result["cells"])
    assert not (tmp_path / "par" / ".scratch").exists()
    saved = json.loads((tmp_path / "par" / "study.json").read_text())
    assert saved["executor"] == "local-gpus"
    # where the study's start went: one entry per worker, its own GPU and pid, spawn before ready
    workers = saved["executor_info"]["workers"]
    assert sorted(w["gpu"] for w in workers) == [0, 1]
    assert len({w["pid"] for w in workers}) == 2
    assert {int(x.split("pid ")[1].rstrip(")")) for x in where} <= {w["pid"] for w in workers}
    for x in where:  # the GPU a cell names is the one its worker was pinned to
        pid = int(x.split("pid ")[1].rstrip(")"))
        assert x.startswith(f"gpu {next(w['gpu'] for w in workers if w['pid'] == pid)} ")
    assert all(0 <= w["spawn_s"] <= w["ready_after_s"] for w in workers)
    assert all("import_runner_s" in w["phases"] for w in workers)
    assert saved["executor_info"]["close_s"] >= 0
    # each cell: the driver's clock when it started and ended, in that order
    assert all(c["started_at"] <= c["finished_at"] for c in saved["cells"])


def test_gpus_with_address_is_bad_input():
    with pytest.raises(BadInput, match="--address"):
        make_executor("local", gpus=[0], address="auto")


CAPACITY_STUDY = """
name = "cap"
backend = "simulate"
seed = 5
duration_s = 2.0
[mixes.a.models.m]
arrival = { process = "poisson", rate = 40.0 }
[axes]
load = { capacity = [0.5] }
servers = [1, 2]
[options]
service_ms = 8.0
[capacity]
slo = { metric = "p99", ms = 100.0 }
max_probes = 2
"""


def test_one_pool_of_workers_serves_every_phase_of_a_study(tmp_path):
    # capacity searches, then the grid at a fraction of each capacity: two executor.run calls,
    # served by the same (prestarted) worker processes, which close() ends
    spec = load_study(write_study(tmp_path, CAPACITY_STUDY))
    gpus = make_executor("local", gpus=[0, 1])
    gpus.prestart(preload=False)
    pids = {p.pid for p in gpus._procs}
    result = run_study(spec, tmp_path / "cap", executor=gpus)
    assert result["status"] == "complete"
    assert [c["kind"] for c in result["cells"]].count("grid") == 2
    used = {int(c["where"].split("pid ")[1].rstrip(")")) for c in result["cells"]}
    assert used <= pids
    assert gpus._procs == []  # run_study closed the executor: the workers are gone


def test_cli_bad_spec_with_gpus_exits_2_and_writes_nothing(tmp_path):
    import subprocess
    import sys

    bad = write_study(tmp_path, CAPACITY_STUDY.replace("rate = 40.0", "rate = -1.0"))
    res = subprocess.run([sys.executable, "-m", "traceforge", "study", str(bad), "-o",
                          str(tmp_path / "out"), "--gpus", "0,1", "--no-progress"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "rate" in res.stderr
    assert not (tmp_path / "out").exists()


def test_cli_wrong_study_dir_with_gpus_exits_2_before_workers_start(tmp_path, capsys,
                                                                     monkeypatch):
    from trace_cli_helpers import assert_one_line_error, run_cli

    from traceforge.study.multi_gpu import MultiGpuExecutor

    started = []
    monkeypatch.setattr(MultiGpuExecutor, "prestart",
                        lambda self, **kw: started.append(kw))
    spec = write_study(tmp_path, CAPACITY_STUDY)
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    code, _, err = run_cli(["study", spec, "-o", full, "--gpus", "0,1"], capsys)
    assert_one_line_error(code, err, "not empty", "-o")
    code, _, err = run_cli(["study", spec, "-o", tmp_path / "new", "--gpus", "0,1",
                            "--resume"], capsys)
    assert_one_line_error(code, err, "nothing to resume", "-o")
    assert started == []  # refused before any GPU worker process was started
    assert (full / "notes.txt").read_text() == "mine" and not (tmp_path / "new").exists()


def test_a_failed_study_still_records_the_executors_start(tmp_path):
    # the executor fails mid-study: study.json says failed, and still says where the start went
    from traceforge.study.executor import LocalExecutor

    class Failing(LocalExecutor):
        def info(self) -> dict:
            return {"workers": [{"gpu": 0, "ready_after_s": 1.5}]}

        def run(self, groups, *, study_dir, on_event) -> None:
            raise RuntimeError("worker pool lost")

    spec = load_study(write_study(tmp_path))
    with pytest.raises(RuntimeError, match="pool lost"):
        run_study(spec, tmp_path / "s", executor=Failing())
    saved = json.loads((tmp_path / "s" / "study.json").read_text())
    assert saved["status"] == "failed"
    assert saved["executor_info"] == {"workers": [{"gpu": 0, "ready_after_s": 1.5}]}
