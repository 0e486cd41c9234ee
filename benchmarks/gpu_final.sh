#!/usr/bin/env bash
# The final GPU call (issues 9, 11, 13), one script in <= BUDGET_S seconds (default 540), on the
# lent 2-GPU kind (nvidia-h200-x2), from the repository root after `pip install --no-deps -e .`:
#   1. issue 9: the seed study, `traceforge study studies/seed-study.toml --executor local
#      --gpus 0,1` (8 groups = 2 mixes x 4 sharing modes, >= 500 ok requests per model per grid
#      cell, capacity per mode from a simulator prescreen + <= 3 GPU probes), then its report;
#   2. issue 11: benchmarks/gpu_multi.sh on studies/multi-gpu-short.toml: the same study with
#      --gpus 0 and --gpus 0,1 (wall ratio, target <= 55 %; every cell compared, verdict `same`);
#      on a one-GPU host only the one-GPU half runs (said so);
#   3. issue 13 (only if >= STEP3_MIN_S is left): the service-stability check (one trace
#      replayed twice, `traceforge compare` verdict `same`).
# Each step runs under `timeout -s INT` (the study stops cleanly: study.json stays consistent and
# finished cells are kept) with a kill fallback; every process a step left behind is found by an
# environment tag and ended by pid; after each step no live MPS process may be left (zombies do not count)
# (MPS daemons of the resident backend are asked to quit, then ended). Results go to $OUT (at
# most 8 files): gpu_final.log, summary.txt, summary.json, seed-study.tar.gz (STUDY_DIR with
# report.json), multi-gpu.tar.gz, stability.tar.gz, env.txt. The summary table is printed last.
#
# Environment: OUT (default out/gpu-final), PYTHON (default python3), BUDGET_S (540), STEP1_S
# (320), STEP2_S (230: studies/multi-gpu-short.toml took 215 s on 2026-11-30), STEP3_S (100), STEP3_MIN_S (110), GPUS (default 0,1 with two GPUs, else
# 0), SEED_SPEC, MULTI_SPEC, GPU_FINAL_CPU=1 (a CPU-sized variant that tests this script's
# plumbing in ~3 minutes: tiny models on the CPU, benchmarks/gpu_final_cpu/*.toml).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${OUT:-out/gpu-final}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
T0=$(date +%s)
BUDGET_S=${BUDGET_S:-540}
CPU=${GPU_FINAL_CPU:-0}
if [ "$CPU" = 1 ]; then
  SEED_SPEC=${SEED_SPEC:-benchmarks/gpu_final_cpu/seed-study-cpu.toml}
  MULTI_SPEC=${MULTI_SPEC:-benchmarks/gpu_final_cpu/multi-cpu.toml}
  NGPU=${NGPU:-2}
  export GPU_CHECK_DRY=1  # gpu_serving_check.py: tiny models, device cpu, eager
  STAB_DURATION=${STAB_DURATION:-3}
else
  SEED_SPEC=${SEED_SPEC:-studies/seed-study.toml}
  MULTI_SPEC=${MULTI_SPEC:-studies/multi-gpu-short.toml}
  NGPU=${NGPU:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)}
  STAB_DURATION=${STAB_DURATION:-10}
fi
NGPU=${NGPU:-0}
if [ -z "${GPUS:-}" ]; then
  if [ "$NGPU" -ge 2 ]; then GPUS=0,1; else GPUS=0; fi
fi
WORK=$(mktemp -d /tmp/gpu-final.XXXXXX)
STEPS="$WORK/steps.tsv"
: > "$STEPS"

left() { echo $(( BUDGET_S - ($(date +%s) - T0) )); }
stamp() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*"; }

# Processes still alive whose environment carries this step's tag (they were started by it).
tagged_pids() {
  local tag=$1 p
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$p" = "$$" ] && continue
    { tr '\0' '\n' < "/proc/$p/environ"; } 2>/dev/null | grep -qx "GPU_FINAL_STEP=$tag" && echo "$p"
  done
}

