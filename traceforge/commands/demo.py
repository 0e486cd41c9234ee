"""``traceforge demo [-o DIR]``: the whole pipeline on the embedded default workload.

generate (traceforge.generate.DEMO_SPEC) → replay against resident tiny models (CPU; real models
under MPS where a GPU and the MPS control binary are present, a worker process per model on the
CPU) → run directory → report (terminal,
JSON, HTML) → Perfetto trace. Each demo writes a fresh ``DIR/<UTC timestamp>/`` so re-running
never overwrites an earlier result.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from traceforge.errors import BadInput

DEFAULT_DIR = Path("demo-out")
# On a GPU the demo serves the real zoo model of each tiny entry in the embedded spec. Its rates
# are sized for the tiny CPU models; the real decoders are launch-bound (distilgpt2 decodes at
# ~6.5 ms/token on an H200, docs/results/seed-study-h200.md). At 3x stretch the H200 demo ran with
# every model's queue building (mean queue 0.3-3 s, docs/resident.md), so arrivals are stretched
# 6x and the workload shortened to 6 s of trace time (36 s of replay).
GPU_MODELS = {"tiny-bert": "distilbert-base", "tiny-gpt2": "distilgpt2", "tiny-llama": "llama-1b"}
GPU_TIME_SCALE = 6.0
GPU_DURATION_S = 6.0
WARMUP_S = 1.0  # the first second of arrivals meets cold caches and lazy CUDA/oneDNN setup


def pick_device() -> tuple[str, str]:
    """(device, mode): real models under MPS on a GPU when possible, else timeslice on the CPU."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        # A worker process per model keeps the models' Python off the dispatcher's GIL: with
        # in-process "streams" on the 2-core CI machine the send lag p99 was ~360 ms, with
        # worker processes ~18 ms (docs/analysis.md, "The demo").
        return "cpu", "timeslice"
    if shutil.which("nvidia-cuda-mps-control") is not None:
        return "cuda", "mps"
    return "cuda", "timeslice"


