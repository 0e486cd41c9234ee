#!/usr/bin/env bash
# The issue-13 "new user" workflow on a mix no profile or fidelity decision used
# (benchmarks/newuser-mix.toml: bert-base + gpt2 + vit-base, bursty), in ONE device call:
#   1. traceforge profile --models bert-base,gpt2,vit-base (defaults, co-runs trimmed to fit)
#   2. the mix, time-scaled to TARGET_UTIL exclusive utilisation by the profile
#   3. replayed in each of MODES (defaults: graphs, buckets, pre-warm), each REPEATS times
#   4. python -m traceforge.simulate.fidelity on every run (p50/p99 error per model x mode)
# then (LLAMA_COMPILED=1) llama-1b alone with --compile compiled on zoo-sweep's llama rows.
# Results under $WORK; the fidelity table, the profile and a tarball of the runs go to $OUT.
# Env: OUT, PYTHON, MODES (default exclusive,mps), REPEATS (1), TARGET_UTIL (0.6), MIX_S (12),
# MIX_SEED (default: the spec's 31; another seed is a fresh held-out draw),
# PROFILE_LIMIT (240 s), REPLAY_LIMIT (90 s), LLAMA_COMPILED (1), LLAMA_LIMIT (150 s), GPU_NEWUSER_DRY=1 (tiny
# models on the CPU: the plumbing).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${OUT:-out/gpu-newuser}
MODES=${MODES:-exclusive,mps}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/traceforge-gpu-newuser.XXXXXX)
LOG="$WORK/newuser.log"
if [ "${GPU_NEWUSER_DRY:-0}" = 1 ]; then
  PMODELS=tiny-bert,tiny-gpt2,tiny-vit; PDEV=cpu
  ZOO=(--zoo bert=tiny-bert,gpt=tiny-gpt2,vit=tiny-vit); DEV=(--device cpu)
  PEXTRA=(--batch-sizes 1,4 --seq-lens 32,128 --repeats 3 --warmup 1 --corun-seconds 1 --corun-repeats 1 --corun-sizes none)
  COMPILED=eager; SOLO=(--device cpu --zoo llama=tiny-llama)
else
  PMODELS=bert-base,gpt2,vit-base; PDEV=cuda
  ZOO=(); DEV=(--device cuda)
  PEXTRA=(--repeats 5 --corun-sets pairs --corun-seconds 2 --corun-repeats 2 --corun-sizes 4 --corun-size-repeats 1)
  COMPILED=compiled; SOLO=(--device cuda)
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG"
fi
echo "---- profile" | tee -a "$LOG"
t0=$(date +%s)
timeout -k 10 "${PROFILE_LIMIT:-240}" "$PY" -m traceforge profile --models "$PMODELS" \
  --device "$PDEV" --modes "$MODES" "${PEXTRA[@]}" --keep-runs "$WORK/profile-runs" \
  -o "$WORK/profile.json" 2>&1 | tee -a "$LOG"
echo "profile rc=${PIPESTATUS[0]} $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
echo "MPS daemons/servers left: $("$PY" -m traceforge.gpu.mps_left)" | tee -a "$LOG"
"$PY" -m traceforge trace gen benchmarks/newuser-mix.toml -o "$WORK/mix.parquet" \
  --duration "${MIX_S:-12}" ${MIX_SEED:+--seed "$MIX_SEED"} 2>&1 | tee -a "$LOG"
if [ -s "$WORK/profile.json" ]; then
  cp "$WORK/profile.json" "$OUT/profile-newuser.json"
  # the time scale that puts the mix at TARGET_UTIL exclusive utilisation (the profile's
  # service times; fidelity_heldout.py's measure)
  SCALE=$("$PY" - "$WORK" "${TARGET_UTIL:-0.6}" "${ZOO[@]}" <<'PY'
import sys, tempfile
from pathlib import Path
import numpy as np
from traceforge.analyze.rundata import load_run
from traceforge.simulate import simulate
work, target = Path(sys.argv[1]), float(sys.argv[2])
zoo = dict(kv.split("=") for kv in sys.argv[4].split(",")) if len(sys.argv) > 4 else None
with tempfile.TemporaryDirectory() as tmp:
    simulate(work / "mix.parquet", Path(tmp) / "s", profile=work / "profile.json",
             mode="exclusive", cold_start=False, zoo=zoo)
    run = load_run(Path(tmp) / "s")
    span = float(run.col("scheduled_ns").max() - run.col("scheduled_ns").min())
    print(f"{float(np.nansum(run.service)) / span / target:.4f}")
PY
)
else
  SCALE=4
  echo "no profile: time scale $SCALE (a guess), no fidelity table" | tee -a "$LOG"
