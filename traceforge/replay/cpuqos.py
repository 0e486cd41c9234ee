"""Keep idle CPUs out of deep sleep while a schedule runs: a PM QoS CPU latency request.

Linux lets a process ask that no CPU take longer than N µs to leave its idle state by writing N to
``/dev/cpu_dma_latency`` and keeping the file open (Documentation/power/pm_qos_interface.rst); the
kernel drops the request when the file is closed, including when the process dies, so nothing can
outlive the run. With 0, cpuidle picks only its polling state: an idle CPU spins instead of
halting. The dispatcher sleeps between sends; when its CPU has halted, the wake-up goes through the
hypervisor on a VM, and on this project's 2-vCPU Firecracker VM that took 0.1 ms at p50 and
1.2–9 ms at p99.9 (a bare ``time.sleep`` loop, no traceforge involved). Holding the request,
the same loop woke 0.04 ms late at p50 and ≤ 1.2 ms at p99.9, and the demo trace's send lag p99
on the null backend fell from 242–350 µs to 143–154 µs (docs/replay.md, "Late wake-ups").
``cyclictest`` and tuned's latency-performance profile make the same request.

The cost is power and, on a VM, host CPU time: idle vCPUs poll while the request is held. It is
held only for the schedule (not while models load), and only where the device is writable (root);
elsewhere run.json says why it was not held. ``--no-cpu-qos`` (ReplayOptions.cpu_qos)
turns it off.
"""

from __future__ import annotations

import contextlib
import os
import struct

DEVICE = "/dev/cpu_dma_latency"


class CpuLatencyRequest:
    """``with``-less on purpose: :class:`~traceforge.replay.run._QuietRuntime` holds it for the
    schedule and releases it in ``restore``; :attr:`state` goes into run.json."""

    def __init__(self, latency_us: int = 0, path: str = DEVICE) -> None:
        self._fd: int | None = None
        self.state = "off"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            self.state = f"not held ({path}: {exc.strerror or type(exc).__name__})"
            return
        try:
            os.write(fd, struct.pack("i", int(latency_us)))
        except OSError as exc:
            os.close(fd)
            self.state = f"not held (writing {path}: {exc.strerror or type(exc).__name__})"
            return
        self._fd = fd
        self.state = f"held: {latency_us} µs (idle CPUs poll instead of halting)"

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
