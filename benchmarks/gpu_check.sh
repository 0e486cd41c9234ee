#!/usr/bin/env bash
# The resident backend's GPU check, in ONE device call (`make gpu-check`):
#   1. harness overhead: >= 5 alternating passes of a bare loop and the harness (exclusive mode,
#      distilbert-base bs 8 x 128 bucket, concurrency 1 and 2; benchmarks/gpu_serving_check.py)
#   2. the seed study: benchmarks/gpu_study.sh, i.e. `traceforge study studies/seed-study.toml`
#      (distilbert-base + distilgpt2 + mistral-7b resident together, Poisson and Gamma cv 4, the
#      four sharing modes, capacity per mode) in $WORK/seed-study, for what is left of the budget
#      after the other steps; resumable: call again with the same WORK to continue it
#   3. service stability: one trace replayed twice; `traceforge compare` must say `same`
#   4. (PROFILE=1) `traceforge profile` for the simulator
# Then gpu_check.py report writes gpu-check.md (overhead, stability, the study's capacity and
# cells from `traceforge report STUDY_DIR --json`) and prints the short table last.
# Writes everything under $WORK, then copies a few files (and one .tar.gz of the rest) to $OUT.
# Environment: QUICK=1 (shorter overhead and stability steps), SEED_SPEC (default
# studies/seed-study.toml; benchmarks/gpu_final_cpu/seed-study-cpu.toml with GPU_CHECK_DRY=1),
# BUDGET_S (seconds for the whole call, default 570), STUDY_LIMIT_S (the study's share; default:
# what the budget leaves), PROFILE=1, PROFILE_LIMIT, OUT, WORK, PYTHON.
# Never changes card settings; MPS daemons it starts are always quit (see docs/resident.md).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu-check}
WORK=${WORK:-/tmp/traceforge-gpu-check}
QUICK=${QUICK:-0}
BUDGET_S=${BUDGET_S:-570}
if [ "${GPU_CHECK_DRY:-0}" = 1 ]; then  # tiny models on the CPU (gpu_check.py, gpu_serving_check.py)
  SEED_SPEC=${SEED_SPEC:-benchmarks/gpu_final_cpu/seed-study-cpu.toml}
else
  SEED_SPEC=${SEED_SPEC:-studies/seed-study.toml}
fi
# the venv's Python when there is one (`make gpu-check` passes it), else python3
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo "$PWD/.venv/bin/python" || echo python3)}
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check.sh: needs an NVIDIA GPU: nvidia-smi finds none on this machine" >&2
  exit 2
fi
mkdir -p "$OUT" "$WORK"
WORK=$(cd "$WORK" && pwd)  # gpu_study.sh runs from the repository root too, but say it plainly
LOG="$WORK/gpu_check.log"
STUDY_DIR="$WORK/seed-study"
run_step() {  # run_step SECONDS SCRIPT ARGS... : one helper process, bounded in time, logged
  local limit=$1 script=$2; shift 2
  echo "---- $script $* (limit ${limit}s)" | tee -a "$LOG"
  timeout -k 15 "$limit" "$PY" "benchmarks/$script" "$@" --out "$WORK" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || echo "---- step failed: rc=$rc" | tee -a "$LOG"
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total,compute_mode,clocks.sm --format=csv
  "$PY" -m pip list 2>/dev/null | grep -iE '^(torch|transformers|nvidia-ml-py|pyarrow|aiohttp|typer|rich|numpy|uvloop) '
  command -v nvidia-cuda-mps-control; nproc; } 2>&1 | tee -a "$LOG"
run_step 40 gpu_check.py env
run_step 100 gpu_serving_check.py overhead --n "$([ "$QUICK" = 1 ] && echo 100 || echo 400)" \
  --passes 5
# The study gets what is left after the steps behind it: stability (150 s), the report and
# copies (60 s), the profile when asked for, and gpu_study.sh's own kill grace (60 s).
reserve=$(( 150 + 60 + 60 + ( ${PROFILE:-0} == 1 ? ${PROFILE_LIMIT:-170} : 0 ) ))
limit=${STUDY_LIMIT_S:-$(( BUDGET_S - SECONDS - reserve ))}
if [ "$limit" -ge 60 ]; then
  echo "---- gpu_study.sh $SEED_SPEC -> $STUDY_DIR (limit ${limit}s)" | tee -a "$LOG"
  SPEC="$SEED_SPEC" STUDY_DIR="$STUDY_DIR" OUT="$WORK/study" LIMIT_S="$limit" PYTHON="$PY" \
    bash benchmarks/gpu_study.sh 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || echo "---- study step: rc=$rc (130: stopped at its limit; the same command" \
    "with the same WORK resumes it)" | tee -a "$LOG"
else
  echo "---- seed study skipped: only ${limit}s of the budget for it" | tee -a "$LOG"
fi
mps_left=$("$PY" -m traceforge.gpu.mps_left)
echo "${mps_left:-none}" > "$WORK/mps-after-study.txt"
echo "MPS daemons/servers after the study: ${mps_left:-none}" | tee -a "$LOG"
run_step 150 gpu_serving_check.py stability --duration "$([ "$QUICK" = 1 ] && echo 8 || echo 20)"
"$PY" benchmarks/gpu_check.py report --out "$WORK" --study "$STUDY_DIR" \
  --command "QUICK=$QUICK SEED_SPEC=$SEED_SPEC BUDGET_S=$BUDGET_S PROFILE=${PROFILE:-0} bash benchmarks/gpu_check.sh" \
  2>&1 | tee -a "$LOG"
cp "$WORK"/gpu-check.md "$WORK"/env.json "$OUT"/ 2>/dev/null
cp "$WORK"/study/study-report.json "$WORK"/study/study-report.html "$OUT"/ 2>/dev/null
tar -C "$WORK" -czf "$OUT/results.tar.gz" --exclude=./study . 2>/dev/null
# The profile last: if it runs out of time, the study is already in $OUT.
if [ "${PROFILE:-0}" = 1 ]; then
  card=$("$PY" -c "import json;n=json.load(open('$WORK/env.json'))['gpu'].get('name','gpu').lower();print('h200' if 'h200' in n else 'h100' if 'h100' in n else 'gpu')")
  left=$(( BUDGET_S - SECONDS ))
  limit=$(( left < ${PROFILE_LIMIT:-170} ? left : ${PROFILE_LIMIT:-170} ))
  echo "---- traceforge profile -> profile-$card.json (limit ${limit}s)" | tee -a "$LOG"
  if [ "$limit" -gt 60 ]; then
    # --corun-sizes none: three models in three sharing modes would add ~4 min of co-runs by
    # size (2026-12-01); this quick profile keeps its limit, the size tables come from
    # benchmarks/gpu_fidelity.sh.
    timeout -k 10 "$limit" "$PY" -m traceforge profile \
      --models distilbert-base,distilgpt2,mistral-7b --device cuda \
      --batch-sizes 1,8 --seq-lens 64,128 --repeats 5 --warmup 2 --corun-seconds 3 \
      --corun-sizes none --keep-runs "$WORK/profile-runs" -o "$OUT/profile-$card.json" 2>&1 | tee -a "$LOG"
    tar -C "$WORK" -czf "$OUT/profile-runs.tar.gz" profile-runs 2>/dev/null
  else
    echo "---- profile skipped: only ${left}s left" | tee -a "$LOG"
  fi
  echo "MPS daemons/servers after profile: $("${PY:-python3}" -m traceforge.gpu.mps_left)" | tee -a "$LOG"
fi
cp "$LOG" "$OUT"/
ls -la "$OUT"
