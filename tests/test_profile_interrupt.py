"""SIGINT / SIGTERM during a profile phase stops the profile (it was taken for a failed mode:
the profile went on with the next mode and ended "complete")."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from traceforge.errors import RunFailure


def test_an_interrupted_phase_stops_the_profile_and_keeps_the_modes_before(monkeypatch,
                                                                           tmp_path):
    pytest.importorskip("torch")
    import traceforge.replay as replay_pkg
    from traceforge.simulate import measure

    real = replay_pkg.replay_async
    calls: list[Path] = []

    async def interrupted_in_timeslice(trace, run_dir, backend, options, **kwargs):
        # the replay's signal handlers took a SIGTERM: the run ends "interrupted"
        calls.append(Path(run_dir))
        summary = await real(trace, run_dir, backend, options, **kwargs)
        if Path(run_dir).parent.name == "timeslice":
            return dataclasses.replace(summary, status="interrupted")
        return summary

    monkeypatch.setattr(replay_pkg, "replay_async", interrupted_in_timeslice)
    saved: list[dict] = []
    settings = measure.ProfileSettings(
        models=["tiny-bert"], device="cpu", modes=["exclusive", "timeslice", "streams"],
        batch_sizes=[1], seq_lens=[16], new_tokens=2, repeats=2, warmup=1, corun_seconds=0.2,
        corun_repeats=1, corun_sizes=[], image_sides=[224])
    with pytest.raises(KeyboardInterrupt):
        measure.measure_profile(settings, on_update=lambda p: saved.append(json.loads(
            json.dumps(p))))
    # stopped at the first timeslice phase: no later phase, no streams mode
    in_timeslice = [c for c in calls if c.parent.name == "timeslice"]
    assert len(in_timeslice) == 1 and calls[-1] == in_timeslice[0]
    assert not any(c.parent.name == "streams" for c in calls)
    last = saved[-1]
    assert last["status"] == "partial" and list(last["modes"]) == ["exclusive"]
    assert "errors" not in last

    # a phase the replay ended "failed" with no bad row (the first of the grid): its
    # reason, not "0 requests failed (first: failed)"
    async def failed(trace, run_dir, backend, options, **kwargs):
        summary = await real(trace, run_dir, backend, options, **kwargs)
        return dataclasses.replace(summary, status="failed", error="RuntimeError: boom")

    monkeypatch.setattr(replay_pkg, "replay_async", failed)
    with pytest.raises(RunFailure, match=r"the replay failed: RuntimeError: boom") as info:
        measure.measure_profile(dataclasses.replace(settings, modes=["exclusive"]))
    assert "0 requests failed" not in str(info.value)


def test_the_profile_command_says_what_an_interrupt_kept(monkeypatch, tmp_path, capsys):
    """Exit 130 and one line naming the file and the modes it keeps."""
    from traceforge import cli
    from traceforge.simulate import measure

    def measured_exclusive_then_interrupted(settings, *, command=None, log=None,
                                            on_update=None):
        on_update({"status": "partial", "models": {}, "modes": {}})  # the grid
        on_update({"status": "partial", "models": {}, "modes": {"exclusive": {}}})
        raise measure.ProfileInterrupted("profile phase reference interrupted")

    monkeypatch.setattr(measure, "measure_profile", measured_exclusive_then_interrupted)
    out = tmp_path / "p.json"
    monkeypatch.setattr(sys, "argv", ["traceforge"])
    with pytest.raises(SystemExit) as exited:
        cli.main(["profile", "--models", "tiny-bert", "--device", "cpu", "-o", str(out)])
    assert exited.value.code == 130
    err = capsys.readouterr().err
    assert f"profile interrupted: {out} keeps what was measured" in err
    assert "modes finished: exclusive" in err
    assert json.loads(out.read_text())["status"] == "partial"


def test_an_interrupted_demo_replay_stops_the_demo(monkeypatch, tmp_path, capsys):
    """The demo went on to its report after Ctrl-C had ended the replay; now exit 130, as
    ``traceforge replay``, the run directory kept and no report written."""
    import traceforge.replay as replay_pkg
    from traceforge import cli
    from traceforge.replay import RunSummary

    def interrupted(trace, run_dir, backend, options):
        Path(run_dir).mkdir(parents=True)
        return RunSummary(Path(run_dir), "interrupted", {"ok": 3, "cancelled": 5})

    monkeypatch.setattr(replay_pkg, "run_replay", interrupted)
    with pytest.raises(SystemExit) as exited:
        cli.main(["demo", "--tiny", "--device", "cpu", "--mode", "exclusive",
                  "--duration", "2", "-o", str(tmp_path / "d")])
    assert exited.value.code == 130
    out = capsys.readouterr()
    assert "interrupted: no report" in out.out
    (base,) = (tmp_path / "d").iterdir()
    assert (base / "run").is_dir() and not (base / "report.json").exists()
    assert not (base / "report.html").exists()


@pytest.mark.parametrize("argv", [["trace", "gen", "SPEC", "-o", "OUT.parquet"],
                                  ["report", "RUN"]])
def test_ctrl_c_out_of_any_command_says_one_line(monkeypatch, tmp_path, capsys, argv):
    """Typer turned a KeyboardInterrupt out of a command into a silent exit 130 (`trace gen`,
    `simulate`, `report`, ... ended on Ctrl-C without a word); now one line, exit 130."""
    import traceforge.analyze.report as report_mod
    import traceforge.generate as generate_mod
    from traceforge import cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate_mod, "generate_trace", interrupted)
    monkeypatch.setattr(report_mod, "build_report", interrupted)
    spec = tmp_path / "w.toml"
    spec.write_text('[models.a]\narrival = { process = "poisson", rate = 10.0 }\n')
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    args = [{"SPEC": str(spec), "OUT.parquet": str(tmp_path / "o.parquet"),
             "RUN": str(run)}.get(a, a) for a in argv]
    with pytest.raises(SystemExit) as exited:
        cli.main(args)
    assert exited.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "traceforge: interrupted"
    assert not (tmp_path / "o.parquet").exists()
