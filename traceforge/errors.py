"""The exception tree. Foreign exceptions are translated where they enter, with ``raise ... from``.

    TraceforgeError
    ├── BadInput        user input is wrong (spec, trace, flag, unreachable endpoint): exit 2,
    │                   one line naming the file, key and bad value; nothing is written
    └── RunFailure      something broke while running: exit 1
"""

from __future__ import annotations

_MISSING = object()


class TraceforgeError(Exception):
    exit_code = 1


class BadInput(TraceforgeError):
    """Wrong user input. ``str()`` is the one line the CLI prints.

    >>> str(BadInput("must be > 0", source="w.toml", key="models.bert.arrival.rate", value=-1))
    'w.toml: models.bert.arrival.rate = -1: must be > 0'
    """

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        source: object = None,
        key: str | None = None,
        value: object = _MISSING,
        allowed: object = None,
    ) -> None:
        self.message = message
        self.source = None if source is None else str(source)
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(self._line())

    def _line(self) -> str:
        where = ": ".join(p for p in (self.source, self.key) if p)
        if self.value is not _MISSING:
            where = f"{where} = {self.value!r}" if where else repr(self.value)
        line = f"{where}: {self.message}" if where else self.message
        if self.allowed is not None:
            line += f" (allowed: {self.allowed})"
        return line.replace("\n", " ")


class RunFailure(TraceforgeError):
    exit_code = 1
