"""How the local system tells a person what it is doing (downloads and starts take a while)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Protocol, TextIO


class Progress(Protocol):
    def step(self, message: str) -> None:
        """A lasting line: a phase started or finished."""

    def update(self, message: str) -> None:
        """A transient status (a running count); may overwrite the previous update."""


class NullProgress:
    def step(self, message: str) -> None:
        pass

    def update(self, message: str) -> None:
        pass


class CallbackProgress:
    """Adapts a plain ``callable(str)`` (what tests and the demo like to pass) to :class:`Progress`."""

    def __init__(self, callback: Callable[[str], None], updates: bool = False) -> None:
        self._callback = callback
        self._updates = updates

    def step(self, message: str) -> None:
        self._callback(message)

    def update(self, message: str) -> None:
        if self._updates:
            self._callback(message)


class StreamProgress:
    """Steps as ``==> message`` lines; updates rewrite one line on a terminal, and are thinned out otherwise."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._pending = False
        self._updates = 0

    def step(self, message: str) -> None:
        self._clear()
        print(f"==> {message}", file=self._stream, flush=True)

    def update(self, message: str) -> None:
        self._updates += 1
        if self._tty:
            self._stream.write("\r\033[K    " + message)
            self._stream.flush()
            self._pending = True
        elif self._updates % 10 == 1:  # logs and CI: every tenth update is enough to show it moves
            print(f"    {message}", file=self._stream, flush=True)

    def _clear(self) -> None:
        if self._pending:
            self._stream.write("\r\033[K")
            self._pending = False


def as_progress(progress: Progress | Callable[[str], None] | None) -> Progress:
    if progress is None:
        return NullProgress()
    if hasattr(progress, "step") and hasattr(progress, "update"):
        return progress
    return CallbackProgress(progress)
