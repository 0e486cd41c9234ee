"""The http backend against a real aiohttp server on 127.0.0.1, started and stopped by each test.

The server's behaviour is chosen by the request's ``model`` field, so one replay exercises
streaming, a 5xx, a slow answer, a connection reset and a hang (cut by --timeout) at once.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from aiohttp import web
from replay_helpers import make_trace

from traceforge.backends.http import HttpBackend, from_options
from traceforge.errors import BadInput
from traceforge.record import read_timeline
from traceforge.replay import ReplayOptions, replay_async

MS = 1_000_000
TOKENS = 5


class FakeServer:
    """OpenAI-ish completions/chat server; records every body and Authorization header."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.auth: list[str | None] = []
        app = web.Application()
        app.router.add_post("/v1/completions", self.handle)
        app.router.add_post("/v1/chat/completions", self.handle)
        app.router.add_post("/generate", self.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        self.url = ""
        self.release = asyncio.Event()  # set on exit so a hanging handler ends

    async def __aenter__(self) -> FakeServer:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc) -> None:
        self.release.set()
        await self.runner.cleanup()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        self.auth.append(request.headers.get("Authorization"))
        behaviour = body.get("model", "ok")
        if behaviour == "fail":
            return web.Response(status=503, text="overloaded")
        if behaviour == "reset":
            request.transport.close()
            await asyncio.sleep(0.05)
            return web.Response(text="never seen")
        if behaviour == "hang":
            await self.release.wait()
        if behaviour == "slow":
            await asyncio.sleep(0.2)
        if not body.get("stream"):
            return web.json_response({"choices": [{"text": "a" * TOKENS}],
                                      "usage": {"completion_tokens": TOKENS}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chat = request.path.endswith("chat/completions")
        for _ in range(TOKENS):
            await asyncio.sleep(0.005)
            choice = {"delta": {"content": "a"}} if chat else {"text": "a"}
            await resp.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
        usage = {"choices": [], "usage": {"completion_tokens": TOKENS}}
        await resp.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        await resp.write_eof()
        return resp


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))  # bounded: a hang fails, never blocks CI


def test_streaming_errors_slow_reset_and_hang_become_rows(tmp_path):
    models = ["ok", "fail", "slow", "reset", "hang", "ok"]
    trace = make_trace(np.arange(6) * 10 * MS, models=models, max_new_tokens=TOKENS, seq_len=12)

    async def main():
        async with FakeServer() as server:
            backend = from_options({"url": server.url, "api": "openai-completions",
                                    "pool_size": 4})
            summary = await replay_async(trace, tmp_path / "run", backend,
                                         ReplayOptions(timeout_s=0.5))
            return summary, server.bodies

    summary, bodies = run(main())
    tl = read_timeline(tmp_path / "run").to_pydict()
    assert tl["status"] == ["ok", "error", "ok", "error", "timeout", "ok"]
    assert tl["error"][1].startswith("HTTP 503: overloaded")
    assert "Disconnected" in tl["error"][3] or "reset" in tl["error"][3].lower()
    assert tl["error"][4] == "no response within 0.5 s"
    for k in (0, 2, 5):
        assert tl["tokens_out"][k] == TOKENS
        assert len(tl["itl_ns"][k]) == TOKENS - 1
        assert tl["sent_ns"][k] < tl["first_token_ns"][k] < tl["done_ns"][k]
        assert all(gap > 0 for gap in tl["itl_ns"][k])
    # slow: the 0.2 s wait shows up as time to first token
    assert tl["first_token_ns"][2] - tl["sent_ns"][2] >= 200 * MS
    assert tl["done_ns"][4] is None and tl["sent_ns"][4] is not None
    body = bodies[0]
    assert body["max_tokens"] == TOKENS and body["ignore_eos"] is True and body["stream"]
    assert len(body["prompt"].split()) == 12
    assert summary.counts == {"ok": 3, "error": 2, "timeout": 1}


def test_chat_api_key_and_model_name_mapping(tmp_path, monkeypatch):
    monkeypatch.setenv("TF_TEST_KEY", "sk-secret-123")
    trace = make_trace([0, 5 * MS], models=["bert", "bert"], max_new_tokens=TOKENS)

    async def main():
        async with FakeServer() as server:
            backend = HttpBackend(server.url, "openai-chat", api_key_env="TF_TEST_KEY",
                                  model_name={"bert": "served-bert"})
            await replay_async(trace, tmp_path / "run", backend, ReplayOptions())
            return server

    server = run(main())
    assert server.auth == ["Bearer sk-secret-123"] * 2
    assert server.bodies[0]["model"] == "served-bert"
    assert server.bodies[0]["messages"][0]["role"] == "user"
    tl = read_timeline(tmp_path / "run").to_pydict()
    assert tl["status"] == ["ok", "ok"] and tl["tokens_out"] == [TOKENS, TOKENS]
    run_json = (tmp_path / "run" / "run.json").read_text()
    assert "sk-secret-123" not in run_json and "TF_TEST_KEY" in run_json
    assert "sk-secret-123" not in "".join(
        p.read_bytes().decode("latin-1") for p in (tmp_path / "run").rglob("*.parquet"))


def test_json_template_fills_typed_placeholders(tmp_path):
    template = tmp_path / "body.json"
    template.write_text('{"model": "{{model}}", "inputs": "{{prompt}}", '
                        '"parameters": {"max_new_tokens": "{{max_new_tokens}}", '
                        '"tag": "req-{{request_id}}"}}')
    trace = make_trace([0], models=["ok"], max_new_tokens=3, seq_len=4)

    async def main():
        async with FakeServer() as server:
            backend = from_options({"url": server.url + "/generate", "api": "json",
                                    "body_template": f"@{template}"})
            await replay_async(trace, tmp_path / "run", backend, ReplayOptions())
            return server.bodies

    (body,) = run(main())
    assert body == {"model": "ok", "inputs": body["inputs"],
                    "parameters": {"max_new_tokens": 3, "tag": "req-0"}}
    assert len(body["inputs"].split()) == 4  # word-per-token fallback: seq_len words
    assert read_timeline(tmp_path / "run").column("status").to_pylist() == ["ok"]


def test_unreachable_url_is_bad_input_and_writes_nothing(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = HttpBackend(f"http://127.0.0.1:{port}")
    with pytest.raises(BadInput) as err:
        run(replay_async(make_trace([0]), tmp_path / "run", backend, ReplayOptions()))
    assert err.value.key == "--url" and "cannot connect" in str(err.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("opts", "key"), [
    ({"url": "localhost:80"}, "--url"),
    ({"url": "http://h", "api": "grpc"}, "--api"),
    ({"url": "http://h", "api": "json"}, "--body-template"),
    ({"url": "http://h", "api": "json", "body_template": '{"x": "{{nope}}"}'}, "--body-template"),
    ({"url": "http://h", "api": "json", "body_template": "{not json"}, "--body-template"),
    ({"url": "http://h", "api_key_env": "TF_SURELY_UNSET_VAR"}, "--api-key-env"),
])
def test_bad_http_options(opts, key):
    with pytest.raises(BadInput) as err:
        from_options(opts)
    assert err.value.key == key
