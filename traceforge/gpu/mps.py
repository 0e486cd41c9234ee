"""traceforge's own MPS control daemon: private directories, attach checks, always quit.

:class:`MpsDaemon` starts ``nvidia-cuda-mps-control -d`` with ``CUDA_MPS_PIPE_DIRECTORY`` and
``CUDA_MPS_LOG_DIRECTORY`` inside a fresh 0700 temporary directory, so it never shares a pipe with
(or is reachable by) anyone else's daemon, and clients join it only through :meth:`client_env`.
If any MPS daemon or server is already running, it refuses with a clear message instead of
starting a second one or touching the existing one.

Quitting is guaranteed three ways: :meth:`quit` on the normal path (called by the backend's
``stop`` on success, error, Ctrl-C and worker crashes), an ``atexit`` hook, and a guard process
(``python -m traceforge.gpu.mps_guard``) in its own session that waits for EOF on a pipe from
this process and quits the daemon when this process dies, even by SIGKILL.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from traceforge.errors import BadInput, RunFailure

CONTROL = "nvidia-cuda-mps-control"
DEFAULT_PIPE_DIR = "/tmp/nvidia-mps"


def _mps_entries():
    """(pid, name, state, /proc entry) of every process whose name starts nvidia-cuda-mps."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            name = (entry / "comm").read_text().strip()
            # stat: "pid (comm) S ..." — a zombie (Z) has exited and only awaits reaping.
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if name.startswith("nvidia-cuda-mps"):
            yield int(entry.name), name, state, entry


def mps_zombies() -> list[int]:
    """MPS processes that exited and await reaping (state Z): no GPU context, no pipe."""
    return sorted(pid for pid, _, state, _ in _mps_entries() if state == "Z")


def mps_processes(pipe_dir: str | None = None) -> list[dict]:
    """Running MPS control daemons / servers (``/proc`` scan), optionally only ``pipe_dir``'s.

    Each: {"pid", "name", "pipe_dir"}; pipe_dir is None where the environment is unreadable.
    """
    found = []
    for pid, name, state, entry in _mps_entries():
        if state in ("Z", "X"):
            continue
        env_pipe: str | None = None
        try:
            raw = (entry / "environ").read_bytes().split(b"\0")
            env = dict(kv.split(b"=", 1) for kv in raw if b"=" in kv)
            env_pipe = env.get(b"CUDA_MPS_PIPE_DIRECTORY", DEFAULT_PIPE_DIR.encode()).decode()
        except OSError:
            pass
        if pipe_dir is None or env_pipe == pipe_dir:
            found.append({"pid": pid, "name": name, "pipe_dir": env_pipe})
    return found


