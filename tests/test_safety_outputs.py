"""Data safety: an output never lands on or inside an input; unwritable places fail in one line
without a partial file; a run directory is claimed exclusively (two runs at once: one exits 2)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from replay_helpers import make_trace
from trace_cli_helpers import REPO, assert_one_line_error, run_cli

FIXTURES = REPO / "tests" / "fixtures"


def digest(path: Path) -> str:
    """Bytes of a file, or of every file under a directory, as one hash."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("safety")
    trace = base / "t.parquet"
    make_trace([i * 1_000_000 for i in range(20)], path=trace)
    from traceforge.simulate import simulate

    simulate(trace, base / "runA")
    simulate(trace, base / "runB")
    spec = base / "spec.toml"
    spec.write_text((REPO / "workloads" / "example.toml").read_text())
    csv = base / "src.csv"
    csv.write_text((FIXTURES / "generic_requests.csv").read_text())
    (base / "link.png").symlink_to(trace)
    (base / "runlink").symlink_to(base / "runA")
    os.link(spec, base / "spec-hardlink.toml")
    return {"base": base, "trace": trace, "runA": base / "runA", "runB": base / "runB",
            "spec": spec, "csv": csv}


# (argv built from the world, the input that must stay intact, the flag the error names)
CASES = {
    "report --html onto run.json": (
        lambda w: ["report", w["runA"], "--html", w["runA"] / "run.json"], "runA", "--html"),
    "report --html into the run via a symlink": (
        lambda w: ["report", w["runA"], "--html", w["base"] / "runlink" / "r.html"], "runA",
        "--html"),
    "report --html with ..": (
        lambda w: ["report", w["runA"], "--html",
                   w["runA"] / "timeline" / ".." / "run.json"], "runA", "--html"),
    "compare --html into the second run": (
        lambda w: ["compare", w["runA"], w["runB"], "--html", w["runB"] / "run.json"], "runB",
        "--html"),
    "export perfetto into the timeline": (
        lambda w: ["export", "perfetto", w["runA"], "-o", w["runA"] / "timeline" / "p.json"],
        "runA", "-o"),
    "trace import onto its source": (
        lambda w: ["trace", "import", "csv", w["csv"], "-o", w["csv"],
                   "--columns", "time=timestamp", "--time-unit", "s"], "csv", "-o"),
    "trace gen onto its spec": (lambda w: ["trace", "gen", w["spec"], "-o", w["spec"]], "spec",
                                "-o"),
    "trace gen onto a hard link of its spec": (
        lambda w: ["trace", "gen", w["spec"], "-o", w["base"] / "spec-hardlink.toml"], "spec",
        "-o"),
    # not inputs, but an existing file is replaced only by one of its kind
    "trace gen onto a run's run.json": (
        lambda w: ["trace", "gen", w["spec"], "-o", w["runB"] / "run.json"], "runB", "-o"),
    "trace import onto a run's run.json": (
        lambda w: ["trace", "import", "csv", w["csv"], "-o", w["runB"] / "run.json",
                   "--columns", "time=ts_ms", "--time-unit", "ms"], "runB", "-o"),
    "profile -o onto a trace": (
        lambda w: ["profile", "--models", "tiny-bert", "--device", "cpu", "-o", w["trace"]],
        "trace", "-o"),
    "trace stats --plot onto the trace (symlink)": (
        lambda w: ["trace", "stats", w["trace"], "--plot", w["base"] / "link.png"], "trace",
        "--plot"),
    "replay -o the trace": (lambda w: ["replay", w["trace"], "-o", w["trace"]], "trace", "-o"),
    "replay -o inside the trace": (
        lambda w: ["replay", w["trace"], "-o", w["trace"] / "run"], "trace", "-o"),
    "replay -o a non-empty directory": (
        lambda w: ["replay", w["trace"], "-o", w["runA"]], "runA", "-o"),
    "simulate -o the trace": (lambda w: ["simulate", w["trace"], "-o", w["trace"]], "trace",
                              "-o"),
    "simulate -o an existing run": (lambda w: ["simulate", w["trace"], "-o", w["runB"]], "runB",
                                    "-o"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_output_onto_an_input_is_refused(world, case, capsys):
    build, victim, flag = CASES[case]
    before = digest(world[victim])
    code, _, err = run_cli(build(world), capsys)
    assert_one_line_error(code, err, flag)
    assert digest(world[victim]) == before, "the input was modified"


def test_check_output_allows_a_sibling(world):
    from traceforge.paths import check_output, overlaps

    assert not overlaps(world["base"] / "runA-report.html", world["runA"])
    check_output(world["base"] / "new" / "x.html", inputs=[("run", world["runA"])])


@pytest.mark.parametrize("argv_for", [
    lambda w, f: ["trace", "gen", w["spec"], "-o", f / "sub" / "t.parquet"],
    lambda w, f: ["export", "perfetto", w["runA"], "-o", f / "p.json"],
    lambda w, f: ["report", w["runA"], "--html", f / "r.html"],
    lambda w, f: ["simulate", w["trace"], "-o", f / "run"],
    lambda w, f: ["replay", w["trace"], "-o", f / "run"],
])
def test_parent_is_a_regular_file(world, argv_for, tmp_path, capsys):
    """Root ignores permission bits, so the unwritable place is a path through a file."""
    blocker = tmp_path / "plainfile"
    blocker.write_text("x")
    code, _, err = run_cli(argv_for(world, blocker), capsys)
    assert_one_line_error(code, err)
    assert blocker.read_text() == "x"


def test_output_onto_a_device_is_refused(world, capsys):
    code, _, err = run_cli(["trace", "gen", world["spec"], "-o", "/dev/null"], capsys)
    assert_one_line_error(code, err, "not a regular file")
    assert Path("/dev/null").is_char_device()


@pytest.fixture
def tiny_fs(tmp_path):
    """A 64 KiB tmpfs (root in a container usually may mount one); skipped where not allowed."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                         capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_is_one_line_exit_1_and_no_partial_file(world, tiny_fs, capsys):
    out = tiny_fs / "big.parquet"
    code, _, err = run_cli(["trace", "gen", world["spec"], "-o", out, "--duration", "600"],
                           capsys)
    assert code == 1, err
    assert len(err.strip().splitlines()) == 1 and "traceforge: failed:" in err, err
    assert str(out) in err
    assert list(tiny_fs.iterdir()) == []  # no final file, no temp file


def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    """ENOSPC half-way through a write: the previous file stays whole, no temp left."""
    import errno

    from traceforge.errors import RunFailure
    from traceforge.schema import atomic_write

    target = tmp_path / "report.html"
    target.write_text("old")

    def boom(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(RunFailure, match="No space left"):
        atomic_write(target, boom)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


# -- exclusive run directories -------------------------------------------------------------

def _replay_cmd(trace: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "traceforge", "replay", str(trace), "-o", str(out),
            "--backend", "null", "--service-ms", "1", "--no-progress"]


def test_two_replays_into_one_directory(tmp_path):
    trace = tmp_path / "t.parquet"
    n = 100
    make_trace([i * 15_000_000 for i in range(n)], path=trace)  # 1.5 s
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen(_replay_cmd(trace, out), env=env, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(60), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    assert "-o" in loser and str(out) in loser
    assert len(loser.strip().splitlines()) == 1, loser
    from traceforge.record.manifest import RunManifest
    from traceforge.record.writer import read_timeline

    assert read_timeline(out).num_rows == n
    assert RunManifest.load(out)["status"] == "complete"
    assert not (out / ".traceforge.lock").exists()  # released at the end


def test_lock_of_a_live_process_refuses_a_dead_one_is_taken_over(tmp_path):
    from traceforge.errors import BadInput
    from traceforge.paths import LOCK_NAME, claim_run_dir

    live = tmp_path / "live"
    live.mkdir()
    (live / LOCK_NAME).write_text(f"{os.getppid()}\n")
    with pytest.raises(BadInput, match="another run"):
        claim_run_dir(live)

    dead = tmp_path / "dead"
    dead.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    (dead / LOCK_NAME).write_text(f"{proc.pid}\n")
    claim = claim_run_dir(dead)
    assert (dead / LOCK_NAME).read_text().split()[0] == str(os.getpid())
    claim.release()
    assert list(dead.iterdir()) == []


def test_refused_run_leaves_no_directory(tmp_path, capsys):
    """A replay refused after the claim (unreachable URL) removes the directory it made."""
    trace = tmp_path / "t.parquet"
    make_trace([0, 1000], path=trace)
    out = tmp_path / "new" / "run"
    code, _, err = run_cli(["replay", trace, "-o", out, "--backend", "http", "--url",
                            "http://127.0.0.1:9"], capsys)
    assert_one_line_error(code, err, "--url")
    assert not out.exists()
