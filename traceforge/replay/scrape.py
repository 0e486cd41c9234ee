"""``replay --scrape URL``: sample a Prometheus text endpoint during the run.

A separate, lower-priority process (``python -m traceforge.replay.scrape``, started before the
schedule) GETs the URL every ``interval_s`` on the run clock (ticks at ``origin + k ×
interval``, the schedule's origin; a tick missed because a scrape ran long is skipped, never
bunched up), parses the body with ``prometheus_client.parser.text_string_to_metric_families``
and keeps every sample in long format; at the end it writes ``server_metrics.parquet`` (columns
below) and reports its counts. A process, not a thread: parsing a vLLM page (~300 lines) holds
a GIL for about a millisecond, and in the replay's process that GIL is the dispatcher's
(benchmarks/bench_scrape.py measured a thread raising send lag several-fold on a loaded
machine). The child reads the run clock as ``monotonic_ns() − t0`` (clock.py) and stops when
told, or when its stdin closes (the replay died).

A dead endpoint, an HTTP error or text the parser rejects is a *warning* (counted in run.json
under ``scrape``; the first one is printed), never the end of the run.

Columns: ``t_ns`` (int64, run clock: when the GET was sent), ``name`` (the sample name as
exposed, e.g. ``vllm:num_requests_running``, ``vllm:prefix_cache_hits_total``), ``labels``
(JSON object, keys sorted), ``value`` (float64). Histogram buckets (``*_bucket``) and
``*_created`` samples are left out: they multiply the row count and no plot reads them
(``_sum``/``_count`` are kept).
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
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
    from traceforge.redact import redact_url

    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL": a traceback before
        raise BadInput(f"not a URL ({exc})", key="--scrape", value=redact_url(url)) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput("expected http://HOST[:PORT]/PATH", key="--scrape",
                       value=redact_url(url))
    if not (isinstance(interval_s, int | float) and 0.05 <= interval_s <= 3600):
        raise BadInput("must be in [0.05, 3600] seconds", key="--scrape-interval",
                       value=interval_s)


class MetricsScraper:
    """The replay's handle on the scraping process."""

    def __init__(self, url: str, interval_s: float, clock: RunClock, run_dir: Path | str, *,
                 timeout_s: float | None = None) -> None:
        self.url = url
        self.interval_s = interval_s
        self.clock = clock
        self.out = Path(run_dir) / FILE_NAME
        self.timeout_s = timeout_s if timeout_s is not None else max(0.2, min(interval_s, 5.0))
        self._proc = None
        self._summary: dict[str, Any] | None = None

    def start(self) -> None:
        """Start the process (it idles until :meth:`begin`)."""
        import os
        import subprocess
        import sys

        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # this traceforge, also from a checkout
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "traceforge.replay.scrape", self.url, str(self.interval_s),
             str(self.clock.t0_ns), str(self.timeout_s), str(self.out)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
        # Wait (before the schedule's origin is taken) until it has imported what it needs, so
        # the first tick is not lost to interpreter start-up (~0.2-0.5 s on a busy machine).
        self._proc.stdout.readline()

    def begin(self, origin_ns: int) -> None:
        """Scrape from ``origin_ns`` (run clock) on."""
        self._send(f"{origin_ns}\n")

    def _send(self, line: str) -> None:
        try:
            self._proc.stdin.write(line)
            self._proc.stdin.flush()
        except (OSError, ValueError):  # the process died: finish() reports it
            pass

    def finish(self) -> dict[str, Any]:
        """Stop the process; its summary for run.json (idempotent)."""
        if self._summary is not None:
            return self._summary
        from traceforge.redact import redact_url

        base = {"url": redact_url(self.url), "interval_s": self.interval_s}
        if self._proc is None:
            self._summary = {**base, "scrapes": 0, "warnings": 1, "rows": 0,
                             "first_warning": "the scraper was never started"}
            return self._summary
        self._send("stop\n")
        try:
            out, _ = self._proc.communicate(timeout=self.timeout_s + 30.0)
            summary = json.loads(out.strip().splitlines()[-1])
        except Exception as exc:  # a crashed or hung scraper costs a warning, not the run
            self._proc.kill()
            self._proc.wait()
            summary = {"scrapes": 0, "warnings": 1, "rows": 0,
                       "first_warning": f"the scraper process failed: {type(exc).__name__}"}
            print(f"warning: {summary['first_warning']} (counted in run.json)",
                  file=sys.stderr, flush=True)
            if not self.out.exists():  # the file is written even when empty (contract)
                with contextlib.suppress(Exception):
                    _Sampler(self.url, self.interval_s, self.clock, self.timeout_s).write(
                        self.out)
        self._summary = {**base, **summary}
        return self._summary


