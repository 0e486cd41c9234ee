"""JSON output for reports: NaN/inf become null, numpy scalars become Python numbers."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(obj: Any, *, indent: int | None = 2) -> str:
    """Strict JSON (no NaN tokens) for a report or comparison dict."""
    return json.dumps(jsonable(obj), indent=indent, allow_nan=False, default=str)
