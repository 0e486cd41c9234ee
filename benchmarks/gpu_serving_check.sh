#!/usr/bin/env bash
# Serving-grade checks of the resident backend (issue 13) in ONE device call:
#   d2d bandwidth → decode ms/token vs the weight-streaming floor (mistral-7b, distilgpt2) and
#   graph == eager greedy tokens → harness vs bare loop (>= 5 alternating passes, NVML util)
#   → stability (one trace replayed twice + traceforge compare) → pytest -m gpu (tests/test_serving.py)
# Results: $WORK/*.json, copied with the log to $OUT. Never changes card settings.
# GPU_CHECK_DRY=1 runs the same steps on the CPU with tiny stand-ins (eager).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu-serving}
WORK=${WORK:-/tmp/traceforge-gpu-serving}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$WORK"
LOG="$WORK/gpu_serving.log"
step() {
  local limit=$1; shift
  echo "---- $* (limit ${limit}s)" | tee -a "$LOG"
  timeout -k 10 "$limit" "$PY" benchmarks/gpu_serving_check.py "$@" --out "$WORK" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}; [ "$rc" = 0 ] || echo "---- step failed: rc=$rc" | tee -a "$LOG"
}
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv 2>&1; date -u; } | tee -a "$LOG"
step 40 bandwidth
step 150 decode
step 120 overhead --n "${N:-400}" --passes "${PASSES:-5}"
step 150 stability --duration "${STAB_S:-20}"
if [ "${GPU_CHECK_DRY:-0}" != 1 ]; then
  echo "---- pytest -m gpu tests/test_serving.py" | tee -a "$LOG"
  timeout -k 10 90 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_serving.py 2>&1 | tail -5 | tee -a "$LOG"
fi
cp "$WORK"/*.json "$LOG" "$OUT"/ 2>/dev/null
tar -C "$WORK" -czf "$OUT/serving-runs.tar.gz" runs 2>/dev/null
"$PY" - "$WORK" <<'PYEOF' | tee -a "$OUT/summary.txt"
import json, sys, pathlib
w = pathlib.Path(sys.argv[1]); J = lambda n: json.loads((w / n).read_text()) if (w / n).exists() else {}
b, d, o, s = J("bandwidth.json"), J("decode.json"), J("overhead.json"), J("stability.json")
print("==== gpu_serving_check summary ====")
if b: print(f"d2d bandwidth {b['d2d_bytes_per_s']['median']/1e12:.2f} TB/s")
for m in ("mistral-7b", "distilgpt2"):
    r = d.get(m) or {}
    print(m, {k: round(r[k]['ms_per_token'], 3) for k in ("graphs", "eager") if k in r},
          "floor", round(r.get("floor_ms_per_token") or 0, 3), "ratio", round(r.get("ratio_to_floor") or 0, 2))
print("tokens graphs==eager", d.get("tokens_equal_graphs_vs_eager"))
if o:
    print("harness/bare median ratio c1 %.3f c2 %.3f; per-pass c2 %s" % (o["ratio_of_medians"]["c1"], o["ratio_of_medians"]["c2"], [round(x, 3) for x in o["ratio_c2"]["passes"]]))
    print("bare rps", [round(x, 1) for x in o["rps"]["bare"]["passes"]], "done-sent-gpu p50 us", round(o["done_sent_minus_gpu_us_c1"]["p50"] or 0), "util c2", o.get("nvml_util_c2_pct"))
for m, v in (s.get("compare") or {}).get("models", {}).items():
    print("stability", m, "p50 %.3f p99 %.3f %s" % (v["p50_ratio"], v["p99_ratio"], v["verdict"]))
PYEOF
