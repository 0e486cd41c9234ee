"""`--workers N`: the trace is sharded across local processes that share one schedule origin and
one run directory; the merged run must hold exactly the rows an unsharded replay holds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from http_stub import SERVER_CODE, start_stub_server
from replay_helpers import make_trace, poisson_arrivals, timeline_rows

from traceforge.cli import main
from traceforge.errors import BadInput
from traceforge.record import read_timeline
from traceforge.replay.shard import shard_rows, split_cap

MODELS = ["a", "b", "c"]


def cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def trace_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("trace") / "trace.parquet"
    rng = np.random.default_rng(3)
    models = [MODELS[k] for k in rng.choice(3, 300, p=[0.6, 0.3, 0.1])]
    make_trace(poisson_arrivals(1000, 300, seed=5), models=models, path=path)
    return path


def rows(run_dir):
    return timeline_rows(run_dir, worker=True)


def test_shard_by_request_keeps_each_models_order_and_covers_every_row():
    table = make_trace(np.arange(10), models=list("aabbbaabab")).table
    shards = shard_rows(table, 3, "request")
    assert sorted(np.concatenate(shards).tolist()) == list(range(10))
    assert shards[1].tolist() == [1, 4, 7]  # round robin over arrival order
    for shard in shards:
        assert np.all(np.diff(shard) > 0)  # a subsequence: arrival order kept per model


def test_shard_by_request_keeps_a_session_on_one_worker():
    import pyarrow as pa

    sessions = pa.array([None, 5, 5, None, 7, 5, 7, None], pa.int64())
    table = pa.table({"model": ["a"] * 8, "session_id": sessions})
    shards = shard_rows(table, 2, "request")
    # units in order of first appearance: row 0, session 5, row 3, session 7, row 7
    assert [s.tolist() for s in shards] == [[0, 3, 7], [1, 2, 4, 5, 6]]


def test_shard_by_model_gives_each_model_one_worker_largest_first():
    table = make_trace(np.arange(10), models=list("aaaaabbbcc")).table
    a, b = shard_rows(table, 2, "model")
    assert a.tolist() == [0, 1, 2, 3, 4]  # a (5 rows) alone; b (3) and c (2) share worker 1
    assert b.tolist() == [5, 6, 7, 8, 9]
    with pytest.raises(BadInput, match="at least as many models"):
        shard_rows(table, 4, "model")


def test_split_cap_never_exceeds_the_whole():
    assert split_cap(10, 3) == [4, 3, 3]
    assert split_cap(None, 2) == [None, None]
    with pytest.raises(BadInput):
        split_cap(1, 2)


@pytest.mark.parametrize("shard_by", ["request", "model"])
def test_sharded_null_replay_has_the_unsharded_rows(tmp_path, trace_path, capsys, shard_by):
    base = ["--backend", "null", "--servers", "4", "--service-ms", "1", "--service-dist", "const"]
    one, two = tmp_path / "one", tmp_path / "two"
    code, _ = cli(["replay", str(trace_path), "-o", str(one), *base], capsys)
    assert code in (0, None)
    code, err = cli(["replay", str(trace_path), "-o", str(two), *base, "--workers", "2",
                     "--shard-by", shard_by], capsys)
    assert code in (0, None), err
    ids1, models1, sched1, worker1 = rows(one)
    ids2, models2, sched2, worker2 = rows(two)
    assert (ids2, models2, sched2) == (ids1, models1, sched1)
    assert set(worker1) == {None} and set(worker2) == {0, 1}
    parts = sorted(p.name for p in (two / "timeline").glob("part-*.parquet"))
    assert {p[:8] for p in parts} == {"part-w00", "part-w01"}
    manifest = json.loads((two / "run.json").read_text())
    assert manifest["status"] == "complete" and manifest["workers"] == 2
    assert manifest["counts"] == {"ok": 300}
    assert (manifest["rows_written"], manifest["not_due"], manifest["rows_lost"]) == (300, 0, 0)
    per_worker = manifest["worker_runs"]
    assert sum(w["rows"] for w in per_worker) == 300
    assert sum(w["self_check"]["requests_sent"] for w in per_worker) == 300
    assert manifest["self_check"]["requests_sent"] == 300
    if shard_by == "model":  # every model's rows came from one worker
        tl = read_timeline(two).select(["model", "replay_worker"]).to_pylist()
        owner = {}
        for row in tl:
            assert owner.setdefault(row["model"], row["replay_worker"]) == row["replay_worker"]


def test_resident_refuses_workers_and_writes_nothing(tmp_path, trace_path, capsys):
    code, err = cli(["replay", str(trace_path), "-o", str(tmp_path / "r"), "--backend",
                     "resident", "--workers", "2"], capsys)
    assert code == 2 and "--backend = 'resident'" in err and "one process" in err
    assert not (tmp_path / "r").exists()


def test_unreachable_url_in_workers_is_bad_input_and_writes_nothing(tmp_path, trace_path,
                                                                    capsys):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nobody listens there now
    out = tmp_path / "r"
    code, err = cli(["replay", str(trace_path), "-o", str(out), "--backend", "http", "--url",
                     f"http://127.0.0.1:{port}", "--workers", "2"], capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and "127.0.0.1" in err
    assert not out.exists()


@pytest.fixture
def http_server():
    proc, url = start_stub_server()
    try:
        yield url
    finally:
        proc.kill()
        proc.wait()


def test_sharded_http_replay_sends_every_row_once(tmp_path, trace_path, capsys, http_server,
                                                  monkeypatch):
    import os

    # 2 cores seen by the driver (whatever this machine has): 2 local workers fill them
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    out = tmp_path / "run"
    code, err = cli(["replay", str(trace_path), "-o", str(out), "--backend", "http", "--url",
                     http_server, "--no-stream", "--workers", "2", "--max-inflight", "8"],
                    capsys)
    assert code in (0, None), err
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["counts"] == {"ok": 300} and manifest["backend"] == "http"
    ids, _, _, workers = rows(out)
    assert ids == list(range(300)) and set(workers) == {0, 1}
    # the cap of 8 was split 4 + 4: each worker's pool and in-flight cap got its share
    assert [w["self_check"]["requests_sent"] for w in manifest["worker_runs"]] == [150, 150]
    assert {json.loads((out / "workers" / f"w0{k}.json").read_text())["options"]["max_inflight"]
            for k in (0, 1)} == {4}
    assert "warning: 2 local workers on 2 cores" in err  # the CLI prints crowding_warning's line


RECORDING_SERVER = SERVER_CODE.replace(
    "    await request.read()\n",
    "    with open(sys.argv[2], 'a') as fh:\n        fh.write((await request.read()).decode() + '\\n')\n"
).replace('"/v1/completions"', '"/{tail:.*}"')


def recorded_prompts(tmp_path, argv_tail, name, capsys, trace_path):
    """Replay against a server that logs every body; returns {request_id: prompt}."""
    log = tmp_path / f"{name}.jsonl"
    proc, url = start_stub_server(code=RECORDING_SERVER, args=(str(log),))
    try:
        code, err = cli(["replay", str(trace_path), "-o", str(tmp_path / name), "--backend",
                         "http", "--url", url + "/gen", "--api", "json", "--body-template",
                         '{"prompt": "{{prompt}}", "rid": "{{request_id}}"}', *argv_tail], capsys)
        assert code in (0, None), err
    finally:
        proc.kill()
        proc.wait()
    bodies = [json.loads(line) for line in log.read_text().splitlines()]
    return {int(b["rid"]): b["prompt"] for b in bodies}


def test_sharded_http_replay_sends_the_unsharded_prompts(tmp_path, trace_path, capsys):
    """First tokens are planned over the whole trace once (prompts.py); a shard planning over
    its own rows would rank siblings differently and send different prompts."""
    one = recorded_prompts(tmp_path, ["--prompt-seed", "7"], "one", capsys, trace_path)
    two = recorded_prompts(tmp_path, ["--prompt-seed", "7", "--workers", "2"], "two", capsys,
                           trace_path)
    assert len(one) == 300 and one == two
    # Without --prompt-seed the driver draws one seed for all workers.
    recorded_prompts(tmp_path, ["--workers", "2"], "drawn", capsys, trace_path)
    seeds = {json.loads((tmp_path / "drawn" / "workers" / f"w0{k}.json").read_text())
             ["backend_info"]["prompts"]["seed"] for k in (0, 1)}
    assert len(seeds) == 1


def test_workers_that_fill_every_core_are_warned_about(monkeypatch):
    import os

    from traceforge.replay import workers as w

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert w.crowding_warning(1, "local") is None
    assert "2 local workers on 2 cores" in w.crowding_warning(2, "local")
    assert "use at most 1" in w.crowding_warning(3, "local")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    assert w.crowding_warning(3, "local") is None
    assert "use at most 3" in w.crowding_warning(4, "local")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert "--pacer sleep" in w.crowding_warning(2, "local", "spin")
    assert "--pacer sleep" not in w.crowding_warning(2, "local", "sleep")
    assert w.crowding_warning(4, "ray") is None  # actors sit on other hosts' cores


def test_a_worker_failure_reaches_run_json_with_its_secrets_masked(tmp_path):
    from traceforge.record.manifest import RunManifest
    from traceforge.redact import Scrubber
    from traceforge.replay.options import ReplayOptions
    from traceforge.replay.workers import _merge

    manifest = RunManifest(tmp_path, backend="http")
    manifest.write()
    results = {0: ("error", {"type": "ClientError", "message": "bad key sk-live-12345 at "
                            "http://u:pw@h/v1", "bad_input": False})}
    summary = _merge(manifest, results, ReplayOptions(), tmp_path, [], 0.1,
                     Scrubber(["sk-live-12345"]))
    text = (tmp_path / "run.json").read_text()
    assert summary.status == "failed"
    assert "sk-live-12345" not in text and "u:pw@" not in text
    assert json.loads(text)["worker_runs"][0]["error"] == "ClientError: bad key *** at http://***@h/v1"


def test_rows_of_a_worker_that_died_are_written_or_lost_in_run_json(tmp_path):
    """rows_written + not_due + rows_lost = trace rows holds for a sharded run: each worker's
    own rows_lost is summed, and a worker that died counts its finished part files as written
    and the rest of its shard as lost (run.json had no rows_lost, and those rows no count)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from traceforge.record.manifest import RunManifest
    from traceforge.replay.options import ReplayOptions
    from traceforge.replay.workers import _merge

    manifest = RunManifest(tmp_path, backend="null", trace={"rows": 12})
    manifest.write()
    (tmp_path / "timeline").mkdir()
    pq.write_table(pa.table({"x": [1, 2, 3]}), tmp_path / "timeline" / "part-w01-000001.parquet")
    pq.write_table(pa.table({"x": [4]}),  # a part being written when w01 died: not on disk yet
                   tmp_path / "timeline" / ".part-w01-000002.parquet.abc.tmp")
    pq.write_table(pa.table({"x": [5]}), tmp_path / "timeline" / "part-w00-000001.parquet")
    arr = np.arange(4, dtype=np.int64)
    w00 = {"manifest": {"status": "failed", "counts": {"ok": 2}, "rows_written": 2,
                        "not_due": 1, "rows_lost": 1, "trace": {"shard_rows": 4}},
           "scheduled_ns": arr, "sent_ns": arr, "ready_ns": arr, "slot_waits": 0}
    results = {0: ("result", w00, None), 1: ("died", -9),
               2: ("error", {"type": "OSError", "message": "boom", "bad_input": False})}
    _merge(manifest, results, ReplayOptions(), tmp_path, [], 0.1, shard_rows=[4, 5, 3])
    data = json.loads((tmp_path / "run.json").read_text())
    assert (data["rows_written"], data["not_due"], data["rows_lost"]) == (2 + 3, 1, 1 + 2 + 3)
    assert data["rows_written"] + data["not_due"] + data["rows_lost"] == 12
    assert [w.get("rows") for w in data["worker_runs"]] == [4, 5, 3]


