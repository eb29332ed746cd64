"""One exception type for every user-facing failure, so the CLI can print one line, not a traceback."""

from __future__ import annotations


class CxrError(Exception):
    """A problem with the user's input or environment, reported as one line.

    ``exit_code`` lets a command distinguish "bad input" (2) from "the data failed a check" (1).
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, cut to ``limit`` characters: how a caught failure is recorded."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:limit] if first else type(exc).__name__
