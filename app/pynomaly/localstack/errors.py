"""The one error type of the local system: its message is one line saying what is wrong and what to do."""

from __future__ import annotations


class LocalStackError(RuntimeError):
    """Something the user can fix (a port in use, Java too old, a corrupt cache...).

    ``detail`` optionally carries more lines (a log tail) that the CLI prints after the message.
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail
