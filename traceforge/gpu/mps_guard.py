"""``python -m traceforge.gpu.mps_guard ROOT``: quit traceforge's MPS daemon when its owner dies.

Started by :class:`traceforge.gpu.mps.MpsDaemon` in its own session with a pipe on stdin. It
blocks reading stdin; EOF means the owner closed the pipe (normal quit) or died (any signal,
SIGKILL included). It then quits the daemon whose pipe directory is ``ROOT/pipe``, if that is
still running, and removes ROOT.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the owner, not the guard
    root = Path(argv[0])
    sys.stdin.buffer.read()  # until EOF
    from traceforge.gpu.mps import CONTROL, mps_processes

    pipe = root / "pipe"
    env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(pipe),
           "CUDA_MPS_LOG_DIRECTORY": str(root / "log")}
    if (pipe / "control").exists():
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run([CONTROL], input="quit\n", env=env, text=True, capture_output=True,
                           timeout=20)
    deadline = time.monotonic() + 15
    while mps_processes(str(pipe)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for proc in mps_processes(str(pipe)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc["pid"], signal.SIGTERM)
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
