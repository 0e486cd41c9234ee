"""The ``traceforge`` command line (typer). The only module, with ``commands/``, that imports
every stage. Each ``commands/<name>.py`` has ``register(app)``; heavy imports stay inside the
command functions so ``traceforge --help`` and ``trace gen`` start fast.

Exit codes (CONTRACT.md): 0 done, 1 runtime failure, 2 bad input (one line, nothing written),
130 interrupted.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import signal
import sys


def _interrupted_while_starting(signum, frame) -> None:
    import os

    with contextlib.suppress(OSError):
        os.write(2, b"traceforge: interrupted\n")
    os._exit(130)  # nothing written yet: one line, not a traceback out of an import


def _started_as_the_cli() -> bool:
    """The `traceforge` script or `python -m traceforge` (not a program importing us)."""
    import os

    argv0 = sys.argv[0] if sys.argv else ""
    return (os.path.basename(argv0) == "traceforge"
            or argv0.replace(os.sep, "/").endswith("traceforge/__main__.py"))


if _started_as_the_cli() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    # Ctrl-C while typer and the commands import (~0.4 s) printed a 20-line KeyboardInterrupt
    # traceback; main() restores Python's handler (asyncio's runner looks for it) first thing.
    with contextlib.suppress(ValueError):  # imported from a thread other than the main one
        signal.signal(signal.SIGINT, _interrupted_while_starting)

import typer  # noqa: E402

from traceforge.errors import BadInput, TraceforgeError  # noqa: E402

COMMAND_MODULES = ("trace", "replay", "simulate", "profile", "report", "export", "zoo", "demo",
                   "study")

class _Interrupted(Exception):
    """Ctrl-C / SIGTERM out of a command (see :class:`_Group`)."""


class _Group(typer.core.TyperGroup):
    """Typer turns a KeyboardInterrupt out of a command into a silent exit 130: main() never
    saw it, and `trace gen`, `simulate`, `report`... ended on Ctrl-C without a word. Passed up
    as :class:`_Interrupted` instead, so main() says "traceforge: interrupted"."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Interrupted() from exc


app = typer.Typer(
    cls=_Group,
    name="traceforge",
    help="Generate, replay and explain ML inference workload traces on shared GPUs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},  # inherited by every command
)


def _print_version(value: bool) -> None:
    if value:
        from traceforge import __version__

        typer.echo(__version__)
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.",
                                 callback=_print_version, is_eager=True),
) -> None:
    """Generate, replay and explain ML inference workload traces on shared GPUs."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"traceforge.commands.{_name}").register(app)


def _click_exceptions():
    try:  # typer >= 0.2x vendors click; older typer uses the click package
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def _sigterm_like_sigint() -> None:
    """SIGTERM takes the Ctrl-C path (asyncio's runner, the replay's handlers, ``finally``
    blocks that stop workers and remove temp directories) and exits 130 like SIGINT."""
    import contextlib
    import signal

    def on_term(signum, frame) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler) and handler is not on_term:
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # not the main thread (main() called from a thread)
        signal.signal(signal.SIGTERM, on_term)


# OSErrors that can only mean a malformed path (a name too long, a symlink loop), never a fault
# of the machine: bad input, exit 2, wherever a command first touched the path.
_USER_PATH_ERRNOS = {errno.ENAMETOOLONG, errno.ELOOP}


def main(argv: list[str] | None = None) -> None:
    if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    click_exc = _click_exceptions()
    _sigterm_like_sigint()
    try:
        # standalone_mode=False: click hands usage errors to us so they become one line.
        result = app(args=argv, prog_name="traceforge", standalone_mode=False)
    except click_exc.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:
            print(exc.ctx.get_help())
            sys.exit(0)
        where = exc.ctx.command_path if exc.ctx is not None else "traceforge"
        print(f"traceforge: error: {where}: {exc.format_message()}".replace("\n", " "),
              file=sys.stderr)
        sys.exit(2)
    except click_exc.ClickException as exc:
        print(f"traceforge: error: {exc.format_message()}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt, _Interrupted):
        print("traceforge: interrupted", file=sys.stderr)
        sys.exit(130)
    except BadInput as exc:
        print(f"traceforge: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except TraceforgeError as exc:
        print(f"traceforge: failed: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except OSError as exc:  # a write the commands did not foresee (disk full, I/O): one line
        where = f"{exc.filename}: " if exc.filename else ""
        if exc.errno in _USER_PATH_ERRNOS:  # a path the user gave that cannot exist: exit 2
            print(f"traceforge: error: {where}{exc.strerror or exc}", file=sys.stderr)
            sys.exit(2)
        print(f"traceforge: failed: {where}{exc.strerror or exc}", file=sys.stderr)
        sys.exit(1)
    sys.exit(result if isinstance(result, int) else 0)
