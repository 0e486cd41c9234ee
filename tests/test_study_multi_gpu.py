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
    # 4 groups (mix x servers) over 2 workers: both GPUs were used, each by its own process
    assert {w.split(" (")[0] for w in where} == {"gpu 0", "gpu 1"}
    assert all(c["attempts"] == 1 for c in result["cells"])
    assert not (tmp_path / "par" / ".scratch").exists()
    assert json.loads((tmp_path / "par" / "study.json").read_text())["executor"] == "local-gpus"


def test_gpus_with_address_is_bad_input():
    with pytest.raises(BadInput, match="--address"):
        make_executor("local", gpus=[0], address="auto")
