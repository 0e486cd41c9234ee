"""``traceforge report RUN_DIR`` and ``traceforge compare RUN_A RUN_B ...``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from traceforge.errors import BadInput


def _check_html_target(path: Path | None, inputs=()) -> None:
    if path is None:
        return
    from traceforge.paths import check_output

    if path.is_dir():
        raise BadInput("is a directory; expected an .html file path", source="--html",
                       value=str(path))
    if not path.parent.exists():
        raise BadInput("parent directory does not exist", source="--html", value=str(path))
    check_output(path, inputs=inputs, key="--html", replaces=(".html", ".htm"))


def _emit(result: dict, *, json_out: bool, html: Path | None, label: str,
          render: Callable[[dict], None]) -> None:
    """The tail report, study report and compare share once the HTML (if asked) is written:
    JSON on stdout, or the tables from ``render`` and the HTML's path."""
    if json_out:
        from traceforge.analyze.jsonable import to_json

        typer.echo(to_json(result))
        return
    render(result)
    if html is not None:
        typer.echo(f"{label}: {html}")


def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (run.json + timeline/), or a "
                                            "study directory (study.json + cells/).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    html: Annotated[Path | None, typer.Option("--html", "-o", "--output", help="Also write a self-contained "
                                              "HTML report to this file.")] = None,
    warmup: Annotated[float | None, typer.Option(
        "--warmup", help="Drop requests scheduled in the first S seconds.")] = None,
    slo: Annotated[str | None, typer.Option(
        "--slo", help="Per-model latency SLOs, MODEL=MS,... (overrides the trace spec).")] = None,
    slo_from: Annotated[Path | None, typer.Option(
        "--slo-from", help="Baseline run: SLO = --slo-factor × its p50 per model.")] = None,
    slo_factor: Annotated[float, typer.Option(
        "--slo-factor", help="Multiple of the baseline p50 used with --slo-from.")] = 5.0,
    include_warmup: Annotated[bool, typer.Option(
        "--include-warmup", help="Keep rows the replay flagged as warm-up.")] = False,
    alpha: Annotated[float | None, typer.Option(
        "--alpha", help="Study directories: significance level of the best-configuration "
                        "test (default 0.01).")] = None,
) -> None:
    """Latency tables (with bootstrap CIs), decomposition, SLOs and plots for one run; for a
    study directory (study.json), the study report: every cell, intervals across repeats,
    the best configuration per load with its significance, capacity, simulated vs measured."""
    from traceforge.analyze.study import is_study_dir

    if is_study_dir(run_dir):
        _study_report(run_dir, json_out=json_out, html=html, warmup=warmup, slo=slo,
                      slo_from=slo_from, slo_factor=slo_factor, include_warmup=include_warmup,
                      alpha=alpha)
        return
    if alpha is not None:
        raise BadInput("applies to a study directory (study.json) only", source="--alpha",
                       value=alpha)
    from traceforge.analyze.report import build_report
    from traceforge.analyze.rundata import load_run

    slo_ms = _slo_ms(slo, slo_from)
    _check_html_target(html, [("the run directory being reported", run_dir),
                              ("the --slo-from run directory", slo_from)])
    run = load_run(run_dir)
    result = build_report(run_dir, warmup_s=warmup, slo_ms=slo_ms, slo_from=slo_from,
                          slo_factor=slo_factor, include_warmup_rows=include_warmup, run=run)
    if html is not None:
        from traceforge.analyze.html import write_html

        write_html(run_dir, result, html, run=run)
    from traceforge.analyze.render import render_report

    _emit(result, json_out=json_out, html=html, label="HTML report", render=render_report)


def _slo_ms(slo: str | None, slo_from: Path | None):
    """``--slo`` parsed; it and ``--slo-from`` exclude each other (run and study reports)."""
    from traceforge.analyze.report import parse_slo

    if slo_from is not None and slo is not None:
        raise BadInput("give either --slo or --slo-from, not both", source="--slo-from",
                       value=str(slo_from))
    return parse_slo(slo) if slo is not None else None


def _study_report(study_dir: Path, *, json_out: bool, html: Path | None, warmup: float | None,
                  slo: str | None, slo_from: Path | None, slo_factor: float,
                  include_warmup: bool, alpha: float | None) -> None:
    from traceforge.analyze.study import StudyOptions, build_study_report, load_study, read_study

    slo_ms = _slo_ms(slo, slo_from)
    if warmup is not None and not (warmup >= 0 and warmup != float("inf")):
        raise BadInput("must be a number of seconds >= 0", source="--warmup", value=warmup)
    if alpha is not None and not (0 < alpha < 0.5):
        raise BadInput("must be in (0, 0.5)", source="--alpha", value=alpha)
    study = load_study(study_dir)
    # study.json, cells/ and every cell's run directory (a run_dir may lie elsewhere)
    _check_html_target(html, [*(("an input of the study", p) for p in study.input_paths()),
                              ("the --slo-from run directory", slo_from)])
    options = StudyOptions(warmup_s=warmup, slo_ms=slo_ms, slo_from=slo_from,
                           slo_factor=slo_factor, include_warmup_rows=include_warmup,
                           **({"alpha": alpha} if alpha is not None else {}))
    result = build_study_report(study_dir, options, study=read_study(study_dir, options,
                                                                   study=study))
    if html is not None:
        from traceforge.analyze.study_html import write_study_html

        write_study_html(result, html)
    from traceforge.analyze.study_render import render_study

    _emit(result, json_out=json_out, html=html, label="HTML study report", render=render_study)


def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Two or more run directories; each is "
                                                   "compared against the first.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
    html: Annotated[Path | None, typer.Option("--html", "-o", "--output", help="Also write an HTML page with "
                                              "CDF overlays.")] = None,
    warmup: Annotated[float | None, typer.Option(
        "--warmup", help="Drop requests scheduled in the first S seconds of each run.")] = None,
    alpha: Annotated[float, typer.Option("--alpha", help="Significance level of the "
                                         "verdict.")] = 0.01,
) -> None:
    """Compare runs per common model (B over A): p50/p99, KS, Mann–Whitney, verdict."""
    from traceforge.analyze.compare import (
        check_compare_args,
        compare_runs,
        ok_latencies_by_model,
    )

    _check_html_target(html, [("a run directory being compared", d) for d in run_dirs])
    check_compare_args(run_dirs, alpha=alpha, warmup_s=warmup)
    # each run is read once, for the tables and the plots alike
    latencies = [ok_latencies_by_model(d, warmup_s=warmup) for d in run_dirs]
    result = compare_runs(list(run_dirs), alpha=alpha, warmup_s=warmup, latencies=latencies)
    if html is not None:
        from traceforge.analyze.html import write_compare_html

        write_compare_html(result, html, warmup_s=warmup, latencies=latencies)
    from traceforge.analyze.render import render_compare

    _emit(result, json_out=json_out, html=html, label="HTML comparison", render=render_compare)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
    app.command("compare")(compare)
