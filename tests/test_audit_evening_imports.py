"""The evening audit's import findings: ServeGen pool files, Mooncake JSON Lines, empirical
shape columns and CSV headers. Each bad input is one line naming the file, key and value, exit
2, nothing written, no traceback and no numpy warning."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from trace_cli_helpers import FIXTURES, REPO, assert_one_line_error, run_cli

from traceforge.generate.servegen import (
    GAMMA_MIN_SHAPE,
    WEIBULL_MIN_SHAPE,
    law_cv,
    load_pool,
    renewal_in_windows,
    sample_pool,
)

SLICE = REPO / "traces" / "servegen-deepseek-r1-2h"
MOONCAKE = FIXTURES / "mooncake_fixture.jsonl"
GOOD_ROW = "0,0.105,0.9252505817858778,Gamma,1.1681033415865265,8.05582170861377"


def copy_pool(tmp_path):
    """A writable copy of the 2-hour deepseek-r1 slice (clients 1, 48, 62; all busy at 0 s)."""
    pool = tmp_path / "pool"
    shutil.copytree(SLICE, pool)
    for p in pool.iterdir():
        p.chmod(0o644)
    load_pool.cache_clear()
    return pool


def set_first_row(pool, row: str) -> None:
    path = pool / "chunk-1-trace.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([row, *lines[1:]]) + "\n")


def import_and_gen(tmp_path, capsys, pool):
    """Both ways a pool is read: trace import servegen, and a spec's servegen arrival."""
    results = []
    out = tmp_path / "imported.parquet"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code, _, err = run_cli(["trace", "import", "servegen", pool, "--duration", "1200",
                                "-o", out], capsys)
    results.append((code, err, out))
    load_pool.cache_clear()
    spec = tmp_path / "s.toml"
    spec.write_text(f'seed = 1\nduration_s = 1200\n[models.m]\n'
                    f'arrival = {{ process = "servegen", pool = "{pool}" }}\n')
    out = tmp_path / "generated.parquet"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code, _, err = run_cli(["trace", "gen", spec, "-o", out], capsys)
    results.append((code, err, out))
    return results


# -- A. ServeGen pools ---------------------------------------------------------------------------
@pytest.mark.parametrize(("dataset", "needles"), [
    # was ValueError: could not convert string to float: 'abc' (_fields)
    ({"abc": {"input_tokens": "{10: 1.0}", "output_tokens": "{10: 1.0}"}},
     ("window_start_s = 'abc'", "finite number")),
    # was the same ValueError (_parse_pdf, dict form)
    ({"0": {"input_tokens": {"abc": 1.0}, "output_tokens": "{10: 1.0}"}},
     ("0.input_tokens = 'abc'", "not a number")),
    # a pair that is not two numbers was skipped silently by the old regex
    ({"0": {"input_tokens": "{10: 0.5, abc: 0.5}", "output_tokens": "{10: 1.0}"}},
     ("0.input_tokens = 'abc: 0.5'", "two numbers")),
    # exit 0 with "RuntimeWarning: invalid value encountered in divide" (inf / inf)
    ({"0": {"input_tokens": "{10: 1e400, 20: 1.0}", "output_tokens": "{10: 1.0}"}},
     ("0.input_tokens[10] = '1e400'", "probability must be a finite number >= 0")),
    # a JSON integer of 401 digits: float() raised OverflowError
    ({"0": {"input_tokens": {"10": 10**400}, "output_tokens": "{10: 1.0}"}},
     ("0.input_tokens[10] = '1000000000000000... (401 characters)'", "finite number")),
    # negative probabilities were clipped to 0 silently
    ({"0": {"input_tokens": "{10: -0.5, 20: 1}", "output_tokens": "{10: 1.0}"}},
     ("0.input_tokens[10] = '-0.5'", ">= 0")),
    # all-zero probabilities were read as a uniform distribution
    ({"0": {"input_tokens": "{10: 0, 20: 0}", "output_tokens": "{10: 1.0}"}},
     ("0.input_tokens = '{10: 0, 20: 0}'", "must not all be 0")),
    # exit 0: every row got seq_len 2147483647 (clipped)
    ({"0": {"input_tokens": "{1e400: 1.0}", "output_tokens": "{10: 1.0}"}},
     ("0.input_tokens = '1e400'", "integers in [0, 2147483647]")),
    # a fractional token count was rounded silently
    ({"0": {"input_tokens": "{10: 1.0}", "output_tokens": "{10.5: 1.0}"}},
     ("0.output_tokens = '10.5'", "integers")),
    # text + 2 images of 1e8 tokens passes int32 in the sum: was clipped to 2147483647
    ({"0": {"text_tokens": "{2000000000: 1.0}", "image_count": "{2: 1}",
            "image_tokens": "{100000000: 1}", "output_tokens": "{10: 1.0}"}},
     ("0.text_tokens+media = 2200000000", "int32 seq_len")),
])
def test_bad_pool_datasets_name_the_file_key_and_value(tmp_path, capsys, dataset, needles):
    pool = copy_pool(tmp_path)
    (pool / "chunk-1-dataset.json").write_text(json.dumps(dataset))
    for code, err, out in import_and_gen(tmp_path, capsys, pool):
        assert_one_line_error(code, err, f"{pool}/chunk-1-dataset.json: ", *needles)
        assert not out.exists()


