"""Multi-turn sessions: the spec, the generator's context arithmetic, trace validation, and the
dispatcher's release rule (turn k+1 sent at done_k + think) checked to the nanosecond in virtual
time, then once against a real local HTTP server."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pyarrow as pa
import pytest
from replay_helpers import MS, ORIGIN, make_trace, replay_virtual

from traceforge.backends.null import NullBackend
from traceforge.errors import BadInput
from traceforge.generate import generate_trace
from traceforge.generate.spec import parse_spec
from traceforge.replay import Outcome
from traceforge.schema import Trace, conform_trace_table, read_trace, write_trace


def session_trace(arrival, session, turn, *, seq_len=16, max_new_tokens=4) -> Trace:
    base = make_trace(arrival, seq_len=seq_len, max_new_tokens=max_new_tokens).table
    sid = np.asarray(session, np.int64)
    table = base.set_column(base.schema.get_field_index("session_id"), "session_id",
                            pa.array(sid, pa.int64(), mask=sid < 0))
    table = table.set_column(table.schema.get_field_index("turn"), "turn",
                             pa.array(np.asarray(turn, np.int32), pa.int32(), mask=sid < 0))
    return Trace(table=conform_trace_table(table), meta={"spec": {"models": {}}})


# session 0: turns at nominal 0, 100 ms (think 100 ms), 150 ms (think 50 ms);
# session 1: one turn at 30 ms; a plain row (no session) at 5 ms.
ARRIVAL = [0, 5 * MS, 30 * MS, 100 * MS, 150 * MS]
SESSION = [0, -1, 1, 0, 0]
TURN = [1, -1, 1, 2, 3]


def test_turn_k_plus_1_is_sent_at_done_k_plus_think(tmp_path):
    summary, tl = replay_virtual(session_trace(ARRIVAL, SESSION, TURN), tmp_path / "run",
                                 NullBackend(servers=4, service_ms=20, service_dist="const"))
    assert summary.status == "complete" and summary.counts == {"ok": 5}
    by_id = {r: i for i, r in enumerate(tl["request_id"])}
    t1, t2, t3 = (by_id[0], by_id[3], by_id[4])
    assert tl["scheduled_ns"][t1] == ORIGIN
    assert tl["done_ns"][t1] == ORIGIN + 20 * MS
    # released at done_1 + 100 ms think, not at its nominal arrival (ORIGIN + 100 ms)
    assert tl["scheduled_ns"][t2] == tl["sent_ns"][t2] == ORIGIN + 120 * MS
    assert tl["scheduled_ns"][t3] == tl["sent_ns"][t3] == tl["done_ns"][t2] + 50 * MS
    assert tl["done_ns"][t3] == ORIGIN + 210 * MS
    # rows outside sessions and first turns keep their trace times
    assert tl["scheduled_ns"][by_id[1]] == ORIGIN + 5 * MS
    assert tl["scheduled_ns"][by_id[2]] == ORIGIN + 30 * MS
    assert [tl["session_id"][i] for i in (t1, t2, t3)] == [0, 0, 0]
    assert [tl["turn"][i] for i in (t1, t2, t3)] == [1, 2, 3]
    assert tl["session_id"][by_id[1]] is None and tl["turn"][by_id[1]] is None


def test_latency_of_a_released_turn_includes_queueing_but_not_think(tmp_path):
    # One server: turn 2 is released at 120 ms (done 20 ms + think 100 ms) and queues behind
    # the plain row sent at 110 ms, which holds the server until 130 ms.
    trace = session_trace([0, 100 * MS, 110 * MS], [0, 0, -1], [1, 2, -1])
    _, tl = replay_virtual(trace, tmp_path / "run",
                           NullBackend(servers=1, service_ms=20, service_dist="const"))
    by_id = {r: i for i, r in enumerate(tl["request_id"])}
    plain, turn2 = by_id[2], by_id[1]
    assert tl["sent_ns"][plain] == ORIGIN + 110 * MS
    assert tl["scheduled_ns"][turn2] == ORIGIN + 120 * MS  # done 20 ms + think 100 ms
    assert tl["service_start_ns"][turn2] == ORIGIN + 130 * MS  # waits for the plain row
    assert tl["done_ns"][turn2] - tl["scheduled_ns"][turn2] == 30 * MS


def test_time_scale_stretches_think_time(tmp_path):
    _, tl = replay_virtual(session_trace([0, 100 * MS], [0, 0], [1, 2]), tmp_path / "run",
                           NullBackend(servers=1, service_ms=20, service_dist="const"),
                           time_scale=2.0)
    assert tl["scheduled_ns"][1] == ORIGIN + 20 * MS + 200 * MS


class FailTurn2(NullBackend):
    async def submit(self, request):
        if request.turn == 2:
            return Outcome(status="error", error="server said no")
        return await super().submit(request)


def test_a_failed_turn_stops_its_session_and_later_turns_are_dropped_rows(tmp_path):
    summary, tl = replay_virtual(session_trace(ARRIVAL, SESSION, TURN), tmp_path / "run",
                                 FailTurn2(servers=4, service_ms=20, service_dist="const"))
    by_id = {r: i for i, r in enumerate(tl["request_id"])}
    t2, t3 = by_id[3], by_id[4]
    assert tl["status"][t2] == "error"
    assert tl["status"][t3] == "dropped"
    assert tl["sent_ns"][t3] is None
    assert tl["error"][t3] == "session 0 stopped: turn 2 ended error"
    assert tl["scheduled_ns"][t3] == tl["done_ns"][t2]  # when the session stopped
    assert summary.counts == {"ok": 3, "error": 1, "dropped": 1}
    assert len(tl["request_id"]) == 5  # nothing silently lost


def test_released_turns_respect_max_inflight(tmp_path):
    # cap 1: turn 2 (released at 20 + 10 = 30 ms) waits for the plain row sent at 25 ms
    trace = session_trace([0, 10 * MS, 25 * MS], [0, 0, -1], [1, 2, -1])
    summary, tl = replay_virtual(trace, tmp_path / "run",
                                 NullBackend(servers=4, service_ms=20, service_dist="const"),
                                 max_inflight=1)
    by_id = {r: i for i, r in enumerate(tl["request_id"])}
    turn2 = by_id[1]
    assert tl["scheduled_ns"][turn2] == ORIGIN + 30 * MS
    assert tl["sent_ns"][turn2] == ORIGIN + 45 * MS  # the plain row ends at 25 + 20 ms
    assert summary.counts == {"ok": 3}


def test_closed_loop_refuses_a_session_trace(tmp_path):
    with pytest.raises(BadInput, match="open loop"):
        replay_virtual(session_trace([0, MS], [0, 0], [1, 2]), tmp_path / "run",
                       NullBackend(service_dist="const"), concurrency=2)
    assert not (tmp_path / "run").exists()


# -- the spec and the generator -------------------------------------------------------------
SPEC = {
    "name": "s", "duration_s": 120, "seed": 3,
    "models": {
        "chat": {"arrival": {"process": "poisson", "rate": 1.0},
                 "seq_len": {"dist": "uniform", "low": 10, "high": 50},
                 "max_new_tokens": {"dist": "uniform", "low": 1, "high": 9},
                 "sessions": {"turns": {"dist": "uniform", "low": 1, "high": 5},
                              "think_time_s": {"dist": "exponential", "mean": 2.0}}},
        "plain": {"arrival": {"process": "poisson", "rate": 0.5}},
    },
}


def test_generated_sessions_grow_context_by_previous_prompt_and_output(tmp_path):
    trace = generate_trace(parse_spec(SPEC))
    rows = trace.table.to_pylist()
    chat = [r for r in rows if r["model"] == "chat"]
    plain = [r for r in rows if r["model"] == "plain"]
    assert all(r["session_id"] is None and r["turn"] is None for r in plain)
    assert all(r["session_id"] is not None for r in chat)
    sessions: dict[int, list[dict]] = {}
    for r in chat:
        sessions.setdefault(r["session_id"], []).append(r)
    assert len(sessions) > 80  # ~120 sessions at 1/s over 120 s
    lengths = {len(v) for v in sessions.values()}
    assert lengths == {1, 2, 3, 4, 5}
    for turns in sessions.values():
        assert [t["turn"] for t in turns] == list(range(1, len(turns) + 1))
        for prev, cur in itertools.pairwise(turns):
            new_user = cur["seq_len"] - prev["seq_len"] - prev["max_new_tokens"]
            assert 10 <= new_user <= 50  # the user's new text, from the seq_len distribution
            assert cur["arrival_ns"] >= prev["arrival_ns"]
    # session ids are numbered in order of their first turn
    order = sorted(sessions, key=lambda s: sessions[s][0]["request_id"])
    assert order == sorted(sessions)
    # think times (arrival gaps within a session) have the spec's mean, 2 s, within 4 SE
    gaps = np.array([(b["arrival_ns"] - a["arrival_ns"]) / 1e9 for t in sessions.values()
                     for a, b in itertools.pairwise(t)])
    assert abs(gaps.mean() - 2.0) < 4 * 2.0 / np.sqrt(gaps.size)
    # the file round trip keeps the columns; the spec round trip keeps the sessions table
    path = tmp_path / "t.parquet"
    write_trace(trace.table, path, trace.meta)
    back = read_trace(path)
    assert back.table.column("turn").to_pylist() == trace.table.column("turn").to_pylist()
    again = generate_trace(parse_spec(trace.meta["spec"]))
    assert again.table.equals(trace.table)


def test_max_context_ends_sessions_and_none_growth_keeps_prompts_flat():
    spec = json.loads(json.dumps(SPEC))
    spec["models"]["chat"]["sessions"] = {"turns": 6, "think_time_s": 1,
                                          "max_context": 120}
    table = generate_trace(parse_spec(spec)).table
    chat = table.filter(pa.compute.equal(table.column("model"), "chat"))
    assert max(chat.column("seq_len").to_pylist()) <= 120
    assert max(chat.column("turn").to_pylist()) < 6  # 6 turns would pass 120 tokens
    spec["models"]["chat"]["sessions"] = {"turns": 3, "think_time_s": 1,
                                          "context_growth": "none"}
    table = generate_trace(parse_spec(spec)).table
    chat = table.filter(pa.compute.equal(table.column("model"), "chat"))
    assert max(chat.column("seq_len").to_pylist()) <= 50
    assert set(chat.column("turn").to_pylist()) == {1, 2, 3}


@pytest.mark.parametrize(("sessions", "message"), [
    ({"turns": 0}, "models.chat.sessions.turns"),
    ({"turns": 2, "think_time_s": -1}, "models.chat.sessions.think_time_s"),
    ({"turns": 2, "context_growth": "prepend"}, "models.chat.sessions.context_growth"),
    ({"turns": 2, "think_time_s": {"dist": "gamma"}}, "models.chat.sessions.think_time_s.dist"),
    ({"turns": 2, "bogus": 1}, "models.chat.sessions.bogus"),
    ({"think_time_s": 1}, "models.chat.sessions.turns"),
])
def test_bad_session_specs_name_the_key(sessions, message):
    spec = json.loads(json.dumps(SPEC))
    spec["models"]["chat"]["sessions"] = sessions
    with pytest.raises(BadInput, match=message.replace(".", r"\.")):
        parse_spec(spec)


def test_trace_validation_of_session_columns(tmp_path):
    good = session_trace([0, MS, 2 * MS], [0, 0, -1], [1, 2, -1])
    path = tmp_path / "ok.parquet"
    write_trace(good.table, path, {})
    assert read_trace(path).table.column("session_id").null_count == 1
    bad = session_trace([0, MS], [0, 0], [2, 1])  # turns decrease in arrival order
    write_trace(bad.table, tmp_path / "bad.parquet", {})
    with pytest.raises(BadInput, match="turns of session 0 must increase"):
        read_trace(tmp_path / "bad.parquet")
    # a trace file written without the optional columns reads as "no sessions"
    import pyarrow.parquet as pq

    old = pq.read_table(path).drop_columns(["session_id", "turn"])
    pq.write_table(old, tmp_path / "old.parquet")
    table = read_trace(tmp_path / "old.parquet").table
    assert table.column("turn").null_count == table.num_rows == 3


def test_report_gives_per_turn_latency_and_session_duration(tmp_path):
    from traceforge.analyze.html import report_html
    from traceforge.analyze.report import build_report
    from traceforge.analyze.rundata import load_run

    replay_virtual(session_trace(ARRIVAL, SESSION, TURN), tmp_path / "run",
                   FailTurn2(servers=4, service_ms=20, service_dist="const"))
    report = build_report(tmp_path / "run")
    s = report["sessions"]
    assert (s["sessions"], s["complete"], s["stopped"]) == (2, 1, 1)
    assert s["turn_latency_ms"]["1"]["count"] == 2 and s["turn_latency_ms"]["1"]["p50"] == 20.0
    assert s["turn_latency_ms"]["2"] == {"rows": 1, "count": 0, "mean": None, "p50": None,
                                         "p90": None, "p99": None, "max": None}
    assert s["turn_latency_ms"]["3"]["rows"] == 1
    assert s["duration_s"]["count"] == 1 and s["duration_s"]["max"] == pytest.approx(0.020)
    page = report_html(load_run(tmp_path / "run"), report)
    assert "<h2>Sessions</h2>" in page and "stopped by a failed turn" in page


@pytest.mark.parametrize(("servers", "dist"), [(1, "const"), (1, "exp"), (3, "exp")])
def test_simulator_honours_sessions_like_the_replay(tmp_path, servers, dist):
    from traceforge.record import read_timeline
    from traceforge.simulate.simulator import simulate

    spec = json.loads(json.dumps(SPEC))
    spec["duration_s"] = 30
    spec["models"]["chat"]["arrival"]["rate"] = 20.0  # busy: turns queue behind others
    spec["models"]["chat"]["sessions"]["think_time_s"] = {"dist": "exponential", "mean": 0.05}
    trace = generate_trace(parse_spec(spec))
    path = tmp_path / "t.parquet"
    write_trace(trace.table, path, trace.meta)
    trace = read_trace(path)
    _, replayed = replay_virtual(trace, tmp_path / "replay",
                                 NullBackend(servers=servers, service_ms=30, service_dist=dist))
    summary = simulate(trace, tmp_path / "sim", servers=servers, service_ms=30,
                       service_dist=dist)
    simulated = read_timeline(tmp_path / "sim").to_pydict()
    assert summary.status == "complete"
    assert replayed["request_id"] == simulated["request_id"]
    shift = ORIGIN  # the replay's schedule starts 10 ms after the backend starts
    for col in ("scheduled_ns", "service_start_ns", "done_ns"):
        assert [v - shift for v in replayed[col]] == simulated[col], col
    assert simulated["turn"] == replayed["turn"]
    manifest = json.loads((tmp_path / "sim" / "run.json").read_text())
    assert manifest["simulation"]["session_rounds"] >= 2


def test_a_real_http_replay_releases_turns_after_answers_and_grows_prompts(tmp_path):
    """Against a local aiohttp server: turn k+1 leaves no earlier than done_k + think, and its
    prompt starts with turn k's prompt (the conversation so far), token for token."""
    import asyncio

    from test_http_backend import FakeServer

    from traceforge.backends.http import HttpBackend
    from traceforge.record import read_timeline
    from traceforge.replay import ReplayOptions, replay_async

    # two sessions of three turns (think 30 ms) and a plain row; seq_len grows per turn
    trace = session_trace([0, 5 * MS, 10 * MS, 40 * MS, 45 * MS, 70 * MS, 80 * MS],
                          [0, 1, -1, 0, 1, 0, 1], [1, 1, -1, 2, 2, 3, 3])
    seq = pa.array([20, 25, 8, 50, 55, 90, 95], pa.int32())
    trace = Trace(table=trace.table.set_column(trace.table.schema.get_field_index("seq_len"),
                                               "seq_len", seq), meta=trace.meta)

    async def main():
        async with FakeServer() as server:
            backend = HttpBackend(server.url, model_name={"m": "ok"})
            await replay_async(trace, tmp_path / "run", backend, ReplayOptions(pacer="sleep"))
            return server.bodies

    bodies = asyncio.run(main())
    tl = read_timeline(tmp_path / "run").to_pydict()
    assert tl["status"] == ["ok"] * 7
    arrival = trace.table.column("arrival_ns").to_pylist()
    for prev, cur in ((0, 3), (3, 5), (1, 4), (4, 6)):
        think = arrival[cur] - arrival[prev]
        assert tl["scheduled_ns"][cur] == tl["done_ns"][prev] + think
        assert tl["sent_ns"][cur] >= tl["scheduled_ns"][cur]
    prompts = {len(b["prompt"].split()): b["prompt"] for b in bodies}  # words = tokens
    assert sorted(prompts) == [8, 20, 25, 50, 55, 90, 95]
    assert prompts[50].startswith(prompts[20]) and prompts[90].startswith(prompts[50])
    assert prompts[55].startswith(prompts[25]) and prompts[95].startswith(prompts[55])
    assert prompts[20].split()[0] != prompts[25].split()[0]  # sessions share nothing
    assert prompts[8].split()[0] not in (prompts[20].split()[0], prompts[25].split()[0])