class MpsDaemon:
    def __init__(self) -> None:
        self.root: Path | None = None
        self.pipe_dir: Path | None = None
        self.log_dir: Path | None = None
        self.env: dict[str, str] = {}
        self.started = False
        self.quit_ok: bool | None = None
        self.quit_note: str | None = None
        self._guard: subprocess.Popen | None = None
        self.pids: set[int] = set()  # our daemon and server processes

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if shutil.which(CONTROL) is None:
            raise BadInput(f"{CONTROL} is not on PATH (it ships with the CUDA driver)",
                           key="--mode", value="mps")
        running = mps_processes()
        if running or Path(DEFAULT_PIPE_DIR, "control").exists():
            where = ", ".join(f"{p['name']} pid {p['pid']} (pipe dir {p['pipe_dir']})"
                              for p in running) or f"control pipe in {DEFAULT_PIPE_DIR}"
            raise BadInput(
                f"an MPS daemon is already running here: {where}; traceforge starts its own "
                "and never shares or stops another one: quit it (echo quit | "
                f"CUDA_MPS_PIPE_DIRECTORY=... {CONTROL}) or use --mode timeslice",
                key="--mode", value="mps")
        self.root = Path(tempfile.mkdtemp(prefix="traceforge-mps-"))  # mkdtemp: mode 0700
        self.pipe_dir = self.root / "pipe"
        self.log_dir = self.root / "log"
        for d in (self.pipe_dir, self.log_dir):
            d.mkdir(mode=0o700)
        self.env = {"CUDA_MPS_PIPE_DIRECTORY": str(self.pipe_dir),
                    "CUDA_MPS_LOG_DIRECTORY": str(self.log_dir)}
        # The guard first: from here on the daemon is quit even if this process is killed.
        self._guard = subprocess.Popen(
            [sys.executable, "-m", "traceforge.gpu.mps_guard", str(self.root)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True,
            env=_child_env())
        atexit.register(self.quit)
        try:
            # No pipes: the daemonised child could keep them open and block run() forever.
            subprocess.run([CONTROL, "-d"], env={**os.environ, **self.env}, check=True,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=30)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            self.quit()
            raise RunFailure(f"could not start the MPS control daemon: {exc}") from exc
        self.started = True
        deadline = time.monotonic() + 10
        while not (self.pipe_dir / "control").exists():
            if time.monotonic() > deadline:
                self.quit()
                raise RunFailure(f"MPS control daemon did not create {self.pipe_dir}/control; "
                                 f"log: {self.log_tail()}")
            time.sleep(0.02)
        # Remember our daemon's pid: once it is exiting its environment may be unreadable.
        self.pids.update(p["pid"] for p in mps_processes(str(self.pipe_dir)))

    def client_env(self, sm_percent: int | None = None) -> dict[str, str]:
        env = dict(self.env)
        if sm_percent is not None:
            env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(int(sm_percent))
        return env

    def apply_client_env(self, base: dict[str, str],
                         sm_percent: int | None = None) -> dict[str, str]:
        """``base`` made into an MPS client's environment. The daemon inherited
        ``base``'s CUDA_VISIBLE_DEVICES (it serves only those GPUs) and a client sees the
        daemon's devices numbered from 0: a client given the same value (e.g. ``1`` on a process
        pinned to GPU 1 by ``study --gpus 0,1``) finds no GPU at all, and a client without it
        fails too: torch 2.11 counts devices with NVML, which ignores the daemon (2 on an H200
        pair, against the 1 the CUDA runtime reports), and its start-up capability check then
        asks for device 1 ("device=1, num_gpus=1"; both seen on an H200 pair, 2026-11-30).
        So the client gets the daemon's devices by their client-side numbers, ``0..k-1``."""
        env = {k: v for k, v in base.items() if k != "CUDA_VISIBLE_DEVICES"}
        visible = [v for v in base.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        if visible:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(visible)))
        env.update(self.client_env(sm_percent))
        return env

    def control(self, command: str, timeout: float = 10.0) -> str:
        out = subprocess.run([CONTROL], input=command + "\n", env={**os.environ, **self.env},
                             capture_output=True, text=True, timeout=timeout)
        return out.stdout.strip()

    def server_pids(self) -> list[int]:
        return [int(t) for t in self.control("get_server_list").split() if t.isdigit()]

    def client_pids(self) -> set[int] | None:
        """PIDs attached to our MPS server(s), by the daemon's own list; None if unsupported."""
        clients: set[int] = set()
        answered = False
        for server in self.server_pids():
            text = self.control(f"get_client_list {server}")
            tokens = text.split()
            if tokens and all(t.isdigit() for t in tokens):
                answered = True
                clients.update(int(t) for t in tokens)
            elif not tokens:
                answered = True
        return clients if answered else None

    def verify_attached(self, pids: dict[str, int], cuda_index: int) -> dict:
        """Check that every worker pid is a client of our MPS server.

        Two independent sources: the daemon's ``get_client_list`` and NVML's list of MPS
        compute processes. Raises RunFailure when a source lists clients but not a worker.
        """
        report: dict = {"server_pids": self.server_pids(), "workers": {}}
        by_daemon = self.client_pids()
        by_nvml = _nvml_mps_pids(cuda_index)
        report["sources"] = {"daemon_client_list": by_daemon is not None,
                             "nvml_mps_processes": by_nvml is not None}
        missing = []
        for model, pid in pids.items():
            seen = {"daemon": None if by_daemon is None else pid in by_daemon,
                    "nvml": None if by_nvml is None else pid in by_nvml}
            report["workers"][model] = {"pid": pid, **seen}
            if False in seen.values():
                missing.append(f"{model} (pid {pid}: {seen})")
        verified = by_daemon is not None or by_nvml is not None
        report["all_attached"] = (not missing) if verified else None
        if not verified:
            report["note"] = "neither get_client_list nor NVML answered: attach not verified"
        if missing:
            raise RunFailure("MPS: worker(s) not attached to traceforge's MPS server: "
                             + "; ".join(missing) + f"; daemon log: {self.log_tail()}")
        return report

    def log_tail(self, n: int = 5) -> str:
        if self.log_dir is None:
            return ""
        lines: list[str] = []
        for name in ("control.log", "server.log"):
            with contextlib.suppress(OSError):
                lines += (self.log_dir / name).read_text(errors="replace").splitlines()[-n:]
        return " | ".join(lines)

    def quit(self) -> bool:
        """Quit our daemon (idempotent) and remove its directories; True when none is left."""
        if self.root is None:
            return True
        if self.quit_ok is not None:
            return self.quit_ok
        pipe = str(self.pipe_dir)
        if self.started and (self.pipe_dir / "control").exists():
            with contextlib.suppress(subprocess.TimeoutExpired, OSError, ValueError):
                self.pids.update(self.server_pids())
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                self.control("quit", timeout=20)

        def ours() -> list[dict]:
            return [p for p in mps_processes() if p["pipe_dir"] == pipe or p["pid"] in self.pids]

        deadline = time.monotonic() + 15
        while ours() and time.monotonic() < deadline:
            time.sleep(0.05)
        left = ours()
        for proc in left:  # only processes we started: identified by our private pipe dir
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc["pid"], 15)
        if left:
            time.sleep(1)
            self.quit_note = f"daemon did not quit in 15 s; sent SIGTERM to {left}"
        self.quit_ok = not ours()
        if self._guard is not None:
            with contextlib.suppress(OSError):
                self._guard.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._guard.wait(timeout=20)
        shutil.rmtree(self.root, ignore_errors=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self.quit)
        return self.quit_ok

    def describe(self) -> dict:
        return {"own_daemon": True, "pipe_dir": str(self.pipe_dir), "log_dir": str(self.log_dir),
                "pids": sorted(self.pids), "quit_ok": self.quit_ok, "quit_note": self.quit_note}


def _nvml_mps_pids(cuda_index: int) -> set[int] | None:
    from traceforge.gpu.cuda import nvml, nvml_index

    nv = nvml()
    if nv is None:
        return None
    try:
        handle = nv.nvmlDeviceGetHandleByIndex(nvml_index(cuda_index))
        procs = nv.nvmlDeviceGetMPSComputeRunningProcesses(handle)
    except Exception:
        return None
    return {int(p.pid) for p in procs}


def _child_env() -> dict[str, str]:
    """This process's environment, with the package importable by ``python -m``."""
    import traceforge

    env = dict(os.environ)
    root = str(Path(traceforge.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env
