#!/usr/bin/env bash
# The resident backend's GPU check, in ONE device call (`make gpu-check`):
#   1. harness overhead: >= 5 alternating passes of a bare loop and the harness (exclusive mode,
#      distilbert-base bs 8 x 128 bucket, concurrency 1 and 2; benchmarks/gpu_serving_check.py)
#   2. the seed study: distilbert-base + distilgpt2 + mistral-7b resident together, a Poisson and
#      a Gamma (cv 4) trace at ~60 % of the exclusive capacity, in all four modes
#   3. MPS: every worker attached to traceforge's own daemon, and no daemon left afterwards
#   3b. service stability: one trace replayed twice; `traceforge compare` must say `same`
#   4. (PROFILE=1) `traceforge profile` for the simulator
# Writes everything under $WORK, then copies a few files (and one .tar.gz of the rest) to $OUT.
# Environment: QUICK=1 (short smoke run), TRACE_S (seconds per trace), PROFILE=1, OUT, WORK.
# Never changes card settings; the MPS daemon it starts is always quit (see docs/resident.md).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu-check}
WORK=${WORK:-/tmp/traceforge-gpu-check}
QUICK=${QUICK:-0}
TRACE_S=${TRACE_S:-25}
# the venv's Python when there is one (`make gpu-check` passes it), else python3
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo "$PWD/.venv/bin/python" || echo python3)}
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check.sh: needs an NVIDIA GPU: nvidia-smi finds none on this machine" >&2
  exit 2
fi
mkdir -p "$OUT" "$WORK"
q=(); [ "$QUICK" = 1 ] && q=(--quick)
LOG="$WORK/gpu_check.log"
step() {  # step SECONDS ARGS... : one helper process, bounded in time, logged
  local limit=$1; shift
  echo "---- $* (limit ${limit}s)" | tee -a "$LOG"
  timeout -k 15 "$limit" "$PY" benchmarks/gpu_check.py "$@" --out "$WORK" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || echo "---- step failed: rc=$rc" | tee -a "$LOG"
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total,compute_mode,clocks.sm --format=csv
  "$PY" -m pip list 2>/dev/null | grep -iE '^(torch|transformers|nvidia-ml-py|pyarrow|aiohttp|typer|rich|numpy|uvloop) '
  command -v nvidia-cuda-mps-control; nproc; } 2>&1 | tee -a "$LOG"
step 40 env
sstep() {  # the serving checks (benchmarks/gpu_serving_check.py), same log and work dir
  local limit=$1; shift
  echo "---- serving $* (limit ${limit}s)" | tee -a "$LOG"
  timeout -k 15 "$limit" "$PY" benchmarks/gpu_serving_check.py "$@" --out "$WORK" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || echo "---- step failed: rc=$rc" | tee -a "$LOG"
}
sstep 100 overhead --n "$([ "$QUICK" = 1 ] && echo 100 || echo 400)" --passes 5
step 140 mode exclusive --trace-s "$TRACE_S" "${q[@]}"
for mode in timeslice mps streams; do
  step 110 mode "$mode" --trace-s "$TRACE_S" "${q[@]}"
done
echo "MPS daemons/servers after all modes: $(pgrep -l nvidia-cuda-mps || echo none)" | tee -a "$LOG"
sstep 150 stability --duration "$([ "$QUICK" = 1 ] && echo 8 || echo 20)"
"$PY" benchmarks/gpu_check.py report --out "$WORK" \
  --command "QUICK=$QUICK TRACE_S=$TRACE_S PROFILE=${PROFILE:-0} bash benchmarks/gpu_check.sh" \
  2>&1 | tee -a "$LOG"
cp "$WORK"/seed-study.md "$WORK"/env.json "$OUT"/ 2>/dev/null
tar -C "$WORK" -czf "$OUT/results.tar.gz" . 2>/dev/null
# The profile last: if it runs out of time, the seed study is already in $OUT.
if [ "${PROFILE:-0}" = 1 ]; then
  card=$("$PY" -c "import json;n=json.load(open('$WORK/env.json'))['gpu'].get('name','gpu').lower();print('h200' if 'h200' in n else 'h100' if 'h100' in n else 'gpu')")
  left=$(( ${BUDGET_S:-570} - SECONDS ))
  limit=$(( left < ${PROFILE_LIMIT:-170} ? left : ${PROFILE_LIMIT:-170} ))
  echo "---- traceforge profile -> profile-$card.json (limit ${limit}s)" | tee -a "$LOG"
  if [ "$limit" -gt 60 ]; then
    timeout -k 10 "$limit" "$PY" -m traceforge profile \
      --models distilbert-base,distilgpt2,mistral-7b --device cuda \
      --batch-sizes 1,8 --seq-lens 64,128 --repeats 5 --warmup 2 --corun-seconds 3 \
      --keep-runs "$WORK/profile-runs" -o "$OUT/profile-$card.json" 2>&1 | tee -a "$LOG"
    tar -C "$WORK" -czf "$OUT/profile-runs.tar.gz" profile-runs 2>/dev/null
  else
    echo "---- profile skipped: only ${left}s left" | tee -a "$LOG"
  fi
  echo "MPS daemons/servers after profile: $(pgrep -l nvidia-cuda-mps || echo none)" | tee -a "$LOG"
fi
cp "$LOG" "$OUT"/
ls -la "$OUT"
