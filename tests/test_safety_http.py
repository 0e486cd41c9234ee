"""HTTP safety: a bounded connection pool under overload (no "Too many open files", a row with a
status for every due request), connection timing columns, truncated streams, and no secret
(API key, --header value, URL password) anywhere in the run directory."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import threading
from pathlib import Path

from aiohttp import web
from replay_helpers import make_trace
from trace_cli_helpers import REPO

from traceforge.record import read_timeline

MS = 1_000_000
API_KEY = "sk-TOPSECRET-4f9a1c77"
HEADER_SECRET = "hdr-secret-93b1e2"
URL_PASSWORD = "pw-secret-71d0"


class ThreadServer:
    """An aiohttp server on its own loop in a thread, so a replay can run in a subprocess.

    Behaviour by the request's ``model``: ``ok`` streams 5 tokens and [DONE]; ``short`` streams
    2 tokens and closes without [DONE]; ``echo`` answers 401 echoing the auth headers; ``slow``
    holds each request 50 ms (at most ``capacity`` at once, like a saturated server)."""

    def __init__(self, capacity: int = 16) -> None:
        self.capacity = capacity
        self.max_open = 0
        self._open = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self.ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        self.sem = asyncio.Semaphore(self.capacity)
        app = web.Application()
        app.router.add_post("/v1/completions", self.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body.get("model")
        if model == "echo":
            echo = {k: v for k, v in request.headers.items()}
            return web.Response(status=401, text=f"bad credentials: {json.dumps(echo)} "
                                f"key={API_KEY}")
        if model == "garbage":  # a 200 that is neither JSON nor an event stream
            return web.Response(status=200, text="{not json", content_type="application/json")
        if model in ("empty", "huge") and not body.get("stream"):
            return web.json_response(
                {"choices": [], "usage": {"completion_tokens": 0}} if model == "empty" else
                {"choices": [{"text": "a"}], "usage": {"completion_tokens": 99999999999}})
        if model in ("empty", "huge"):  # streaming: only [DONE] / a usage beyond int32
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            if model == "huge":
                await resp.write(b'data: {"choices": [{"text": "a"}]}\n\n')
                await resp.write(b'data: {"choices": [], "usage": '
                                 b'{"completion_tokens": 99999999999}}\n\n')
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        if model == "cutkey":  # the key echoed right across the 300-character cut
            return web.Response(status=500, text="x" * 286 + API_KEY)
        if model == "slow":
            async with self.sem:
                self._open += 1
                self.max_open = max(self.max_open, self._open)
                await asyncio.sleep(0.05)
                self._open -= 1
            return web.json_response({"choices": [{"text": "a"}],
                                      "usage": {"completion_tokens": 1}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for _ in range(2 if model == "short" else 5):
            await resp.write(b'data: {"choices": [{"text": "a"}]}\n\n')
        if model != "short":
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _cli(args: list[str], *, env=None, nofile: int | None = None, timeout=120):
    def limit() -> None:
        if nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    return subprocess.run([sys.executable, "-m", "traceforge", *map(str, args)],
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                          capture_output=True, text=True, timeout=timeout, preexec_fn=limit)


def test_overload_with_a_low_open_file_limit_loses_nothing(tmp_path):
    """2000 req/s against a server that serves 16 at a time, in a process whose open-file limit
    is 256 (hard): the default pool bound (256 - 128) keeps descriptors in reserve, requests wait
    for connections, and every one of them gets a row."""
    n = 600
    trace = tmp_path / "t.parquet"
    make_trace([k * MS // 2 for k in range(n)], models=["slow"] * n, path=trace)  # 2000/s
    out = tmp_path / "run"
    with ThreadServer(capacity=16) as server:
        res = _cli(["replay", trace, "-o", out, "--backend", "http", "--url",
                    f"http://127.0.0.1:{server.port}", "--no-stream", "--no-progress",
                    "--timeout", "60"], nofile=256)
    assert res.returncode == 0, res.stderr
    tl = read_timeline(out).to_pydict()
    assert len(tl["request_id"]) == n
    assert set(tl["status"]) == {"ok"}, {e for e in tl["error"] if e}
    assert not any("Too many open files" in (e or "") for e in tl["error"])
    man = json.loads((out / "run.json").read_text())
    assert man["backend_info"]["max_connections"] == 128
    assert man["rows_lost"] == 0 and man["not_due"] == 0
    # most requests waited for a pooled connection; none waited negatively
    waits = [w for w in tl["conn_wait_ns"] if w is not None]
    assert len(waits) == n and min(waits) >= 0 and sum(w > 0 for w in waits) > n // 2
    assert all(c is not None and c >= 0 for c in tl["connect_ns"])
    # sent_ns is when the request was written: after the connection was obtained
    assert all(s >= sc for s, sc in zip(tl["sent_ns"], tl["scheduled_ns"], strict=True))


def test_max_connections_flag_bounds_the_pool(tmp_path):
    n = 200
    trace = tmp_path / "t.parquet"
    make_trace([k * MS // 4 for k in range(n)], models=["slow"] * n, path=trace)
    out = tmp_path / "run"
    with ThreadServer(capacity=64) as server:
        res = _cli(["replay", trace, "-o", out, "--backend", "http", "--url",
                    f"http://127.0.0.1:{server.port}", "--no-stream", "--no-progress",
                    "--max-connections", "4"])
        max_open = server.max_open
    assert res.returncode == 0, res.stderr
    assert max_open <= 4  # never more than 4 requests at the server at once
    assert read_timeline(out).num_rows == n
    bad = _cli(["replay", trace, "-o", tmp_path / "r2", "--backend", "http", "--url",
                "http://127.0.0.1:9", "--max-connections", "0"])
    assert bad.returncode == 2 and "--max-connections" in bad.stderr


def test_truncated_streams_are_ok_and_flagged(tmp_path):
    trace = tmp_path / "t.parquet"
    make_trace([0, MS, 2 * MS, 3 * MS], models=["ok", "short", "ok", "short"],
               max_new_tokens=5, path=trace)
    out = tmp_path / "run"
    with ThreadServer() as server:
        res = _cli(["replay", trace, "-o", out, "--backend", "http", "--url",
                    f"http://127.0.0.1:{server.port}", "--no-progress"])
    assert res.returncode == 0, res.stderr
    tl = read_timeline(out).to_pydict()
    assert tl["status"] == ["ok"] * 4
    assert tl["truncated"] == [False, True, False, True]
    assert tl["tokens_out"] == [5, 2, 5, 2]
    from traceforge.analyze.report import build_report

    report = build_report(out)
    assert report["models"]["short"]["truncated"] == 2
    assert report["models"]["ok"]["truncated"] == 0
    assert any("TRUNCATED" in n and n.startswith("short") for n in report["notes"])


def test_no_secret_reaches_disk(tmp_path):
    trace = tmp_path / "t.parquet"
    make_trace([0, MS, 2 * MS], models=["echo", "ok", "echo"], path=trace)
    out = tmp_path / "run"
    with ThreadServer() as server:
        # credentials in the URL (basic auth) + a secret header
        url = f"http://tfuser:{URL_PASSWORD}@127.0.0.1:{server.port}"
        res = _cli(["replay", trace, "-o", out, "--backend", "http", "--url", url,
                    "--header", f"X-Api-Key: {HEADER_SECRET}", "--no-progress"])
        # an API key from the environment
        res2 = _cli(["replay", trace, "-o", tmp_path / "run2", "--backend", "http", "--url",
                     f"http://127.0.0.1:{server.port}", "--api-key-env", "TF_TEST_KEY",
                     "--no-progress"], env={"TF_TEST_KEY": API_KEY})
        # both at once: refused, without printing either
        both = _cli(["replay", trace, "-o", tmp_path / "both", "--backend", "http", "--url",
                     url, "--api-key-env", "TF_TEST_KEY"], env={"TF_TEST_KEY": API_KEY})
        # a failing start (unreachable) must not print the password either
        dead = _cli(["replay", trace, "-o", tmp_path / "dead", "--backend", "http", "--url",
                     f"http://tfuser:{URL_PASSWORD}@127.0.0.1:9"])
    assert res.returncode == 0, res.stderr
    assert res2.returncode == 0, res2.stderr
    assert both.returncode == 2 and dead.returncode == 2
    for run in (out, tmp_path / "run2"):
        tl = read_timeline(run).to_pydict()
        assert tl["status"] == ["error", "ok", "error"], tl["error"]
        assert "HTTP 401" in tl["error"][0] and "***" in tl["error"][0]
    assert all("***@127.0.0.1" in w for w in read_timeline(out).column("worker").to_pylist())
    files = [p for r in (out, tmp_path / "run2") for p in r.rglob("*") if p.is_file()]
    assert len(files) >= 4
    for secret in (API_KEY, HEADER_SECRET, URL_PASSWORD):
        for p in files:
            assert secret.encode() not in p.read_bytes(), (secret, p)
        for proc in (res, res2, both, dead):
            assert secret not in proc.stderr + proc.stdout


def test_scrubber_unit():
    from traceforge.redact import Scrubber, redact_url

    s = Scrubber(["s3cr3t-value"])
    assert s("x s3cr3t-value y") == "x *** y"
    assert "abc123" not in s('{"Authorization": "Bearer abc123def"}')
    assert "zz99" not in s("api-key: zz99zz")
    assert s("see https://u:p@h:1/x") == "see https://***@h:1/x"
    assert redact_url("http://u:p@h:8000/v1") == "http://***@h:8000/v1"
    assert redact_url("http://h:8000/v1") == "http://h:8000/v1"


def test_http_columns_null_for_other_backends(tmp_path):
    from traceforge.simulate import simulate

    trace = tmp_path / "t.parquet"
    make_trace([0, MS], path=trace)
    simulate(trace, tmp_path / "run")
    tl = read_timeline(tmp_path / "run").to_pydict()
    assert tl["conn_wait_ns"] == [None, None] and tl["truncated"] == [None, None]
    assert Path(tmp_path / "run" / "run.json").exists()


def test_the_recorder_masks_backend_secrets_in_every_error_row(tmp_path):
    """Error text is scrubbed in one place, the recorder, which knows the backend's secret
    values: an exception raised inside a backend (not only an error body) is masked too."""
    from replay_helpers import replay_virtual

    from traceforge.backends.null import NullBackend
    from traceforge.replay import Outcome

    class Leaky(NullBackend):
        def secrets(self):
            return [API_KEY]

        async def submit(self, request):
            if request.request_id == 0:
                raise RuntimeError(f"server said: invalid key {API_KEY}")
            if request.request_id == 1:
                return Outcome(status="error", error=f"HTTP 401: key {API_KEY} rejected")
            return await super().submit(request)

    _, tl = replay_virtual(make_trace([0, MS, 2 * MS]), tmp_path / "run",
                           Leaky(servers=1, service_ms=1, service_dist="const"))
    assert tl["status"] == ["error", "error", "ok"]
    assert tl["error"][0] == "RuntimeError: server said: invalid key ***"
    assert tl["error"][1] == "HTTP 401: key *** rejected"
    for p in (tmp_path / "run").rglob("*"):
        if p.is_file():
            assert API_KEY.encode() not in p.read_bytes()


def test_garbage_200s_are_errors_and_a_key_cut_in_half_is_masked(tmp_path):
    """An OpenAI endpoint's 200 that is not JSON (or, streaming, not an event stream) is an
    error row, not ``ok`` with no tokens; an echoed key that the 300-character cut of an error
    body splits leaves no prefix of itself on disk (14 of its characters did)."""
    trace = tmp_path / "t.parquet"
    make_trace([0, MS, 2 * MS], models=["garbage", "cutkey", "garbage"], path=trace)
    with ThreadServer() as server:
        url = f"http://127.0.0.1:{server.port}"
        runs = {}
        for name, extra in (("stream", []), ("plain", ["--no-stream"])):
            runs[name] = tmp_path / name
            done = _cli(["replay", trace, "-o", runs[name], "--backend", "http", "--url", url,
                         "--api-key-env", "TF_TEST_KEY", "--no-progress", *extra],
                        env={"TF_TEST_KEY": API_KEY})
            assert done.returncode == 0, done.stderr
    for name, needle in (("stream", "no SSE 'data:' events"), ("plain", "bad JSON body")):
        tl = read_timeline(runs[name]).to_pydict()
        assert tl["status"] == ["error", "error", "error"], tl["error"]
        assert needle in tl["error"][0] and "{not json" in tl["error"][0]
        assert tl["error"][1].startswith("HTTP 500: xxx") and tl["error"][1].endswith("***")
        for p in runs[name].rglob("*"):
            if p.is_file():
                assert API_KEY[:6].encode() not in p.read_bytes(), p


def test_empty_answers_and_impossible_usage_counts_are_error_rows(tmp_path):
    """A 200 with ``"choices": []``, a stream of only ``data: [DONE]`` (both were ``ok`` with 0
    tokens) and a usage count beyond int32 (every row of the run became "cancelled: run
    interrupted", exit 0, asyncio tracebacks on stderr) are error rows saying why."""
    trace = tmp_path / "t.parquet"
    make_trace([0, MS, 2 * MS, 3 * MS], models=["empty", "huge", "ok", "empty"], path=trace,
               max_new_tokens=4)
    with ThreadServer() as server:
        url = f"http://127.0.0.1:{server.port}"
        for name, extra in (("stream", []), ("plain", ["--no-stream"])):
            out = tmp_path / name
            done = _cli(["replay", trace, "-o", out, "--backend", "http", "--url", url,
                         "--no-progress", *extra])
            assert done.returncode == 0, done.stderr
            assert "Traceback" not in done.stderr
            tl = read_timeline(out).to_pydict()
            status = tl["status"]
            assert [status[0], status[1], status[3]] == ["error"] * 3, tl["error"]
            assert name == "plain" or status[2] == "ok"  # (this stub streams "ok" always)
            empty = "without any generated text" if name == "stream" else "no choices"
            assert empty in tl["error"][0] and empty in tl["error"][3]
            assert "99999999999" in tl["error"][1] and "not a token count" in tl["error"][1]

