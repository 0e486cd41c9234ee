"""Request shapes: integer distributions for batch_size, seq_len and max_new_tokens.

Every distribution samples a whole column at once (``sample(rng, n) -> int32 array``) and never
returns a value below the field's lower bound (1, 1 and 0) or above its stated maximum.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from traceforge.errors import BadInput
from traceforge.paths import missing_file_reason
from traceforge.schema import INT32_MAX

if TYPE_CHECKING:
    from traceforge.generate.spec import SpecReader

# dist -> (required parameters, optional parameters)
DIST_PARAMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "const": (("value",), ()),
    "uniform": (("low", "high"), ()),
    "choice": (("values",), ("weights",)),
    "lognormal": (("median", "sigma", "max"), ("min",)),
    "zipf": (("a", "max"), ("min",)),
    "empirical": (("path", "column"), ()),
}
ZIPF_MAX_SUPPORT = 10_000_000  # the inverse-CDF table is this long at most (80 MB)


class ShapeDist:
    dist: ClassVar[str]

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        raise NotImplementedError

    @property
    def bounds(self) -> tuple[int, int]:
        """Smallest and largest value the distribution can return."""
        raise NotImplementedError

    def to_spec(self) -> Any:
        out: dict[str, Any] = {"dist": self.dist}
        out.update({k: (list(v) if isinstance(v, tuple) else v)
                    for k, v in self.__dict__.items() if not k.startswith("_")})
        return out


@dataclass(frozen=True)
class ConstDist(ShapeDist):
    value: int
    dist: ClassVar[str] = "const"

    def sample(self, rng, n):
        return np.full(n, self.value, dtype=np.int32)

    @property
    def bounds(self):
        return self.value, self.value

    def to_spec(self):
        return self.value  # a bare number is a constant


@dataclass(frozen=True)
class UniformDist(ShapeDist):
    """Integers uniform on [low, high], both ends included."""

    low: int
    high: int
    dist: ClassVar[str] = "uniform"

    def sample(self, rng, n):
        return rng.integers(self.low, self.high, size=n, endpoint=True, dtype=np.int32)

    @property
    def bounds(self):
        return self.low, self.high


@dataclass(frozen=True)
class ChoiceDist(ShapeDist):
    values: tuple[int, ...]
    weights: tuple[float, ...] | None = None
    dist: ClassVar[str] = "choice"

    def sample(self, rng, n):
        values = np.asarray(self.values, dtype=np.int32)
        if self.weights is None:
            return values[rng.integers(0, len(values), size=n)]
        with np.errstate(over="ignore"):
            cdf = np.cumsum(self.weights, dtype=np.float64)
        if not np.isfinite(cdf[-1]):  # weights near the float maximum: their sum overflows
            cdf = np.cumsum(np.asarray(self.weights) / max(self.weights))
        cdf /= cdf[-1]
        idx = np.searchsorted(cdf, rng.random(n), side="right")
        return values[np.minimum(idx, len(values) - 1)]

    @property
    def bounds(self):
        return min(self.values), max(self.values)

    def to_spec(self):
        out: dict[str, Any] = {"dist": "choice", "values": list(self.values)}
        if self.weights is not None:
            out["weights"] = list(self.weights)
        return out


@dataclass(frozen=True)
class LognormalDist(ShapeDist):
    """round(median·exp(sigma·Z)), Z ~ N(0, 1), clipped to [min, max]."""

    median: float
    sigma: float
    max: int
    min: int
    dist: ClassVar[str] = "lognormal"

    def sample(self, rng, n):
        # exp may overflow to inf or underflow to 0: both are then clipped to max / min, which
        # is exactly where those values belong, so the float warnings say nothing
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            x = np.rint(self.median * np.exp(self.sigma * rng.standard_normal(n)))
        return np.clip(x, self.min, self.max).astype(np.int32)

    @property
    def bounds(self):
        return self.min, self.max


@dataclass(frozen=True)
class ZipfDist(ShapeDist):
    """Truncated Zipf on {min..max}: P(k) ∝ k^(−a). Any a > 0 works because the support is finite
    (numpy's ``zipf`` needs a > 1 and is unbounded, so clipping it would pile mass on ``max``)."""

    a: float
    max: int
    min: int
    dist: ClassVar[str] = "zipf"

    def sample(self, rng, n):
        support = np.arange(self.min, self.max + 1, dtype=np.float64)
        cdf = np.cumsum(support ** -self.a)
        if not cdf[-1] > 0:  # a so large that every k^-a underflows: scale by min^a first
            cdf = np.cumsum((support / self.min) ** -self.a)
        cdf /= cdf[-1]
        idx = np.searchsorted(cdf, rng.random(n), side="right")
        return (self.min + np.minimum(idx, len(support) - 1)).astype(np.int32)

    @property
    def bounds(self):
        return self.min, self.max


@dataclass(frozen=True)
class EmpiricalDist(ShapeDist):
    """Resample (with replacement, uniformly) the values of one column of a CSV/Parquet file."""

    path: str  # as written in the spec (relative to the spec file)
    column: str
    _values: np.ndarray | None = None
    dist: ClassVar[str] = "empirical"

    def sample(self, rng, n):
        return self._values[rng.integers(0, self._values.size, size=n)]

    @property
    def bounds(self):
        return int(self._values.min()), int(self._values.max())

    def __eq__(self, other):
        return isinstance(other, EmpiricalDist) and (self.path, self.column) == (
            other.path, other.column)

    def __hash__(self):
        return hash((self.path, self.column))


def _check_column(names: list[str], path: Path, column: str, *, source: object,
                  key: str) -> None:
    """``column`` must name exactly one column of ``path``."""
    if column not in names:
        raise BadInput(f"no such column in {path.name}", source=source, key=f"{key}.column",
                       value=column, allowed=", ".join(names))
    if names.count(column) > 1:
        raise BadInput(f"{path.name} has {names.count(column)} columns of this name: which one "
                       "is meant is ambiguous", source=source, key=f"{key}.column", value=column)


def read_column(path: Path, column: str, *, source: object, key: str) -> np.ndarray:
    """One numeric column of a CSV or Parquet file, as a float64 array (nulls rejected)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if not path.is_file():
        raise BadInput(missing_file_reason(path), source=source, key=f"{key}.path",
                       value=str(path))
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            names = pq.read_schema(path).names
            _check_column(names, path, column, source=source, key=key)
            array = pq.read_table(path, columns=[column]).column(column)
        elif suffix in (".csv", ".txt"):
            table = pacsv.read_csv(path)
            # a header naming it twice (x,x) was KeyError: 'Field "x" exists 2 times in schema'
            _check_column(table.column_names, path, column, source=source, key=key)
            array = table.column(column)
        else:
            raise BadInput("unsupported file type", source=source, key=f"{key}.path",
                           value=str(path), allowed=".csv, .parquet")
    except (pa.ArrowInvalid, OSError) as exc:
        raise BadInput(f"cannot read ({exc})", source=source, key=f"{key}.path",
                       value=str(path)) from exc
    if array.null_count:
        raise BadInput(f"column has {array.null_count} empty values", source=source,
                       key=f"{key}.column", value=column)
    if not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)):
        raise BadInput(f"column is not numeric ({array.type})", source=source,
                       key=f"{key}.column", value=column)
    return array.to_numpy().astype(np.float64)


def make_dist(r: SpecReader, key: str, dist: str, table: dict, low: int) -> ShapeDist:
    """Build a validated distribution for a field whose values must be >= ``low``."""

    def opt_min() -> int:
        return r.integer(table["min"], f"{key}.min", low=low) if "min" in table else max(low, 1)

    if dist == "const":
        return ConstDist(r.integer(table["value"], key if "dist" not in table else f"{key}.value",
                                   low=low))
    if dist == "uniform":
        lo = r.integer(table["low"], f"{key}.low", low=low)
        hi = r.integer(table["high"], f"{key}.high", low=low)
        if hi < lo:
            r.fail(f"{key}.high", hi, f"must be >= low ({lo})")
        return UniformDist(lo, hi)
    if dist == "choice":
        values = r.int_list(table["values"], f"{key}.values", low=low)
        weights = None
        if "weights" in table:
            weights = r.number_list(table["weights"], f"{key}.weights", low=0)
            if len(weights) != len(values):
                r.fail(f"{key}.weights", table["weights"],
                       f"needs one weight per value ({len(values)})")
            if sum(weights) <= 0:
                r.fail(f"{key}.weights", table["weights"], "weights must not all be 0")
        return ChoiceDist(values, weights)
    if dist == "lognormal":
        median = r.number(table["median"], f"{key}.median", low=0, low_open=True)
        sigma = r.number(table["sigma"], f"{key}.sigma", low=0, low_open=True)
        lo = opt_min()
        hi = r.integer(table["max"], f"{key}.max", low=lo)
        return LognormalDist(median, sigma, hi, lo)
    if dist == "zipf":
        a = r.number(table["a"], f"{key}.a", low=0, low_open=True)
        lo = opt_min()
        hi = r.integer(table["max"], f"{key}.max", low=lo)
        if hi - lo + 1 > ZIPF_MAX_SUPPORT:
            r.fail(f"{key}.max", hi, f"support max - min + 1 must be <= {ZIPF_MAX_SUPPORT}")
        return ZipfDist(a, hi, lo)
    if dist == "empirical":
        rel = r.string(table["path"], f"{key}.path")
        column = r.string(table["column"], f"{key}.column")
        path = Path(rel)
        if not path.is_absolute() and r.base_dir is not None:
            path = r.base_dir / path
        values = read_column(path, column, source=r.source, key=key)
        if values.size == 0:
            r.fail(f"{key}.column", column, "column is empty")
        bad = np.flatnonzero((values != np.rint(values)) | (values < low) | (values > INT32_MAX))
        if bad.size:
            i = int(bad[0])
            r.fail(f"{key}.column", column,
                   f"row {i} holds {values[i]!r}; values must be integers >= {low}")
        return EmpiricalDist(rel, column, values.astype(np.int32))
    raise AssertionError(dist)
