"""What does recording cost per request? TimelineRecorder vs a bare list append.

Per request the dispatcher calls ``recorder.complete(i, status, done_ns, outcome)`` (plus one
``sent_ns`` store); a background thread turns finished rows into Parquet parts. We time, over
``n`` requests with realistic outcomes (null-backend-like: service start/end, worker):

- ``baseline``: ``rows.append((i, status, sent, done, outcome))`` — the least any recorder does;
- ``complete``: the recorder's hot path alone;
- ``complete+flush``: hot path plus building and writing a part every ``chunk`` rows (what the
  background thread does at 20k req/s with 0.5 s parts), amortised per request.

The issue's budget is ≤ 5 µs per request amortised.  Usage: python benchmarks/bench_recorder.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from traceforge.record.recorder import OK, TimelineRecorder
from traceforge.replay.protocol import Outcome


def _recorder(run_dir: Path, n: int) -> TimelineRecorder:
    return TimelineRecorder(
        run_dir, request_id=np.arange(n), model_codes=np.zeros(n, np.int32),
        model_names=["bert"], batch_size=np.ones(n, np.int32), seq_len=np.full(n, 64),
        max_new_tokens=np.zeros(n, np.int32), scheduled_ns=np.arange(n, dtype=np.int64) * 50_000,
        background=False)


def _time_recording(n: int, outcomes: list, flush_every: int) -> float:
    """Seconds per request to stamp and complete n rows (closing a part every ``flush_every``
    rows when > 0, then closing the recorder)."""
    chunk = len(outcomes)
    with tempfile.TemporaryDirectory() as tmp:
        rec = _recorder(Path(tmp), n)
        sent, complete = rec.sent_ns, rec.complete
        t = time.perf_counter()
        for i in range(n):
            sent[i] = i * 50_000 + 20
            complete(i, OK, i * 50_000 + 9_100, outcomes[i % chunk])
            if flush_every and (i + 1) % flush_every == 0:
                rec.flush()
        if flush_every:
            rec.close()
        elapsed = (time.perf_counter() - t) / n
        if flush_every:
            assert rec.rows_written == n
        return elapsed


def main(n: int = 200_000, chunk: int = 10_000, repeats: int = 3) -> dict:
    outcomes = [Outcome(service_start_ns=i * 50_000 + 1_000, service_end_ns=i * 50_000 + 9_000,
                        worker="bert/0") for i in range(chunk)]
    best = {"baseline": float("inf"), "complete": float("inf"), "complete+flush": float("inf")}
    for _ in range(repeats):
        rows: list = []
        t = time.perf_counter()
        for i in range(n):
            rows.append((i, OK, i * 50_000 + 20, i * 50_000 + 9_100, outcomes[i % chunk]))
        best["baseline"] = min(best["baseline"], (time.perf_counter() - t) / n)

        for case, flush_every in (("complete", 0), ("complete+flush", chunk)):
            best[case] = min(best[case], _time_recording(n, outcomes, flush_every))

    result = {k: round(v * 1e6, 3) for k, v in best.items()}
    result["overhead_vs_baseline_us"] = round(result["complete+flush"] - result["baseline"], 3)
    result["budget_us"] = 5.0
    result["n"] = n
    print(f"recording cost per request (best of {repeats}, n={n}, part every {chunk} rows)")
    for key in ("baseline", "complete", "complete+flush"):
        print(f"  {key:16} {result[key]:7.3f} µs")
    print(f"  {'ratio to baseline':16} {result['complete+flush'] / result['baseline']:7.1f} x"
          f"   (budget {result['budget_us']} µs: "
          f"{'met' if result['complete+flush'] <= result['budget_us'] else 'MISSED'})")
    return result


if __name__ == "__main__":
    main()
