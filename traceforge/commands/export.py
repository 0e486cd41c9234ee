"""``traceforge export perfetto RUN_DIR -o FILE.json``: a run as Chrome Trace Event JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from traceforge.errors import BadInput

export_app = typer.Typer(help="Export a run directory to other tools' formats.",
                         no_args_is_help=True)


@export_app.command("perfetto")
def perfetto(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (run.json + timeline/).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Trace Event JSON file to "
                                         "write (open in ui.perfetto.dev).")],
) -> None:
    """Chrome Trace Event JSON: request spans per model/worker, in-flight and GPU counters."""
    from traceforge.analyze.perfetto import export_perfetto
    from traceforge.analyze.rundata import load_run

    if output.is_dir():
        raise BadInput("is a directory; expected a .json file path", source="-o",
                       value=str(output))
    if not output.parent.exists():
        raise BadInput("parent directory does not exist", source="-o", value=str(output))
    from traceforge.paths import check_output

    check_output(output, inputs=[("the run directory being exported", run_dir)], key="-o",
                 replaces=(".json",))
    run = load_run(run_dir)
    export_perfetto(run_dir, output, run=run)
    typer.echo(f"wrote {output} ({run.n:,} requests); open it in https://ui.perfetto.dev")


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
