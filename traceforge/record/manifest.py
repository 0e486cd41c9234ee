"""run.json: written at start with status ``running`` and rewritten atomically at the end."""

from __future__ import annotations

import datetime as dt
import functools
import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from traceforge.schema import RUN_SCHEMA_ID, atomic_write

RUN_STATUSES = ("running", "complete", "interrupted", "failed")


def package_versions(names: tuple[str, ...] = ("traceforge", "numpy", "pyarrow", "scipy",
                                                "aiohttp", "torch", "transformers")) -> dict:
    # importlib.metadata parses every METADATA file it reads (~5 ms each): once per process,
    # since a study writes hundreds of run.json files.
    return dict(_package_versions(names))


@functools.cache
def _package_versions(names: tuple[str, ...]) -> dict:
    out: dict[str, str] = {"python": sys.version.split()[0]}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


class RunManifest:
    """The run's manifest. ``data`` is a plain dict so backends can add their own keys."""

    def __init__(self, run_dir: Path | str, *, name: str = "run.json", **fields: Any) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / name
        self.data: dict[str, Any] = {
            "schema": RUN_SCHEMA_ID,
            "status": "running",
            "started_at": dt.datetime.now(dt.UTC).isoformat(),
            "host": platform.node(),
            "versions": package_versions(),
            **fields,
        }

    def update(self, **fields: Any) -> None:
        self.data.update(fields)

    def write(self) -> None:
        from traceforge.analyze.jsonable import jsonable

        # strict JSON: a NaN or infinity (an empty statistic) is written as null
        text = json.dumps(jsonable(self.data), indent=2, sort_keys=True, default=str,
                          allow_nan=False)
        atomic_write(self.path, lambda tmp: tmp.write_text(text + "\n"))

    def finish(self, status: str, **fields: Any) -> None:
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r}")
        self.data.update(fields, status=status,
                         finished_at=dt.datetime.now(dt.UTC).isoformat())
        self.write()

    @classmethod
    def open(cls, run_dir: Path | str, *, name: str = "run.json") -> RunManifest:
        """An existing manifest, to amend (``update`` or edit ``data``, then ``write``): every
        key it holds is kept as it is."""
        manifest = cls.__new__(cls)
        manifest.run_dir = Path(run_dir)
        manifest.path = manifest.run_dir / name
        manifest.data = json.loads(manifest.path.read_text())
        return manifest

    @staticmethod
    def load(run_dir: Path | str) -> dict[str, Any]:
        return json.loads((Path(run_dir) / "run.json").read_text())
