"""How often the study report calls a best configuration's lead significant: false alarms when
two configurations are identical, power when one is 20 % slower.

Two configurations of the simulated null backend (M/M/1, 5 ms mean service, utilisation 0.6,
1500 requests per cell), 3 repeats each, alpha = 0.01; N independent trials per case (trial i
uses trace seeds 10 000·i + r). "same seeds": both configurations ran repeat r on the same trace
seed (the study engine's design; the repeat test is paired); "different seeds": Welch.

Run: PYTHONPATH=. python benchmarks/study_significance.py [N]   (docs/study-report.md, N = 100)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = [("identical configurations, different seeds (Welch)", 5.0, False),
         ("service 20 % slower, same seeds (paired)", 6.0, True),
         ("service 20 % slower, different seeds (Welch)", 6.0, False)]


def trial(i: int, service_b: float, paired: bool, tmp: Path) -> dict[str, bool]:
    from study_helpers import Config, write_study

    from traceforge.analyze.study import build_study_report

    a = Config({"mode": "x"}, {"servers": 1, "service_ms": 5.0}, seed_offset=10_000 * i)
    b = Config({"mode": "y"}, {"servers": 1, "service_ms": service_b},
               seed_offset=10_000 * i + (0 if paired else 5_000))
    root = write_study(tmp / f"t{i}", mixes={"m": {"a": {"rate": 120.0, "slo_ms": 30.0}}},
                       configs=[a, b], loads=[1.0], repeats=3, requests=1500)
    report = build_study_report(root)
    shutil.rmtree(root)
    return {b["metric"]: b["lead"]["significant"] for b in report["best"] if b["model"] == "a"}


def main(n: int = 100) -> dict:
    sys.path.insert(0, str(HERE.parent / "tests"))
    out = {}
    for label, service_b, paired in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            results = [trial(i, service_b, paired, Path(tmp)) for i in range(n)]
        out[label] = {metric: sum(r[metric] for r in results) for metric in results[0]}
        print(f"{label}: significant p99 lead {out[label]['p99_ms']}/{n}, goodput lead "
              f"{out[label]['goodput_rps']}/{n}", flush=True)
    return out


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
