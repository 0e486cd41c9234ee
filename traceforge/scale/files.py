"""Moving a run directory's files between hosts without a shared filesystem: a worker packs its
files as ``{relative path: bytes}``; the driver lands each one atomically (dot-file + rename,
like every part writer), so a reader never sees half a file."""

from __future__ import annotations

from pathlib import Path

from traceforge.schema import atomic_write


def pack_dir(root: Path | str) -> dict[str, bytes]:
    root = Path(root)
    # Dot-files and anything under a dot-directory (temporaries, a recorder's scratch) stay.
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part.startswith(".")
                                       for part in p.relative_to(root).parts)}


def land_files(files: dict[str, bytes], dest: Path | str) -> list[Path]:
    dest = Path(dest).resolve()
    out = []
    for rel, data in files.items():
        path = (dest / rel).resolve()
        if dest not in path.parents:  # a shipped name must stay inside the destination
            raise ValueError(f"refusing to write {rel!r} outside {dest}")
        atomic_write(path, lambda tmp, data=data: tmp.write_bytes(data))
        out.append(path)
    return out