def test_csv_import_keeps_sessions_from_a_session_column(tmp_path):
    from traceforge.importers import import_trace

    src = tmp_path / "chat.csv"
    src.write_text("t,conv,tokens\n"
                   "0.0,alice,10\n0.5,bob,12\n1.0,,7\n2.0,alice,30\n3.5,bob,40\n4.0,alice,55\n")
    trace = import_trace("csv", [src], columns="time=t,session=conv,seq_len=tokens")
    rows = trace.table.to_pylist()
    assert [r["session_id"] for r in rows] == [0, 1, None, 0, 1, 0]
    assert [r["turn"] for r in rows] == [1, 1, None, 2, 2, 3]
    # a window starting mid-session: bob's turn 2 is the first of his rows left
    cut = import_trace("csv", [src], columns="time=t,session=conv,seq_len=tokens",
                       start_s=3.0).table.to_pylist()
    assert [(r["session_id"], r["turn"]) for r in cut] == [(0, 2), (1, 3)]
    # explicit turn numbers must increase with time
    bad = tmp_path / "bad.csv"
    bad.write_text("t,conv,k\n0.0,a,2\n1.0,a,1\n")
    with pytest.raises(BadInput, match=r"bad\.csv: k = 1: turns of a session must increase "
                       r"with arrival time: turn 1 \(line 3\) arrives after turn 2 \(line 2\)"):
        import_trace("csv", [bad], columns="time=t,session=conv,turn=k")
    with pytest.raises(BadInput, match="turn=COL needs session=COL"):
        import_trace("csv", [bad], columns="time=t,turn=k")


