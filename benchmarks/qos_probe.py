"""Do the harness's thread hand-offs pay for waking idle cores? Thread hand-off latency (Event
ping-pong after a 0.5 ms sleep, as between requests) and sleep wake-up lateness, alternating
without and with a PM QoS CPU latency request (`/dev/cpu_dma_latency` = 0, held only where the
device is writable). Prints one JSON object. Call E of docs/results/serving-h200.md. Usage:

    python benchmarks/qos_probe.py
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time


def _p50_p99(values: list[float]) -> dict[str, float]:
    values.sort()
    return {"p50_us": values[len(values) // 2], "p99_us": values[int(len(values) * 0.99)]}


def pingpong(n: int = 3000) -> dict[str, float]:
    a, b = threading.Event(), threading.Event()
    lat: list[float] = []

    def other() -> None:
        for _ in range(n):
            a.wait()
            a.clear()
            b.set()

    t = threading.Thread(target=other)
    t.start()
    for _ in range(n):
        time.sleep(0.0005)  # let the other thread go idle, as between requests
        s = time.perf_counter_ns()
        a.set()
        b.wait()
        b.clear()
        lat.append((time.perf_counter_ns() - s) / 1e3)
    t.join()
    return _p50_p99(lat)


def sleeps(n: int = 2000) -> dict[str, float]:
    late: list[float] = []
    for _ in range(n):
        due = time.monotonic_ns() + 300_000
        time.sleep(0.0003)
        late.append((time.monotonic_ns() - due) / 1e3)
    return _p50_p99(late)


def main() -> None:
    res: dict[str, object] = {}
    try:
        os.close(os.open("/dev/cpu_dma_latency", os.O_WRONLY))
        res["writable"] = True
    except OSError as e:
        res["writable"] = f"no: {e}"
    for rep in range(2):
        res[f"off{rep}"] = {"pingpong": pingpong(), "sleep": sleeps()}
        if res["writable"] is True:
            fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
            os.write(fd, struct.pack("i", 0))  # held while fd stays open
            res[f"on{rep}"] = {"pingpong": pingpong(), "sleep": sleeps()}
            os.close(fd)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
