"""The study's progress line over runs, plus one printed line per finished run (kept in logs)."""

from __future__ import annotations

from typing import Any

from cxr_fast.study.grid import Cell


class StudyProgress:
    """The study's progress line over runs, plus one printed line per finished run (kept in logs)."""

    def __init__(self, total: int, completed: int, enabled: bool) -> None:
        from cxr_fast.progress import Bar

        self.total, self.completed = total, completed
        self.running: list[str] = []
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, TimeElapsedColumn

            self.bar = Bar(True, "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn())
        else:
            self.bar = Bar(False)

    def __enter__(self) -> "StudyProgress":
        self.bar.__enter__()
        self._task = self.bar.add("runs", self.total, completed=self.completed)
        if self.completed:
            self.bar.print(f"{self.completed} of {self.total} runs already finished; skipping them")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def _describe(self) -> str:
        shown = ", ".join(self.running[:2]) + (f" +{len(self.running) - 2} more" if len(self.running) > 2 else "")
        return "runs" + (f" · {shown}" if shown else "")

    def started(self, cell: Cell) -> None:
        self.running.append(cell.describe())
        self.bar.update(self._task, description=self._describe())

    def finished(self, cell: Cell, row: dict[str, Any]) -> None:
        if cell.describe() in self.running:
            self.running.remove(cell.describe())
        self.completed += 1
        self.bar.update(self._task, advance=1, description=self._describe())
        auc, sd = row.get("auc"), row.get("auc_sd")
        score = f"AUC {auc:.3f} ± {sd:.3f}" if isinstance(auc, float) and isinstance(sd, float) else ""
        if row.get("auc_status") == "tied":
            score = "AUC tied (every score equal: no ranking)"
        self.bar.print(f"[{self.completed}/{self.total}] {cell.describe()}: {score} ({row.get('wall_s', 0):.0f} s)")
