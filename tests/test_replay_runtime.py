"""The process settings a replay changes while its schedule runs (GC at safe points, a short GIL
switch interval) are recorded in run.json and given back afterwards, also after a failure."""

from __future__ import annotations

import gc
import json
import sys

import numpy as np
import pytest
from replay_helpers import make_trace

from traceforge.backends.null import NullBackend
from traceforge.replay import ReplayOptions, run_replay
from traceforge.replay.dispatcher import GC_SAFE_GAP_NS

MS = 1_000_000


def test_gc_and_switch_interval_are_restored_and_recorded(tmp_path):
    assert gc.isenabled()
    switch = sys.getswitchinterval()
    # two bursts 1 s apart: the gap before the second is a safe point. (40 ms apart failed
    # twice under xdist beside the vLLM venv build on 2 cores: sending the first burst of 3000
    # took longer than 37 ms, so no wait had the 3 ms of slack a pass needs.)
    arrivals = np.r_[np.zeros(3000), np.full(10, 1000 * MS)].astype(np.int64)
    assert 1000 * MS > GC_SAFE_GAP_NS
    summary = run_replay(make_trace(arrivals), tmp_path / "run", NullBackend(servers=64,
                         service_ms=0.1, service_dist="const"), ReplayOptions())
    assert gc.isenabled() and sys.getswitchinterval() == switch
    runtime = json.loads((tmp_path / "run" / "run.json").read_text())["self_check"]["runtime"]
    assert runtime == summary.self_check["runtime"]
    assert runtime["gc"] == "safe points" and runtime["switch_interval_us"] == 100.0
    assert runtime["gc_passes"] >= 1  # the 3000 requests left young objects; the gap took them


def test_settings_off_leave_python_alone(tmp_path):
    gc.disable()
    try:
        summary = run_replay(make_trace(np.arange(50) * MS), tmp_path / "run", NullBackend(),
                             ReplayOptions(gc_safe_points=False, switch_interval_us=None))
        assert not gc.isenabled()  # a caller's choice is kept
    finally:
        gc.enable()
    assert summary.self_check["runtime"]["gc"] == "automatic"
    assert summary.self_check["runtime"]["gc_passes"] == 0


def test_restored_after_a_failing_backend(tmp_path):
    class Broken(NullBackend):
        async def stop(self):
            raise RuntimeError("stop failed")

    switch = sys.getswitchinterval()
    from traceforge.errors import RunFailure

    with pytest.raises(RunFailure):
        run_replay(make_trace(np.arange(20) * MS), tmp_path / "run", Broken(), ReplayOptions())
    assert gc.isenabled() and sys.getswitchinterval() == switch


def test_the_signal_handlers_before_the_replay_are_given_back(tmp_path):
    """asyncio's remove_signal_handler left SIGTERM at SIG_DFL after a replay: in a profile, a
    demo or a study, a SIGTERM after the first replay killed the process outright (exit 143;
    on the H200 a flusher process and the profile's temp directory were left behind)."""
    import signal

    seen: list[int] = []

    def on_term(signum, frame) -> None:
        seen.append(signum)

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, on_term)
    try:
        for k in range(2):  # the second replay gives back what the first gave back
            summary = run_replay(make_trace(np.arange(5, dtype=np.int64) * MS),
                                 tmp_path / f"run{k}", NullBackend(service_ms=0.1,
                                                                   service_dist="const"),
                                 ReplayOptions())
            assert summary.status == "complete"
            assert signal.getsignal(signal.SIGTERM) is on_term
            assert signal.getsignal(signal.SIGINT) is before[signal.SIGINT]
        signal.raise_signal(signal.SIGTERM)  # reaches the handler, does not end pytest
        assert seen == [signal.SIGTERM]
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_an_app_s_loop_signal_callback_and_overlapping_replays_are_given_back(tmp_path):
    """replay_async inside a bigger app: the app's own loop callback for SIGTERM is its again
    after the replay (putting back the Python handler -- asyncio's placeholder -- left SIGTERM
    doing nothing); two replays at once on one loop leave the handlers found before both."""
    import asyncio
    import signal

    from traceforge.replay import replay_async

    def trace():
        return make_trace(np.arange(5, dtype=np.int64) * MS)

    def backend():
        return NullBackend(service_ms=0.1, service_dist="const")

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    async def app() -> None:
        loop = asyncio.get_running_loop()
        got = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, got.set)
        try:
            summary = await replay_async(trace(), tmp_path / "one", backend(),
                                         ReplayOptions(progress=False))
            assert summary.status == "complete"
            signal.raise_signal(signal.SIGTERM)
            await asyncio.wait_for(got.wait(), 5)  # the app's callback ran
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    async def two() -> None:
        slow = make_trace(np.arange(5, dtype=np.int64) * 50 * MS)
        both = await asyncio.gather(
            replay_async(slow, tmp_path / "a", backend(), ReplayOptions(progress=False)),
            replay_async(trace(), tmp_path / "b", backend(), ReplayOptions(progress=False)))
        assert [s.status for s in both] == ["complete", "complete"]
        loop = asyncio.get_running_loop()
        assert signal.SIGTERM not in (getattr(loop, "_signal_handlers", None) or {})

    try:
        asyncio.run(app())
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        asyncio.run(two())
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
