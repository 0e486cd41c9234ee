"""NVML sampler: GPU utilisation, memory, SM clock and power at >= 10 Hz on the run clock.

A daemon thread polls NVML every ``interval_s`` (default 50 ms = 20 Hz) and keeps the samples in
column lists; :meth:`TelemetrySampler.stop` writes ``telemetry.parquet`` atomically. NVML's
utilisation counters are averages over the driver's own sample period (1/6 s to 1 s depending on
the product), so sampling faster than that repeats values; the SM clock and power are
instantaneous. nvidia-ml-py is imported lazily: without it the run has no telemetry and run.json
says why.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pyarrow as pa

TELEMETRY_SCHEMA = pa.schema(
    [
        pa.field("t_ns", pa.int64(), nullable=False,
                 metadata={"unit": "ns", "doc": "run clock (CLOCK_MONOTONIC since run start)"}),
        pa.field("gpu_index", pa.int32(), nullable=False, metadata={"unit": "", "doc": "NVML"}),
        pa.field("util_gpu_pct", pa.float32(), metadata={"unit": "%", "doc": "kernel busy"}),
        pa.field("util_mem_pct", pa.float32(), metadata={"unit": "%", "doc": "memory busy"}),
        pa.field("mem_used_bytes", pa.int64(), metadata={"unit": "bytes", "doc": "device mem"}),
        pa.field("sm_clock_mhz", pa.float32(), metadata={"unit": "MHz", "doc": "SM clock"}),
        pa.field("power_w", pa.float32(), metadata={"unit": "W", "doc": "board power"}),
    ],
    metadata={"schema": "traceforge.telemetry/1"},
)


class TelemetrySampler:
    def __init__(self, cuda_index: int, clock, *, interval_s: float = 0.05) -> None:
        from traceforge.gpu.cuda import nvml, nvml_index

        self.clock = clock
        self.interval_s = interval_s
        self.gpu_index = nvml_index(cuda_index)
        self.nv = nvml()
        self.note: str | None = None
        if self.nv is None:
            self.note = "no telemetry: nvidia-ml-py or the NVIDIA driver is not available"
        self._cols: dict[str, list] = {f.name: [] for f in TELEMETRY_SCHEMA}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return self.nv is not None

    def start(self) -> None:
        if self.nv is None:
            return
        self._handle = self.nv.nvmlDeviceGetHandleByIndex(self.gpu_index)
        self._thread = threading.Thread(target=self._loop, name="nvml-telemetry", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        nv, h, c = self.nv, self._handle, self._cols
        c["t_ns"].append(self.clock.now())
        c["gpu_index"].append(self.gpu_index)
        for name, read in (
            ("util", lambda: nv.nvmlDeviceGetUtilizationRates(h)),
            ("mem_used_bytes", lambda: int(nv.nvmlDeviceGetMemoryInfo(h).used)),
            ("sm_clock_mhz", lambda: float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))),
            ("power_w", lambda: nv.nvmlDeviceGetPowerUsage(h) / 1e3),
        ):
            try:
                value = read()
            except Exception:  # a counter this GPU does not expose stays null
                value = None
            if name == "util":
                c["util_gpu_pct"].append(None if value is None else float(value.gpu))
                c["util_mem_pct"].append(None if value is None else float(value.memory))
            else:
                c[name].append(value)

    def _loop(self) -> None:
        next_t = self.clock.now()
        step = int(self.interval_s * 1e9)
        while True:
            self._sample()
            next_t += step  # absolute targets: the rate does not drift with sampling cost
            delay = (next_t - self.clock.now()) / 1e9
            if self._stop.wait(max(delay, 0.0)):
                return

    def stop(self) -> pa.Table:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        return self.table()

    def table(self) -> pa.Table:
        """The samples so far (safe while sampling: only complete samples are taken)."""
        n = min(len(c) for c in self._cols.values())
        return pa.table({f.name: pa.array(self._cols[f.name][:n], type=f.type)
                         for f in TELEMETRY_SCHEMA}, schema=TELEMETRY_SCHEMA)

    def write(self, path: Path) -> None:
        import pyarrow.parquet as pq

        from traceforge.schema import atomic_write

        table = self.table()
        atomic_write(Path(path), lambda tmp: pq.write_table(table, tmp, compression="zstd"))

    def summary(self) -> dict[str, Any]:
        import numpy as np

        out: dict[str, Any] = {"source": "nvml", "interval_s": self.interval_s,
                               "samples": len(self._cols["t_ns"])}
        if self.note:
            out["note"] = self.note
        util = np.array([v for v in self._cols["util_gpu_pct"] if v is not None], dtype=float)
        if util.size:
            out["mean_util_gpu_pct"] = round(float(util.mean()), 2)
        t = np.asarray(self._cols["t_ns"], dtype=np.int64)
        if t.size > 1:
            out["achieved_hz"] = round(float((t.size - 1) / ((t[-1] - t[0]) / 1e9)), 2)
        return out
