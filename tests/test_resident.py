"""The resident backend on the CPU with tiny models: every mode but mps, batching, a worker
crash, bad flags, and no orphan processes. The GPU path is the same code (see test_gpu_*)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from traceforge.backends.resident import from_options  # noqa: E402
from traceforge.cli import main  # noqa: E402
from traceforge.clock import RunClock  # noqa: E402
from traceforge.errors import BadInput  # noqa: E402
from traceforge.record import read_timeline  # noqa: E402
from traceforge.replay import ModelInfo, ReplayOptions, Request, run_replay  # noqa: E402
from traceforge.schema import conform_trace_table, read_trace, write_trace  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ZOO = {"bert": "tiny-bert", "gpt": "tiny-gpt2", "vit": "tiny-vit"}


def write_tiny_trace(path: Path, n: int = 24, spacing_ms: float = 4.0) -> Path:
    models = [("bert", "gpt", "vit")[i % 3] for i in range(n)]
    shapes = {"bert": (2, 16, 0), "gpt": (1, 8, 5), "vit": (1, 32, 0)}
    table = conform_trace_table(pa.table({
        "request_id": np.arange(n, dtype=np.int64),
        "arrival_ns": (np.arange(n) * spacing_ms * 1e6).astype(np.int64),
        "model": models,
        "batch_size": np.array([shapes[m][0] for m in models], np.int32),
        "seq_len": np.array([shapes[m][1] for m in models], np.int32),
        "max_new_tokens": np.array([shapes[m][2] for m in models], np.int32),
    }))
    meta = {"spec": {"models": {m: {"zoo": z} for m, z in ZOO.items()}}}
    write_trace(table, path, meta)
    return path


def pid_alive(pid: int) -> bool:
    """Running (a zombie or a vanished pid counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_gone(pids, timeout_s: float = 60.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [p for p in pids if pid_alive(p)]
        if not alive:
            return []
        time.sleep(0.05)
    return [p for p in pids if pid_alive(p)]


@pytest.mark.parametrize("mode", ["exclusive", "streams", "timeslice"])
def test_mode_end_to_end_on_cpu(tmp_path, mode):
    trace = read_trace(write_tiny_trace(tmp_path / "t.parquet"))
    backend = from_options({"mode": mode, "device": "cpu", "run_dir": tmp_path / "run"})
    summary = run_replay(trace, tmp_path / "run", backend, ReplayOptions())
    assert summary.status == "complete"
    t = read_timeline(tmp_path / "run").to_pylist()
    assert len(t) == 24 and {r["status"] for r in t} == {"ok"}, t[0]
    for r in t:
        # Worker-side times lie inside the dispatcher's send..done window, on one clock.
        assert r["sent_ns"] <= r["service_start_ns"] <= r["service_end_ns"] <= r["done_ns"]
        assert r["gpu_ns"] is None  # CPU
        if r["model"] == "gpt":
            assert r["service_start_ns"] < r["first_token_ns"] <= r["service_end_ns"]
            assert r["tokens_out"] == 5
        else:
            assert r["first_token_ns"] is None and r["tokens_out"] == 0
    workers = {r["worker"] for r in t}
    expected = {"exclusive": {"exclusive"},
                "streams": {f"stream-{m}" for m in ZOO},
                "timeslice": {f"timeslice-{m}" for m in ZOO}}[mode]
    assert workers == expected
    info = json.loads((tmp_path / "run" / "run.json").read_text())["backend_info"]
    assert info["mode"] == mode and info["zoo"] == ZOO
    if mode == "timeslice":
        assert info["transport"]["ping_rtt_us"]["n"] == 3 * 200
        # Written at start, updated in place by stop(): run.json shows how each worker ended.
        assert all(w["end"] and "stopped" in w["end"] for w in info["workers"].values())
        assert wait_gone(backend.worker_pids().values()) == []


def test_dynamic_batching_groups_same_model_requests():
    async def go():
        backend = from_options({"mode": "exclusive", "device": "cpu", "max_batch": 4,
                                "max_wait_ms": 50})
        await backend.start([ModelInfo("bert", "tiny-bert"), ModelInfo("gpt", "tiny-gpt2")],
                            RunClock())
        try:
            reqs = [Request(i, "bert" if i < 6 else "gpt", 1, 16, 0 if i < 6 else 3, 0)
                    for i in range(8)]
            return await asyncio.gather(*(backend.submit(r) for r in reqs))
        finally:
            await backend.stop()

    outs = asyncio.run(go())
    assert all(o.status == "ok" for o in outs)
    bert_batches = {o.batch_id for o in outs[:6]}
    # 6 bert requests arrive together: batches of at most 4, never mixed with gpt.
    assert sorted(o.batched_with for o in outs[:6]) == [2, 2, 4, 4, 4, 4]
    assert len(bert_batches) == 2 and not bert_batches & {o.batch_id for o in outs[6:]}
    assert [o.tokens_out for o in outs[6:]] == [3, 3]
    same = [o for o in outs[:6] if o.batch_id == outs[0].batch_id]
    assert len({(o.service_start_ns, o.service_end_ns) for o in same}) == 1


def test_impossible_request_is_an_error_row_and_the_run_goes_on(tmp_path):
    path = write_tiny_trace(tmp_path / "t.parquet", n=6)
    table = read_trace(path).table.to_pydict()
    table["seq_len"][0] = 600  # > 512 positions of tiny-bert
    write_trace(conform_trace_table(pa.table(table)), path, read_trace(path).meta)
    run_replay(read_trace(path), tmp_path / "run", from_options({"mode": "exclusive"}),
               ReplayOptions())
    rows = read_timeline(tmp_path / "run").to_pylist()
    assert rows[0]["status"] == "error" and "600 > 512" in rows[0]["error"]
    assert [r["status"] for r in rows[1:]] == ["ok"] * 5


def test_worker_crash_becomes_error_rows_and_leaves_no_process():
    async def go():
        backend = from_options({"mode": "timeslice", "device": "cpu"})
        await backend.start([ModelInfo("gpt", "tiny-gpt2"), ModelInfo("bert", "tiny-bert")],
                            RunClock())
        pids = backend.worker_pids()
        try:
            # A long decode (1000 greedy steps) is in flight when its worker is killed.
            long_one = asyncio.ensure_future(backend.submit(Request(0, "gpt", 1, 8, 1000, 0)))
            await asyncio.sleep(0.3)
            os.kill(pids["gpt"], signal.SIGKILL)
            crashed = await asyncio.wait_for(long_one, 60)
            after = await backend.submit(Request(1, "gpt", 1, 8, 2, 0))
            other = await backend.submit(Request(2, "bert", 1, 8, 0, 0))
        finally:
            await backend.stop()
        return pids, crashed, after, other, backend.describe()

    pids, crashed, after, other, info = asyncio.run(go())
    assert crashed.status == "error" and "SIGKILL" in crashed.error
    assert f"pid {pids['gpt']}" in crashed.error
    assert after.status == "error" and "SIGKILL" in after.error  # later requests too
    assert other.status == "ok"  # the other model's worker is unaffected
    assert "SIGKILL" in info["workers"]["gpt"]["end"]
    assert "stopped" in info["workers"]["bert"]["end"]
    assert wait_gone(pids.values()) == []


ORPHAN_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from traceforge.backends.resident import from_options
    from traceforge.clock import RunClock
    from traceforge.replay import ModelInfo, Request

    async def main():
        b = from_options({"mode": "timeslice", "device": "cpu"})
        await b.start([ModelInfo("gpt", "tiny-gpt2"), ModelInfo("bert", "tiny-bert")],
                      RunClock())
        print(" ".join(str(p) for p in b.worker_pids().values()), flush=True)
        asyncio.ensure_future(b.submit(Request(0, "gpt", 1, 8, 1000, 0)))
        await asyncio.sleep(60)

    asyncio.run(main())
""")


def test_no_orphan_workers_when_the_dispatcher_is_killed(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", ORPHAN_SCRIPT], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        line = proc.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2 and all(pid_alive(p) for p in pids)
        time.sleep(0.3)  # one worker is mid-request
        proc.kill()  # SIGKILL: no cleanup code runs in the dispatcher
        proc.wait(10)
        assert wait_gone(pids) == [], "workers outlived their dispatcher"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(("opts", "needle"), [
    ({"mode": "turbo"}, "unknown mode"),
    ({"device": "tpu"}, "not a device"),
    ({"device": "cpu:1"}, "not a device"),
    ({"max_batch": 0}, "--max-batch"),
    ({"max_wait_ms": -1}, "--max-wait-ms"),
    ({"mode": "timeslice", "sm_percent": {"gpt": 50}}, "only to --mode mps"),
    ({"mode": "mps", "sm_percent": {"gpt": 150}}, "1..100"),
    ({"zoo": {"gpt": "gpt-17"}}, "unknown model-zoo entry"),
])
def test_bad_options_are_bad_input(opts, needle):
    with pytest.raises(BadInput, match=needle):
        from_options(opts)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
@pytest.mark.parametrize("opts", [{"mode": "mps", "device": "cuda"},
                                  {"mode": "mps", "device": "cpu"},
                                  {"mode": "exclusive", "device": "cuda"}])
def test_cuda_without_cuda_is_bad_input(opts):
    with pytest.raises(BadInput, match="CUDA"):
        from_options(opts)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit")
def test_cli_mps_without_cuda_exits_2_and_writes_nothing(tmp_path, capsys):
    trace = write_tiny_trace(tmp_path / "t.parquet", n=3)
    with pytest.raises(SystemExit) as exit_:
        main(["replay", str(trace), "-o", str(tmp_path / "run"), "--backend", "resident",
              "--mode", "mps"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--mode mps needs a CUDA device" in err[0]  # one line, no trace
    assert not (tmp_path / "run" / "run.json").exists()


def test_unknown_model_without_zoo_entry_is_bad_input():
    async def go():
        backend = from_options({"mode": "exclusive"})
        try:
            await backend.start([ModelInfo("mystery")], RunClock())
        finally:
            await backend.stop()

    with pytest.raises(BadInput, match="--zoo mystery"):
        asyncio.run(go())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["exclusive", "streams", "timeslice", "mps"])
def test_gpu_modes(tmp_path, mode):
    from traceforge.gpu.mps import mps_processes

    if mode == "mps" and mps_processes():
        pytest.skip("an MPS daemon is already running here")
    trace = read_trace(write_tiny_trace(tmp_path / "t.parquet"))
    backend = from_options({"mode": mode, "device": "cuda", "run_dir": tmp_path / "run"})
    run_replay(trace, tmp_path / "run", backend, ReplayOptions())
    rows = read_timeline(tmp_path / "run").to_pylist()
    assert {r["status"] for r in rows} == {"ok"}
    assert all(r["gpu_ns"] and r["gpu_ns"] > 0 for r in rows)
    assert (tmp_path / "run" / "telemetry.parquet").exists()
    if mode == "mps":
        assert backend.describe()["mps_attach"]["all_attached"] is True
        assert mps_processes() == []


def test_cli_replay_resident_streams_on_cpu(tmp_path, capsys):
    trace = write_tiny_trace(tmp_path / "t.parquet", n=9)
    with pytest.raises(SystemExit) as exit_:
        main(["replay", str(trace), "-o", str(tmp_path / "run"), "--backend", "resident",
              "--mode", "streams", "--device", "cpu", "--max-batch", "2", "--no-progress"])
    assert exit_.value.code in (0, None), capsys.readouterr().err
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["backend_info"]["mode"] == "streams"
    assert manifest["backend_info"]["max_batch"] == 2
    rows = read_timeline(tmp_path / "run").to_pylist()
    assert [r["status"] for r in rows] == ["ok"] * 9


def test_inline_requests_through_the_backend_and_stop_waits_for_one_in_flight():
    """The backend's inline path with a launchable fake in place of the tiny model (on the CPU
    the backend never inlines by itself: graphs need CUDA). Requests one at a time are served
    inline; one still on the "device" when stop() comes is completed, not dropped; run.json's
    live "inline" entry counts them."""
    from test_executor_pipeline import TimedDevice

    async def go():
        backend = from_options({"mode": "exclusive", "device": "cpu", "telemetry": False})
        assert backend.inline is False  # CPU: no graph launches
        await backend.start([ModelInfo("bert", "tiny-bert")], RunClock())
        described = backend.describe()  # what a manifest stores at start
        assert described["inline"] == {"enabled": False}
        release = threading.Event()

        class HeldDevice(TimedDevice):
            """Request 3 stays on the device until stop() comes: its 50 ms could pass (and the
            loop's poll resolve it) before a loaded loop thread checked it was in flight."""

            def poll(self, handle) -> bool:
                return (handle.start_ev != 3 or release.is_set()) and super().poll(handle)

        dev = HeldDevice(gpu_s=0.05)
        backend._executors["bert"].models["bert"] = dev
        backend.inline = True
        outs = [await backend.submit(Request(i, "bert", 1, 16, 0, 0)) for i in range(3)]
        last = asyncio.ensure_future(backend.submit(Request(3, "bert", 1, 16, 0, 0)))
        deadline = time.monotonic() + 60
        while len(dev.launches) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        assert backend._executors["bert"].inline_in_flight  # launched inline, on the device
        release.set()
        await backend.stop()
        # stop() returned only after the request on the device was finished (not left to the
        # loop's later polls)
        assert [r for r, _ in dev.finishes] == [0, 1, 2, 3]
        assert not backend._executors["bert"].inline_in_flight
        return [*outs, await last], described, dev

    outs, described, dev = asyncio.run(go())
    assert [o.status for o in outs] == ["ok"] * 4, [o.error for o in outs]
    assert all(o.gpu_ns == dev.gpu_ns for o in outs)
    assert [r for r, _ in dev.launches] == [0, 1, 2, 3]
    assert described["inline"] == {"enabled": True, "requests": 4}


def test_a_timed_out_inline_request_leaves_nothing_behind():
    """A request cancelled while inline on the "device" (the dispatcher's --timeout): its
    future is forgotten at once, its poll goes on until the device is done, and the next request
    is served (queued behind it: one inline request at a time), not lost or hung."""
    from test_executor_pipeline import TimedDevice

    async def go():
        backend = from_options({"mode": "exclusive", "device": "cpu", "telemetry": False})
        await backend.start([ModelInfo("bert", "tiny-bert")], RunClock())
        executor = backend._executors["bert"]
        release = threading.Event()

        class HeldDevice(TimedDevice):
            """Request 0 stays on the device until the test saw it there: its 200 ms could
            pass before a loaded loop thread's 5 ms timeout fired."""

            def poll(self, handle) -> bool:
                return (handle.start_ev != 0 or release.is_set()) and super().poll(handle)

        dev = HeldDevice(gpu_s=0.2)
        executor.models["bert"] = dev
        backend.inline = True
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(backend.submit(Request(0, "bert", 1, 16, 0, 0)), 0.005)
        assert backend._pending == {}
        assert executor.inline_in_flight  # still on the device
        release.set()
        after = await backend.submit(Request(1, "bert", 1, 16, 0, 0))
        assert not executor.inline_in_flight
        count = executor.inline_count
        await backend.stop()
        return after, count, dev

    after, count, dev = asyncio.run(go())
    assert after.status == "ok", after.error
    assert [r for r, _ in dev.launches] == [0, 1]
    assert count == 1  # the timed-out one; the next went to the executor thread