@pytest.mark.parametrize(("row", "needles"), [
    # 4 numpy RuntimeWarnings, then a misleading "every chosen client is idle"
    ("0,0.105,0.9,Weibull,1e-300,8.0", ("p1 = 1e-300", "Weibull shape", ">= 0.09")),
    # Weibull shape 0.02 (CV 3e14) asked renewal mode for 742 PiB
    ("0,0.105,0.9,Weibull,0.02,8.0", ("p1 = 0.02", "Weibull shape")),
    # a misleading "every chosen client is idle"
    ("0,0.105,0.9,Gamma,inf,8.0", ("p1 = inf", "Gamma shape", ">= 1e-06")),
    ("0,0.105,0.9,Gamma,1e-9,8.0", ("p1 = 1e-09", "Gamma shape")),
    ("0,0.105,0.9,Gamma,nan,8.0", ("p1 = nan", "Gamma shape")),
    # the memory check blamed --rate-scale = 1.0, a flag nobody set
    ("0,1e300,0.9,Gamma,1.1,8.0", ("rate = 1e+300", "requests/s")),
    # 1 / rate overflows to inf below 5.6e-309; below 1.08e-10 the mean gap passes int64 ns
    ("0,1e-200,0.9,Gamma,1.1,8.0", ("rate = 1e-200", "requests/s")),
    ("0,inf,0.9,Gamma,1.1,8.0", ("rate must be >= 0",)),
    ("inf,0.105,0.9,Gamma,1.1,8.0", ("window_start_s = inf", "int64-ns range")),
    ("0,0.105,0.9,Gamma,1.1,0", ("p2 = 0.0", "scale must be a finite number > 0")),
    ("0,0.105,0.9,Gamma,1.1,inf", ("p2 = inf", "scale")),
])
def test_out_of_range_pool_rows_name_the_line_key_and_value(tmp_path, capsys, row, needles):
    pool = copy_pool(tmp_path)
    set_first_row(pool, row)
    for code, err, out in import_and_gen(tmp_path, capsys, pool):
        assert_one_line_error(code, err, f"{pool}/chunk-1-trace.csv:1", *needles)
        assert not out.exists()


def test_non_utf8_pool_file_names_the_line(tmp_path, capsys):
    # was UnicodeDecodeError (a traceback)
    pool = copy_pool(tmp_path)
    (pool / "chunk-1-trace.csv").write_bytes(GOOD_ROW.encode() + b"\n\xff\xfe\n")
    for code, err, out in import_and_gen(tmp_path, capsys, pool):
        assert_one_line_error(code, err, f"{pool}/chunk-1-trace.csv:2", "not UTF-8")
        assert not out.exists()


