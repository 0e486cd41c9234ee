"""``traceforge trace gen|stats|import``: make a trace from a spec or a real trace, and describe it.

Every command validates all of its input before writing anything, and writes atomically, so a
bad spec, flag or source row leaves no output file behind (exit 2, one line).
"""

from __future__ import annotations

from pathlib import Path

import typer

from traceforge.errors import BadInput

trace_app = typer.Typer(help="Generate, import and describe workload traces.",
                        no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(trace_app, name="trace")


def _check_output(out: Path, key: str = "-o", inputs=(), replaces=(".parquet",)) -> Path:
    from traceforge.paths import check_output

    # an existing file is replaced only by one of its kind: never a run.json or a spec
    return check_output(out, inputs=inputs, key=key, replaces=replaces)


@trace_app.command("gen")
def gen(
    spec: Path = typer.Argument(..., help="Workload spec (TOML)."),
    out: Path = typer.Option(..., "-o", "--output", help="Trace file to write (Parquet)."),
    seed: int | None = typer.Option(None, "--seed", help="Overrides the spec's seed."),
    duration: float | None = typer.Option(None, "--duration",
                                          help="Seconds; overrides duration_s/requests."),
) -> None:
    """Sample a trace from a workload spec (same spec and seed: byte-identical file)."""
    from traceforge.generate import generate_trace, load_spec
    from traceforge.limits import check_seed
    from traceforge.schema import write_trace

    if seed is not None:
        check_seed(seed)
    # The kind of an existing -o is checked with the spec's own inputs, after parsing: a data
    # file the spec reads gets that (more specific) refusal, not "not a .parquet file".
    _check_output(out, inputs=[("the workload spec", spec)], replaces=())
    parsed = load_spec(spec)
    _check_output(out, inputs=[("a file the workload spec reads", p)
                               for p in parsed.input_paths()])
    trace = generate_trace(parsed, seed=seed, duration_s=duration)
    write_trace(trace.table, out, trace.meta)
    typer.echo(f"wrote {out}: {trace.table.num_rows} requests, "
               f"{len(trace.meta['spec']['models'])} models, "
               f"{trace.meta['duration_s']:g} s, seed {trace.meta['seed']}")


@trace_app.command("stats")
def stats(
    trace_path: Path = typer.Argument(..., metavar="TRACE", help="Trace file (Parquet)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    plot: Path | None = typer.Option(None, "--plot", "-o", "--output",
                                     help="Write arrivals per second per model as a PNG."),
    confidence: float = typer.Option(0.95, "--confidence", help="Level of the rate CIs."),
) -> None:
    """Per-model and aggregate statistics: rate with CI, CV, dispersion, fit vs the target."""
    from traceforge.generate import plot_arrivals, trace_stats
    from traceforge.schema import read_trace

    if not 0 < confidence < 1:
        raise BadInput("must be between 0 and 1", key="--confidence", value=confidence)
    if plot is not None and plot.suffix.lower() != ".png":
        raise BadInput("must end in .png", key="--plot", value=str(plot))
    if plot is not None:
        _check_output(plot, "--plot", inputs=[("the trace", trace_path)], replaces=(".png",))
    trace = read_trace(trace_path)
    report = trace_stats(trace, confidence=confidence)
    if plot is not None:
        plot_arrivals(trace, plot)
    if as_json:  # strict JSON: a non-finite number (a zero-length span's rate) is null
        from traceforge.analyze.jsonable import to_json

        typer.echo(to_json(report))
    else:
        _print_stats(report)
        if plot is not None:
            typer.echo(f"wrote {plot}")


def _fmt(x, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def _print_stats(report: dict) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.width = max(console.width, 150)  # pipes default to 80 columns: too narrow here
    pct = round(report["confidence"] * 100)
    table = Table(title=f"{report['trace'] or 'trace'}: {report['duration_s']:g} s window",
                  title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("model", "count", "rate/s", f"{pct}% CI (batch means)", "target/s", "CV gaps",
                "IDC 1s", "IDC 10s", "fit p", "fit law"):
        table.add_column(col, justify="left" if col in ("model", "fit law") else "right",
                         no_wrap=col != "fit law", min_width=40 if col == "fit law" else None)
    rows = [*report["models"].items(), ("(all)", report["aggregate"])]
    for name, s in rows:
        ci = s.get("rate_ci")
        fit = s.get("fit") or {}
        law = fit.get("law") or f"none: {fit.get('reason', 'n/a')}"
        if fit.get("reference"):
            law = f"reference {law}"
        table.add_row(name, str(s["count"]), _fmt(s["rate"]),
                      "-" if ci is None else f"{ci[0]:.3g} – {ci[1]:.3g}",
                      _fmt(s.get("target_rate")), _fmt(s["cv"]), _fmt(s["idc_1s"]),
                      _fmt(s["idc_10s"]), _fmt(fit.get("p_value"), ".3g"), law)
    console.print(table)
    with_sessions = [n for n, s in report["models"].items() if s.get("sessions")]
    if with_sessions:
        parts = [f"{n}: {report['models'][n]['sessions']['sessions']} sessions, "
                 f"{report['models'][n]['sessions']['rows']} turns" for n in with_sessions]
        console.print("sessions — counts, rates and fits are over session starts ("
                      + "; ".join(parts) + ")", highlight=False)
    reuse = report["aggregate"].get("prefix_reuse")
    if reuse:
        console.print(f"prefix blocks ({reuse['block_tokens']} tokens): "
                      f"{reuse['token_fraction']:.1%} of prompt tokens lie in blocks an earlier "
                      f"request sent (an unbounded prefix cache's hit rate); "
                      f"{reuse['unique_blocks']} distinct blocks", highlight=False)


@trace_app.command("import")
def import_(
    fmt: str = typer.Argument(..., metavar="FORMAT",
                              help="azure-functions-2019, azure-llm, burstgpt, mooncake, csv, "
                                   "servegen"),
    sources: list[Path] = typer.Argument(..., metavar="SRC...",
                                         help="Source file(s); servegen: one pool folder."),
    out: Path = typer.Option(..., "-o", "--output", help="Trace file to write (Parquet)."),
    models: str | None = typer.Option(
        None, "--models", help="Model names (comma-separated); see docs/traces.md per format."),
    start: float = typer.Option(
        0.0, "--start", help="Window start, s after the origin (first arrival; minute 1 of "
                             "the first file for azure-functions-2019)."),
    duration: float | None = typer.Option(None, "--duration", help="Window length, s."),
    time_scale: float = typer.Option(1.0, "--time-scale", help="Multiply every time by X."),
    rate_scale: float = typer.Option(
        1.0, "--rate-scale", help="Multiply the rate by X by compressing time (keeps bursts)."),
    thin: bool = typer.Option(False, "--thin",
                              help="Apply --rate-scale (<= 1) by random thinning instead."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip malformed rows (counted)."),
    seed: int = typer.Option(0, "--seed", help="Seed for --thin and --spread poisson."),
    spread: str | None = typer.Option(None, "--spread",
                               help="azure-functions-2019: place a minute's calls by "
                                    "poisson|uniform."),
    mapping: str | None = typer.Option(None, "--map",
                                help="azure-functions-2019: functions -> models by "
                                     "stripe|round-robin|top-k."),
    columns: str | None = typer.Option(
        None, "--columns", help="csv: time=COL[,seq_len=COL,max_new_tokens=COL,"
                                "batch_size=COL,model=COL,session=COL,turn=COL|id=COL,"
                                "parent=COL]."),
    time_unit: str | None = typer.Option(None, "--time-unit", help="csv: s|ms|us|ns|iso."),
    failed: str | None = typer.Option(None, "--failed",
                               help="burstgpt: rows with 0 response tokens: keep|drop."),
    clients: str | None = typer.Option(None, "--clients",
                                       help="servegen: all | N (busiest) | ID,ID,..."),
    block_tokens: int | None = typer.Option(None, "--block-tokens",
                                            help="mooncake: tokens per hash_ids block (512)."),
    batch_size: int = typer.Option(1, "--batch-size", help="Where the format has none."),
    seq_len: int = typer.Option(128, "--seq-len", help="Where the format has none."),
    max_new_tokens: int = typer.Option(0, "--max-new-tokens", help="Where the format has none."),
) -> None:
    """Convert a real public trace (or any CSV) into a traceforge trace."""
    from traceforge.importers import import_trace
    from traceforge.schema import write_trace

    _check_output(out, inputs=[("a source being imported", s) for s in sources])
    trace = import_trace(
        fmt, sources, models=models, start_s=start, duration_s=duration,
        time_scale=time_scale, rate_scale=rate_scale, thin=thin, skip_bad=skip_bad, seed=seed,
        spread=spread, mapping=mapping, columns=columns, time_unit=time_unit, failed=failed,
        batch_size=batch_size, seq_len=seq_len, max_new_tokens=max_new_tokens, clients=clients,
        block_tokens=block_tokens)
    write_trace(trace.table, out, trace.meta)
    src = trace.meta["source"]
    skipped = f", {src['skipped_bad_rows']} bad rows skipped" if src.get("skipped_bad_rows") \
        else ""
    if src.get("duration_clipped_from_s") is not None:
        skipped += (f" (--duration {src['duration_clipped_from_s']:g} s reaches past the data: "
                    f"window clipped to where the data ends)")
    typer.echo(f"wrote {out}: {trace.table.num_rows} requests, {len(trace.models)} models, "
               f"{trace.meta['duration_s']:g} s{skipped}")
