"""Process pools with a progress bar: the one way cxr-fast spreads per-image work over all cores."""

from __future__ import annotations

import multiprocessing as mp
import os
from multiprocessing.context import BaseContext
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def mp_context() -> BaseContext:
    """``fork`` where the platform has it (workers inherit imported modules, no re-import), else ``spawn``."""
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def worker_count(requested: int | None, n_items: int) -> int:
    """``requested`` or all cores, never more than there are items, at least one."""
    return max(1, min(requested or os.cpu_count() or 1, n_items))


def imap_progress(fn: Callable[[T], R], items: Sequence[T], description: str, workers: int | None = None,
                  quiet: bool = False, ordered: bool = False, chunksize: int = 4,
                  initializer: Callable[[], None] | None = None) -> Iterator[R]:
    """Yield ``fn(item)`` for every item, from a process pool (inline with one worker), under a rich bar.

    ``initializer`` runs once in each pool worker (not for the inline path, which shares the caller's process).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    n = worker_count(workers, len(items))
    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=quiet) as progress:
        task = progress.add_task(description, total=len(items))
        if n == 1:
            for item in items:
                result = fn(item)
                progress.advance(task)
                yield result
            return
        pool = mp_context().Pool(n, initializer=initializer)
        try:
            results: Iterable[R] = (pool.imap if ordered else pool.imap_unordered)(fn, items, chunksize=chunksize)
            for result in results:
                progress.advance(task)
                yield result
            pool.close()
        finally:
            pool.terminate()
            pool.join()
