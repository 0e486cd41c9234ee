"""``traceforge zoo list``: the model zoo (no torch import: the counts are constants)."""

from __future__ import annotations

import json

import typer


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _params(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def register(app: typer.Typer) -> None:
    zoo_app = typer.Typer(help="The model zoo used by --backend resident.", no_args_is_help=True)

    @zoo_app.command("list")
    def list_cmd(
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Name, kind, parameters and weight memory (serving dtype on a GPU) of each entry."""
        from traceforge.zoo import ZOO

        if as_json:
            typer.echo(json.dumps({"models": [e.as_dict() for e in ZOO.values()]}, indent=2))
            return
        from rich.table import Table

        from traceforge.analyze.render import table_console

        table = Table(title="traceforge model zoo (random weights, built from configs)")
        for col in ("name", "kind", "params", "GPU dtype", "weights", "description"):
            table.add_column(col, justify="right" if col in ("params", "weights") else "left")
        for e in ZOO.values():
            table.add_row(e.name, e.kind, _params(e.params), e.cuda_dtype,
                          _gib(e.weight_bytes()), e.description)
        table_console().print(table)

    app.add_typer(zoo_app, name="zoo")
