"""The HTML report: self-contained, and it renders in headless Chromium (skipped without it)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chromium_helpers import CHROMIUM, assert_renders

from traceforge.analyze.compare import compare_runs
from traceforge.analyze.html import write_compare_html, write_html
from traceforge.analyze.report import build_report
from traceforge.analyze.synthetic import SyntheticModel, write_synthetic_run

MODELS = [SyntheticModel("bert", rate=60, slo_ms=25.0),
          SyntheticModel("gpt", rate=15, service_ms=40, max_new_tokens=8, gpu=True)]


def write_telemetry(run_dir: Path, seconds: float) -> None:
    """telemetry.parquet with the schema INTERFACES.md fixes (resident backend, GPU runs)."""
    t = np.arange(0, seconds, 0.1)
    n = t.size
    pq.write_table(pa.table({
        "t_ns": pa.array((t * 1e9).astype(np.int64)),
        "gpu_index": pa.array(np.zeros(n, dtype=np.int32)),
        # NVML can fail a read: the resident sampler then writes null.
        "util_gpu_pct": pa.array((50 + 40 * np.sin(t)).astype(np.float32), mask=(t > 3) & (t < 3.3)),
        "util_mem_pct": pa.array(np.full(n, 30, dtype=np.float32)),
        "mem_used_bytes": pa.array(np.full(n, 6 * 2**30, dtype=np.int64)),
        "sm_clock_mhz": pa.array(np.full(n, 1755, dtype=np.float32)),
        "power_w": pa.array((200 + 50 * np.cos(t)).astype(np.float32)),
    }), run_dir / "telemetry.parquet")


@pytest.fixture(scope="module")
def html_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("html")
    run = write_synthetic_run(root / "run", MODELS, requests=2000, seed=4, error_rate=0.01)
    write_telemetry(run, 30.0)
    return write_html(run, build_report(run), root / "report.html")


def test_html_is_self_contained(html_file):
    text = html_file.read_text()
    assert text.startswith("<!DOCTYPE html>")
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', text)
    assert images == ["latency CDF", "latency over time", "stacked decomposition",
                      "throughput over time", "queue depth", "GPU telemetry"]
    # Nothing is fetched: no scripts, no external sources or stylesheets.
    assert "<script" not in text
    assert not re.search(r'(src|href)="(https?:)?//', text)
    assert "Run manifest" in text and "traceforge.run/1" in text
    assert (html_file.stat().st_mode & 0o777) == 0o644


def test_no_telemetry_lane_without_telemetry(tmp_path):
    run = write_synthetic_run(tmp_path / "r", MODELS, requests=300, seed=1)
    text = write_html(run, build_report(run), tmp_path / "r.html").read_text()
    assert "GPU telemetry" not in text
    assert text.count("data:image/png;base64,") == 5


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install "
                    "chromium); .ci/run installs it")
def test_html_renders_inchromium(html_file, tmp_path):
    pixels = assert_renders(html_file, tmp_path, title="traceforge report", images=6,
                            window_size="1100,2600")
    # Rendered plots, not broken-image icons: many non-white pixels too.
    non_white = np.mean(np.any(pixels < 0.9, axis=-1))
    assert non_white > 0.05, non_white


def test_compare_html(tmp_path):
    a = write_synthetic_run(tmp_path / "a", MODELS, requests=800, seed=1)
    b = write_synthetic_run(tmp_path / "b", MODELS[:1], requests=800, seed=2)
    result = compare_runs([a, b])
    text = write_compare_html(result, tmp_path / "c.html").read_text()
    assert text.count("data:image/png;base64,") == 2  # a CDF overlay per model of any run
    assert "only in A: gpt" in text
