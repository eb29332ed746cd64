"""Process pools with a progress bar: the one way cxr-fast spreads per-image work over all cores."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
from multiprocessing.context import BaseContext
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def mp_context() -> BaseContext:
    """``fork`` where the platform has it (workers inherit imported modules, no re-import), else ``spawn``."""
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def worker_signals() -> None:
    """First thing in every worker process: Ctrl-C reaches the whole process group, but only the parent acts
    on it (it stops its workers and says so in one line), so a worker ignores SIGINT; SIGTERM, which the
    parent stops its workers with, ends a worker at once, without the parent's handler or a traceback; and
    on Linux a worker is sent SIGTERM when its parent dies, even of SIGKILL, instead of living on to print
    BrokenPipeError tracebacks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        import ctypes

        parent = mp.parent_process()
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
        if parent is not None and os.getppid() != parent.pid:  # the parent died before the request took hold
            os._exit(1)


def _start_worker(initializer: Callable[[], None] | None) -> None:
    worker_signals()
    if initializer is not None:
        initializer()


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
        pool = mp_context().Pool(n, initializer=_start_worker, initargs=(initializer,))
        try:
            results: Iterable[R] = (pool.imap if ordered else pool.imap_unordered)(fn, items, chunksize=chunksize)
            for result in results:
                progress.advance(task)
                yield result
            pool.close()
        finally:
            pool.terminate()
            pool.join()