fi
echo "time scale $SCALE" | tee -a "$LOG"
mkdir -p "$WORK/runs"
RUNS=()
for rep in $(seq 1 "${REPEATS:-1}"); do
  for mode in $(echo "$MODES" | tr ',' ' '); do
    name="$mode"; [ "$rep" -gt 1 ] && name="$mode-r$rep"
    echo "---- replay $name" | tee -a "$LOG"
    timeout -k 10 "${REPLAY_LIMIT:-90}" "$PY" -m traceforge replay "$WORK/mix.parquet" \
      -o "$WORK/runs/$name" --backend resident --mode "$mode" "${DEV[@]}" "${ZOO[@]}" \
      --time-scale "$SCALE" --warmup 1 --no-progress 2>&1 | tee -a "$LOG"
    echo "MPS daemons/servers left: $("$PY" -m traceforge.gpu.mps_left)" | tee -a "$LOG"
    # the trace beside the run: the tarball's runs score anywhere (fidelity looks there first)
    [ -d "$WORK/runs/$name" ] && cp "$WORK/mix.parquet" "$WORK/runs/$name/trace.parquet"
    [ -f "$WORK/runs/$name/run.json" ] && RUNS+=("$WORK/runs/$name")
  done
done
if [ -s "$WORK/profile.json" ] && [ "${#RUNS[@]}" -gt 0 ]; then
  echo "---- fidelity" | tee -a "$LOG"
  # a profile cut short (PROFILE_LIMIT) lacks its last modes: score the runs it can
  # (fidelity refuses the whole set otherwise)
  HAVE=$("$PY" -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))["modes"]))' \
    "$WORK/profile.json")
  SCORED=()
  for r in "${RUNS[@]}"; do
    m=$(basename "$r"); m=${m%-r*}
    if [[ " $HAVE " == *" $m "* ]]; then SCORED+=("$r")
    else echo "not scored: $r (mode $m not in the profile: $HAVE)" | tee -a "$LOG"; fi
  done
  RUNS=("${SCORED[@]}")
fi
if [ -s "$WORK/profile.json" ] && [ "${#RUNS[@]}" -gt 0 ]; then
  "$PY" -m traceforge.simulate.fidelity --profile "$WORK/profile.json" "${RUNS[@]}" \
    -o "$OUT/fidelity-newuser.md" 2>&1 | tee -a "$LOG"
  "$PY" -m traceforge.simulate.fidelity --profile "$WORK/profile.json" --oracle "${RUNS[@]}" \
    2>&1 | tee -a "$LOG" | tail -8
fi
if [ "${LLAMA_COMPILED:-1}" = 1 ]; then
  "$PY" -m traceforge trace gen benchmarks/zoo-sweep.toml -o "$WORK/zoo.parquet" --duration 6 >/dev/null 2>&1
  "$PY" benchmarks/trace_model.py "$WORK/zoo.parquet" llama "$WORK/llama.parquet"
  echo "---- llama-1b --compile $COMPILED" | tee -a "$LOG"
  t0=$(date +%s)
  timeout -k 10 "${LLAMA_LIMIT:-150}" "$PY" -m traceforge replay "$WORK/llama.parquet" \
    -o "$WORK/runs/llama-$COMPILED" --backend resident --mode exclusive --compile "$COMPILED" \
    "${SOLO[@]}" --no-progress 2>&1 | tee -a "$LOG"
  echo "llama-$COMPILED rc=${PIPESTATUS[0]} $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
  echo "llama-$COMPILED rc=0" > "$WORK/rc.txt"
  "$PY" benchmarks/gpu_zoo_summary.py "$WORK" "$WORK/zsum" 2>&1 | tee -a "$LOG" | tail -4
fi
cp "$LOG" "$OUT"/ 2>/dev/null
tar -C "$WORK" -czf "$OUT/newuser-runs.tar.gz" runs profile-runs mix.parquet 2>/dev/null
echo "---- fidelity table (p50 / p99 error per model x mode; target 5 % / 10 %)"
cat "$OUT/fidelity-newuser.md" 2>/dev/null
