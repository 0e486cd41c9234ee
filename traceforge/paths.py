"""Where outputs may go: never onto or into an input, never onto something that is not a file,
and only where the file system will take them; and the exclusive claim of a run directory.

Every command that writes calls :func:`check_output` (files) or :func:`claim_run_dir` (run
directories) before it computes anything, so a bad ``-o`` costs nothing and writes nothing
(exit 2, one line naming the flag and the path). Paths are compared after resolving symlinks and
``..``, and by inode where both exist (hard links).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path

from traceforge.errors import BadInput, RunFailure

LOCK_NAME = ".traceforge.lock"
TMP_NAME_EXTRA = 16  # what atomic_write's temporary name adds to a file name


def _resolved(path: Path | str) -> Path:
    # No os.path.abspath first: it drops "link/.." lexically, where the kernel goes through
    # the link and then up from its target (the check and the write named other folders).
    path = Path(path).expanduser()
    try:
        return path.resolve(strict=False)
    except (RuntimeError, OSError):  # a symlink loop (RuntimeError before Python 3.13)
        return Path(os.path.realpath(path))


def _same_or_inside(out: Path, inp: Path) -> bool:
    return out == inp or inp in out.parents


def overlaps(out: Path | str, inp: Path | str) -> bool:
    """True when ``out`` is ``inp`` or lies inside it (symlinks, ``..`` and hard links seen
    through)."""
    o, i = _resolved(out), _resolved(inp)
    if _same_or_inside(o, i):
        return True
    with contextlib.suppress(OSError):
        if Path(out).exists() and Path(inp).exists() and os.path.samefile(out, inp):
            return True
    return False


def check_output(out: Path | str, *, inputs: Iterable[tuple[str, Path | str | None]] = (),
                 key: str = "-o", kind: str = "file", replaces: tuple[str, ...] = ()) -> Path:
    """Refuse (BadInput, exit 2) an output that would destroy an input or cannot be written.

    ``inputs`` are ``(what, path)`` pairs, e.g. ``("the trace being replayed", trace)``; None
    paths are skipped. ``kind`` is ``file`` (an existing path must be a regular file; it is
    replaced atomically) or ``dir`` (an existing path must be a directory). ``replaces``: the
    suffixes (lower case) an existing file must have to be replaced, e.g. ``(".json",)`` for a
    JSON export, so that a mistyped path never overwrites the trace a run was made from.
    """
    out = Path(out)
    _check_name_lengths(out, key)
    for what, inp in inputs:
        if inp is None:
            continue
        if overlaps(out, inp):
            raise BadInput(f"is or is inside {what} ({inp}); choose another path", key=key,
                           value=str(out))
    if out.exists() or out.is_symlink():
        if kind == "file" and out.is_dir():
            raise BadInput("is a directory; give a file name", key=key, value=str(out))
        if kind == "file" and not out.is_file():
            raise BadInput("exists and is not a regular file", key=key, value=str(out))
        if replaces and out.is_file() and out.suffix.lower() not in replaces:
            raise BadInput(f"exists and is not a {replaces[0]} file; choose another path",
                           key=key, value=str(out))
        if kind == "dir" and not out.is_dir():
            raise BadInput("exists and is not a directory", key=key, value=str(out))
    check_writable(out, key=key)
    return out


def _check_name_lengths(out: Path, key: str) -> None:
    """Names the file system cannot hold fail now, not after the work (``Path.exists`` itself
    raises on them). The last one gets atomic_write's temporary ``.NAME.XXXXXXXX.tmp`` first."""
    try:
        name_max = os.pathconf(os.path.dirname(os.path.abspath(out)) or "/", "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    parts = Path(os.path.abspath(out)).parts
    for k, part in enumerate(parts):
        limit = name_max - (TMP_NAME_EXTRA if k == len(parts) - 1 else 0)
        if len(os.fsencode(part)) > limit:
            shown = str(out) if len(str(out)) <= 80 else str(out)[:77] + "..."
            raise BadInput(f"a name in the path is longer than the file system allows ({limit} "
                           "bytes)", key=key, value=shown)


def check_writable(out: Path, *, key: str) -> None:
    """The nearest existing ancestor of ``out`` must be a writable directory (exit 2 otherwise:
    a path the user chose)."""
    parent = Path(os.path.abspath(out)).parent
    while not parent.exists():
        if parent.is_symlink():  # a dangling symlink on the way
            raise BadInput(f"cannot create {parent}: dangling symlink", key=key, value=str(out))
        parent = parent.parent
    if not parent.is_dir():
        raise BadInput(f"cannot create it: {parent} is not a directory", key=key,
                       value=str(out))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInput(f"cannot write into {parent} (permission denied or read-only)", key=key,
                       value=str(out))


# Errors that mean "this place cannot take a file" (the user's path) rather than "writing failed
# part-way" (a full disk, an I/O error).
_PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST,
                errno.ENOENT, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP}


def output_error(path: Path | str, exc: OSError) -> BadInput | RunFailure:
    """The one-line error for an OSError raised while writing ``path``."""
    reason = exc.strerror or str(exc)
    if exc.errno in _PATH_ERRNOS:
        return BadInput(f"cannot write: {reason}", key=str(path))
    return RunFailure(f"cannot write {path}: {reason}; nothing was written under that name")


def missing_file_reason(path: Path | str) -> str:
    """Why ``path`` cannot be read as a file, for a one-line refusal."""
    path = Path(path)
    if path.is_dir():
        return "is a directory, not a file"
    return "no such file" if not path.exists() else "not a regular file"


# -- run directories ------------------------------------------------------------------------

def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not: it has exited and holds nothing)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie has exited: it holds nothing
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


