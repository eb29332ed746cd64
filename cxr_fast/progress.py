"""One progress display for long work (epochs of a run, runs of a study): a rich bar, or nothing.

A disabled ``Bar`` accepts every call and shows nothing, so callers need no ``if progress:`` branches;
``print`` lines stay in the terminal's scrollback (and in logs) after the bar is gone.
"""

from __future__ import annotations

from typing import Any


class Bar:
    """A rich ``Progress`` with the given columns when ``enabled``; a silent stand-in otherwise."""

    def __init__(self, enabled: bool, *columns: Any) -> None:
        self.progress = None
        if enabled:
            from rich.progress import Progress

            self.progress = Progress(*columns, transient=False)

    @property
    def enabled(self) -> bool:
        return self.progress is not None

    def __enter__(self) -> "Bar":
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def add(self, description: str, total: int, **fields: Any) -> Any:
        return None if self.progress is None else self.progress.add_task(description, total=total, **fields)

    def update(self, task: Any, **fields: Any) -> None:
        if self.progress is not None and task is not None:
            self.progress.update(task, **fields)

    def print(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text)