def test_max_inflight_is_never_exceeded_with_released_turns(tmp_path):
    spec = json.loads(json.dumps(SPEC))
    spec["duration_s"] = 10
    spec["models"]["chat"]["arrival"]["rate"] = 30.0
    spec["models"]["chat"]["sessions"]["think_time_s"] = {"dist": "exponential", "mean": 0.02}
    trace = generate_trace(parse_spec(spec))
    summary, tl = replay_virtual(trace, tmp_path / "run",
                                 NullBackend(servers=8, service_ms=30, service_dist="exp"),
                                 max_inflight=3)
    assert summary.counts == {"ok": trace.table.num_rows}
    events = sorted([(s, 1) for s in tl["sent_ns"]] + [(d, -1) for d in tl["done_ns"]],
                    key=lambda e: (e[0], e[1]))  # at a tie a completion frees its slot first
    depth = np.cumsum([e[1] for e in events])
    assert depth.max() == 3  # the cap binds (30 req/s x 30 ms with turns) and holds


def test_trace_stats_fit_the_session_starts():
    from traceforge.generate.stats import trace_stats

    trace = generate_trace(parse_spec(SPEC))
    report = trace_stats(trace)
    chat = report["models"]["chat"]
    sid = trace.table.column("session_id").to_pylist()
    assert chat["sessions"]["sessions"] == chat["count"] == len({s for s in sid if s is not None})
    assert chat["sessions"]["rows"] == sum(s is not None for s in sid)
    # the starts are the spec's Poisson(1/s) process: the fit does not reject it
    assert chat["fit"]["p_value"] > 0.01
    assert report["models"]["plain"].get("sessions") is None