def _status_part(path, statuses):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"request_id": list(range(len(statuses))), "status": statuses}), path)


def test_counts_of_a_worker_that_died_are_the_statuses_of_its_parts(tmp_path):
    """The rows of a dead worker's finished parts are in the timeline and in rows_written, so
    they are in counts too, by their status column (counts held only the workers that sent
    results back: ok 2 against rows_written 5). A part its flusher child writes after the
    worker died (the scratch directory is still there) is waited for."""
    import threading

    from traceforge.record.manifest import RunManifest
    from traceforge.replay.options import ReplayOptions
    from traceforge.replay.workers import _merge

    manifest = RunManifest(tmp_path, backend="null", trace={"rows": 12})
    manifest.write()
    timeline = tmp_path / "timeline"
    timeline.mkdir()
    _status_part(timeline / "part-w01-000001.parquet", ["ok", "error"])
    _status_part(timeline / ".part-w01-000002.parquet.abc.tmp", ["ok"])  # never finished
    scratch = timeline / ".recorder-w01-4242"  # the dead worker's flusher is still writing
    scratch.mkdir()

    def flusher_finishes():
        _status_part(timeline / "part-w01-000003.parquet", ["ok", "timeout"])
        scratch.rmdir()

    timer = threading.Timer(0.3, flusher_finishes)
    timer.start()
    arr = np.arange(4, dtype=np.int64)
    w00 = {"manifest": {"status": "complete", "counts": {"ok": 4}, "rows_written": 4,
                        "not_due": 0, "rows_lost": 0, "trace": {"shard_rows": 4}},
           "scheduled_ns": arr, "sent_ns": arr, "ready_ns": arr, "slot_waits": 0}
    try:
        summary = _merge(manifest, {0: ("result", w00, None), 1: ("died", -9)}, ReplayOptions(),
                         tmp_path, [], 0.1, shard_rows=[4, 8])
    finally:
        timer.join()
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["counts"] == summary.counts == {"ok": 6, "error": 1, "timeout": 1}
    assert data["worker_runs"][1]["counts"] == {"ok": 2, "error": 1, "timeout": 1}
    assert sum(data["counts"].values()) == data["rows_written"] == 8
    assert data["rows_lost"] == 4 and summary.status == "failed"
    assert summary.error == data["error"] == "w01: exited with code -9"


