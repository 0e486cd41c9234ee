#!/usr/bin/env bash
# Simulator fidelity on held-out mixes, in ONE device call; regenerates
# docs/results/simulator-fidelity-<card>.md:
#   1. traceforge profile (distilbert-base + distilgpt2; exclusive + mps; every bucket of the grid)
#   2. two held-out mixes (bursty with correlated spikes and many shapes; steady Poisson), each
#      time-scaled to 65 % exclusive utilisation by the profile
#   3. each mix replayed in each mode (pre-warmed, graphs), then simulated and compared
# Results under $WORK; the doc, the profile and a tarball of the runs go to $OUT.
# FIDELITY_MODES=exclusive,timeslice,streams (for one) writes
# docs/results/simulator-fidelity-<card>-exclusive-timeslice-streams.md instead.
# Env: MIX_S (trace seconds, default 12), FIDELITY_MODES (modes profiled, replayed and scored,
# default exclusive,mps; any of exclusive,mps,timeslice,streams), MODES_PROFILE (default
# FIDELITY_MODES), MIX_SEED_OFFSET
# (added to the mixes' seeds 21 / 22: fresh held-out draws; default 0), REPEATS (default 2).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu-fidelity}
# A fresh work directory every call: a machine kept warm between calls still holds the last
# call's runs, and the doc step would compare them with this call's new traces (seen on the
# H200, 2026-11-30 20:50 UTC: the profile and every replay refused the used directories and
# the doc reported 1 of 8 from stale runs). A WORK given by the caller must be empty.
if [ -n "${WORK:-}" ]; then
  if [ -e "$WORK" ] && [ -n "$(ls -A "$WORK" 2>/dev/null)" ]; then
    echo "gpu_fidelity.sh: WORK = '$WORK' is not empty; give a new or empty directory" >&2
    exit 2
  fi
else
  WORK=$(mktemp -d /tmp/traceforge-gpu-fidelity.XXXXXX)
fi
PY=${PYTHON:-python3}
export FIDELITY_MODES=${FIDELITY_MODES:-exclusive,mps}
MIX_S=${MIX_S:-12}
mkdir -p "$OUT" "$WORK/runs"
LOG="$WORK/fidelity.log"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG"
card=$("$PY" -c "import torch;n=torch.cuda.get_device_name(0).lower();print('h200' if 'h200' in n else 'h100' if 'h100' in n else 'gpu')" 2>/dev/null || echo gpu)
echo "---- profile" | tee -a "$LOG"
timeout -k 10 "${PROFILE_LIMIT:-170}" "$PY" -m traceforge profile --models distilbert-base,distilgpt2 \
  --device cuda --modes "${MODES_PROFILE:-$FIDELITY_MODES}" --batch-sizes 1,2,4,8 \
  --seq-lens 16,32,64,128,256 --new-tokens 16 --repeats 10 --warmup 1 --corun-seconds 3 \
  --corun-repeats 3 --corun-sets pairs --keep-runs "$WORK/profile-runs" \
  -o "$WORK/profile.json" 2>&1 | tee -a "$LOG"
if [ ! -s "$WORK/profile.json" ]; then
  echo "gpu_fidelity.sh: the profile step made no profile; nothing else is run (log: $LOG)" | tee -a "$LOG" >&2
  cp "$LOG" "$OUT"/ 2>/dev/null
  exit 1
fi
cp "$WORK/profile.json" "$OUT/profile-$card.json" 2>/dev/null
echo "---- held-out traces" | tee -a "$LOG"
"$PY" benchmarks/fidelity_heldout.py traces "$WORK/profile.json" "$WORK" "$MIX_S" 2>&1 | tee -a "$LOG"
# REPEATS (default 2): each mix x mode replayed this many times, modes alternating between
# repeats; the doc judges the simulator against the first replay and reports how far the
# identical repeats differ from it (the measurement's own repeatability).
for rep in $(seq 1 "${REPEATS:-2}"); do
  modes=$(echo "$FIDELITY_MODES" | tr ',' ' ')
  [ $((rep % 2)) -eq 0 ] && modes=$(echo "$modes" | tr ' ' '\n' | tac | tr '\n' ' ')
  suffix=""; [ "$rep" -gt 1 ] && suffix="-r$rep"
  for mix in bursty steady; do
    scale=$("$PY" -c "import json;print(json.load(open('$WORK/mixes.json'))['$mix']['time_scale'])")
    for mode in $modes; do
      echo "---- replay $mix $mode$suffix (time scale $scale)" | tee -a "$LOG"
      timeout -k 10 "${REPLAY_LIMIT:-80}" "$PY" -m traceforge replay "$WORK/$mix.raw.parquet" \
        -o "$WORK/runs/$mix-$mode$suffix" --backend resident --device cuda --mode "$mode" \
        --time-scale "$scale" --warmup 1 --no-progress 2>&1 | tee -a "$LOG"
      cp "$WORK/$mix.raw.parquet" "$WORK/runs/$mix-$mode$suffix/trace.parquet" 2>/dev/null
    done
  done
done
echo "MPS daemons/servers left: $("${PY:-python3}" -m traceforge.gpu.mps_left)" | tee -a "$LOG"
"$PY" benchmarks/fidelity_heldout.py doc "$WORK/profile.json" "$WORK" \
  "$WORK/simulator-fidelity-$card.md" "MIX_S=$MIX_S FIDELITY_MODES=$FIDELITY_MODES MIX_SEED_OFFSET=${MIX_SEED_OFFSET:-0} REPEATS=${REPEATS:-2} bash benchmarks/gpu_fidelity.sh" 2>&1 | tee -a "$LOG"
cp "$WORK/simulator-fidelity-$card.md" "$LOG" "$OUT"/ 2>/dev/null
tar -C "$WORK" -czf "$OUT/fidelity-runs.tar.gz" runs mixes.json bursty.toml steady.toml 2>/dev/null
# the profile's own phase runs (transport, hand-off and co-run timelines), for offline diagnosis
tar -C "$WORK" -czf "$OUT/profile-runs.tar.gz" profile-runs 2>/dev/null
# The new doc replaces the generated part of docs/results/...; the per-call history below it
# (from the first "## Calls of" heading on, written by hand) is kept. No new doc (the doc step
# failed): the page is left as it was.
# Modes other than the default (exclusive,mps) go to a page of their own, named by the modes:
# docs/results/simulator-fidelity-<card>-<mode>-<mode>....md.
if [ "$FIDELITY_MODES" = "exclusive,mps" ]; then page="$card"; else page="$card-$(echo "$FIDELITY_MODES" | tr ',' '-')"; fi
if [ -d docs/results ] && [ -s "$WORK/simulator-fidelity-$card.md" ]; then
  dest="docs/results/simulator-fidelity-$page.md"
  { cat "$WORK/simulator-fidelity-$card.md"
    [ -f "$dest" ] && grep -q '^## Calls of ' "$dest" && { echo; sed -n '/^## Calls of /,$p' "$dest"; }
  } > "$dest.tmp" 2>/dev/null && mv "$dest.tmp" "$dest"
fi
tail -30 "$WORK/simulator-fidelity-$card.md"