def test_csv_import_builds_sessions_from_parent_links(tmp_path):
    from traceforge.importers import import_trace

    src = tmp_path / "agent.csv"
    src.write_text("t,req,prev\n"
                   "0.0,a1,\n0.4,b1,\n1.0,a2,a1\n1.5,c1,\n2.0,a3,a2\n2.5,b2,b1\n3.0,a4,a3\n")
    rows = import_trace("csv", [src], columns="time=t,id=req,parent=prev").table.to_pylist()
    assert [(r["session_id"], r["turn"]) for r in rows] == [
        (0, 1), (1, 1), (0, 2), (2, 1), (0, 3), (1, 2), (0, 4)]
    bad = tmp_path / "bad.csv"
    bad.write_text("t,req,prev\n0.0,a1,\n1.0,a2,zz\n")
    with pytest.raises(BadInput, match="parent id is not an id in this file"):
        import_trace("csv", [bad], columns="time=t,id=req,parent=prev")
    loop = tmp_path / "loop.csv"
    loop.write_text("t,req,prev\n0.0,a1,a2\n1.0,a2,a1\n")
    with pytest.raises(BadInput, match="parent chain loops"):
        import_trace("csv", [loop], columns="time=t,id=req,parent=prev")
    with pytest.raises(BadInput, match="id=COL and parent=COL go together"):
        import_trace("csv", [src], columns="time=t,parent=prev")