class RunDirClaim:
    """An exclusive claim on a run directory: ``RUN_DIR/.traceforge.lock`` created with
    ``O_CREAT|O_EXCL`` holding the owner's PID. A second run into the same directory fails
    (exit 2) while the owner lives; a lock left by a dead process (``kill -9``) is taken over.
    :meth:`release` removes the lock, and the directory too if this claim created it and
    nothing else was written (a run refused after the claim leaves nothing behind)."""

    def __init__(self, run_dir: Path, created: bool, lock: Path) -> None:
        self.run_dir = run_dir
        self.created = created
        self.lock = lock
        self.released = False

    def release(self, *, remove_if_empty: bool = False) -> None:
        if self.released:
            return
        self.released = True
        with contextlib.suppress(OSError):
            self.lock.unlink()
        if remove_if_empty and self.created:
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()  # only succeeds if empty


def _occupants(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir()
                  if p.name != LOCK_NAME and not p.name.startswith(f"{LOCK_NAME}.stale-"))


def _refuse_occupied(run_dir: Path, others: list[str], key: str) -> None:
    what = "already holds a run" if ("run.json" in others or "timeline" in others) \
        else f"is not empty (holds {others[0]!r})"
    raise BadInput(f"{what}; a run directory must be new or empty", key=key, value=str(run_dir))


def check_run_dir(run_dir: Path | str, *, key: str = "-o",
                  inputs: Iterable[tuple[str, Path | str | None]] = ()) -> Path:
    """Everything :func:`claim_run_dir` refuses, checked without creating anything."""
    run_dir = Path(run_dir)
    check_output(run_dir, inputs=inputs, key=key, kind="dir")
    if run_dir.is_dir():
        lock = run_dir / LOCK_NAME
        if lock.exists():
            owner, host = _lock_owner(lock)
            if _held(owner, host):
                raise BadInput(f"is being written by another run (pid {owner})", key=key,
                               value=str(run_dir))
        others = _occupants(run_dir)
        if others:
            _refuse_occupied(run_dir, others, key)
    return run_dir


def _lock_owner(lock: Path) -> tuple[int, str | None]:
    """(pid, host) written in a lock file; pid -1 when unreadable (being written, or torn)."""
    try:
        parts = lock.read_text().split()
        return int(parts[0]), (parts[1] if len(parts) > 1 else None)
    except (OSError, ValueError, IndexError):
        return -1, None


def _held(owner: int, host: str | None) -> bool:
    """Whether a lock's owner lives or may live: on another host (a shared file system) it is
    never second-guessed; on this one, its PID must be a live process."""
    return owner != -1 and ((host is not None and host != socket.gethostname())
                            or pid_alive(owner))


def lock_dir(directory: Path, *, key: str = "-o", what: str = "run") -> Path:
    """Claim ``directory`` (which exists) for this process: ``directory/.traceforge.lock``
    created with ``O_CREAT|O_EXCL``, holding ``"PID HOST"``. Refused (BadInput naming ``key``)
    while the owner lives — or may live: an owner on another host (a shared file system) is
    never second-guessed; a lock left by a dead process on this host (``kill -9``) is taken
    over. The one lock of run directories and study directories; returns the lock's path."""
    lock = directory / LOCK_NAME
    here = socket.gethostname()
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner, host = _lock_owner(lock)
            try:  # a lock without a PID yet is being written by its owner right now
                fresh = owner == -1 and time.time() - lock.stat().st_mtime < 10
            except OSError:
                fresh = False
            elsewhere = host is not None and host != here
            if fresh or _held(owner, host):
                who = ("" if owner == -1 else f" (pid {owner}" +
                       (f" on {host})" if elsewhere else ")"))
                raise BadInput(f"is being written by another {what}{who}", key=key,
                               value=str(directory)) from None
            # Stale (owner dead, or a lock half-written by a crash): move it aside, retry. Only
            # one of several racing takers wins the rename; the others retry and lose O_EXCL.
            with contextlib.suppress(OSError):
                os.rename(lock, directory / f"{LOCK_NAME}.stale-{os.getpid()}")
                (directory / f"{LOCK_NAME}.stale-{os.getpid()}").unlink()
            continue
        except OSError as exc:
            raise BadInput(f"cannot write into the {what} directory: {exc.strerror}", key=key,
                           value=str(directory)) from exc
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()} {here}\n")
        return lock
    raise BadInput(f"could not claim the {what} directory (lock contended)", key=key,
                   value=str(directory))


def claim_run_dir(run_dir: Path | str, *, key: str = "-o",
                  inputs: Iterable[tuple[str, Path | str | None]] = ()) -> RunDirClaim:
    """Create (or adopt an empty) ``run_dir`` and claim it exclusively; see :class:`RunDirClaim`.

    Refused with exit 2: an output over an input, a path that is not a directory, a directory
    that already holds anything (a run, or other files: a run directory is strictly new), a
    directory another live process has claimed.
    """
    run_dir = Path(run_dir)
    check_output(run_dir, inputs=inputs, key=key, kind="dir")
    created = False
    try:
        run_dir.mkdir(parents=True)
        created = True
    except FileExistsError:
        if not run_dir.is_dir():
            raise BadInput("exists and is not a directory", key=key, value=str(run_dir)) from None
    except OSError as exc:
        raise BadInput(f"cannot create the run directory: {exc.strerror}", key=key,
                       value=str(run_dir)) from exc
    try:
        lock = lock_dir(run_dir, key=key)
    except BadInput:
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        raise
    claim = RunDirClaim(run_dir, created, lock)
    others = _occupants(run_dir)
    if others:
        claim.release()
        _refuse_occupied(run_dir, others, key)
    return claim