# live MPS processes only: an exited daemon reparented to a pid 1 that does not reap stays a zombie
mps_pids() { "${PY:-python3}" -c 'from traceforge.gpu.mps import mps_processes as m; print(" ".join(str(p["pid"]) for p in m()))' 2>/dev/null; }

# After a step: ask MPS daemons it started to quit, end its leftover processes by pid, and say
# what MPS processes remain (there should be none).
cleanup_step() {
  local tag=$1 pids p pipe
  for p in $(tagged_pids "$tag"); do
    if { tr '\0' ' ' < "/proc/$p/cmdline"; } 2>/dev/null | grep -q 'nvidia-cuda-mps-control'; then
      pipe=$({ tr '\0' '\n' < "/proc/$p/environ"; } 2>/dev/null | sed -n 's/^CUDA_MPS_PIPE_DIRECTORY=//p')
      stamp "step $tag left MPS control daemon pid $p (pipe ${pipe:-default}): asking it to quit"
      echo quit | CUDA_MPS_PIPE_DIRECTORY=${pipe:-} timeout 10 nvidia-cuda-mps-control || true
    fi
  done
  sleep 1
  pids=$(tagged_pids "$tag" | tr '\n' ' ')
  if [ -n "${pids// /}" ]; then
    stamp "step $tag left processes: $pids -> SIGTERM"
    for p in $pids; do ps -o pid=,args= -p "$p" 2>/dev/null | cut -c1-150; kill -TERM "$p" 2>/dev/null; done
    sleep 3
    for p in $(tagged_pids "$tag"); do kill -KILL "$p" 2>/dev/null && stamp "killed $p"; done
  fi
  local mps
  mps=$(mps_pids)
  if [ -n "$mps" ]; then
    sleep 3  # an exiting daemon can linger a moment
    mps=$(mps_pids)
  fi
  stamp "after step $tag: live MPS processes -> ${mps:-none}; $("${PY:-python3}" -m traceforge.gpu.mps_left)"
  [ -n "$mps" ] && ps -o pid=,etimes=,args= -p "${mps// /,}" 2>/dev/null
  MPS_LEFT=${mps:-}
}

# run_step NAME LIMIT_S GRACE_S CMD...: the command under timeout -s INT, tagged; SIGKILL
# GRACE_S later (after SIGINT a study lands what finished, stops its backends — MPS daemons
# quit — and joins its GPU workers, up to 30 s each in traceforge/study/multi_gpu.py).
run_step() {
  local name=$1 limit=$2 grace=$3; shift 3
  local t rc
  t=$(date +%s)
  if [ "$limit" -lt 10 ]; then
    stamp "==== step $name skipped: ${limit}s left for it"
    printf '%s\t%s\t%s\t%s\n' "$name" "skipped" 0 "" >> "$STEPS"
    return 0
  fi
  stamp "==== step $name (limit ${limit}s): $*"
  GPU_FINAL_STEP=$name timeout -s INT -k "$grace" "$limit" "$@"
  rc=$?
  [ "$rc" = 124 ] && stamp "step $name reached its ${limit}s limit (SIGINT sent)"
  cleanup_step "$name"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t ))" "${MPS_LEFT:-}" >> "$STEPS"
  stamp "==== step $name: exit $rc after $(( $(date +%s) - t ))s; $(left)s of the budget left"
  return 0
}

limit_of() {  # limit_of WANTED RESERVE: WANTED, or what is left minus RESERVE, whichever is less
  local l=$(( $(left) - $2 ))
  [ "$l" -gt "$1" ] && l=$1
  echo "$l"
}

