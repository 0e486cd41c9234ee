"""``traceforge simulate TRACE -o RUN``: the replay's run directory, predicted in virtual time."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate_command)


def simulate_command(
    trace: Path = typer.Argument(..., help="Trace Parquet file."),
    out: Path = typer.Option(..., "-o", "--output", "--out", help="Run directory to write (new or empty)."),
    servers: int = typer.Option(1, "--servers", help="Null model: parallel servers per model."),
    service_ms: float = typer.Option(10.0, "--service-ms",
                                     help="Null model: mean service time (ms)."),
    service_dist: str = typer.Option("exp", "--service-dist",
                                     help="Null model: const or exp service times."),
    profile: Path | None = typer.Option(
        None, "--profile",
        help="Profile JSON from `traceforge profile`, or a shipped profile's name."),
    mode: str | None = typer.Option(None, "--mode",
                                    help="With --profile: exclusive|timeslice|mps|streams."),
    max_batch: int = typer.Option(1, "--max-batch", help="With --profile: dynamic batch cap."),
    max_wait_ms: float = typer.Option(0.0, "--max-wait-ms",
                                      help="With --profile: how long a batch head may wait."),
    seed: int = typer.Option(0, "--seed", help="Seed for sampled service times."),
    time_scale: float = typer.Option(1.0, "--time-scale", help="Stretch arrival times."),
    rate: str | None = typer.Option(None, "--rate",
                                    help="R or MODEL=R,...: rescale to a mean of R req/s, "
                                         "keeping the burstiness (as replay)."),
    warmup: float = typer.Option(0.0, "--warmup", help="Flag rows scheduled in the first S s."),
    duration: float | None = typer.Option(
        None, "--duration",
        help="Stop sending at S s of the schedule (as replay): later rows are not due."),
    drain_timeout: float | None = typer.Option(
        None, "--drain-timeout",
        help="Once sending ended, requests still out after S s become `cancelled` rows."),
    cold_start: bool = typer.Option(
        None, "--cold-start/--warm-start",
        help="With --profile: a backend without pre-warm (first request of each bucket pays "
             "the profile's cold_extra_ms: replay --no-prewarm), or a warm one. Default: warm "
             "for a profile with shape buckets, cold for an older one."),
    time_slice: str | None = typer.Option(
        None, "--time-slice",
        help="With --mode timeslice: QUANTUM_MS[,SWITCH_MS] runs the time-sliced engine with "
             "that slice (a what-if), none runs processor sharing; default: the profile's."),
    zoo: str | None = typer.Option(
        None, "--zoo",
        help="With --profile: MODEL=ZOO_ENTRY,... (as replay --zoo; overrides the spec)."),
) -> None:
    """Simulate TRACE in virtual time and write the run directory a replay would write."""
    from traceforge.commands.replay import parse_mapping
    from traceforge.errors import BadInput
    from traceforge.simulate import simulate

    if profile is not None:  # the profile's service times replace the null model's
        for flag, value, default in (("--servers", servers, 1),
                                     ("--service-ms", service_ms, 10.0),
                                     ("--service-dist", service_dist, "exp")):
            if value != default:
                raise BadInput("a null-model flag, ignored with --profile (the profile's "
                               "service times are simulated)", key=flag, value=value)

    try:
        summary = simulate(trace, out, servers=servers, service_ms=service_ms,
                           service_dist=service_dist, profile=profile, mode=mode,
                           max_batch=max_batch, max_wait_ms=max_wait_ms, seed=seed,
                           time_scale=time_scale, warmup_s=warmup, cold_start=cold_start,
                           rate=rate, duration_s=duration, drain_timeout_s=drain_timeout,
                           time_slice=time_slice, zoo=parse_mapping(zoo, "--zoo") or None)
    except KeyboardInterrupt:  # SIGINT / SIGTERM: exit 130 (cli.main), saying what was kept
        typer.echo(_interrupted_note(out), err=True)
        raise
    n = sum(summary.counts.values())
    cut = summary.extra.get("not_due")
    tail = f" ({cut} not due after --duration)" if cut else ""
    typer.echo(f"simulated {n} requests{tail} ({summary.virtual_s:.3f} s of virtual time) in "
               f"{summary.elapsed_s:.3f} s -> {summary.run_dir}")
    from traceforge.record import RunManifest
    from traceforge.simulate.simulator import interference_note

    info = RunManifest.load(summary.run_dir).get("backend_info") or {}
    note = interference_note(info.get("interference_shapes") or {})
    if note:
        typer.echo(note, err=True)


def _interrupted_note(out: Path) -> str:
    """What an interrupted simulate left at ``out`` (simulate() wrote run.json status
    ``interrupted`` once it had started writing; before that nothing is written)."""
    import contextlib
    import json

    manifest = None
    with contextlib.suppress(Exception):
        manifest = json.loads((out / "run.json").read_text())
    if not isinstance(manifest, dict):
        return "simulate interrupted before writing the run; nothing recorded"
    if manifest.get("status") != "interrupted":
        return f"simulate interrupted: {out}/run.json says status {manifest.get('status')!r}"
    written = manifest.get("rows_written", 0)
    lost = manifest.get("rows_lost", 0)
    return (f"simulate interrupted while writing the timeline: {out} keeps {written} rows "
            f"({lost} not written); run.json status interrupted")
