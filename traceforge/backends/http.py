"""The ``http`` backend: OpenAI-compatible completions / chat endpoints (SSE streaming) and a
generic JSON POST template, over one shared aiohttp connection pool.

Requests are built from the trace row: a synthetic prompt of exactly ``seq_len`` tokens under
``--tokenizer`` (word-per-token without one), unique per request unless the trace's
``prefix_blocks`` say two requests share a prefix — then they share exactly that prefix
(:mod:`traceforge.prompts`, planned over the whole trace in :meth:`HttpBackend.bind_trace`),
``max_new_tokens`` → ``max_tokens`` plus ``ignore_eos`` (vLLM, SGLang, TGI's OpenAI route accept it) so the server
generates exactly that many tokens, ``batch_size`` > 1 → a list of prompts (completions only).

Streaming stamps ``first_token_ns`` at the first chunk carrying text and keeps the gaps between
text chunks as ``itl_ns``; ``tokens_out`` is the server's ``usage.completion_tokens`` when it
sends one (we ask with ``stream_options.include_usage``), else the number of text chunks.

Failures are rows, never crashes: HTTP >= 400 → ``error`` with the status code and the start of
the body (secrets masked, a key cut in half by that cut included); an OpenAI API's 200 that is
not a JSON object, or a streaming answer with no SSE ``data:`` events → ``error``; a reset or
broken connection → ``error``; a hang is cut by the dispatcher's ``--timeout``
(``timeout``). Only an endpoint that cannot be reached at start is bad input (exit 2). The API key
is read from ``--api-key-env`` into memory only; ``describe()`` names the variable, never its value.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from traceforge.clock import RunClock
from traceforge.errors import BadInput
from traceforge.paths import missing_file_reason
from traceforge.prompts import PromptTexts, load_vocab
from traceforge.redact import Scrubber, redact_url
from traceforge.replay.protocol import ModelInfo, Outcome, Request

APIS = ("openai-completions", "openai-chat", "json")
KEEPALIVE_S = 2.0  # idle pooled connections closed after this (below servers' 5 s)
DEFAULT_PATHS = {"openai-completions": "/v1/completions",
                 "openai-chat": "/v1/chat/completions", "json": ""}
PLACEHOLDERS = ("request_id", "model", "batch_size", "seq_len", "max_new_tokens", "prompt")
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")
_ERROR_BODY_CHARS = 300


class BodyTemplate:
    """A JSON body with ``{{placeholder}}`` strings, checked once and filled per request.

    A string that is exactly one placeholder becomes the typed value (``"{{seq_len}}"`` → 128);
    placeholders inside longer strings are substituted as text.
    """

    def __init__(self, text: str, *, source: str = "--body-template") -> None:
        try:
            self.template = json.loads(text)
        except ValueError as exc:
            raise BadInput(f"not valid JSON ({exc.msg} at char {exc.pos})", key=source,
                           value=text[:80]) from exc
        for name in _PLACEHOLDER.findall(text):
            if name not in PLACEHOLDERS:
                raise BadInput("unknown placeholder", key=source, value="{{" + name + "}}",
                               allowed=", ".join(PLACEHOLDERS))

    def fill(self, values: dict[str, Any]) -> Any:
        def walk(node: Any) -> Any:
            if isinstance(node, str):
                whole = _PLACEHOLDER.fullmatch(node)
                if whole:
                    return values[whole.group(1)]
                return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), node)
            if isinstance(node, list):
                return [walk(v) for v in node]
            if isinstance(node, dict):
                return {k: walk(v) for k, v in node.items()}
            return node

        return walk(self.template)


class HttpBackend:
    name = "http"

    def __init__(
        self,
        url: str,
        api: str = "openai-completions",
        *,
        api_key_env: str | None = None,
        model_name: dict[str, str] | None = None,
        body_template: str | None = None,
        headers: dict[str, str] | None = None,
        stream: bool = True,
        ignore_eos: bool = True,
        pool_size: int = 0,
        connect_timeout_s: float = 5.0,
        tokenizer: str | None = None,
        max_connections: int | None = None,
        prompt_seed: int | None = None,
    ) -> None:
        if not url:
            raise BadInput("the http backend needs --url", key="--url", value=url)
        shown = redact_url(url)  # credentials in the URL never reach an error line or disk
        try:
            parts = urlsplit(url)
        except ValueError as exc:  # "Invalid IPv6 URL": a traceback before
            raise BadInput(f"not a URL ({exc})", key="--url", value=shown) from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadInput("expected http://HOST[:PORT][/PATH] or https://...", key="--url",
                           value=shown)
        try:
            port = parts.port
        except ValueError as exc:
            raise BadInput("bad port", key="--url", value=shown) from exc
        if max_connections is not None and (isinstance(max_connections, bool) or not
                                            isinstance(max_connections, int)
                                            or max_connections < 1):
            raise BadInput("must be an integer >= 1", key="--max-connections",
                           value=max_connections)
        if api not in APIS:
            raise BadInput("unknown API", key="--api", value=api, allowed=", ".join(APIS))
        self.api = api
        self.url = url
        self.host = parts.hostname
        self.port = port or (443 if parts.scheme == "https" else 80)
        path = parts.path.rstrip("/")
        self.endpoint = url if path else url.rstrip("/") + DEFAULT_PATHS[api]
        self.public_url = shown
        self.public_endpoint = redact_url(self.endpoint)
        self.max_connections = max_connections or default_max_connections()
        self.api_key_env = api_key_env
        self._api_key: str | None = None
        if api_key_env:
            self._api_key = os.environ.get(api_key_env)
            if not self._api_key:
                raise BadInput("environment variable is not set or empty", key="--api-key-env",
                               value=api_key_env)
        if self._api_key and (parts.username or parts.password):
            raise BadInput("credentials in the URL and --api-key-env would both set the "
                           "Authorization header; give one", key="--url", value=shown)
        self.template: BodyTemplate | None = None
        self.template_text: str | None = None
        if api == "json":
            if not body_template:
                raise BadInput("--api json needs --body-template JSON or @FILE",
                               key="--body-template", value=body_template)
            text = body_template
            if body_template.startswith("@"):
                path_ = Path(body_template[1:])
                if not path_.is_file():
                    raise BadInput(missing_file_reason(path_), key="--body-template",
                                   value=body_template)
                text = path_.read_text()
            self.template = BodyTemplate(text)
            self.template_text = text
        elif body_template:
            raise BadInput("only used with --api json", key="--body-template",
                           value=body_template[:80])
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 0:
            raise BadInput("must be an integer >= 0", key="pool_size", value=pool_size)
        self.model_name = dict(model_name or {})
        self.extra_headers = dict(headers or {})
        for name, value in self.extra_headers.items():
            # CR / LF (header injection) and other control characters: aiohttp refused every
            # request ("Forbidden control character"), a run of error rows with exit 0. The
            # value is not shown: headers carry credentials.
            if not name or any((ord(c) < 32 and c != "\t") or ord(c) == 127
                               for c in f"{name}{value}"):
                raise BadInput("a header name or value with a control character (CR, LF, ...) "
                               "or an empty name (its value is not shown)", key="--header",
                               value=name)
        self.stream = stream and api != "json"
        self.ignore_eos = ignore_eos
        self.pool_size = pool_size
        # Every value that may be a secret: the recorder scrubs error rows of them (secrets()),
        # and this backend its own messages (the probe's refusal).
        self._secrets = [self._api_key, parts.password, parts.username,
                         *self.extra_headers.values()]
        self._scrub = Scrubber(self._secrets)
        self.connect_timeout_s = connect_timeout_s
        self._session = None
        self._slots: asyncio.Semaphore | None = None  # one per pooled connection (start)
        self._clock: RunClock | None = None
        self._request_errors: tuple[type[BaseException], ...] = (OSError,)  # + aiohttp's (start)
        self.vocab = load_vocab(tokenizer)  # a bad --tokenizer is bad input before the run
        if prompt_seed is None:
            # A fresh seed per run: two runs (or study cells) against one server must not share
            # prompts, or its prefix cache would serve the second from the first. --prompt-seed
            # reproduces a run's prompts; run.json records the seed used.
            import secrets

            prompt_seed = secrets.randbits(31)
        if isinstance(prompt_seed, bool) or not isinstance(prompt_seed, int) or prompt_seed < 0:
            raise BadInput("must be an integer >= 0", key="--prompt-seed", value=prompt_seed)
        self.prompt_seed = prompt_seed
        self.prompts = PromptTexts(self.vocab, seed=prompt_seed)
        self._request_ids = None  # sorted request ids of the bound trace
        self._row_of = None  # their rows
        self._blocks = None  # the trace's prefix_blocks column (Arrow), or None
        self._session_root: dict[int, int] = {}  # session id -> its first request id
        self._prompt_plan: dict | None = None  # a plan made over the whole trace (--workers)

    # -- lifecycle ---------------------------------------------------------------------------
    def bind_trace(self, trace) -> None:
        """Plan prompts over the whole trace (called by the replay before ``start``): prefix
        blocks, their size from the trace metadata, and sibling first tokens (prompts.py)."""
        import numpy as np

        from traceforge.schema import prefix_block_tokens

        table = trace.table
        block = prefix_block_tokens(trace.meta)
        self.prompts = PromptTexts(self.vocab, block_tokens=block, seed=self.prompt_seed)
        if self._prompt_plan is not None:  # a shard: the driver planned the whole trace
            self.prompts.builder.load_plan(self._prompt_plan)
        else:
            self.prompts.builder.plan_table(table)
        ids = table.column("request_id").to_numpy()
        self._row_of = np.argsort(ids, kind="stable")
        self._request_ids = ids[self._row_of]
        blocks = table.column("prefix_blocks") if "prefix_blocks" in table.column_names \
            else None
        has = blocks is not None and block is not None and blocks.null_count < len(blocks)
        self._blocks = blocks.combine_chunks() if has else None
        # Sessions: every turn draws its prompt from its session's first request's stream, so
        # turn k+1's prompt (longer: the previous prompt + output + new text) starts with turn
        # k's prompt token for token, as a chat client's would (docs/replay.md, "Sessions").
        sid = table.column("session_id")
        if sid.null_count < len(sid):
            first: dict[int, int] = {}
            for s, r in zip(sid.to_pylist(), ids.tolist(), strict=True):
                if s is not None:
                    first.setdefault(s, r)
            self._session_root = first

    def secrets(self) -> list[str]:
        """Values that must never reach disk (the replay's recorder scrubs rows of them)."""
        return [s for s in self._secrets if s]

    def prompt_plan(self, trace, request_ids) -> list[dict | None]:
        """Plan prompts over the whole ``trace`` once and export the plan for each group of
        ``request_ids`` (the shards of a ``--workers`` replay), so a sharded run sends exactly
        the prompts an unsharded one sends."""
        self.bind_trace(trace)
        return [self.prompts.builder.export_plan(ids) for ids in request_ids]

    def use_prompt_plan(self, plan: dict | None) -> None:
        """Use ``plan`` (from :meth:`prompt_plan`) when the trace is bound, instead of planning
        over the rows this backend replays."""
        self._prompt_plan = plan

    async def start(self, models: list[ModelInfo], clock: RunClock) -> None:
        import aiohttp

        self._clock = clock
        self._request_errors = (aiohttp.ClientError, OSError)  # resolved once, not per request
        unknown = sorted(set(self.model_name) - {m.name for m in models})
        if unknown:
            raise BadInput("model not in the trace", key="--model-name", value=unknown[0],
                           allowed=", ".join(m.name for m in models))
        await self._probe()
        headers = {"Content-Type": "application/json", **self.extra_headers}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        raise_nofile_limit()
        # Bounded (docs/replay.md "Connection pool"): requests beyond it wait for a connection
        # (the wait is in their latency and in conn_wait_ns) instead of exhausting descriptors.
        limit = min(self.max_connections, self.pool_size or self.max_connections)
        self._slots = asyncio.Semaphore(limit)
        # An idle pooled connection is dropped before common servers drop it (uvicorn, hence
        # vLLM: 5 s; aiohttp's client default is 15 s): otherwise a request sent on a connection
        # the server is closing that instant is reset — seen against vLLM after a 5 s gap in a
        # Mooncake trace (1 of 116 rows `ClientOSError: Connection reset by peer`).
        connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0,
                                         enable_cleanup_closed=True,
                                         keepalive_timeout=KEEPALIVE_S)
        self._session = aiohttp.ClientSession(
            connector=connector, headers=headers, trace_configs=[_timing_trace_config()],
            # The dispatcher owns per-request timeouts (--timeout); only connecting is bounded.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout_s),
        )

    async def _probe(self) -> None:
        """Open (and close) one TCP connection: an unreachable endpoint is bad input."""
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port),
                                               self.connect_timeout_s)
        except (TimeoutError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            raise BadInput(f"cannot connect ({self._scrub(reason)})", key="--url",
                           value=self.public_url) from exc
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    async def stop(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def describe(self) -> dict[str, Any]:
        return {"url": self.public_url, "endpoint": self.public_endpoint, "api": self.api,
                "stream": self.stream, "ignore_eos": self.ignore_eos,
                "pool_size": self.pool_size or "unlimited",
                "max_connections": self.max_connections, "model_name": self.model_name,
                "api_key_env": self.api_key_env, "header_names": sorted(self.extra_headers),
                "body_template": self.template_text,
                "prompts": {**self.prompts.describe(), "seed": self.prompt_seed}}

    # -- one request -------------------------------------------------------------------------
    def _prefix_blocks(self, request_id: int) -> list[int] | None:
        if self._blocks is None:
            return None
        i = int(self._request_ids.searchsorted(request_id))
        if i >= len(self._request_ids) or self._request_ids[i] != request_id:
            return None
        return self._blocks[int(self._row_of[i])].as_py()

    def prompt(self, request: Request, item: int = 0) -> str:
        root = (self._session_root.get(request.session_id, request.request_id)
                if request.session_id is not None else request.request_id)
        return self.prompts.text(root, request.seq_len, self._prefix_blocks(request.request_id),
                                 item)

    def build_body(self, request: Request) -> Any:
        served = self.model_name.get(request.model, request.model)
        prompt = self.prompt(request)
        if self.template is not None:
            return self.template.fill({
                "request_id": request.request_id, "model": served,
                "batch_size": request.batch_size, "seq_len": request.seq_len,
                "max_new_tokens": request.max_new_tokens, "prompt": prompt})
        body: dict[str, Any] = {"model": served,
                                "max_tokens": max(1, request.max_new_tokens)}
        if self.api == "openai-chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = ([prompt] + [self.prompt(request, j)
                                          for j in range(1, request.batch_size)]
                              if request.batch_size > 1 else prompt)
        if self.ignore_eos and request.max_new_tokens > 0:
            body["ignore_eos"] = True
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    async def submit(self, request: Request) -> Outcome:
        timing = _Timing()
        outcome = await self._submit(request, timing)
        # outcome.error is scrubbed by the recorder (it gets secrets()), with every other
        # error text a row can carry (exceptions included).
        outcome.worker = self.public_endpoint
        outcome.conn_wait_ns = timing.conn_wait_ns
        outcome.connect_ns = timing.connect_ns
        if timing.sent_ns is not None:
            outcome.wire_sent_ns = timing.sent_ns
        return outcome

    async def _submit(self, request: Request, timing: _Timing) -> Outcome:
        timing.now = now = self._clock.now
        queued = now()
        # One slot per pooled connection, taken before the body is built: at overload the
        # requests waiting for a connection hold no prompt text (a 32k-token prompt is ~160 kB;
        # 100k waiting requests would otherwise hold GBs). The wait counts as conn_wait_ns.
        async with self._slots:
            timing.conn_wait_ns += now() - queued
            body = self.build_body(request)
            try:
                async with self._session.post(self.endpoint, json=body,
                                              trace_request_ctx=timing) as resp:
                    if resp.status >= 400:
                        # Scrubber.cut: a cut through an echoed key would leave a prefix of it
                        # that the recorder's scrub no longer recognises.
                        text = self._scrub.cut(await resp.text(errors="replace"),
                                               _ERROR_BODY_CHARS)
                        return Outcome(status="error", error=f"HTTP {resp.status}: {text}")
                    if self.stream:
                        return await self._read_stream(resp, request.max_new_tokens)
                    payload = await resp.read()
            except self._request_errors as exc:  # incl. EMFILE: a row, never a crash
                return Outcome(status="error",
                               error=self._scrub.cut(f"{type(exc).__name__}: {exc}", 500))
        if self.api != "json":
            # An OpenAI endpoint's 200 must be a JSON object; anything else (an HTML error
            # page, a cut body) was counted ok. A custom JSON API's body is not interpreted.
            try:
                parsed = json.loads(payload)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                head = self._scrub.cut(payload[:2000].decode("utf-8", "replace"), 200)
                return Outcome(status="error", error=f"bad JSON body: {head!r}")
            if not parsed.get("choices"):
                # {"choices": []} (or none): no answer at all, counted ok with 0 tokens
                head = self._scrub.cut(payload[:2000].decode("utf-8", "replace"), 200)
                return Outcome(status="error", error=f"an answer with no choices: {head!r}")
        tokens = _usage_tokens(payload)
        if tokens is not None and _token_count(tokens) is None:
            return Outcome(status="error",
                           error=f"the answer's usage.completion_tokens = {tokens!r:.40} is not "
                                 "a token count (an integer 0 .. 2^31-1)")
        return Outcome(tokens_out=tokens)

    async def _read_stream(self, resp, max_new_tokens: int) -> Outcome:
        now = self._clock.now
        first = last = None
        gaps: list[int] = []
        chunks = 0
        usage = None
        done = False
        events = 0
        head = b""  # the start of a body that is not SSE, for the error row
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                if len(head) < 200:
                    head += line[:200]
                continue
            events += 1
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
                break
            t = now()
            try:
                event = json.loads(data)
            except ValueError:
                chunk = self._scrub.cut(data[:2000].decode("utf-8", "replace"), 200)
                return Outcome(status="error", error=f"bad SSE chunk: {chunk!r}",
                               first_token_ns=first)
            if not isinstance(event, dict):
                return Outcome(status="error", error=f"bad SSE chunk: not a JSON object "
                               f"({type(event).__name__})", first_token_ns=first)
            if "error" in event:
                return Outcome(status="error",
                               error=self._scrub.cut(f"stream error: {event['error']}", 500),
                               first_token_ns=first)
            if event.get("usage"):
                usage = event["usage"].get("completion_tokens")
            if _has_text(event):
                chunks += 1
                if first is None:
                    first = t
                else:
                    gaps.append(t - last)
                last = t
        if events == 0:
            # Not an event stream at all (a JSON or HTML body answered a streaming request):
            # it was counted ok with 0 tokens.
            shown = self._scrub.cut(head.decode("utf-8", "replace"), 200)
            return Outcome(status="error",
                           error=f"no SSE 'data:' events in the response: {shown!r}")
        if usage is not None and _token_count(usage) is None:
            return Outcome(status="error", first_token_ns=first,
                           error=f"the answer's usage.completion_tokens = {usage!r:.40} is not "
                                 "a token count (an integer 0 .. 2^31-1)")
        if chunks == 0 and not usage and max_new_tokens > 0 and self.ignore_eos:
            # Events, but not one token and no usage count (only "data: [DONE]", or choices
            # without text) although the body asked for exactly max_new_tokens: nothing was
            # generated; it was an ok row with 0 tokens. (--no-ignore-eos: a model may stop at
            # once.)
            return Outcome(status="error", first_token_ns=first,
                           error=f"a stream of {events} event(s) without any generated text")
        tokens = usage if usage is not None else chunks
        # The stream ended (the server closed it) without [DONE] and short of the tokens asked
        # for: still an answer (status ok), flagged so the report can count it.
        truncated = not done and tokens < max_new_tokens
        return Outcome(first_token_ns=first, tokens_out=tokens, itl_ns=gaps or None,
                       truncated=truncated)


