"""Run every benchmarks/bench_*.py (each exposes main() -> dict) and save the results.

Each benchmark measures against a baseline in the same run and prints its own table; this
script collects their dicts into benchmarks/results/latest.json with the machine it ran on.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    only = set(argv)
    results: dict[str, object] = {
        "date": dt.datetime.now(dt.UTC).isoformat(),
        "machine": {"node": platform.node(), "cpus": os.cpu_count(),
                    "python": sys.version.split()[0], "processor": platform.processor()},
    }
    failed = []
    for path in sorted(HERE.glob("bench_*.py")):
        name = path.stem.removeprefix("bench_")
        if only and name not in only:
            continue
        print(f"\n=== {path.name}", flush=True)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        t0 = time.perf_counter()
        try:
            spec.loader.exec_module(module)
            results[name] = module.main()
        except Exception as exc:  # one broken benchmark must not hide the others' numbers
            failed.append(name)
            results[name] = {"error": repr(exc)}
            print(f"FAILED: {exc!r}", file=sys.stderr)
        print(f"({path.name}: {time.perf_counter() - t0:.1f} s)", flush=True)
    out = HERE / "results" / "latest.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nresults: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
