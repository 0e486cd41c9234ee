#!/usr/bin/env bash
# The multi-GPU study check: studies/multi-gpu-study.toml (4 resident cell groups on CUDA) once
# with `--executor local --gpus 0` and once with `--gpus 0,1`; prints both wall times and their
# ratio (target: two GPUs <= 55 % of one), runs `traceforge compare` between every pair of
# matching cells (verdicts should be `same`), and ends with a short table. On a host with one
# GPU it runs the one-GPU half, says so, and skips the rest. Files for the record go to $OUT.
# Environment: SPEC (default studies/multi-gpu-study.toml), OUT (default out/gpu-multi), PYTHON,
# NGPU (the number of GPUs to assume; default: nvidia-smi's count), MULTI_WORK (a folder to keep
# the two study directories in; default: a temporary one, removed).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
SPEC=${SPEC:-studies/multi-gpu-study.toml}
OUT=${OUT:-out/gpu-multi}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if [ -n "${MULTI_WORK:-}" ]; then  # keep the study directories there (gpu_final.sh tars them)
  WORK=$MULTI_WORK; mkdir -p "$WORK"
else
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
fi
# NGPU overrides the count (benchmarks/gpu_final.sh tests this script's plumbing on the CPU)
ngpu=${NGPU:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)}
echo "---- GPUs visible: ${ngpu:-0}"
nvidia-smi -L 2>/dev/null | tee "$OUT/gpus.txt"
if [ "${ngpu:-0}" -lt 1 ]; then
  echo "---- no GPU: nothing to check"; exit 0
fi

run_study() {  # $1 = name, $2 = gpus
  local t0 t1 rc
  t0=$(date +%s.%N)
  "$PY" -m traceforge study "$SPEC" -o "$WORK/$1" --executor local --gpus "$2" --no-progress \
    > "$OUT/$1.log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  echo "$t0 $t1" | awk '{printf "%.1f\n", $2 - $1}' > "$WORK/$1.wall"
  echo "$t0 $t1" > "$WORK/$1.times"
  cp "$WORK/$1/study.json" "$OUT/$1.study.json" 2>/dev/null
  echo "---- study --gpus $2: exit $rc, wall $(cat "$WORK/$1.wall") s (log: $OUT/$1.log)"
  tail -3 "$OUT/$1.log"
}

run_study one-gpu 0
if [ "$ngpu" -lt 2 ]; then
  echo "---- only one GPU on this host: the two-GPU half (--gpus 0,1) is skipped"
else
  run_study two-gpu 0,1
fi

"$PY" - "$WORK" "$OUT" <<'PYEOF'
import json, subprocess, sys
from pathlib import Path

work, out = Path(sys.argv[1]), Path(sys.argv[2])
wall = {n: float((work / f"{n}.wall").read_text()) for n in ("one-gpu", "two-gpu")
        if (work / f"{n}.wall").exists()}
studies = {n: json.loads((work / n / "study.json").read_text()) for n in wall
           if (work / n / "study.json").exists()}
rows, verdicts = [], {}
if len(studies) == 2:
    one = {c["name"]: c for c in studies["one-gpu"]["cells"]}
    for cell in studies["two-gpu"]["cells"]:
        a = one.get(cell["name"])
        if not a or a["status"] != "complete" or cell["status"] != "complete":
            rows.append((cell["name"], a and a.get("where"), cell.get("where"), "not complete"))
            continue
        res = subprocess.run([sys.executable, "-m", "traceforge", "compare",
                              str(work / "one-gpu" / a["run_dir"]),
                              str(work / "two-gpu" / cell["run_dir"]), "--json"],
                             capture_output=True, text=True)
        try:
            models = json.loads(res.stdout)["models"]
            verdict = ",".join(f"{m}:{v['verdict']}(p99 x{v.get('p99_ratio')})"
                               for m, v in models.items())
            verdicts[cell["name"]] = {m: v["verdict"] for m, v in models.items()}
        except (ValueError, KeyError):
            verdict = f"compare failed: {res.stderr.strip()[-200:]}"
        rows.append((cell["name"], a.get("where"), cell.get("where"), verdict))
summary = {"wall_s": wall, "status": {n: s["status"] for n, s in studies.items()},
           "ratio": (wall["two-gpu"] / wall["one-gpu"]) if len(wall) == 2 else None,
           "verdicts": verdicts}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"{'cell':<34}{'1 GPU: where':<26}{'2 GPUs: where':<26}compare (B = 2 GPUs)")
for name, wa, wb, verdict in rows:
    print(f"{name:<34}{str(wa).split(' (')[0]:<26}{str(wb).split(' (')[0]:<26}{verdict}")
all_v = [v for d in verdicts.values() for v in d.values()]
print(f"compare verdicts: {sum(v == 'same' for v in all_v)} same of {len(all_v)}")
from datetime import datetime


def since(t0: float, iso: str | None) -> str:
    return "-" if not iso else f"{datetime.fromisoformat(iso).timestamp() - t0:.1f}"


for n, s in studies.items():
    print(f"study {n}: {s['status']}, cells {s['counts']}, wall {wall[n]:.1f} s")
    # where the start and the end went, in s from the command's start
    t0, t1 = map(float, (work / f"{n}.times").read_text().split())
    cells = s["cells"]
    first = min((c["started_at"] for c in cells if c.get("started_at")), default=None)
    last = max((c["finished_at"] for c in cells if c.get("finished_at")), default=None)
    workers = (s.get("executor_info") or {}).get("workers", [])
    print(f"  study.json created {since(t0, s['created_at'])} s; first cell started "
          f"{since(t0, first)} s; last cell finished {since(t0, last)} s; command ended "
          f"{t1 - t0:.1f} s; executor close {(s.get('executor_info') or {}).get('close_s')} s")
    for w in workers:
        print(f"  worker gpu {w['gpu']}: spawn {w['spawn_s']} s, ready after {w['ready_after_s']}"
              f" s, phases {w['phases']}")
    for c in cells:
        print(f"  {c['name']:<30} {since(t0, c.get('started_at'))} -> "
              f"{since(t0, c.get('finished_at'))} s ({c.get('where', '?').split(' (')[0]})")
if summary["ratio"] is not None:
    print(f"two GPUs / one GPU wall time: {summary['ratio']:.1%} (target <= 55 %)")
else:
    print("two GPUs / one GPU wall time: n/a (one half did not run)")
PYEOF
