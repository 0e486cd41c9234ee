"""``traceforge profile``: measure service times and co-run slowdowns for the simulator."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import typer

from traceforge.errors import BadInput


def register(app: typer.Typer) -> None:
    app.command("profile")(profile_command)


def _ints(text: str, key: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise BadInput("must be comma-separated integers", key=key, value=text) from exc


def _sizes(text: str) -> list[float]:
    """``--corun-sizes``: comma-separated sizes, or ``none`` / empty for none."""
    if text.strip().lower() in ("", "none"):
        return []
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise BadInput("must be comma-separated numbers or 'none'", key="--corun-sizes",
                       value=text) from exc


def _references(text: str | None) -> dict[str, tuple[int, int, int | None]]:
    """``MODEL=BxS[xN],...`` -> {model: (batch, seq_len, new tokens or None)}."""
    out: dict[str, tuple[int, int, int | None]] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        model, _, shape = item.partition("=")
        parts = shape.lower().split("x")
        try:
            if len(parts) not in (2, 3):
                raise ValueError
            nums = [int(p) for p in parts]
        except ValueError as exc:
            raise BadInput("expected MODEL=BATCHxSEQ[xNEW_TOKENS]", key="--reference",
                           value=item) from exc
        if model.strip() in out:
            raise BadInput(f"model {model.strip()!r} given twice", key="--reference",
                           value=text)
        out[model.strip()] = (nums[0], nums[1], nums[2] if len(nums) == 3 else None)
    return out


def profile_command(
    models: str = typer.Option(..., "--models", help="Zoo entries, comma-separated."),
    out: Path = typer.Option(..., "-o", "--output", "--out", help="Profile JSON to write."),
    device: str = typer.Option("cuda", "--device", help="cpu | cuda | cuda:N"),
    modes: str | None = typer.Option(None, "--modes",
                                     help="Sharing modes to measure (default: all the device "
                                          "supports; the first also measures the grid)."),
    batch_sizes: str = typer.Option("1,2,4,8", "--batch-sizes", help="Grid batch sizes."),
    seq_lens: str = typer.Option("32,128,512", "--seq-lens", help="Grid seq_lens (text)."),
    image_sides: str = typer.Option("224", "--image-sides", help="Grid image sides (vision)."),
    new_tokens: int = typer.Option(16, "--new-tokens",
                                   help="Tokens generated per generative grid request."),
    repeats: int = typer.Option(10, "--repeats", help="Timed requests per grid point."),
    warmup: int = typer.Option(3, "--warmup", help="Untimed requests before each point."),
    corun_seconds: float = typer.Option(4.0, "--corun-seconds",
                                        help="Length of each co-run phase."),
    corun_sets: str = typer.Option("pairs+all", "--corun-sets", help="pairs+all | pairs"),
    reference_batch: int = typer.Option(1, "--reference-batch",
                                        help="Batch size of the reference/co-run requests."),
    reference_seq: int = typer.Option(128, "--reference-seq",
                                      help="seq_len of the reference/co-run requests."),
    reference: str | None = typer.Option(
        None, "--reference",
        help="Per-model co-run shapes MODEL=BATCHxSEQ[xNEW],... (default: the --reference-* "
             "values); best set to the shapes the workload serves."),
    compile_: str | None = typer.Option(None, "--compile",
                                        help="Backend variant: graphs | compiled | eager "
                                             "(default: graphs on CUDA, eager on the CPU)."),
    seq_buckets: str | None = typer.Option(None, "--seq-buckets",
                                           help="Padding buckets (default: each model's)."),
    corun_utilisation: float = typer.Option(0.5, "--corun-utilisation",
                                            help="Open-loop co-run load per model, as a "
                                                 "share of its alone capacity."),
    alone_utilisation: float = typer.Option(0.5, "--alone-utilisation",
                                            help="Alone service times measured open loop at "
                                                 "this load (0: closed loop only)."),
    corun_repeats: int = typer.Option(3, "--corun-repeats",
                                      help="Co-run repeats (median kept, spread reported)."),
    corun_sizes: str = typer.Option(
        "4,8,16", "--corun-sizes",
        help="Each pair again with one model's requests at these sizes (x its reference "
             "size; tokens, pixels for vision): the simulator's slowdown then follows the "
             "size of the request beside. 'none': the reference only."),
    corun_size_repeats: int = typer.Option(2, "--corun-size-repeats",
                                           help="Repeats of each --corun-sizes co-run."),
    keep_runs: Path | None = typer.Option(None, "--keep-runs",
                                          help="Keep every phase's run directory here."),
) -> None:
    """Measure a GPU (or CPU) profile for `traceforge simulate --profile`."""
    from traceforge.schema import atomic_write
    from traceforge.simulate.measure import ProfileSettings, measure_profile
    from traceforge.zoo.buckets import parse_buckets

    settings = ProfileSettings(
        models=[m.strip() for m in models.split(",") if m.strip()],
        device=device,
        modes=[m.strip() for m in modes.split(",") if m.strip()] if modes else None,
        batch_sizes=_ints(batch_sizes, "--batch-sizes"),
        seq_lens=_ints(seq_lens, "--seq-lens"),
        image_sides=_ints(image_sides, "--image-sides"),
        new_tokens=new_tokens, repeats=repeats, warmup=warmup, corun_seconds=corun_seconds,
        corun_sets=corun_sets, reference_batch=reference_batch, reference_seq=reference_seq,
        references=_references(reference), keep_runs=keep_runs, compile=compile_,
        seq_buckets=parse_buckets(seq_buckets), corun_utilisation=corun_utilisation,
        corun_repeats=corun_repeats, alone_utilisation=alone_utilisation,
        corun_sizes=_sizes(corun_sizes), corun_size_repeats=corun_size_repeats,
    ).validate()
    from traceforge.paths import check_output

    check_output(out, inputs=[("the --keep-runs directory", keep_runs)], key="-o",
                 replaces=(".json",))  # an existing trace, spec... is not replaced
    if keep_runs is not None:
        # Every phase claims a run directory inside it: an old profile's runs (or any other
        # content) would stop the profile minutes in; refused now instead.
        from traceforge.paths import check_run_dir

        check_run_dir(keep_runs, key="--keep-runs")
    command = "traceforge profile " + " ".join(shlex.quote(a) for a in [
        "--models", ",".join(settings.models), "--device", device,
        "--modes", ",".join(settings.resolved_modes()),
        "--batch-sizes", batch_sizes, "--seq-lens", seq_lens, "--image-sides", image_sides,
        "--new-tokens", str(new_tokens), "--repeats", str(repeats), "--warmup", str(warmup),
        "--corun-seconds", f"{corun_seconds:g}", "--corun-sets", corun_sets,
        "--reference-batch", str(reference_batch), "--reference-seq", str(reference_seq),
        *(["--reference", reference] if reference else []),
        *(["--compile", compile_] if compile_ else []),
        *(["--seq-buckets", seq_buckets] if seq_buckets else []),
        "--corun-utilisation", f"{corun_utilisation:g}", "--corun-repeats", str(corun_repeats),
        "--alone-utilisation", f"{alone_utilisation:g}",
        "--corun-sizes", corun_sizes, "--corun-size-repeats", str(corun_size_repeats),
        "-o", str(out)])

    saved: list[dict] = []

    def save(profile: dict) -> None:
        # Rewritten after every mode: a run cut short keeps what it measured ("partial").
        text = json.dumps(profile, indent=1)
        atomic_write(out, lambda tmp: tmp.write_text(text + "\n"))
        saved[:] = [profile]

    try:
        profile = measure_profile(settings, command=command,
                                  log=lambda line: typer.echo(line, err=True), on_update=save)
    except KeyboardInterrupt:  # SIGINT / SIGTERM: exit 130 (cli.main), saying what was kept
        if saved:
            done = ", ".join(saved[0].get("modes") or {}) or "none"
            typer.echo(f"profile interrupted: {out} keeps what was measured before (the "
                       f"service grid; modes finished: {done}; \"status\": \"partial\")",
                       err=True)
        else:
            typer.echo(f"profile interrupted before its service grid was measured: {out} "
                       "not written", err=True)
        raise typer.Exit(130) from None  # that line says it all (no "traceforge: interrupted")
    save(profile)
    typer.echo(f"profile of {', '.join(settings.models)} on {profile['device'].get('name')} "
               f"({profile['elapsed_s']} s) -> {out}")
