"""``traceforge study STUDY.toml -o STUDY_DIR``: a matrix of runs and capacity searches.

Validation (the spec, every configuration's options, the directory) happens before anything is
written (exit 2). Exit codes: 0 every cell complete, 1 some cell failed (each is recorded in
study.json with its error), 130 interrupted (study.json says which cell; ``--resume`` goes on).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from traceforge.errors import BadInput


def parse_gpus(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        gpus = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BadInput("expected GPU indices like 0,1", key="--gpus", value=text) from None
    if not gpus or any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise BadInput("expected distinct GPU indices like 0,1", key="--gpus", value=text)
    return gpus


def _peek_backend(spec_path: Path) -> str | None:
    """The spec's ``backend`` key, read without validation (None if unreadable): only to
    decide whether GPU workers preload torch before load_study validates the spec."""
    import tomllib

    try:
        with open(spec_path, "rb") as f:
            value = tomllib.load(f).get("backend")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, str) else None


def _check_spec_outside_rewritten(spec_path: Path, out: Path) -> None:
    """A study (on --resume) replaces cell directories and deletes its scratch directory: a spec
    kept there would be destroyed."""
    from traceforge.paths import overlaps
    from traceforge.study.executor import cells_dir, scratch_dir

    for part in (cells_dir(out), scratch_dir(out)):
        if overlaps(spec_path, part):
            raise BadInput(f"the study spec ({spec_path}) lies in {part}, which the study "
                           "rewrites; move it out", key="-o", value=str(out))


def register(app: typer.Typer) -> None:
    @app.command("study")
    def study(
        spec_path: Path = typer.Argument(..., metavar="STUDY.toml", help="Study spec (TOML)."),
        out: Path = typer.Option(..., "-o", "--output", "--out",
                                 help="Study directory to create."),
        resume: bool = typer.Option(False, "--resume",
                                    help="Continue a study: redo only cells not complete."),
        backend: str = typer.Option(None, "--backend",
                                    help="simulate | null | http | resident (overrides the "
                                         "spec's)."),
        executor: str = typer.Option("local", "--executor", help="local | ray"),
        gpus: str = typer.Option(None, "--gpus", help="Local executor: GPU indices, e.g. 0,1."),
        address: str = typer.Option(None, "--address", help="Ray cluster address."),
        progress: bool = typer.Option(None, "--progress/--no-progress",
                                      help="Progress bar (default: on when stderr is a TTY)."),
        dry_run: bool = typer.Option(False, "--dry-run",
                                     help="Validate and print the plan (groups, cells, replay "
                                          "time); write nothing."),
    ) -> None:
        """Run every cell of a study (mixes × axes × repeats) and its capacity searches."""
        from traceforge.paths import check_output
        from traceforge.study.engine import check_study_dir, run_study
        from traceforge.study.executor import make_executor
        from traceforge.study.spec import load_study

        check_output(out, inputs=[("the study spec", spec_path)], kind="dir")
        _check_spec_outside_rewritten(spec_path, out)
        if not dry_run:  # before GPU workers start: a wrong -o must not wait for their preload
            check_study_dir(out, resume)
        impl = None
        if not dry_run and executor == "local" and gpus:
            # GPU workers start now and preload torch/CUDA while the spec is validated below
            impl = make_executor(executor, gpus=parse_gpus(gpus), address=address)
            impl.prestart(preload=(backend or _peek_backend(spec_path)) == "resident")
        try:
            spec = load_study(spec_path, backend=backend)
        except BaseException:
            if impl is not None:
                impl.close()
            raise
        if dry_run:
            from traceforge.study.plan import describe_plan

            typer.echo(describe_plan(spec))
            return
        if impl is None:
            impl = make_executor(executor, gpus=parse_gpus(gpus), address=address)
        try:
            result = run_study(spec, out, resume=resume, executor=impl,
                               progress=sys.stderr.isatty() if progress is None else progress)
        except KeyboardInterrupt:
            typer.echo(f"interrupted; what was recorded is in {out}/study.json "
                       f"(continue with --resume)", err=True)
            raise typer.Exit(130) from None
        counts = ", ".join(f"{k} {v}" for k, v in sorted(result["counts"].items()))
        errors = [c["error"] for c in result["cells"]
                  if c.get("status") == "failed" and c.get("error")]
        # the first failure's cause on the same line (e.g. a full disk), the rest in study.json
        why = f" (first: {errors[0][:300]})" if errors else ""
        typer.echo(f"study {result['status']}: {counts}{why} -> {out}", err=True)
        for cap in result["capacity"]:
            if cap["kind"] != "capacity":
                continue
            config = ", ".join(f"{k}={v}" for k, v in cap["config"].items()) or "-"
            load = "none" if cap["load"] is None else f"{cap['load']:.4g}"
            typer.echo(f"capacity {cap['mix']} [{config}] r{cap['repeat']}: {load} "
                       f"(bracket {cap['low']}..{cap['high']})", err=True)
        if result["status"] != "complete":
            raise typer.Exit(1)
