"""A minimal OpenAI-completions HTTP server (aiohttp, one subprocess) answering every POST at
once: the target for tests and benchmarks that measure traceforge's side, not a server's. Used by
tests/test_replay_workers.py and benchmarks/bench_pacing.py."""

from __future__ import annotations

import socket
import subprocess
import sys

SERVER_CODE = r"""
import asyncio, json, socket, sys
from aiohttp import web
BODY = json.dumps({"choices": [{"text": "a"}], "usage": {"completion_tokens": 1}}).encode()
async def handle(request):
    await request.read()
    return web.Response(body=BODY, content_type="application/json")
async def main(sock):
    app = web.Application(); app.router.add_post("/v1/completions", handle)
    runner = web.AppRunner(app, access_log=None); await runner.setup()
    await web.SockSite(runner, sock).start()
    await asyncio.Event().wait()
asyncio.run(main(socket.socket(fileno=int(sys.argv[1]))))
"""


def start_stub_server(backlog: int = 256, *, code: str = SERVER_CODE,
                      args: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """Start `code` (SERVER_CODE or a variant of it; its argv[1] is the listening socket's fd,
    then `args`) on a free port; returns (process, base URL). The socket listens before the
    child starts, so connections made at once queue rather than fail. The caller kills it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    proc = subprocess.Popen([sys.executable, "-c", code, str(sock.fileno()), *args],
                            pass_fds=[sock.fileno()])
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    return proc, url
