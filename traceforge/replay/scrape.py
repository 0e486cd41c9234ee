"""``replay --scrape URL``: sample a Prometheus text endpoint during the run.

A daemon thread GETs the URL every ``interval_s`` on the run clock (ticks at ``start + k ×
interval``; a tick missed because a scrape ran long is skipped, never bunched up), parses the
body with ``prometheus_client.parser.text_string_to_metric_families`` and keeps every sample in
long format; at the end the samples go to ``server_metrics.parquet`` (columns below). The thread
never touches the event loop: the dispatcher's pacing shares only the GIL with it (parsing a
vLLM page of ~300 lines takes about a millisecond; docs/replay.md gives the send lag measured
with and without scraping).

A dead endpoint, an HTTP error or text the parser rejects is a *warning* (counted in run.json
under ``scrape``; the first one is printed), never the end of the run.

Columns: ``t_ns`` (int64, run clock: when the GET was sent), ``name`` (the sample name as
exposed, e.g. ``vllm:num_requests_running``, ``vllm:prefix_cache_hits_total``), ``labels``
(JSON object, keys sorted), ``value`` (float64). Histogram buckets (``*_bucket``) and
``*_created`` samples are left out: they multiply the row count and no plot reads them
(``_sum``/``_count`` are kept).
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from traceforge.clock import RunClock
from traceforge.errors import BadInput

FILE_NAME = "server_metrics.parquet"
# vLLM's names (v1 engine; older releases used gpu_cache_usage_perc): the report plots these.
RUNNING = ("vllm:num_requests_running",)
WAITING = ("vllm:num_requests_waiting",)
CACHE_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
PREFIX_HITS = ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total")
PREFIX_QUERIES = ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total")


def check_url(url: str | None, interval_s: float) -> None:
    """Validate ``--scrape`` / ``--scrape-interval`` (BadInput before anything is written)."""
    if url is None:
        return
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput("expected http://HOST[:PORT]/PATH", key="--scrape", value=url)
    if not (isinstance(interval_s, int | float) and 0.05 <= interval_s <= 3600):
        raise BadInput("must be in [0.05, 3600] seconds", key="--scrape-interval",
                       value=interval_s)


class MetricsScraper:
    def __init__(self, url: str, interval_s: float, clock: RunClock, *,
                 timeout_s: float | None = None) -> None:
        self.url = url
        self.interval_ns = int(interval_s * 1e9)
        self.clock = clock
        self.timeout_s = timeout_s if timeout_s is not None else max(0.2, min(interval_s, 5.0))
        self.scrapes = 0  # successful ones
        self.warnings = 0
        self.first_warning: str | None = None
        self._t: list[int] = []
        self._name: list[str] = []
        self._labels: list[str] = []
        self._value: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="metrics-scraper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 1.0)

    def summary(self, rows_written: int | None = None) -> dict[str, Any]:
        return {"url": self.url, "interval_s": self.interval_ns / 1e9, "scrapes": self.scrapes,
                "warnings": self.warnings, "first_warning": self.first_warning,
                "rows": len(self._t) if rows_written is None else rows_written}

    # -- the thread --------------------------------------------------------------------------
    def _run(self) -> None:
        now = self.clock.now
        start = now()
        k = 0
        while not self._stop.is_set():
            target = start + k * self.interval_ns
            delay = target - now()
            if delay > 0 and self._stop.wait(delay / 1e9):
                return
            self.scrape_once()
            # Next tick in the future: a slow scrape skips ticks instead of bunching up.
            k = max(k + 1, (now() - start) // self.interval_ns + 1)

    def scrape_once(self) -> None:
        t = self.clock.now()
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout_s) as resp:
                text = resp.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as exc:
            self._warn(f"HTTP {exc.code} from {self.url}")
            return
        except (OSError, ValueError) as exc:  # refused, reset, timeout, bad URL
            self._warn(f"cannot scrape {self.url}: {getattr(exc, 'reason', None) or exc}")
            return
        try:
            rows = list(parse_samples(text))
        except Exception as exc:  # the parser raises ValueError and others on bad text
            self._warn(f"malformed metrics text from {self.url}: {type(exc).__name__}: {exc}"
                       [:300])
            return
        for name, labels, value in rows:
            self._t.append(t)
            self._name.append(name)
            self._labels.append(labels)
            self._value.append(value)
        self.scrapes += 1

    def _warn(self, message: str) -> None:
        self.warnings += 1
        if self.first_warning is None:
            self.first_warning = message
            import sys

            print(f"warning: {message} (scraping goes on; counted in run.json)",
                  file=sys.stderr)

    # -- output ------------------------------------------------------------------------------
    def write(self, run_dir: Path | str) -> int:
        """Write ``server_metrics.parquet`` (even with no rows: the run asked for it)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from traceforge.schema import atomic_write

        n = len(self._t)
        table = pa.table({"t_ns": pa.array(self._t[:n], pa.int64()),
                          "name": pa.array(self._name[:n], pa.string()),
                          "labels": pa.array(self._labels[:n], pa.string()),
                          "value": pa.array(self._value[:n], pa.float64())},
                         schema=SERVER_METRICS_SCHEMA)
        atomic_write(Path(run_dir) / FILE_NAME,
                     lambda tmp: pq.write_table(table, tmp, compression="zstd",
                                                use_dictionary=["name", "labels"]))
        return n


def parse_samples(text: str):
    """(name, labels JSON, value) for every sample worth keeping in Prometheus ``text``."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if name.endswith("_bucket") or name.endswith("_created"):
                continue
            yield name, json.dumps(sample.labels, sort_keys=True), float(sample.value)


def _schema():
    import pyarrow as pa

    return pa.schema([
        pa.field("t_ns", pa.int64(), False, {"unit": "ns since run start (CLOCK_MONOTONIC)"}),
        pa.field("name", pa.string(), False),
        pa.field("labels", pa.string(), False, {"doc": "JSON object, keys sorted"}),
        pa.field("value", pa.float64(), False),
    ])


SERVER_METRICS_SCHEMA = _schema()


def read_server_metrics(run_dir: Path | str):
    """The run's server metrics as a pyarrow Table, or None when the run has none."""
    import pyarrow.parquet as pq

    path = Path(run_dir) / FILE_NAME
    if not path.is_file():
        return None
    return pq.read_table(path)


def series(table, names: tuple[str, ...]):
    """(t_ns, value) numpy arrays of the first of ``names`` present, summed over label sets
    per scrape (e.g. several engines); None when absent."""
    import numpy as np
    import pyarrow.compute as pc

    for name in names:
        rows = table.filter(pc.equal(table.column("name"), name))
        if rows.num_rows:
            t = rows.column("t_ns").to_numpy()
            v = rows.column("value").to_numpy()
            ts, inverse = np.unique(t, return_inverse=True)
            return ts, np.bincount(inverse, weights=v)
    return None
