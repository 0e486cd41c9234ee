"""Derive the seed study's prescreen profile for the compiled (CUDA graphs) resident backend.

Writes ``studies/profiles/h200-graphs-derived.json``, the ``[capacity] profile`` of
studies/seed-study.toml (a path: run the study from the repository root). It is assembled, not
measured in one run, so it is not one of the shipped profiles (profiles/README.md: those are
each one ``traceforge profile`` command):

- distilbert-base and distilgpt2: copied from ``docs/results/h200-buckets-profile.json``
  (``traceforge profile`` on the H200 with ``--compile graphs``, 2026-11-30; exclusive and mps,
  including the measured mps co-run slowdowns of that pair);
- mistral-7b: the graphs-path numbers of the same day's decode check
  (``benchmarks/gpu_serving_check.py decode``, docs/results/serving-h200.md): 9.30 ms for the
  first token after a 128-token prompt, 7.33 ms per further token, batch 1. The same values are
  used at seq 64 (the prompt is weight-streaming bound at these lengths);
- modes ``timeslice`` and ``streams`` and every co-run pair with mistral-7b were not measured on
  the compiled backend. They get a stated prior, not a measurement: the GPU is shared evenly
  among the busy models (slowdown 2 for a pair, 3 for the three together, i.e. the total
  throughput of ``exclusive`` with processor sharing instead of FIFO across models).

The prescreen only chooses where the GPU probes start; the capacity itself comes from the GPU
probes (docs/studies.md, "Prescreen"). Re-run ``traceforge profile --models
distilbert-base,distilgpt2,mistral-7b --modes exclusive,timeslice,mps,streams`` on the card to
replace the prior with measurements.

Usage: python benchmarks/derive_seed_profile.py [--check]  (--check: exit 1 if the file differs)
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from itertools import combinations
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "docs" / "results" / "h200-buckets-profile.json"
TARGET = ROOT / "studies" / "profiles" / "h200-graphs-derived.json"
MODELS = ("distilbert-base", "distilgpt2", "mistral-7b")
MODES = ("exclusive", "timeslice", "mps", "streams")
# docs/results/serving-h200.md, call 3 (decode.json, graphs): service_ms_new1 and ms_per_token
MISTRAL_FIRST_MS = 9.30
MISTRAL_MS_PER_TOKEN = 7.33


def _corun_key(models) -> str:
    from traceforge.simulate.profile import corun_key

    return corun_key(list(models))


def derive() -> dict:
    src = json.loads(SOURCE.read_text())
    out = {k: copy.deepcopy(src[k]) for k in ("schema", "status", "host", "device", "versions",
                                              "units")}
    out["created_at"] = src["created_at"]
    out["command"] = "python benchmarks/derive_seed_profile.py"
    out["derived"] = {
        "from": {"distilbert-base, distilgpt2": "docs/results/h200-buckets-profile.json",
                 "mistral-7b": "docs/results/serving-h200.md (decode, graphs, call 3)"},
        "prior": "co-run slowdowns not measured on the compiled backend (timeslice, streams, "
                 "every pair with mistral-7b): the GPU shared evenly among busy models",
    }
    out["settings"] = dict(src["settings"], models=list(MODELS), modes=list(MODES))
    models = {m: copy.deepcopy(src["models"][m]) for m in ("distilbert-base", "distilgpt2")}
    models["mistral-7b"] = {
        "zoo": "mistral-7b", "kind": "decoder", "generative": True,
        "batch_sizes": [1], "seq_lens": [64, 128],
        "service_ms": [[MISTRAL_FIRST_MS, MISTRAL_FIRST_MS]], "service_cv": 0.01,
        "cold_extra_ms": [[0.0, 0.0]],
        "reference": {"batch_size": 1, "seq_len": 128, "max_new_tokens": 16},
        "buckets": {"seq_buckets": [16, 32, 64, 128, 256, 512, 1024, 2048, 4096],
                    "compile": "graphs"},
        "new_tokens": 16, "decode_ms_per_token": [[MISTRAL_MS_PER_TOKEN, MISTRAL_MS_PER_TOKEN]],
    }
    out["models"] = models
    modes = {}
    base = src["modes"]["exclusive"]
    mistral_alone = MISTRAL_FIRST_MS + 15 * MISTRAL_MS_PER_TOKEN  # reference: 16 new tokens
    for mode in MODES:
        measured = src["modes"].get(mode)
        md = copy.deepcopy(measured or base)
        md.pop("backend", None)
        md.pop("corun", None)
        for key in ("alone_ms", "alone_se_ms", "alone_ratio", "alone_ratio_se", "alone_scale",
                    "inbound_ms", "outbound_ms"):
            md.setdefault(key, {})
        md["alone_ms"]["mistral-7b"] = mistral_alone
        md["alone_se_ms"]["mistral-7b"] = 0.0
        md["alone_ratio"]["mistral-7b"] = 1.0
        md["alone_ratio_se"]["mistral-7b"] = 0.0
        md["alone_scale"]["mistral-7b"] = 1.0
        md["inbound_ms"]["mistral-7b"] = max(md["inbound_ms"].values())
        md["outbound_ms"]["mistral-7b"] = max(md["outbound_ms"].values())
        slow = {} if mode == "exclusive" else dict(md.get("slowdown") or {})
        if mode != "exclusive":
            for size in (2, 3):
                for busy in combinations(MODELS, size):
                    slow.setdefault(_corun_key(busy), {m: float(size) for m in busy})
        md["slowdown"] = slow
        md["source"] = "measured" if measured else "prior (exclusive's alone times)"
        modes[mode] = md
    out["modes"] = modes
    out["elapsed_s"] = src.get("elapsed_s")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs")
    args = parser.parse_args(argv)
    text = json.dumps(derive(), indent=1, sort_keys=True) + "\n"
    if args.check:
        same = TARGET.exists() and TARGET.read_text() == text
        print(f"{TARGET}: {'up to date' if same else 'differs'}")
        return 0 if same else 1
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
