#!/usr/bin/env bash
# The seed study on a GPU host: `traceforge study studies/seed-study.toml`, then the study report
# and a short table (capacity per mix and mode; ok requests per model per cell) printed last.
#
# A full seed study takes longer than one device call, so this script is resumable: it stops the
# study with SIGINT after LIMIT_S seconds (study.json stays consistent, exit 130) and the next
# call continues it with --resume, as long as STUDY_DIR is still there (keep the machine warm, or
# carry the directory). Files for the record go to $OUT.
# Environment: SPEC (default studies/seed-study.toml), STUDY_DIR (default out/seed-study),
# LIMIT_S (default 540), OUT (default out/gpu-study), STUDY_ARGS (extra flags, e.g.
# "--executor local --gpus 0,1": one process per GPU, docs/scale.md), PYTHON.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
SPEC=${SPEC:-studies/seed-study.toml}
STUDY_DIR=${STUDY_DIR:-out/seed-study}
LIMIT_S=${LIMIT_S:-540}
OUT=${OUT:-out/gpu-study}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
resume=(); [ -f "$STUDY_DIR/study.json" ] && resume=(--resume)
"$PY" -m traceforge study "$SPEC" -o "$STUDY_DIR" --dry-run ${STUDY_ARGS:-}
echo "---- traceforge study $SPEC -o $STUDY_DIR ${resume[*]} (limit ${LIMIT_S}s)"
timeout -s INT -k 60 "$LIMIT_S" "$PY" -m traceforge study "$SPEC" -o "$STUDY_DIR" \
  "${resume[@]}" --no-progress ${STUDY_ARGS:-}
rc=$?
echo "---- study exit code $rc (0 complete, 1 some cell failed, 130 stopped: call again to resume)"
cp "$STUDY_DIR/study.json" "$OUT/" 2>/dev/null
if [ "$rc" = 0 ] || [ "$rc" = 1 ]; then
  "$PY" -m traceforge report "$STUDY_DIR" --json > "$OUT/study-report.json" \
    || { echo "---- traceforge report STUDY_DIR failed"; rm -f "$OUT/study-report.json"; }
  "$PY" -m traceforge report "$STUDY_DIR" --html "$OUT/study-report.html" > /dev/null 2>&1 || true
  tar -C "$STUDY_DIR" -czf "$OUT/seed-study.tar.gz" . 2>/dev/null
fi
"$PY" - "$STUDY_DIR" <<'PYEOF'
import json, sys
from pathlib import Path

import pyarrow.compute as pc

from traceforge.record import read_timeline

root = Path(sys.argv[1])
data = json.loads((root / "study.json").read_text())
print(f"study {data['name']}: {data['status']}, cells {data['counts']}")
low = []
for cell in data["cells"]:
    if cell["status"] != "complete" or cell["kind"] != "grid":
        continue
    table = read_timeline(root / cell["run_dir"])
    ok = table.filter(pc.equal(table.column("status"), "ok"))
    counts = pc.value_counts(ok.column("model")).to_pylist()
    worst = min((c["counts"] for c in counts), default=0)
    if worst < 500:
        low.append((cell["name"], worst))
low.sort(key=lambda x: x[1])
print(f"grid cells with < 500 ok requests for some model: {len(low)}"
      + (f" (fewest: {low[:4]})" if low else ""))
print(f"{'mix':<10}{'config':<28}{'rep':>4}{'capacity':>10}{'bracket':>20}  probes")
for cap in data["capacity"]:
    config = ",".join(f"{k}={v}" for k, v in cap["config"].items())
    load = "-" if cap["load"] is None else f"{cap['load']:.3g}"
    bracket = f"{cap['low']}..{cap['high']}"
    print(f"{cap['mix'] + ('/pre' if cap['kind'] == 'prescreen' else ''):<10}{config:<28}"
          f"{cap['repeat']:>4}{load:>10}{bracket:>20}  {len(cap['probes'])}")
PYEOF
exit "$rc"