def test_a_folder_named_like_a_pool_file_is_bad_input(tmp_path, capsys):
    # was "traceforge: failed: ...: Is a directory", exit 1
    pool = copy_pool(tmp_path)
    (pool / "chunk-2-trace.csv").mkdir()
    for code, err, out in import_and_gen(tmp_path, capsys, pool):
        assert_one_line_error(code, err, f"{pool}/chunk-2-trace.csv", "not a regular file")
        assert not out.exists()


def test_a_folder_named_like_a_dataset_file_is_bad_input(tmp_path, capsys):
    pool = copy_pool(tmp_path)
    (pool / "chunk-1-dataset.json").unlink()
    (pool / "chunk-1-dataset.json").mkdir()
    for code, err, out in import_and_gen(tmp_path, capsys, pool):
        assert_one_line_error(code, err, f"{pool}/chunk-1-dataset.json", "not a regular file")
        assert not out.exists()


def test_shapes_at_the_bounds_sample_without_warnings(tmp_path):
    """The bounds are where the samplers still work: CV 1000 at the smallest shapes, and
    Weibull shapes up to the largest float (law_cv's rounding made sqrt(-2e-16) at 1e16)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for law, shape in ((1, GAMMA_MIN_SHAPE), (2, WEIBULL_MIN_SHAPE), (2, 1e16),
                           (2, 1.7e308), (1, 1.7e308)):
            for mode in ("renewal", "rescale"):
                times, _ = renewal_in_windows(np.random.default_rng(0), np.array([law], np.int8),
                                              np.array([shape]), np.array([2.0]),
                                              np.array([600.0]), mode=mode)
                assert np.isfinite(times).all() and (times < 600).all()
        assert law_cv(np.array([2]), np.array([1e16]))[0] == 0.0
        assert law_cv(np.array([1]), np.array([GAMMA_MIN_SHAPE]))[0] == pytest.approx(1000)
        assert law_cv(np.array([2]), np.array([WEIBULL_MIN_SHAPE]))[0] < 1000
    pool = copy_pool(tmp_path)
    set_first_row(pool, "0,0.105,0.9,Weibull,0.09,8.0")
    s = sample_pool(load_pool(str(pool)), np.random.default_rng(0), 600.0)
    assert s.time_s.size > 0


def test_valid_pool_still_imports_and_generates(tmp_path, capsys):
    pool = copy_pool(tmp_path)
    for code, err, out in import_and_gen(tmp_path, capsys, pool):
        assert code == 0, err
        table = pq.read_table(out)
        assert table.num_rows > 0
        assert pa.compute.min(table.column("seq_len")).as_py() >= 1


# -- B. Mooncake ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("line", "needles"), [
    # OverflowError: int too large to convert to float (math.isfinite of a huge int)
    ('{"timestamp": 1' + "0" * 400 + ', "input_length": 10, "output_length": 5}',
     ("timestamp = 1000000000000000... (401 digits)", "int64-nanosecond range")),
    ('{"timestamp": 5, "input_length": 1' + "0" * 400 + ', "output_length": 5}',
     ("input_length = 1000000000000000... (401 digits)", "int32")),
    # ValueError: Exceeds the limit (4300 digits) for integer string conversion (json.loads)
    ('{"timestamp": 1' + "0" * 5000 + ', "input_length": 10, "output_length": 5}',
     ("a number too long to read", "4300 digits")),
    # silently accepted: the last timestamp won
    ('{"timestamp": 5, "timestamp": 99999, "input_length": 10, "output_length": 5}',
     ("timestamp = 99999", "given twice in one object (first 5)")),
    # the exact int check: 9223372036855 ms is past 2**63 ns
    ('{"timestamp": 9223372036855, "input_length": 10, "output_length": 5}',
     ("timestamp = 9223372036855", "int64-nanosecond range")),
])
def test_mooncake_huge_integers_and_duplicate_keys_name_the_line(tmp_path, capsys, line,
                                                                  needles):
    src = tmp_path / "m.jsonl"
    src.write_text('{"timestamp": 1, "input_length": 10, "output_length": 5}\n' + line + "\n")
    out = tmp_path / "t.parquet"
    code, _, err = run_cli(["trace", "import", "mooncake", src, "-o", out], capsys)
    assert_one_line_error(code, err, f"{src}:2: ", *needles)
    assert len(err) < 300
    assert not out.exists()


def test_mooncake_fixture_and_largest_timestamp_still_import(tmp_path, capsys):
    code, _, err = run_cli(["trace", "import", "mooncake", MOONCAKE, "-o",
                            tmp_path / "a.parquet"], capsys)
    assert code == 0, err
    src = tmp_path / "m.jsonl"
    src.write_text('{"timestamp": 9223372036854, "input_length": 10, "output_length": 5}\n')
    code, _, err = run_cli(["trace", "import", "mooncake", src, "-o", tmp_path / "b.parquet"],
                           capsys)
    assert code == 0, err


# -- C. empirical shape columns ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dup.csv", "dup.parquet"])
def test_empirical_column_named_twice_is_refused(tmp_path, capsys, name):
    # CSV: KeyError: 'Field "x" exists 2 times in schema'; Parquet: an Arrow FieldRef message
    path = tmp_path / name
    if name.endswith(".csv"):
        path.write_text("x,x\n10,20\n30,40\n")
    else:
        pq.write_table(pa.table([pa.array([10, 30]), pa.array([20, 40])], names=["x", "x"]),
                       path)
    spec = tmp_path / "s.toml"
    spec.write_text('seed = 1\nduration_s = 10\n[models.chat]\n'
                    'arrival = {process = "poisson", rate = 2}\n'
                    f'seq_len = {{ dist = "empirical", path = "{name}", column = "x" }}\n'
                    'max_new_tokens = 16\n')
    out = tmp_path / "t.parquet"
    code, _, err = run_cli(["trace", "gen", spec, "-o", out], capsys)
    assert_one_line_error(code, err, f"{spec}: models.chat.seq_len.column = 'x'",
                          f"{name} has 2 columns of this name")
    assert not out.exists()


def test_empirical_csv_with_another_column_named_twice_still_reads(tmp_path, capsys):
    (tmp_path / "l.csv").write_text("x,y,y\n10,1,2\n30,3,4\n")
    spec = tmp_path / "s.toml"
    spec.write_text('seed = 1\nduration_s = 10\n[models.chat]\n'
                    'arrival = {process = "poisson", rate = 2}\n'
                    'seq_len = { dist = "empirical", path = "l.csv", column = "x" }\n'
                    'max_new_tokens = 16\n')
    code, _, err = run_cli(["trace", "gen", spec, "-o", tmp_path / "t.parquet"], capsys)
    assert code == 0, err


# -- D. CSV importer -----------------------------------------------------------------------------
def test_csv_mapped_column_named_twice_in_the_header_is_refused(tmp_path, capsys):
    # exit 0: the first "t" was used silently
    src = tmp_path / "dup2.csv"
    src.write_text("t,t,s\n100,5,10\n101,7,20\n")
    out = tmp_path / "d.parquet"
    code, _, err = run_cli(["trace", "import", "csv", src, "-o", out, "--columns", "time=t"],
                           capsys)
    assert_one_line_error(code, err, f"{src}:1: column = 't'", "2 times (fields 1, 2)",
                          "ambiguous")
    assert not out.exists()


def test_csv_unmapped_column_named_twice_is_allowed(tmp_path, capsys):
    src = tmp_path / "dup3.csv"
    src.write_text("t,s,s\n100,5,10\n101,7,20\n")
    out = tmp_path / "d.parquet"
    code, _, err = run_cli(["trace", "import", "csv", src, "-o", out, "--columns", "time=t"],
                           capsys)
    assert code == 0, err
    assert pq.read_table(out).num_rows == 2
