"""GPU plumbing that can be checked without a GPU: the NVML sampler (with a fake NVML), the MPS
daemon's refusal to touch someone else's daemon, device strings."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from traceforge.clock import RunClock
from traceforge.errors import BadInput
from traceforge.gpu import mps
from traceforge.gpu.cuda import parse_device
from traceforge.gpu.telemetry import TELEMETRY_SCHEMA, TelemetrySampler
from traceforge.zoo import ZOO


class FakeNvml:
    """Just the NVML calls the sampler makes; power is unsupported (a null column)."""

    NVML_CLOCK_SM = 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=40, memory=10)

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=123 << 20, total=80 << 30, free=1 << 30)

    def nvmlDeviceGetClockInfo(self, h, which):
        return 1980

    def nvmlDeviceGetPowerUsage(self, h):
        raise RuntimeError("not supported")


def test_sampler_writes_the_schema_on_the_run_clock(tmp_path):
    clock = RunClock()
    sampler = TelemetrySampler(0, clock, interval_s=0.01)
    sampler.nv, sampler.note = FakeNvml(), None
    sampler.start()
    time.sleep(0.3)
    table = sampler.stop()
    sampler.write(tmp_path / "telemetry.parquet")
    back = pq.read_table(tmp_path / "telemetry.parquet")
    assert back.schema.equals(TELEMETRY_SCHEMA, check_metadata=False)
    t = back.column("t_ns").to_numpy()
    # 100 Hz asked for 0.3 s; a loaded CI box may lose some wake-ups, never gain them.
    assert 5 <= table.num_rows <= 32
    assert (t[1:] > t[:-1]).all() and 0 <= t[0] < clock.now()
    assert set(back.column("util_gpu_pct").to_pylist()) == {40.0}
    assert back.column("power_w").null_count == back.num_rows
    summary = sampler.summary()
    assert summary["mean_util_gpu_pct"] == 40.0 and summary["samples"] == table.num_rows


def test_sampler_without_nvml_says_why():
    sampler = TelemetrySampler(0, RunClock())
    sampler.nv, sampler.note = None, "no telemetry: nvidia-ml-py or the NVIDIA driver is not available"
    sampler.start()
    assert sampler.stop().num_rows == 0
    assert "no telemetry" in sampler.summary()["note"]


def test_mps_refuses_when_another_daemon_runs(monkeypatch, tmp_path):
    monkeypatch.setattr(mps.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(mps, "mps_processes", lambda pipe_dir=None: [
        {"pid": 4242, "name": "nvidia-cuda-mps", "pipe_dir": "/tmp/nvidia-mps"}])
    started = []
    monkeypatch.setattr(mps.subprocess, "Popen", lambda *a, **k: started.append(a))
    daemon = mps.MpsDaemon()
    with pytest.raises(BadInput, match=r"already running.*pid 4242.*never shares or stops"):
        daemon.start()
    assert started == [] and daemon.root is None  # nothing started, nothing created


def test_mps_processes_scan_finds_nothing_here():
    # This machine runs no MPS daemon; the /proc scan must not error on unreadable entries.
    assert mps.mps_processes() == []


@pytest.mark.parametrize(("text", "parsed"), [("cpu", ("cpu", None)), ("cuda", ("cuda", 0)),
                                              ("cuda:3", ("cuda", 3))])
def test_parse_device(text, parsed):
    assert parse_device(text) == parsed


def test_resident_set_that_does_not_fit_is_refused_before_loading(monkeypatch):
    from traceforge.backends.resident import ResidentBackend
    from traceforge.gpu import cuda

    monkeypatch.setattr(cuda, "free_memory_bytes", lambda index: 10 << 30)  # 10 GiB free
    backend = ResidentBackend(mode="timeslice", device="cuda")
    backend.models = {"bert": "distilbert-base", "llm": "mistral-7b"}
    with pytest.raises(BadInput, match=r"needs 15\.\d GiB .* but cuda:0 has 10\.0 GiB free"):
        backend._check_fits(sum(ZOO[z].weight_bytes() for z in backend.models.values()))
    backend.models = {"bert": "distilbert-base"}
    backend._check_fits(ZOO["distilbert-base"].weight_bytes())  # 0.1 GiB + 1 GiB: fits
    assert backend._info["memory_check"]["processes"] == 1


def test_mps_clients_number_the_pinned_gpus_from_zero():
    """A study on GPU 1 pins the process (CUDA_VISIBLE_DEVICES=1); the MPS daemon inherits the
    pin and numbers its one GPU 0, so a client still carrying the pin sees no GPU, and a client
    without any pin counts every GPU through NVML (torch 2.11) and fails its CUDA start (both
    seen on an H200 pair). Clients get the daemon's pipe, their SM share, and the daemon's GPUs
    by client-side number."""
    daemon = mps.MpsDaemon.__new__(mps.MpsDaemon)
    daemon.env = {"CUDA_MPS_PIPE_DIRECTORY": "/p", "CUDA_MPS_LOG_DIRECTORY": "/l"}
    env = daemon.apply_client_env({"CUDA_VISIBLE_DEVICES": "1", "PATH": "/bin"}, 30)
    assert env == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0", "CUDA_MPS_PIPE_DIRECTORY": "/p",
                   "CUDA_MPS_LOG_DIRECTORY": "/l", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "30"}
    two = daemon.apply_client_env({"CUDA_VISIBLE_DEVICES": "2,3"})
    assert two["CUDA_VISIBLE_DEVICES"] == "0,1"
    unpinned = daemon.apply_client_env({"PATH": "/bin"})
    assert "CUDA_VISIBLE_DEVICES" not in unpinned  # the daemon serves every GPU: nothing to add