def test_an_interrupt_leaves_later_turns_not_due_not_dropped(tmp_path):
    """SIGINT at 70 ms, one slot, 50 ms service. s0t1 runs 0-50; s1t1 waits, runs 50-100 and is
    cancelled; s0t2 (released at 50 + 10 = 60) waits for the slot: due, dropped. Their later
    turns never had a time (their previous turn did not finish): not due, no row — they used
    to become `dropped` rows at their nominal trace times."""
    import os
    import signal

    arrival = [0, 0, 10 * MS, 10 * MS, 20 * MS]
    session = [0, 1, 0, 1, 0]
    turn = [1, 1, 2, 2, 3]

    def interrupt_at_70ms(loop):
        loop.call_at((ORIGIN + 70 * MS) / 1e9, os.kill, os.getpid(), signal.SIGINT)

    _, tl = replay_virtual(session_trace(arrival, session, turn), tmp_path / "run",
                                 NullBackend(servers=1, service_ms=50, service_dist="const"),
                                 before=interrupt_at_70ms, max_inflight=1)
    status = dict(zip(tl["request_id"], tl["status"], strict=True))
    assert status == {0: "ok", 1: "cancelled", 2: "dropped"}
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["not_due"] == 2 and manifest["rows_lost"] == 0


def test_a_slot_freed_after_duration_reaches_a_waiting_turn_and_the_run_ends(tmp_path):
    """``--max-inflight 1 --duration``: the schedule's row and a released turn both wait for
    the slot; it frees after the end. The schedule stops without using it — and now passes it
    on, so the turn sees the end too instead of waiting forever (the run never ended, audit of
    2026-12-01). Both are due and never left: dropped."""
    # turn 1 at 0 (ends 20 ms; turn 2 released at 20 + 10 = 30 ms); plain rows at 25 ms (ends
    # 45 ms) and 28 ms (waits); --duration 40 ms
    trace = session_trace([0, 10 * MS, 25 * MS, 28 * MS], [0, 0, -1, -1], [1, 2, -1, -1])
    summary, tl = replay_virtual(trace, tmp_path / "run",
                                 NullBackend(servers=4, service_ms=20, service_dist="const"),
                                 max_inflight=1, duration_s=0.040)
    assert summary.counts == {"ok": 2, "dropped": 2}
    by_id = dict(zip(tl["request_id"], tl["status"], strict=True))
    assert by_id == {0: "ok", 1: "dropped", 2: "ok", 3: "dropped"}


def test_csv_sessions_of_per_file_models_stay_in_their_file(tmp_path):
    """Each file is its own model: one session key in two files is two sessions (it was one
    session alternating between the two models, audit of 2026-12-01)."""
    from traceforge.importers import import_trace

    (tmp_path / "f1.csv").write_text("ts,sess\n0,a\n1,a\n")
    (tmp_path / "f2.csv").write_text("ts,sess\n0.5,a\n1.5,a\n")
    tr = import_trace("csv", [tmp_path / "f1.csv", tmp_path / "f2.csv"],
                      columns="time=ts,session=sess")
    rows = tr.table.select(["model", "session_id", "turn"]).to_pylist()
    by_session: dict = {}
    for r in rows:
        by_session.setdefault(r["session_id"], []).append((r["model"], r["turn"]))
    assert sorted(by_session.values()) == [[("f1", 1), ("f1", 2)], [("f2", 1), ("f2", 2)]]
