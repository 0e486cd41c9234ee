"""Does ``--scrape`` disturb pacing? Send lag of the same replay with and without scraping.

A null-backend replay (Poisson, 300 req/s, 8 s, spin pacer) runs twice, alternating, without
and with ``--scrape`` at 0.1 s (5× vLLM's usual rate) against a local server exposing a
vLLM-sized page (about 300 samples: gauges, counters and histograms). Result: send-lag p50/p99
of each and their ratios (with / without). On a shared machine the numbers are noisy: compare
the ratio, and repeat.

    PYTHONPATH=. python benchmarks/bench_scrape.py
"""

from __future__ import annotations

import json
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

RATE, SECONDS, INTERVAL, ROUNDS = 300.0, 8.0, 0.1, 2


def vllm_like_page() -> bytes:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    reg = CollectorRegistry()
    labels = ["model_name", "engine"]
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
        Gauge(f"vllm:{name}", name, labels, registry=reg).labels("m", "0").set(3)
    for name in ("prefix_cache_queries", "prefix_cache_hits", "prompt_tokens",
                 "generation_tokens", "request_success"):
        Counter(f"vllm:{name}", name, labels, registry=reg).labels("m", "0").inc(100)
    buckets = [0.001 * 2**k for k in range(20)]
    for name in ("time_to_first_token_seconds", "inter_token_latency_seconds",
                 "e2e_request_latency_seconds", "request_queue_time_seconds",
                 "request_prefill_time_seconds", "request_decode_time_seconds",
                 "request_prompt_tokens", "request_generation_tokens", "iteration_tokens_total",
                 "request_inference_time_seconds"):
        h = Histogram(f"vllm:{name}", name, labels, buckets=buckets, registry=reg)
        h.labels("m", "0").observe(0.05)
    return generate_latest(reg)


def serve(page: bytes) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/metrics"


def one(trace, url: str | None, tmp: Path, k: int) -> dict:
    from traceforge.backends.null import NullBackend
    from traceforge.record import read_timeline
    from traceforge.replay import ReplayOptions, run_replay

    run_dir = tmp / f"run-{k}-{'scrape' if url else 'plain'}"
    run_replay(trace, run_dir, NullBackend(servers=64, service_ms=5),
               ReplayOptions(scrape_url=url, scrape_interval_s=INTERVAL))
    tl = read_timeline(run_dir)
    lag = (tl.column("sent_ns").to_numpy() - tl.column("scheduled_ns").to_numpy()) / 1e3
    out = {"p50_us": float(np.percentile(lag, 50)), "p99_us": float(np.percentile(lag, 99))}
    if url:
        manifest = json.loads((run_dir / "run.json").read_text())
        out["scrapes"] = manifest["scrape"]["scrapes"]
        out["rows_per_scrape"] = manifest["scrape"]["rows"] / max(1, out["scrapes"])
    return out


def main() -> dict:
    import os
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # as bench_scale.py, lag_trace.py
    from bench_pacing import poisson_trace

    page = vllm_like_page()
    httpd, url = serve(page)
    trace = poisson_trace(RATE, SECONDS, seed=1)
    results = {"plain": [], "scrape": []}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(ROUNDS):
            results["plain"].append(one(trace, None, Path(tmp), k))
            results["scrape"].append(one(trace, url, Path(tmp), k))
    httpd.shutdown()

    def med(key, stat):
        return float(np.median([r[stat] for r in results[key]]))

    summary = {
        "load_average": os.getloadavg()[0], "page_lines": page.count(b"\n"),
        "plain_p50_us": med("plain", "p50_us"), "plain_p99_us": med("plain", "p99_us"),
        "scrape_p50_us": med("scrape", "p50_us"), "scrape_p99_us": med("scrape", "p99_us"),
        "scrapes": results["scrape"][0]["scrapes"],
    }
    summary["p50_ratio"] = summary["scrape_p50_us"] / summary["plain_p50_us"]
    summary["p99_ratio"] = summary["scrape_p99_us"] / summary["plain_p99_us"]
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
