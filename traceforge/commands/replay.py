"""``traceforge replay TRACE -o RUN_DIR --backend null|http|resident [...]`` (CONTRACT.md).

Everything is validated before anything is written: the trace, every flag, the backend's options
and — inside ``run_replay`` — the run directory and ``backend.start`` (an unreachable URL). Exit
codes: 0 complete, 1 failed, 2 bad input, 130 interrupted (the timeline so far is kept).
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import typer

from traceforge.errors import BadInput, RunFailure

BACKENDS = ("null", "http", "resident")


def parse_mapping(text: str | None, flag: str, *, value_type=str) -> dict:
    """``A=1,B=2`` -> {"A": 1, "B": 2}; every malformed item (an empty flag, a model given twice
    included) is a BadInput naming the flag."""
    out: dict = {}
    if text is None:
        return out
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise BadInput("expected MODEL=VALUE[,MODEL=VALUE...]", key=flag, value=text)
        if key in out:
            raise BadInput(f"model {key!r} given twice", key=flag, value=text)
        try:
            out[key] = value_type(value)
        except ValueError as exc:
            raise BadInput(f"bad value for {key!r}", key=flag, value=value) from exc
    return out


def parse_headers(items: list[str] | None) -> dict[str, str]:
    headers = {}
    for item in items or []:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise BadInput("expected 'Name: value'", key="--header", value=item)
        headers[name.strip()] = value.strip()
    return headers


def register(app: typer.Typer) -> None:
    @app.command("replay")
    def replay(
        trace: Path = typer.Argument(..., help="Trace Parquet file."),
        out: Path = typer.Option(..., "-o", "--output", "--out", help="Run directory to create."),
        backend: str = typer.Option("null", "--backend", help="null | http | resident"),
        time_scale: float = typer.Option(1.0, "--time-scale",
                                         help="Multiply arrival times (2 = half the rate)."),
        rate: str = typer.Option(None, "--rate",
                                 help="R or MODEL=R,...: rescale to a mean of R req/s, keeping "
                                      "the burstiness (docs/replay.md)."),
        concurrency: int = typer.Option(None, "--concurrency",
                                        help="Closed loop: N outstanding, arrival times ignored."),
        max_inflight: int = typer.Option(None, "--max-inflight", "--max-concurrency",
                                         help="Open-loop cap; slot waits count in latency."),
        timeout: float = typer.Option(None, "--timeout", help="Per-request timeout, seconds."),
        duration: float = typer.Option(None, "--duration",
                                       help="Stop sending at S s of the schedule."),
        drain_timeout: float = typer.Option(None, "--drain-timeout", help="Then wait at most "
                                            "S s for in-flight requests (then cancelled)."),
        max_connections: int = typer.Option(None, "--max-connections", help="http: connection "
                                            "pool bound (default: from the open-file limit)."),
        warmup: float = typer.Option(0.0, "--warmup",
                                     help="Seconds at the start whose rows are flagged warmup."),
        progress: bool = typer.Option(None, "--progress/--no-progress",
                                      help="Progress bar (default: on when stderr is a TTY)."),
        pacer: str = typer.Option("spin", "--pacer", help="spin | thread | sleep (docs/replay.md)."),
        event_loop: str = typer.Option("auto", "--event-loop",
                                       help="auto (= precise) | precise | asyncio | uvloop"),
        flusher: str = typer.Option("process", "--flusher",
                                    help="Who writes timeline parts: process (a child process; "
                                         "shares no GIL with the dispatcher) | thread "
                                         "(docs/replay.md)."),
        cpu_qos: bool = typer.Option(True, "--cpu-qos/--no-cpu-qos",
                                     help="Hold a 0 µs CPU latency request (PM QoS) during the "
                                          "schedule so idle CPUs poll, not halt (where "
                                          "permitted; docs/replay.md)."),
        # null
        servers: int = typer.Option(1, "--servers", help="null: parallel servers per model."),
        service_ms: float = typer.Option(10.0, "--service-ms", help="null: mean service time."),
        service_dist: str = typer.Option("exp", "--service-dist", help="null: const | exp"),
        seed: int = typer.Option(0, "--seed", help="null: service-time seed."),
        # http
        url: str = typer.Option(None, "--url", help="http: base URL of the endpoint."),
        api: str = typer.Option("openai-completions", "--api",
                                help="http: openai-completions | openai-chat | json"),
        api_key_env: str = typer.Option(None, "--api-key-env",
                                        help="http: environment variable holding the API key."),
        model_name: str = typer.Option(None, "--model-name",
                                       help="http: TRACE_MODEL=SERVED_NAME,... for the request."),
        body_template: str = typer.Option(None, "--body-template",
                                          help="http json: JSON template or @FILE."),
        header: list[str] = typer.Option(None, "--header", help="http: extra 'Name: value'."),
        stream: bool = typer.Option(True, "--stream/--no-stream",
                                    help="http openai: SSE streaming (first token, ITL)."),
        ignore_eos: bool = typer.Option(True, "--ignore-eos/--no-ignore-eos",
                                        help="http openai: ask for exactly max_new_tokens."),
        scrape: str = typer.Option(None, "--scrape",
                                   help="Prometheus URL sampled into server_metrics.parquet."),
        scrape_interval: float = typer.Option(0.5, "--scrape-interval",
                                              help="--scrape: seconds between samples."),
        tokenizer: str = typer.Option(None, "--tokenizer",
                                      help="http: tokenizer.json, a directory, tiny-bpe, or a "
                                           "name in the local HF cache; prompts are exactly "
                                           "seq_len tokens under it (default: one word per "
                                           "token)."),
        prompt_seed: int = typer.Option(None, "--prompt-seed",
                                        help="http: seed of the synthetic prompts (default: a "
                                             "fresh one per run, kept in run.json)."),
        # resident
        mode: str = typer.Option("exclusive", "--mode",
                                 help="resident: exclusive | timeslice | mps | streams"),
        device: str = typer.Option("cpu", "--device", help="resident: cpu | cuda[:i]"),
        sm_percent: str = typer.Option(None, "--sm-percent", help="resident mps: MODEL=P,..."),
        max_batch: int = typer.Option(1, "--max-batch", help="resident: dynamic batch size."),
        max_wait_ms: float = typer.Option(0.0, "--max-wait-ms",
                                          help="resident: batching window."),
        zoo: str = typer.Option(None, "--zoo", help="MODEL=ZOO_ENTRY,... (overrides the spec)."),
        telemetry: bool = typer.Option(True, "--telemetry/--no-telemetry",
                                       help="resident: NVML telemetry on GPU runs."),
        # scale-out (docs/scale.md)
        workers: int = typer.Option(1, "--workers",
                                    help="Shard the replay across N processes (or Ray actors)."),
        shard_by: str = typer.Option("request", "--shard-by",
                                     help="--workers: request (round-robin) | model"),
        executor: str = typer.Option("local", "--executor",
                                     help="--workers: local (processes) | ray (actors)"),
        address: str = typer.Option(None, "--address",
                                    help="--executor ray: auto | ray://HOST:PORT (default: a "
                                         "local Ray instance on 127.0.0.1)"),
        compile_: str = typer.Option(None, "--compile",
                                     help="resident: graphs (CUDA graphs + static KV cache; "
                                          "default on CUDA) | compiled (graphs + TorchInductor"
                                          "-fused decode step) | eager (default on the CPU)."),
        seq_buckets: str = typer.Option(None, "--seq-buckets",
                                        help="resident: seq_len padding buckets, e.g. "
                                             "16,32,64 (default: powers of two to the "
                                             "model's max; a spec's seq_buckets wins)."),
        prewarm: bool = typer.Option(True, "--prewarm/--no-prewarm",
                                     help="resident: run every bucket the trace needs before "
                                          "the schedule starts (--no-prewarm: cold shapes)."),
        inline: bool = typer.Option(True, "--inline/--no-inline",
                                    help="resident exclusive/streams on CUDA: the event loop "
                                         "launches and completes an idle executor's "
                                         "graph-captured requests itself (no thread "
                                         "hand-off); --no-inline: always the executor thread."),
    ) -> None:
        """Replay a trace open-loop at its exact times and record every request."""
        from traceforge.replay import ReplayOptions, default_models, run_replay
        from traceforge.replay.rate import apply_rate
        from traceforge.replay.run import check_run_dir
        from traceforge.replay.selfcheck import format_self_check
        from traceforge.replay.shard import SHARD_BY
        from traceforge.replay.workers import check_sharded
        from traceforge.schema import read_trace

        if backend not in BACKENDS:
            raise BadInput("unknown backend", key="--backend", value=backend,
                           allowed=", ".join(BACKENDS))
        _refuse_other_backends_flags(backend, {
            "null": {"--servers": (servers, 1), "--service-ms": (service_ms, 10.0),
                     "--service-dist": (service_dist, "exp"), "--seed": (seed, 0)},
            "http": {"--url": (url, None), "--api": (api, "openai-completions"),
                     "--api-key-env": (api_key_env, None), "--model-name": (model_name, None),
                     "--body-template": (body_template, None), "--header": (header or None, None),
                     "--stream/--no-stream": (stream, True),
                     "--ignore-eos/--no-ignore-eos": (ignore_eos, True),
                     "--tokenizer": (tokenizer, None), "--max-connections": (max_connections, None),
                     "--prompt-seed": (prompt_seed, None)},
            "resident": {"--mode": (mode, "exclusive"), "--device": (device, "cpu"),
                         "--sm-percent": (sm_percent, None), "--max-batch": (max_batch, 1),
                         "--max-wait-ms": (max_wait_ms, 0.0),
                         "--telemetry/--no-telemetry": (telemetry, True),
                         "--compile": (compile_, None), "--seq-buckets": (seq_buckets, None),
                         "--prewarm/--no-prewarm": (prewarm, True),
                         "--inline/--no-inline": (inline, True)},
        })
        check_sharded(backend, workers, executor)
        if shard_by not in SHARD_BY:
            raise BadInput("unknown sharding", key="--shard-by", value=shard_by,
                           allowed=", ".join(SHARD_BY))
        if shard_by != "request" and workers == 1 and executor != "ray":
            raise BadInput("shards the replay across --workers N (N > 1): one process would "
                           "ignore it", key="--shard-by", value=shard_by)
        if scrape is None and scrape_interval != 0.5:
            raise BadInput("needs --scrape URL (nothing is scraped without it)",
                           key="--scrape-interval", value=scrape_interval)
        if address is not None and executor != "ray":
            raise BadInput("--address needs --executor ray", key="--address", value=address)
        sharded = workers > 1 or executor == "ray"
        tr = read_trace(trace)
        if rate is not None and concurrency is not None:
            raise BadInput("a closed loop (--concurrency) ignores arrival times, so --rate "
                           "would change nothing", key="--rate", value=rate)
        tr, time_scale, rate_info = apply_rate(tr, rate, time_scale)
        check_run_dir(out, [("the trace being replayed", trace), ("the --body-template file",
                           body_template[1:] if (body_template or "").startswith("@") else None)])
        models = default_models(tr)
        zoo_map = parse_mapping(zoo, "--zoo")
        if zoo_map:
            from traceforge.zoo import get_entry

            for zoo_name in zoo_map.values():  # every backend records the model's zoo entry
                get_entry(zoo_name, key="--zoo")
        unknown = sorted(set(zoo_map) - {m.name for m in models})
        if unknown:
            raise BadInput("model not in the trace", key="--zoo", value=unknown[0],
                           allowed=", ".join(m.name for m in models))
        for m in models:
            m.zoo = zoo_map.get(m.name, m.zoo)
        options = ReplayOptions(
            time_scale=time_scale, concurrency=concurrency, max_inflight=max_inflight,
            timeout_s=timeout, warmup_s=warmup, duration_s=duration,
            drain_timeout_s=drain_timeout,
            progress=sys.stderr.isatty() if progress is None else progress,
            models=models, pacer=pacer, event_loop=event_loop, rate=rate_info,
            scrape_url=scrape, scrape_interval_s=scrape_interval, cpu_qos=cpu_qos,
            flusher=flusher,
        ).validate()

        if backend == "null":
            backend_opts = {"servers": servers, "service_ms": service_ms,
                            "service_dist": service_dist, "seed": seed}
        elif backend == "http":
            http_opts = {
                "url": url, "api": api, "api_key_env": api_key_env,
                "model_name": parse_mapping(model_name, "--model-name"),
                "body_template": body_template, "headers": parse_headers(header),
                "stream": stream, "ignore_eos": ignore_eos,
                "pool_size": options.inflight_cap or 0, "tokenizer": tokenizer,
                "max_connections": max_connections,
                # chosen here, not per worker: every shard must build the same prompts
                "prompt_seed": (secrets.randbits(31) if prompt_seed is None else prompt_seed),
            }
            if sharded:  # each worker's pool serves its share of the cap
                from traceforge.replay.shard import split_cap

                http_opts["pool_size"] = (split_cap(options.inflight_cap, workers)[0]
                                          if options.inflight_cap else 0)
            backend_opts = http_opts
        else:
            resident_opts = {
                "mode": mode, "device": device,
                "sm_percent": parse_mapping(sm_percent, "--sm-percent", value_type=int),
                "max_batch": max_batch, "max_wait_ms": max_wait_ms,
                "zoo": {m.name: m.zoo for m in models if m.zoo},
                "telemetry": telemetry, "compile": compile_, "seq_buckets": seq_buckets,
                "prewarm": prewarm, "inline": inline,
                "run_dir": out,  # telemetry.parquet and worker logs go into the run directory
                "status": lambda line: typer.echo(line, err=True),  # a line per model loaded
            }
            backend_opts = resident_opts

        try:
            if sharded:
                from traceforge.replay.workers import run_sharded

                summary = run_sharded(tr, out, backend, backend_opts, options, workers=workers,
                                      shard_by=shard_by, executor=executor, address=address)
            else:
                from traceforge.backends import make_backend

                summary = run_replay(tr, out, make_backend(backend, backend_opts), options)
        except KeyboardInterrupt as exc:  # SIGINT/SIGTERM before the schedule started
            typer.echo(_setup_interrupted_line(exc, out), err=True)
            raise typer.Exit(130) from None
        if sharded:  # after the run, beside its self-check (a refused run prints one line only)
            from traceforge.replay.workers import crowding_warning

            if (warn := crowding_warning(workers, executor, pacer)) is not None:
                typer.echo(f"warning: {warn}", err=True)
        counts = ", ".join(f"{k} {v}" for k, v in summary.counts.items()) or "no rows"
        typer.echo(f"{summary.status}: {counts} in {summary.duration_s:.1f} s -> {out}",
                   err=True)
        typer.echo(format_self_check(summary.self_check), err=True)
        if summary.status == "failed":  # a sharded run (a worker died or failed): exit 1, as
            # a failed one-process replay does (run_replay raises RunFailure itself)
            raise RunFailure(f"replay failed: {summary.error or 'a replay worker failed'} "
                             f"(partial timeline kept in {out})")
        if summary.status == "interrupted":
            raise typer.Exit(130)


def _setup_interrupted_line(exc: KeyboardInterrupt, out: Path) -> str:
    """The one line for an interrupt before the schedule started, saying what is on disk: the
    replay removes what its setup wrote (and the run directory, if it created it)."""
    sig = getattr(exc, "signal", None)
    head = f"interrupted ({sig}) before the replay started" if sig else \
        "interrupted before the replay started"
    if (out / "run.json").is_file():  # never expected; the line must still match the disk
        return f"{head}; run.json kept in {out}"
    if out.is_dir():
        return f"{head}; nothing recorded ({out} left empty)"
    return f"{head}; nothing recorded (no run directory left at {out})"


def _refuse_other_backends_flags(backend: str,
                                 flags: dict[str, dict[str, tuple[object, object]]]) -> None:
    """A flag of another backend given a value of its own (not its default) would be silently
    ignored: refused naming it (``flags``: backend -> flag -> (value, default))."""
    for other, table in flags.items():
        if other == backend:
            continue
        for flag, (value, default) in table.items():
            if value != default:
                raise BadInput(f"applies to --backend {other} only (this replay's backend is "
                               f"{backend}, which would ignore it)", key=flag, value=value)