main() {
  stamp "gpu_final: budget ${BUDGET_S}s, GPUs $NGPU (--gpus $GPUS), CPU variant $CPU, out $OUT"
  {
    date -u; uname -a
    nvidia-smi --query-gpu=index,name,driver_version,memory.total,compute_mode,clocks.sm \
      --format=csv 2>&1 || echo "no nvidia-smi"
    "$PY" - <<'PYEOF' 2>&1
import platform
from importlib.metadata import PackageNotFoundError, version

def v(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return "missing"

# package metadata only: importing torch here would cost seconds of the budget
print("python", platform.python_version(), "torch", v("torch"), "transformers",
      v("transformers"), "traceforge", v("traceforge"), "nvidia-ml-py", v("nvidia-ml-py"))
PYEOF
    git log -1 --format='commit %H %s' 2>/dev/null || echo "commit: not a git checkout"
    echo "MPS processes at start: $(mps_pids)"
  } > "$OUT/env.txt"
  cat "$OUT/env.txt"

  # ---- step 1: the seed study (issue 9)
  local seed="$WORK/seed-study"
  # (the plan: `traceforge study SPEC -o DIR --dry-run`; not run here, it costs seconds of CUDA
  # start-up. The spec's header states it.)
  run_step seed "$(limit_of "${STEP1_S:-320}" 190)" 45 \
    "$PY" -m traceforge study "$SEED_SPEC" -o "$seed" --executor local --gpus "$GPUS" \
    --no-progress
  if [ -f "$seed/study.json" ]; then
    timeout -k 5 40 "$PY" -m traceforge report "$seed" --json > "$seed/report.json" 2> "$WORK/report.err" \
      || { stamp "traceforge report STUDY_DIR --json failed: $(tail -c 300 "$WORK/report.err")"; rm -f "$seed/report.json"; }
    tar -C "$WORK" -czf "$OUT/seed-study.tar.gz" seed-study
    if [ "$(stat -c %s "$OUT/seed-study.tar.gz")" -gt 15000000 ]; then  # 16 MiB a file comes back
      stamp "seed-study.tar.gz over 15 MB: packing it without the timelines of probe cells"
      tar -C "$WORK" -czf "$OUT/seed-study.tar.gz" --exclude='seed-study/cells/*__cap__*/timeline' \
        --exclude='seed-study/cells/*__pre__*' seed-study
    fi
  fi

  # ---- step 2: one GPU vs two GPUs (issue 11)
  local multi="$WORK/multi-gpu"
  mkdir -p "$multi/out"
  run_step multi "$(limit_of "${STEP2_S:-230}" 35)" 20 \
    env SPEC="$MULTI_SPEC" OUT="$multi/out" MULTI_WORK="$multi/studies" NGPU="$NGPU" PYTHON="$PY" \
    bash benchmarks/gpu_multi.sh
  tar -C "$WORK" -czf "$OUT/multi-gpu.tar.gz" multi-gpu 2>/dev/null

  # ---- step 3: service stability (issue 13), only if there is time for it
  local stab="$WORK/stability"
  if [ "$(left)" -ge "${STEP3_MIN_S:-110}" ]; then
    mkdir -p "$stab"
    run_step stability "$(limit_of "${STEP3_S:-100}" 35)" 20 \
      "$PY" benchmarks/gpu_serving_check.py stability --out "$stab" --duration "$STAB_DURATION"
    tar -C "$WORK" -czf "$OUT/stability.tar.gz" stability 2>/dev/null
  else
    stamp "step stability skipped: $(left)s left (needs ${STEP3_MIN_S:-110}s)"
  fi

  stamp "MPS processes at the end: $(mps_pids)"
  "$PY" benchmarks/gpu_final_summary.py --study "$seed" --multi "$multi/out/summary.json" \
    --stability "$stab/stability.json" --steps "$STEPS" --json "$OUT/summary.json" \
    > "$OUT/summary.txt" 2>&1
  stamp "done in $(( $(date +%s) - T0 ))s"
  cat "$OUT/summary.txt"
}

main 2>&1 | tee "$OUT/gpu_final.log"
rm -rf "$WORK"
