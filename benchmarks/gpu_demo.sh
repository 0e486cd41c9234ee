#!/usr/bin/env bash
# On a CUDA machine: `traceforge demo` as a GPU user gets it (real zoo models under MPS), then the
# gpu-marked tests, then a check that no MPS daemon is left. Results under $OUT (default out/).
# Carries matplotlib's wheels from .whl/ where the machine lacks it (the lent GPU box does).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu-demo}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ! python3 -c "import matplotlib" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -m pip install -q --no-deps -e . >/dev/null 2>&1 || export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
date -u +%F | tee -a "$OUT/gpu.txt"
echo "---- traceforge demo (GPU)"
timeout -k 15 300 python3 -m traceforge demo -o /tmp/gpu-demo 2>&1 | tee "$OUT/demo.log"
echo "demo rc=${PIPESTATUS[0]}"
d=$(ls -d /tmp/gpu-demo/*/ 2>/dev/null | tail -1)
[ -n "$d" ] && cp "$d/report.json" "$OUT/" && tar -C "$d" -czf "$OUT/demo-run.tar.gz" .
echo "MPS processes after demo: $("${PY:-python3}" -m traceforge.gpu.mps_left)"
echo "---- pytest -m gpu"
timeout -k 15 180 python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tail -15 | tee "$OUT/pytest-gpu.log"
echo "MPS processes at the end: $("${PY:-python3}" -m traceforge.gpu.mps_left)"
