"""Importers: fixtures round-trip against an independent reference parse; malformed rows give
the line number or are skipped and counted; scaling keeps burst structure; every bad option is a
one-line exit 2 with no file; the real Azure LLM 2023 files match their README's facts."""

from __future__ import annotations

import csv
import datetime as dt
import json

import numpy as np
import pytest
from trace_cli_helpers import FIXTURES, assert_one_line_error, run_cli, shared_file

from traceforge.errors import BadInput
from traceforge.generate import trace_stats
from traceforge.importers import import_trace
from traceforge.schema import read_trace

AZURE_LLM = FIXTURES / "AzureLLMInferenceTrace_conv_fixture.csv"
BURSTGPT = FIXTURES / "BurstGPT_fixture.csv"
MOONCAKE = FIXTURES / "mooncake_fixture.jsonl"
GENERIC = FIXTURES / "generic_requests.csv"
FUNCTIONS = [FIXTURES / f"invocations_per_function_md.anon.d0{d}.csv" for d in (1, 2)]


def rows_of(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def column(trace, name):
    return trace.table.column(name).to_pylist()


def iso_ns(text: str) -> int:
    """Reference parser, independent of Arrow: 7-digit fractions are beyond datetime."""
    whole, _, frac = text.partition(".")
    base = dt.datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.UTC)
    return int(base.timestamp()) * 10**9 + int(frac.ljust(9, "0"))


# -- round trips ---------------------------------------------------------------------------
def test_azure_llm_fixture_round_trip():
    rows = rows_of(AZURE_LLM)
    stamps = np.array([iso_ns(r["TIMESTAMP"]) for r in rows])
    trace = import_trace("azure-llm", [AZURE_LLM])
    assert column(trace, "arrival_ns") == (stamps - stamps[0]).tolist()
    assert column(trace, "seq_len") == [int(r["ContextTokens"]) for r in rows]
    assert column(trace, "max_new_tokens") == [int(r["GeneratedTokens"]) for r in rows]
    assert set(column(trace, "model")) == {"conv"}
    src = trace.meta["source"]
    assert src["format"] == "azure-llm" and src["files"][0]["rows"] == len(rows)
    assert len(src["files"][0]["sha256"]) == 64
    assert src["origin_utc"].startswith("2023-11-16T18:15:46.817451")
    assert "Splitwise" in src["attribution"] and src["license"] == "CC-BY-4.0"
    assert trace.meta["duration_s"] == pytest.approx((stamps[-1] - stamps[0]) / 1e9)


def test_burstgpt_failed_rows_keep_or_drop_and_rename():
    rows = rows_of(BURSTGPT)
    failed = sum(r["Response tokens"] == "0" for r in rows)
    assert failed == 16
    kept = import_trace("burstgpt", [BURSTGPT])
    assert kept.table.num_rows == len(rows)
    assert kept.meta["source"]["failed_rows"] == failed
    assert column(kept, "max_new_tokens").count(0) == failed
    t0 = float(rows[0]["Timestamp"])
    assert column(kept, "arrival_ns") == [round((float(r["Timestamp"]) - t0) * 1e9)
                                          for r in rows]
    assert sorted(set(column(kept, "model"))) == ["ChatGPT", "GPT-4"]
    dropped = import_trace("burstgpt", [BURSTGPT], failed="drop", models="GPT-4=gpt4")
    gpt4 = [r for r in rows if r["Model"] == "GPT-4" and r["Response tokens"] != "0"]
    assert set(column(dropped, "model")) == {"gpt4"}
    assert column(dropped, "seq_len") == [int(r["Request tokens"]) for r in gpt4]
    assert dropped.meta["source"]["failed_policy"] == "drop"