def run_demo(out_dir: Path | str = DEFAULT_DIR, *, device: str | None = None,
             mode: str | None = None, duration_s: float | None = None, progress: bool = True,
             real_models: bool = True, console: Any = None) -> dict[str, Any]:
    """Run the demo; returns {"dir", "trace", "run_dir", "html", "perfetto", "report", ...}."""
    from rich.console import Console

    from traceforge.analyze.html import write_html
    from traceforge.analyze.jsonable import to_json
    from traceforge.analyze.perfetto import export_perfetto
    from traceforge.analyze.render import render_report
    from traceforge.analyze.report import build_report
    from traceforge.analyze.rundata import load_run
    from traceforge.backends.resident import from_options
    from traceforge.generate import DEMO_SPEC, generate_trace, load_spec
    from traceforge.replay import ReplayOptions, run_replay
    from traceforge.schema import atomic_write, read_trace, write_trace

    console = console or Console()
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInput("exists and is not a directory", source="-o", value=str(out_dir))
    from traceforge.paths import check_output

    check_output(out_dir, key="-o", kind="dir")
    for holder in (out_dir.resolve(), *out_dir.resolve().parents):
        # the demo adds a folder per run: never inside another run or study directory
        if (holder / "run.json").is_file() or (holder / "study.json").is_file():
            raise BadInput(f"is or is inside the run or study directory {holder}; choose "
                           "another path", key="-o", value=str(out_dir))
    if device is None or mode is None:
        picked_device, picked_mode = pick_device()
        device, mode = device or picked_device, mode or picked_mode

    spec = load_spec(DEMO_SPEC)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    base = out_dir / stamp
    suffix = 1
    while base.exists():  # two demos in one second
        base, suffix = out_dir / f"{stamp}-{suffix}", suffix + 1
    run_dir = base / "run"
    on_gpu = device != "cpu"
    zoo = ({name: GPU_MODELS.get(m.zoo, m.zoo) for name, m in spec.models.items()}
           if on_gpu and real_models else {})
    time_scale = GPU_TIME_SCALE if zoo else 1.0
    if zoo and duration_s is None:
        duration_s = GPU_DURATION_S
    backend = from_options({"mode": mode, "device": device, "sm_percent": {}, "max_batch": 1,
                            "max_wait_ms": 0.0, "zoo": zoo, "telemetry": on_gpu,
                            "run_dir": str(run_dir),
                            "status": lambda line: console.print(line, soft_wrap=True)})
    from traceforge.generate.build import preflight

    preflight(spec, duration_s=duration_s)  # a bad --duration is refused before any folder
    base.mkdir(parents=True)

    console.print(f"[bold]traceforge demo[/]: {DEMO_SPEC.name} → {base}  "
                  f"(device {device}, mode {mode})", soft_wrap=True)
    if zoo:
        console.print("    real models: " + ", ".join(f"{k} → {v}" for k, v in zoo.items())
                      + f"; arrivals stretched {time_scale:g}x", soft_wrap=True)
    trace = generate_trace(spec, duration_s=duration_s)
    trace_path = base / "trace.parquet"
    write_trace(trace.table, trace_path, trace.meta)
    trace = read_trace(trace_path)
    console.print(f"1/4 generated {trace.table.num_rows:,} requests for "
                  f"{', '.join(trace.models)} → {trace_path}", soft_wrap=True)

    console.print("2/4 loading models and replaying (open loop, at the trace's times)")
    summary = run_replay(trace, run_dir, backend,
                         ReplayOptions(progress=progress, warmup_s=WARMUP_S,
                                       time_scale=time_scale))
    console.print(f"    run {summary.status}: {summary.counts} → {run_dir}", soft_wrap=True)
    if summary.status == "interrupted":
        # Ctrl-C / SIGTERM, taken by the replay's own handlers: stop here as `traceforge
        # replay` does (exit 130), the timeline so far kept (the demo went on to its report)
        console.print("    interrupted: no report; the timeline so far is kept", soft_wrap=True)
        raise KeyboardInterrupt

    console.print("3/4 report")
    run = load_run(run_dir)
    report = build_report(run_dir, run=run)
    render_report(report, console)
    report_text = to_json(report) + "\n"
    atomic_write(base / "report.json", lambda tmp: tmp.write_text(report_text))

    html = write_html(run_dir, report, base / "report.html", run=run)
    perfetto = export_perfetto(run_dir, base / "perfetto.json", run=run)
    elapsed = time.perf_counter() - started
    console.print(f"4/4 HTML report: [bold]{html}[/]\n    Perfetto trace: {perfetto} "
                  f"(open in https://ui.perfetto.dev)\n    done in {elapsed:.1f} s",
                  soft_wrap=True)  # paths stay whole, so they can be copied
    return {"dir": base, "trace": trace_path, "run_dir": run_dir, "html": html,
            "perfetto": perfetto, "report": report, "summary": summary, "elapsed_s": elapsed}


def demo(
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory for the demo's "
                                         "outputs (a timestamped folder inside).")] = DEFAULT_DIR,
    device: Annotated[str | None, typer.Option(
        "--device", help="cpu or cuda[:i] (default: cuda when present, else cpu).")] = None,
    mode: Annotated[str | None, typer.Option(
        "--mode", help="Sharing mode (default: mps on a GPU, timeslice on the CPU).")] = None,
    duration: Annotated[float | None, typer.Option(
        "--duration", help="Shorten the embedded workload to S seconds.")] = None,
    tiny: Annotated[bool, typer.Option(
        "--tiny", help="On a GPU, keep the tiny models instead of the real ones.")] = False,
) -> None:
    """The whole pipeline on the embedded workload: generate, replay, report, HTML."""
    if duration is not None and not duration > 0:
        raise BadInput("must be a positive number of seconds", source="--duration",
                       value=duration)
    run_demo(output, device=device, mode=mode, duration_s=duration, real_models=not tiny)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
