#!/usr/bin/env bash
# Every full-size zoo architecture on the GPU, in ONE device call: benchmarks/zoo-sweep.toml
# (llama-1b, gpt2, bert-base, vit-base, resnet-50 resident together) replayed in each sharing
# mode with the defaults a user gets (CUDA graphs, shape buckets, pre-warm), then exclusive with
# dynamic batching (--max-batch 4 --max-wait-ms 2), then llama-1b alone with --compile compiled.
# Each replay runs under a timeout; the summary (per run and model: ok / all rows, the other
# statuses with their first error, p50 / p99 latency, pre-warm seconds) is printed last and
# written to $OUT/zoo-summary.{md,json}. Never changes card settings; every MPS daemon a replay
# started is quit by the backend, and what is left is reported.
# Env: OUT (default out/gpu-zoo), PYTHON, MODES (default exclusive,streams,timeslice,mps),
# ZOO_DURATION (trace seconds, default 8), REPLAY_LIMIT (seconds per replay, default 150),
# GPU_ZOO_DRY=1 (tiny models on the CPU: this script's plumbing, for tests).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${OUT:-out/gpu-zoo}
MODES=${MODES:-exclusive,streams,timeslice,mps}
LIMIT=${REPLAY_LIMIT:-150}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/traceforge-gpu-zoo.XXXXXX)
LOG="$WORK/zoo.log"
if [ "${GPU_ZOO_DRY:-0}" = 1 ]; then
  DEV=(--device cpu --zoo llama=tiny-llama,gpt=tiny-gpt2,bert=tiny-bert,vit=tiny-vit,resnet=tiny-vit)
  SOLO=(--device cpu --zoo llama=tiny-llama)
  COMPILED=eager
else
  DEV=(--device cuda)
  SOLO=(--device cuda)
  COMPILED=compiled
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$LOG"
fi
"$PY" -m traceforge trace gen benchmarks/zoo-sweep.toml -o "$WORK/zoo.parquet" \
  --duration "${ZOO_DURATION:-8}" 2>&1 | tee -a "$LOG"
replay() {  # NAME ARGS...
  local name=$1; shift
  echo "---- $name: $*" | tee -a "$LOG"
  local t0; t0=$(date +%s%N)
  timeout -k 15 "$LIMIT" "$PY" -m traceforge replay "$WORK/zoo.parquet" -o "$WORK/runs/$name" \
    --backend resident --no-progress --timeout 60 --drain-timeout 60 "$@" 2>&1 | tee -a "$LOG"
  echo "$name rc=${PIPESTATUS[0]} wall_ms=$(( ($(date +%s%N) - t0) / 1000000 ))" | tee -a "$WORK/rc.txt" "$LOG"
  echo "MPS daemons/servers left after $name: $("$PY" -m traceforge.gpu.mps_left)" | tee -a "$LOG"
  [ -d "$WORK/runs/$name" ] && cp "$WORK/zoo.parquet" "$WORK/runs/$name/trace.parquet"
}
mkdir -p "$WORK/runs"
for mode in $(echo "$MODES" | tr ',' ' '); do
  replay "$mode" --mode "$mode" "${DEV[@]}"
done
replay exclusive-batch4 --mode exclusive --max-batch 4 --max-wait-ms 2 "${DEV[@]}"
# llama-1b alone (the other models' rows dropped) for the compiled variant
"$PY" benchmarks/trace_model.py "$WORK/zoo.parquet" llama "$WORK/llama.parquet"
echo "---- llama-compiled" | tee -a "$LOG"
t0=$(date +%s%N)
timeout -k 15 "$LIMIT" "$PY" -m traceforge replay "$WORK/llama.parquet" -o "$WORK/runs/llama-$COMPILED" \
  --backend resident --no-progress --timeout 60 --drain-timeout 60 --mode exclusive \
  --compile "$COMPILED" "${SOLO[@]}" 2>&1 | tee -a "$LOG"
echo "llama-$COMPILED rc=${PIPESTATUS[0]} wall_ms=$(( ($(date +%s%N) - t0) / 1000000 ))" | tee -a "$WORK/rc.txt" "$LOG"
"$PY" benchmarks/gpu_zoo_summary.py "$WORK" "$OUT" 2>&1 | tee -a "$LOG"
cp "$LOG" "$OUT"/ 2>/dev/null
tar -C "$WORK" -czf "$OUT/zoo-runs.tar.gz" runs rc.txt 2>/dev/null
cat "$OUT/zoo-summary.md" 2>/dev/null
