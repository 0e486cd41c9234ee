"""``python -m traceforge.gpu.mps_left``: which MPS processes are still alive, for GPU scripts.

``pgrep nvidia-cuda-mps`` also lists zombies: ``nvidia-cuda-mps-control -d`` daemonises, so a
daemon that quit is reparented to the container's pid 1, and where that process does not reap
children (a shell, a sleep), the exited daemon stays in the process table as ``Z`` — it holds no
GPU context and no pipe. This prints ``none`` or the live ones (pid, name, pipe directory), and
the zombies separately, so a log never reports a quit daemon as left running. Exit status 1 when
a live one remains.
"""

from __future__ import annotations

import sys

from traceforge.gpu.mps import mps_processes, mps_zombies


def main() -> int:
    live = mps_processes()
    text = ", ".join(f"{p['pid']} {p['name']} (pipe {p['pipe_dir'] or '?'})" for p in live)
    dead = mps_zombies()
    note = f" [exited, not yet reaped (zombie): {' '.join(map(str, dead))}]" if dead else ""
    print((text or "none") + note)
    return 1 if live else 0


if __name__ == "__main__":
    sys.exit(main())