def test_a_failed_sharded_run_exits_1(tmp_path, trace_path, capsys, monkeypatch):
    """The CLI maps a sharded run's status to the exit code as for one process: failed is 1
    (it printed `failed: ok 200 ...` and exited 0)."""
    from pathlib import Path

    from traceforge.replay import workers
    from traceforge.replay.options import RunSummary

    def failed_run(trace, run_dir, *args, **kwargs):
        summary = RunSummary(run_dir=Path(run_dir), status="failed", counts={"ok": 200})
        summary.error = "w01: exited with code -9"  # run.json's error
        return summary

    monkeypatch.setattr(workers, "run_sharded", failed_run)
    out = tmp_path / "run"
    code, err = cli(["replay", str(trace_path), "-o", str(out), "--backend", "null",
                     "--workers", "2"], capsys)
    assert code == 1, err
    assert "failed: ok 200" in err
    assert f"traceforge: failed: replay failed: w01: exited with code -9 (partial timeline " \
           f"kept in {out})" in err


def test_a_worker_killed_mid_run_fails_the_replay_with_its_rows_counted(tmp_path, capsys):
    """kill -9 of one worker of a real sharded replay: exit 1 (run.json failed), and
    run.json's counts are the timeline's statuses, rows_written its rows."""
    import collections
    import multiprocessing
    import os
    import signal
    import threading
    import time

    trace = tmp_path / "trace.parquet"
    make_trace(poisson_arrivals(500, 1500, seed=1), models=["a", "b"] * 750, path=trace)
    out = tmp_path / "run"
    killed = []

    def kill_w01_after_its_first_part():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            if (out / "timeline").is_dir() and any((out / "timeline").glob("part-w01-*")):
                for proc in multiprocessing.active_children():
                    if proc.name == "traceforge-replay-w01":
                        os.kill(proc.pid, signal.SIGKILL)
                        killed.append(proc.pid)
            time.sleep(0.01)

    killer = threading.Thread(target=kill_w01_after_its_first_part, daemon=True)
    killer.start()
    try:
        code, err = cli(["replay", str(trace), "-o", str(out), "--backend", "null",
                         "--service-ms", "1", "--workers", "2", "--pacer", "sleep"], capsys)
    finally:
        killed.append(None)  # stops the thread if it never found the worker
        killer.join()
    assert killed[0] is not None, err
    assert code == 1, err
    assert "traceforge: failed: replay failed: w01: exited with code -9" in err
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "failed"
    statuses = read_timeline(out).column("status").to_pylist()
    assert manifest["counts"] == dict(collections.Counter(statuses))
    assert manifest["rows_written"] == len(statuses) > 750  # all of w00's and some of w01's
    assert manifest["rows_written"] + manifest["not_due"] + manifest["rows_lost"] == 1500