# -- connection pool and timing -------------------------------------------------------------
MAX_CONNECTIONS_CAP = 1024  # default pool bound where the open-file limit allows more
FD_RESERVE = 128  # descriptors kept for Parquet parts, logs, worker sockets...


def raise_nofile_limit(target: int = 65536) -> int:
    """Raise the soft open-file limit towards the hard one (what servers and load generators
    customarily do); returns the soft limit in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(hard, target)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
    return soft


def default_max_connections() -> int:
    """min(1024, soft open-file limit after raising it − 128), at least 1."""
    import resource

    soft = raise_nofile_limit()
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS_CAP
    return max(1, min(MAX_CONNECTIONS_CAP, soft - FD_RESERVE))


class _Timing:
    """Per-request times from aiohttp's trace hooks (run clock, ns)."""

    __slots__ = ("_connect", "_queued", "conn_wait_ns", "connect_ns", "now", "sent_ns")

    def __init__(self) -> None:
        self.now = None
        self._queued = self._connect = None
        self.conn_wait_ns = 0  # 0: a connection was free at once
        self.connect_ns = 0  # 0: a pooled connection was reused
        self.sent_ns = None


def _timing_trace_config():
    import aiohttp

    def hook(fn):
        async def handler(session, ctx, params) -> None:
            timing = ctx.trace_request_ctx
            if isinstance(timing, _Timing) and timing.now is not None:
                fn(timing, timing.now())
        return handler

    def queued_start(t, now):
        t._queued = now

    def queued_end(t, now):
        if t._queued is not None:
            t.conn_wait_ns += now - t._queued

    def create_start(t, now):
        t._connect = now

    def create_end(t, now):
        if t._connect is not None:
            t.connect_ns += now - t._connect

    def headers_sent(t, now):
        if t.sent_ns is None:
            t.sent_ns = now

    tc = aiohttp.TraceConfig()
    tc.on_connection_queued_start.append(hook(queued_start))
    tc.on_connection_queued_end.append(hook(queued_end))
    tc.on_connection_create_start.append(hook(create_start))
    tc.on_connection_create_end.append(hook(create_end))
    tc.on_request_headers_sent.append(hook(headers_sent))
    return tc