def test_mooncake_round_trip_rate_scale_and_thin():
    lines = [json.loads(x) for x in MOONCAKE.read_text().splitlines()]
    ms = np.array([x["timestamp"] for x in lines])
    trace = import_trace("mooncake", [MOONCAKE], models="kimi")
    assert column(trace, "arrival_ns") == ((ms - ms[0]) * 10**6).tolist()
    assert column(trace, "seq_len") == [x["input_length"] for x in lines]
    assert set(column(trace, "model")) == {"kimi"}
    # rate x2 compresses time: same requests, same order, half the gaps (bursts kept)
    fast = import_trace("mooncake", [MOONCAKE], rate_scale=2.0)
    assert column(fast, "seq_len") == column(trace, "seq_len")
    assert column(fast, "arrival_ns") == ((ms - ms[0]) * 10**6 // 2).tolist()
    assert fast.meta["duration_s"] == pytest.approx(trace.meta["duration_s"] / 2)
    # thinning keeps the timeline and drops requests at random (only when asked)
    thin = import_trace("mooncake", [MOONCAKE], rate_scale=0.5, thin=True, seed=1)
    assert 0.35 * len(lines) < thin.table.num_rows < 0.65 * len(lines)  # Binomial(250, ½): ±4 SD
    assert set(column(thin, "arrival_ns")) <= set(column(trace, "arrival_ns"))
    again = import_trace("mooncake", [MOONCAKE], rate_scale=0.5, thin=True, seed=1)
    assert again.table.equals(thin.table)
    slow = import_trace("mooncake", [MOONCAKE], time_scale=3.0)
    assert column(slow, "arrival_ns") == ((ms - ms[0]) * 3 * 10**6).tolist()


def test_generic_csv_with_model_column_and_window():
    rows = rows_of(GENERIC)
    cols = "time=ts_ms,model=service,seq_len=prompt,max_new_tokens=completion,batch_size=bs"
    trace = import_trace("csv", [GENERIC], columns=cols, time_unit="ms")
    t = np.array([float(r["ts_ms"]) for r in rows])
    assert column(trace, "arrival_ns") == np.rint((t - t[0]) * 1e6).astype(int).tolist()
    assert column(trace, "model") == [r["service"] for r in rows]
    assert column(trace, "batch_size") == [int(r["bs"]) for r in rows]
    # window [2 s, 5 s) of source time, re-based to 0
    window = import_trace("csv", [GENERIC], columns=cols, time_unit="ms", start_s=2.0,
                          duration_s=3.0)
    inside = [r for r, ti in zip(rows, t - t[0], strict=True) if 2000 <= ti < 5000]
    assert window.table.num_rows == len(inside)
    assert column(window, "seq_len") == [int(r["prompt"]) for r in inside]
    assert min(column(window, "arrival_ns")) >= 0
    assert window.meta["duration_s"] == 3.0
    assert window.meta["source"]["window_s"] == [2.0, 5.0]
    # without a model column each file is a model; unmapped shapes take the defaults
    plain = import_trace("csv", [GENERIC], columns="time=ts_ms", time_unit="ms", seq_len=77)
    assert set(column(plain, "model")) == {"generic_requests"}
    assert set(column(plain, "seq_len")) == {77}


def _function_counts():
    out = {}
    for day, path in enumerate(FUNCTIONS):
        for r in rows_of(path):
            counts = np.array([int(r[str(m)]) for m in range(1, 1441)])
            out.setdefault(r["HashFunction"], []).append((day, counts))
    return out


def test_azure_functions_counts_mapping_and_spread():
    counts = _function_counts()
    total = sum(int(c.sum()) for days in counts.values() for _, c in days)
    rr = import_trace("azure-functions-2019", FUNCTIONS, models="a,b", mapping="round-robin")
    assert rr.table.num_rows == total  # every invocation, once
    assert rr.meta["duration_s"] == 2 * 86400
    # top-k: the two busiest functions only, busiest first
    totals = {f: sum(int(c.sum()) for _, c in days) for f, days in counts.items()}
    busiest = sorted(totals, key=lambda f: -totals[f])[:2]
    top = import_trace("azure-functions-2019", FUNCTIONS, models="x,y", mapping="top-k")
    models = np.asarray(column(top, "model"))
    assert (models == "x").sum() == totals[busiest[0]]
    assert (models == "y").sum() == totals[busiest[1]]
    # uniform spread: in minute 601 of day 1 the busiest function is f_burst (top-k ranks
    # inside the window); its 300 calls sit at (j + ½)·0.2 s
    window = import_trace("azure-functions-2019", FUNCTIONS, models="only", mapping="top-k",
                          spread="uniform", start_s=600 * 60, duration_s=60)
    burst_rows = [r for r in rows_of(FUNCTIONS[0]) if r["HashFunction"] == "f_burst"]
    expected = int(burst_rows[0]["601"])
    got = np.asarray(column(window, "arrival_ns")) / 1e9
    assert got.size == expected
    np.testing.assert_allclose(got, (np.arange(expected) + 0.5) * 60 / expected, atol=1e-9)
    # poisson spread: counts per minute are preserved exactly, positions are seeded
    p1 = import_trace("azure-functions-2019", FUNCTIONS, seed=4, start_s=0, duration_s=3600)
    p2 = import_trace("azure-functions-2019", FUNCTIONS, seed=4, start_s=0, duration_s=3600)
    assert p1.table.equals(p2.table)
    per_minute = np.bincount((np.asarray(column(p1, "arrival_ns")) // 60e9).astype(int),
                             minlength=60)
    expected_minutes = sum(c[:60] for days in counts.values() for d, c in days if d == 0)
    assert per_minute.tolist() == expected_minutes.tolist()
    # day 2 starts at 86400 s
    day2 = import_trace("azure-functions-2019", FUNCTIONS, start_s=86400, duration_s=60)
    assert day2.table.num_rows == sum(int(c[0]) for days in counts.values()
                                      for d, c in days if d == 1)


def test_azure_functions_stripe_is_stable_across_windows():
    a = import_trace("azure-functions-2019", FUNCTIONS, models="m0,m1,m2", duration_s=7200)
    b = import_trace("azure-functions-2019", FUNCTIONS, models="m0,m1,m2", start_s=36000,
                     duration_s=7200)
    assert a.meta["source"]["mapping"] == "stripe"
    assert set(column(a, "model")) <= {"m0", "m1", "m2"}
    assert set(column(b, "model")) <= {"m0", "m1", "m2"}
    # the same function keeps its model whatever the window: model = crc32(owner/app/fn) mod 3.
    # Rank-based mappings (round-robin, top-k) give other per-model counts on this fixture.
    import zlib

    for trace, first_minute in ((a, 0), (b, 600)):
        expected = np.zeros(3, dtype=np.int64)
        for r in rows_of(FUNCTIONS[0]):
            key = f"{r['HashOwner']}/{r['HashApp']}/{r['HashFunction']}"
            window = sum(int(r[str(m)]) for m in range(first_minute + 1, first_minute + 121))
            expected[zlib.crc32(key.encode()) % 3] += window
        got = [int((np.asarray(column(trace, "model")) == f"m{j}").sum()) for j in range(3)]
        assert got == expected.tolist()


# -- malformed rows ---------------------------------------------------------------------------
def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


BAD_ROWS = {
    "azure-llm bad token": ("azure-llm", "llm.csv",
                            "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                            "2023-11-16 18:17:03.9799600,10,2\n"
                            "2023-11-16 18:17:04.0000000,ten,2\n", 3, "ContextTokens = 'ten'"),
    "azure-llm bad time": ("azure-llm", "llm.csv",
                           "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                           "2023-11-16 18:17:03.9799600,10,2\n"
                           "2023-11-16 18:17:04.0000000,10,2\n"
                           "yesterday,10,2\n", 4, "TIMESTAMP = 'yesterday'"),
    "azure-llm zero context": ("azure-llm", "llm.csv",
                               "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                               "2023-11-16 18:17:03.9799600,5,2\n"
                               "2023-11-16 18:17:03.9799600,0,2\n", 3, "must be an integer >= 1"),
    "azure-llm short row": ("azure-llm", "llm.csv",
                            "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                            "2023-11-16 18:17:03.9799600,10,2\n"
                            "2023-11-16 18:17:04.0000000,10\n", 3, "expected 3 fields"),
    "burstgpt negative time": ("burstgpt", "b.csv",
                               "Timestamp,Model,Request tokens,Response tokens,Total tokens,"
                               "Log Type\n1.0,ChatGPT,5,5,10,API log\n-2,ChatGPT,5,5,10,API log\n",
                               3, "Timestamp = '-2'"),
    "mooncake bad json": ("mooncake", "m.jsonl",
                          '{"timestamp": 0, "input_length": 5, "output_length": 1}\n'
                          '{"timestamp": 3, "input_length": 5\n', 2, "not JSON"),
    "mooncake missing field": ("mooncake", "m.jsonl",
                               '{"timestamp": 0, "input_length": 5, "output_length": 1}\n'
                               '{"timestamp": 3, "output_length": 1}\n', 2, "input_length"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_malformed_row_names_its_line_or_is_skipped(case, tmp_path, capsys):
    fmt, name, text, line, needle = BAD_ROWS[case]
    src = _write(tmp_path, name, text)
    out = tmp_path / "out.parquet"
    code, _, err = run_cli(["trace", "import", fmt, src, "-o", out], capsys)
    assert_one_line_error(code, err, f"{src}:{line}", needle, "--skip-bad")
    assert not out.exists()
    code, stdout, _ = run_cli(["trace", "import", fmt, src, "-o", out, "--skip-bad"], capsys)
    assert code == 0, stdout
    assert "1 bad rows skipped" in stdout
    trace = read_trace(out)
    assert trace.meta["source"]["skipped_bad_rows"] == 1
    assert trace.table.num_rows == text.count("\n") - (fmt != "mooncake") - 1


def test_the_first_malformed_row_in_file_order_is_reported(tmp_path):
    value_first = _write(tmp_path, "a.csv", "t,n\n1,5\n2,x\n3\n4,5\n")
    with pytest.raises(BadInput, match=r"a\.csv:3: n = 'x'"):
        import_trace("csv", [value_first], columns="time=t,seq_len=n")
    short_first = _write(tmp_path, "b.csv", "t,n\n1,5\n2\n\n4,x\n5,5\n")
    with pytest.raises(BadInput, match=r"b\.csv:3 = '2': expected 2 fields, found 1"):
        import_trace("csv", [short_first], columns="time=t,seq_len=n")
    # a blank line is a row of empty fields: rows 3 (short), 4 (blank) and 5 (x) are skipped
    trace = import_trace("csv", [short_first], columns="time=t,seq_len=n", skip_bad=True)
    assert trace.table.num_rows == 2 and trace.meta["source"]["skipped_bad_rows"] == 3
    assert column(trace, "arrival_ns") == [0, 4 * 10**9]


BAD_OPTIONS = {
    "unknown format": (["trace", "import", "parquet", GENERIC], ["FORMAT = 'parquet'",
                                                                "allowed: azure-functions-2019"]),
    "missing source": (["trace", "import", "burstgpt", "/nonexistent/b.csv"], ["no such file"]),
    "csv without columns": (["trace", "import", "csv", GENERIC], ["--columns", "required"]),
    "csv unknown field": (["trace", "import", "csv", GENERIC, "--columns", "time=ts_ms,len=x"],
                          ["--columns = 'len'", "unknown field"]),
    "csv missing column": (["trace", "import", "csv", GENERIC, "--columns", "time=when"],
                           ["generic_requests.csv: when", "missing column", "ts_ms"]),
    "csv bad unit": (["trace", "import", "csv", GENERIC, "--columns", "time=ts_ms",
                      "--time-unit", "h"], ["--time-unit = 'h'", "allowed: s, ms"]),
    "spread on wrong format": (["trace", "import", "burstgpt", BURSTGPT, "--spread", "uniform"],
                               ["--spread = 'uniform'", "azure-functions-2019"]),
    "bad map": (["trace", "import", "azure-functions-2019", *FUNCTIONS, "--map", "random"],
                ["--map = 'random'", "allowed: stripe, round-robin, top-k"]),
    "top-k too many": (["trace", "import", "azure-functions-2019", *FUNCTIONS, "--map",
                        "top-k", "--models", "a,b,c,d,e,f,g"], ["top-k needs at least 7"]),
    "thin without lower rate": (["trace", "import", "mooncake", MOONCAKE, "--thin"],
                                ["--rate-scale = 1.0", "below 1"]),
    "zero rate scale": (["trace", "import", "mooncake", MOONCAKE, "--rate-scale", "0"],
                        ["--rate-scale = 0.0", "> 0"]),
    "negative start": (["trace", "import", "mooncake", MOONCAKE, "--start", "-1"],
                       ["--start = -1.0", ">= 0"]),
    "empty window": (["trace", "import", "mooncake", MOONCAKE, "--start", "1e6"],
                     ["--start = 1000000.0", "window holds no requests"]),
    "names per file": (["trace", "import", "azure-llm", AZURE_LLM, "--models", "a,b"],
                       ["--models = 'a,b'", "one model name per source file (1)"]),
    "unknown source model": (["trace", "import", "burstgpt", BURSTGPT, "--models", "Claude"],
                             ["--models = 'Claude'", "allowed: GPT-4, ChatGPT"]),
    "duplicate model": (["trace", "import", "burstgpt", BURSTGPT, "--models", "a=x,b=x"],
                        ["given twice"]),
    "bad failed policy": (["trace", "import", "burstgpt", BURSTGPT, "--failed", "retry"],
                          ["--failed = 'retry'", "allowed: keep, drop"]),
    "seq len zero": (["trace", "import", "mooncake", MOONCAKE, "--seq-len", "0"],
                     ["--seq-len = 0"]),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_import_option(case, tmp_path, capsys):
    argv, needles = BAD_OPTIONS[case]
    out = tmp_path / "out.parquet"
    code, _, err = run_cli([*argv, "-o", out], capsys)
    assert_one_line_error(code, err, *needles)
    assert not out.exists()


# -- the real Azure LLM 2023 files (../shared/data; skipped where absent) -----------------------
AZURE_FACTS = {  # from ../shared/data/README.md
    "code": {"rows": 8819, "span_min": 57.3, "rate": 2.567, "cv": 13.15, "gap": 217.2,
             "medians": (1469, 13)},
    "conv": {"rows": 19366, "span_min": 58.4, "rate": 5.530, "cv": 1.09, "gap": 4.3,
             "medians": (1020, 129)},
}


@pytest.mark.parametrize("name", sorted(AZURE_FACTS))
def test_real_azure_llm_2023_matches_the_readme(name):
    path = shared_file("azure-llm-2023", f"AzureLLMInferenceTrace_{name}.csv")
    facts = AZURE_FACTS[name]
    trace = import_trace("azure-llm", [path])
    assert trace.table.num_rows == facts["rows"]
    assert set(column(trace, "model")) == {name}
    report = trace_stats(trace)["models"][name]
    # the README rounds to 4 significant digits (rate, CV) and 0.1 min / 0.1 s
    assert trace.meta["duration_s"] / 60 == pytest.approx(facts["span_min"], abs=0.05)
    assert report["rate"] == pytest.approx(facts["rate"], rel=2e-3)
    assert report["cv"] == pytest.approx(facts["cv"], rel=5e-3)
    gaps = np.diff(np.asarray(column(trace, "arrival_ns"))) / 1e9
    assert gaps.max() == pytest.approx(facts["gap"], abs=0.05)
    assert np.median(column(trace, "seq_len")) == facts["medians"][0]
    assert np.median(column(trace, "max_new_tokens")) == facts["medians"][1]
    # neither is Poisson at its own rate (code: CV 13; conv: mildly bursty, n = 19k)
    assert report["fit"]["reference"] and report["fit"]["p_value"] < 1e-3


def test_azure_functions_bad_count_names_its_line(tmp_path):
    header = "HashOwner,HashApp,HashFunction,Trigger," + ",".join(map(str, range(1, 1441)))
    good = "o,a,f1,http," + ",".join(["1"] * 1440)
    bad = "o,a,f2,http," + ",".join(["2"] * 700 + ["lots"] + ["2"] * 739)
    src = _write(tmp_path, "invocations_per_function_md.anon.d01.csv",
                 "\n".join([header, good, good.replace("f1", "f3"), bad]) + "\n")
    with pytest.raises(BadInput, match=r"d01\.csv:4: 701 = 'lots': not an integer"):
        import_trace("azure-functions-2019", [src])
    trace = import_trace("azure-functions-2019", [src], skip_bad=True)
    assert trace.table.num_rows == 2 * 1440
    assert trace.meta["source"]["skipped_bad_rows"] == 1