def test_replay_workers_stop_when_their_driver_is_killed(tmp_path):
    """SIGKILL of the driver: its --workers processes were re-parented to init and sent the
    rest of the trace (47 of 47 requests 8 s after the kill, in the audit). They now get
    SIGTERM when it dies (PR_SET_PDEATHSIG) and stop as an interrupted shard."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from test_resident import pid_alive, wait_gone

    trace = tmp_path / "t.parquet"
    make_trace(np.arange(200, dtype=np.int64) * 50_000_000, path=trace)  # 10 s at 20/s
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "traceforge", "replay", str(trace), "-o",
                             str(tmp_path / "run"), "--backend", "null", "--workers", "2",
                             "--pacer", "sleep", "--service-ms", "1", "--no-progress"],
                            cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        workers: list[int] = []
        while time.monotonic() < deadline and len(workers) < 2:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
            workers = [int(p) for p in children.read_text().split()] if children.exists() else []
            workers = [p for p in workers if "replay-w" in Path(f"/proc/{p}/cmdline").read_text()
                       or "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()]
            time.sleep(0.1)
        assert len(workers) >= 2, workers
        time.sleep(2.0)  # the schedule is under way
        proc.kill()
        proc.wait(10)
        assert wait_gone(workers, timeout_s=10) == [], "workers outlived their driver"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in [p for p in locals().get("workers", []) if pid_alive(p)]:
            os.kill(pid, signal.SIGKILL)
    rows = read_timeline(tmp_path / "run").num_rows
    assert rows < 200  # they stopped: the rest of the schedule was never sent
