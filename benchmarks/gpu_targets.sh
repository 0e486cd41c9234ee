#!/usr/bin/env bash
# The GPU-measured targets of issues 11 and 13 that a call re-checks, in ONE device call:
#   bandwidth + decode  mistral-7b bf16 batch-1 ms/token per variant vs the weight-streaming floor
#                       (DECODE_VARIANTS, default graphs,compiled-freeze; DECODE_PROFILE=1 or a list adds the
#                       per-kernel profile of each step); GPU 0
#   overhead            harness vs bare loop, distilbert-base b8x128, exclusive, c=1/c=2, >= 5
#                       alternating passes; done - sent - gpu_ns at c=1 and its hops; GPU 0
#   multi               MULTI_SPEC (default studies/multi-gpu-50s.toml, ~340 s on an H200 pair) with
#                       --gpus 0 and --gpus 0,1 (gpu_multi.sh); MULTI_LIMIT default 540 s
# fidelity-bg / fidelity-wait: benchmarks/gpu_fidelity.sh on GPU 1 in the background (to $OUT/fid).
# gputests: pytest -m gpu tests/test_serving.py (graph and compiled decode == eager, token for token).
# stability: one trace replayed twice per variant (A B A B), compare + where p50 goes (µs parts).
# STEPS picks steps (default "decode overhead multi"). Results: $OUT (at most 8 files), a short
# table last. Card settings are never changed.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu-targets}
WORK=${WORK:-/tmp/traceforge-gpu-targets}
PY=${PYTHON:-python3}
STEPS=${STEPS:-decode overhead multi}
mkdir -p "$OUT" "$WORK"
LOG="$OUT/targets.log"
t0=$(date +%s)
note() { echo "[$(date -u +%T) +$(( $(date +%s) - t0 ))s] $*" | tee -a "$LOG"; }
{ nvidia-smi --query-gpu=index,name,driver_version,memory.total,clocks.sm --format=csv 2>&1
  date -u; cat /proc/loadavg; nproc; } | tee -a "$LOG"
