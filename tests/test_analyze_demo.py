"""`traceforge demo`: the whole pipeline, shortened to a few seconds of the embedded workload."""

from __future__ import annotations

import json
import shutil

import pytest
from trace_event_format import check_trace

from traceforge.commands.demo import pick_device


def test_pick_device_without_cuda():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        device, mode = pick_device()
        assert device == "cuda" and mode == ("mps" if shutil.which(
            "nvidia-cuda-mps-control") else "timeslice")
    else:
        assert pick_device() == ("cpu", "timeslice")


def test_demo_rejects_bad_duration(tmp_path, capsys):
    from traceforge.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "-o", str(tmp_path / "d"), "--duration", "-1"])
    assert exit_info.value.code == 2
    assert "--duration" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    """Generate → resident replay (CPU worker processes) → report → HTML → Perfetto."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from traceforge.commands.demo import run_demo

    result = run_demo(tmp_path / "out", duration_s=4.0, progress=False)
    out = capsys.readouterr().out
    assert "HTML report" in out and "report.html" in out
    assert result["html"].exists() and result["html"].parent == result["dir"]
    assert result["summary"].status == "complete"
    report = json.loads((result["dir"] / "report.json").read_text())
    assert set(report["models"]) == {"tiny-bert", "tiny-gpt2", "tiny-llama"}
    assert report["overall"]["ok"] > 0
    assert report["slo_source"] == "trace spec"
    assert result["html"].read_text().count("data:image/png;base64,") >= 5
    assert check_trace(json.loads(result["perfetto"].read_text())) == []