class _Sampler:
    """The scraping loop, inside the child process."""

    def __init__(self, url: str, interval_s: float, clock: RunClock, timeout_s: float) -> None:
        from traceforge.redact import redact_url, url_and_auth

        self.url = url
        self.shown = redact_url(url)  # what warnings (stderr, run.json) say: no credentials
        self._fetch_url, self._headers = url_and_auth(url)
        self.interval_ns = int(interval_s * 1e9)
        self.clock = clock
        self.timeout_s = timeout_s
        self.scrapes = 0  # successful ones
        self.warnings = 0
        self.first_warning: str | None = None
        self._t: list[int] = []
        self._name: list[str] = []
        self._labels: list[str] = []
        self._value: list[float] = []
        self.stop = threading.Event()

    def run(self, origin_ns: int) -> None:
        now = self.clock.now
        k = max(0, -(-(now() - origin_ns) // self.interval_ns))  # the first tick not past
        while not self.stop.is_set():
            delay = origin_ns + k * self.interval_ns - now()
            if delay > 0 and self.stop.wait(delay / 1e9):
                return
            self.scrape_once()
            # Next tick in the future: a slow scrape skips ticks instead of bunching up.
            k = max(k + 1, (now() - origin_ns) // self.interval_ns + 1)

    def scrape_once(self) -> None:
        t = self.clock.now()
        try:
            request = urllib.request.Request(self._fetch_url, headers=self._headers)
            # The socket timeout bounds each read, not the scrape: a server trickling bytes
            # held one scrape (and the run's end) for ever. A deadline over the whole body:
            deadline = time.monotonic() + self.timeout_s
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                parts = []
                while chunk := resp.read1(1 << 16):
                    parts.append(chunk)
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the answer took over {self.timeout_s:g} s")
                text = b"".join(parts).decode("utf-8", errors="replace")
        except urllib.error.HTTPError as exc:
            self._warn(f"HTTP {exc.code} from {self.shown}")
            return
        except (OSError, ValueError) as exc:  # refused, reset, timeout, bad URL
            self._warn(f"cannot scrape {self.shown}: {getattr(exc, 'reason', None) or exc}")
            return
        try:
            rows = list(parse_samples(text))
        except Exception as exc:  # the parser raises ValueError and others on bad text
            self._warn(f"malformed metrics text from {self.shown}: {type(exc).__name__}: {exc}"
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
                  file=sys.stderr, flush=True)

    def write(self, path: Path) -> int:
        """Write ``server_metrics.parquet`` (even with no rows: the run asked for it)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from traceforge.schema import atomic_write

        table = pa.table({"t_ns": pa.array(self._t, pa.int64()),
                          "name": pa.array(self._name, pa.string()),
                          "labels": pa.array(self._labels, pa.string()),
                          "value": pa.array(self._value, pa.float64())},
                         schema=SERVER_METRICS_SCHEMA)
        atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd",
                                                      use_dictionary=["name", "labels"]))
        return len(self._t)


def _child(argv: list[str]) -> int:
    """``python -m traceforge.replay.scrape URL INTERVAL_S T0_NS TIMEOUT_S OUT``: stdin gives
    the origin (a line), then ``stop`` (or EOF); stdout gets the summary (one JSON line)."""
    import os
    import signal
    import sys

    url, interval_s, t0_ns, timeout_s, out = argv
    # Ctrl-C / SIGTERM reach the whole process group: the replay handles them and then tells us
    # to stop, so the samples so far are still written.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(10)  # below the replay: pacing first
    clock = RunClock(t0_ns=int(t0_ns))
    sampler = _Sampler(url, float(interval_s), clock, float(timeout_s))
    import prometheus_client.parser  # noqa: F401  (imported now, not at the first tick)

    print("ready", flush=True)
    line = sys.stdin.readline().strip()
    if line.lstrip("-").isdigit():
        def watch() -> None:  # stop on "stop" or when the replay's end of the pipe closes
            sys.stdin.readline()
            sampler.stop.set()

        threading.Thread(target=watch, daemon=True).start()
        sampler.run(int(line))
    summary = {"scrapes": sampler.scrapes, "warnings": sampler.warnings,
               "first_warning": sampler.first_warning}
    try:
        summary["rows"] = sampler.write(Path(out))
    except OSError as exc:  # losing the metrics file is a warning, like a dead endpoint
        summary.update(rows=0, write_error=str(exc))
    print(json.dumps(summary), flush=True)
    return 0


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

    path = Path(run_dir) / FILE_NAME
    if not path.is_file():
        return None
    from traceforge.analyze.rundata import read_checked_parquet

    # a NaN sample (a summary quantile with no observations) is no measurement: left out
    return read_checked_parquet(path, SERVER_METRICS_SCHEMA, drop_nonfinite=("value",))


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


if __name__ == "__main__":
    import sys

    sys.exit(_child(sys.argv[1:]))