def _has_text(event: dict) -> bool:
    for choice in event.get("choices") or ():
        if choice.get("text"):
            return True
        delta = choice.get("delta") or {}
        if delta.get("content"):
            return True
    return False


def _token_count(value: object) -> int | None:
    """``value`` when it can be a row's tokens_out (int32, >= 0); a usage count beyond int32
    failed the recorder's write and turned every row of a "complete" run into cancelled."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2**31 - 1:
        return None
    return value


def _usage_tokens(payload: bytes) -> int | None:
    try:
        usage = json.loads(payload).get("usage") or {}
    except (ValueError, AttributeError):
        return None
    value = usage.get("completion_tokens")
    return value if isinstance(value, int) else None


def from_options(opts: dict[str, Any]) -> HttpBackend:
    """Build from CLI options: url, api, api_key_env, model_name {trace: served},
    body_template, headers, stream, ignore_eos, pool_size (0 = unlimited), tokenizer, prompt_seed."""
    return HttpBackend(
        opts.get("url"), opts.get("api", "openai-completions"),
        api_key_env=opts.get("api_key_env"), model_name=opts.get("model_name"),
        body_template=opts.get("body_template"), headers=opts.get("headers"),
        stream=opts.get("stream", True), ignore_eos=opts.get("ignore_eos", True),
        pool_size=opts.get("pool_size", 0), tokenizer=opts.get("tokenizer"),
        max_connections=opts.get("max_connections"), prompt_seed=opts.get("prompt_seed"),
    )