check() {  # $1 = limit, rest = gpu_serving_check.py args (GPU 0 only)
  local limit=$1; shift
  note "---- $* (limit ${limit}s)"
  CUDA_VISIBLE_DEVICES=0 timeout -k 10 "$limit" "$PY" benchmarks/gpu_serving_check.py "$@" \
    --out "$WORK" 2>&1 | tee -a "$LOG"
  note "---- exit ${PIPESTATUS[0]}"
  cp "$WORK"/*.json "$OUT"/ 2>/dev/null  # what a later step's time-out cannot take away
}

fid_pid=
for step in $STEPS; do
  case $step in
    fidelity-bg)  # the simulator fidelity check on GPU 1, beside the GPU-0 steps that follow
      note "---- gpu_fidelity.sh on GPU 1, in the background (limit ${FID_LIMIT:-420}s)"
      ( CUDA_VISIBLE_DEVICES=1 OUT="$OUT/fid" WORK="$WORK/fid" PYTHON="$PY" \
          timeout -k 10 "${FID_LIMIT:-420}" bash benchmarks/gpu_fidelity.sh > "$WORK/fid.log" 2>&1
        echo "rc $?" >> "$WORK/fid.log" ) &
      fid_pid=$!
      ;;
    fidelity-wait)
      [ -n "$fid_pid" ] && wait "$fid_pid"
      note "---- fidelity done: $(tail -1 "$WORK/fid.log"); MPS left: $("${PY:-python3}" -m traceforge.gpu.mps_left)"
      tail -25 "$WORK/fid.log" | tee -a "$LOG"
      fid_pid=
      ;;
    decode)
      check 40 bandwidth
      SKIP_EQ=1 DECODE_MODELS=mistral-7b \
        DECODE_VARIANTS=${DECODE_VARIANTS:-graphs,compiled-freeze} check "${DECODE_LIMIT:-240}" decode
      ;;
    gputests)
      note "---- pytest -m gpu tests/test_serving.py (GPU 0)"
      CUDA_VISIBLE_DEVICES=0 timeout -k 10 "${TESTS_LIMIT:-180}" "$PY" -m pytest -q -m gpu \
        -p no:cacheprovider tests/test_serving.py 2>&1 | tail -15 | tee -a "$LOG"
      ;;
    overhead)
      check "${OVERHEAD_LIMIT:-110}" overhead --n "${N:-400}" --passes "${PASSES:-5}"
      ;;
    stability)  # STAB_VARIANTS (default inline,no-inline), interleaved A B A B; runs kept
      STAB_VARIANTS=${STAB_VARIANTS:-inline,no-inline} \
        check "${STAB_LIMIT:-240}" stability --duration "${STAB_DURATION:-20}"
      tar -C "$WORK" -czf "$OUT/stability-runs.tar.gz" --exclude='*.parquet.tmp' runs 2>/dev/null
      ;;
    multi)
      note "---- multi-GPU study (limit ${MULTI_LIMIT:-540}s)"
      SPEC=${MULTI_SPEC:-studies/multi-gpu-50s.toml} OUT="$WORK/multi" \
        MULTI_WORK="$WORK/multi-studies" PYTHON="$PY" \
        timeout -k 10 "${MULTI_LIMIT:-540}" bash benchmarks/gpu_multi.sh 2>&1 | tee -a "$LOG"
      note "---- exit ${PIPESTATUS[0]}; MPS left: $("${PY:-python3}" -m traceforge.gpu.mps_left)"
      tar -C "$WORK" -czf "$OUT/multi.tar.gz" multi multi-studies 2>/dev/null
      ;;
  esac
done
"$PY" - "$WORK" <<'PYEOF' | tee -a "$LOG"
import json, pathlib, sys
w = pathlib.Path(sys.argv[1])
J = lambda p: json.loads((w / p).read_text()) if (w / p).exists() else {}
b, d, o, m = J("bandwidth.json"), J("decode.json"), J("overhead.json"), J("multi/summary.json")
print("==== targets ====")
if b:
    print(f"d2d bandwidth {b['d2d_bytes_per_s']['median'] / 1e12:.2f} TB/s")
r = d.get("mistral-7b") or {}
for k, v in r.items():
    if isinstance(v, dict) and "ms_per_token" in v:
        print(f"mistral-7b {k:<22} {v['ms_per_token']:.3f} ms/token = "
              f"{r.get('ratio_to_floor_' + k, float('nan')):.3f} x floor "
              f"{r.get('floor_ms_per_token', float('nan')):.3f} ms (target <= 1.5)")
    elif isinstance(v, dict) and "error" in v:
        print(f"mistral-7b {k}: {v['error'][:200]}")
if o:
    rm, h = o["ratio_of_medians"], o.get("hops_us_c1", {})
    print(f"harness/bare c2 {rm['c2']:.3f} (target >= 0.97), c1 {rm['c1']:.3f}; passes c2 "
          f"{[round(x, 3) for x in o['ratio_c2']['passes']]}")
    print(f"done-sent-gpu c1 p50 {o['done_sent_minus_gpu_us_c1']['p50']:.0f} us (target <= 150); "
          + ", ".join(f"{k} {v['p50']:.0f}" for k, v in h.items()))
    if "done_sent_minus_gpu_us_c1_noinline" in o:
        hn = o.get("hops_us_c1_noinline", {})
        print(f"  --no-inline: c1 ratio {rm.get('c1_noinline', float('nan')):.3f}, done-sent-gpu "
              f"p50 {o['done_sent_minus_gpu_us_c1_noinline']['p50']:.0f} us; "
              + ", ".join(f"{k} {v['p50']:.0f}" for k, v in hn.items()))
s = J("stability.json")
for v, c in (s.get("compare_by_variant") or {}).items():
    print(f"stability ({v}): " + ", ".join(
        f"{k} p50 x{x['p50_ratio']:.3f} p99 x{x['p99_ratio']:.3f} {x['verdict']}"
        for k, x in c.get("models", {}).items()))
for run, b in (s.get("breakdown") or {}).items():
    tel = b.get("telemetry") or {}
    print(f"  {pathlib.Path(run).name}: clock p50 {tel.get('sm_clock_mhz_p50')} MHz; " + "; ".join(
        f"{k} " + " ".join(f"{n} {x:.0f}" for n, x in parts.items() if x == x)
        for k, parts in b["models"].items()))
if m:
    print(f"multi-GPU wall {m.get('wall_s')} ratio {m.get('ratio')} (target <= 0.55)")
    vs = [v for c in (m.get("verdicts") or {}).values() for v in c.values()]
    print(f"compare verdicts: {sum(v == 'same' for v in vs)} same of {len(vs)}: {m.get('verdicts')}")
PYEOF
