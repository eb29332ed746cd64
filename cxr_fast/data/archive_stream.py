"""Many archives read at once, one worker process per archive: a gzip stream can only be read from its start.

``imap_members`` hands each wanted member's bytes to the caller's function in the worker and streams the
results back as they come (``Read``), then one ``Finished`` per archive, whether it was read to its end or
broke (named with the member where it did), so ``prepare`` can write and checkpoint as it goes. A worker
that dies is noticed, and its archive reported as not read to its end.
"""

from __future__ import annotations

import queue as queue_module
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

from cxr_fast.data.archives import ArchiveError, read_members
from cxr_fast.errors import CxrError, one_line
from cxr_fast.parallel import worker_signals


@dataclass(frozen=True)
class Read:
    """One wanted member, decoded by the caller's function (``imap_members``)."""

    archive: str
    member: str
    result: Any


@dataclass(frozen=True)
class Finished:
    """An archive read to its end (``problem`` None) or to where it broke (the ``ArchiveError`` line);
    ``unread``: the payloads of the wanted members it never yielded."""

    archive: str
    problem: str | None
    unread: tuple[Any, ...]


def _events(fn: Callable[[Any, bytes], Any], archive: str, wanted: Mapping[str, Any]) -> Iterator[Read | Finished]:
    seen: set[str] = set()
    problem = None
    try:
        for member, data in read_members(archive, wanted):
            seen.add(member)
            yield Read(archive, member, fn(wanted[member], data))
    except ArchiveError as exc:
        problem = str(exc)
    yield Finished(archive, problem, tuple(p for m, p in wanted.items() if m not in seen))


def _worker(fn: Callable[[Any, bytes], Any], todo: Any, out: Any, initializer: Callable[[], None] | None,
            wid: int) -> None:
    """One long-lived worker: archives from ``todo`` until a None, each read through, events to ``out``."""
    archive = "?"
    worker_signals()
    try:
        if initializer is not None:
            initializer()
        while (task := todo.get()) is not None:
            archive, wanted = task
            out.put(("start", wid, archive))
            for event in _events(fn, archive, wanted):
                out.put(event)
    except KeyboardInterrupt:
        pass  # the parent is stopping too, and says so
    except BaseException as exc:  # a bug, not a broken archive: the parent raises it
        out.put(("failed", archive, one_line(exc)))


def imap_members(fn: Callable[[Any, bytes], Any], tasks: Sequence[tuple[str, Mapping[str, Any]]], description: str,
                 workers: int | None = None, quiet: bool = False,
                 initializer: Callable[[], None] | None = None) -> Iterator[Read | Finished]:
    """For each task (archive, {member: payload}) yield ``Read(archive, fn(payload, bytes))`` per wanted member
    as it is decoded, then one ``Finished`` for the archive; one process per archive, ``workers`` at a time
    (inline with one). Results stream back as they come, so the caller can write and checkpoint them."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from cxr_fast.parallel import worker_count

    n = worker_count(workers, len(tasks))
    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=quiet) as progress:
        bar = progress.add_task(description, total=sum(len(w) for _, w in tasks))
        source = (event for archive, wanted in tasks for event in _events(fn, archive, wanted)) if n == 1 \
            else _pooled(fn, tasks, n, initializer)
        for event in source:
            progress.advance(bar, 1 if isinstance(event, Read) else len(event.unread))
            yield event


def _pooled(fn: Callable[[Any, bytes], Any], tasks: Sequence[tuple[str, Mapping[str, Any]]], n: int,
            initializer: Callable[[], None] | None) -> Iterator[Read | Finished]:
    """``n`` workers, started once (each imports and initialises once), share the archives."""
    from cxr_fast.parallel import mp_context

    ctx = mp_context()
    todo, out = ctx.Queue(), ctx.Queue(maxsize=64 * n)
    for archive, wanted in tasks:
        todo.put((archive, dict(wanted)))
    for _ in range(n):
        todo.put(None)
    procs = [ctx.Process(target=_worker, args=(fn, todo, out, initializer, i), daemon=True) for i in range(n)]
    for proc in procs:
        proc.start()
    wanted_of = {archive: wanted for archive, wanted in tasks}
    seen: dict[str, set[str]] = {archive: set() for archive in wanted_of}
    at: dict[int, str] = {}  # worker -> the archive it is reading
    finished: set[str] = set()
    dead_since: dict[int, float] = {}

    def died(archive: str, why: str) -> Finished:
        finished.add(archive)
        return Finished(archive, f"{archive}: {why}",
                        tuple(p for m, p in wanted_of[archive].items() if m not in seen[archive]))

    try:
        while len(finished) < len(tasks):
            try:
                event = out.get(timeout=0.5)
            except queue_module.Empty:
                # A dead worker's last events may still be in the pipe: give them two seconds first.
                now = time.monotonic()
                gone = [i for i, p in enumerate(procs)
                        if p.exitcode is not None and now - dead_since.setdefault(i, now) > 2.0]
                for i in gone:
                    if i in at:
                        yield died(at.pop(i), f"its worker died (exit code {procs[i].exitcode})")
                if len(gone) == len(procs):  # nobody left to read what is still queued
                    codes = ", ".join(str(p.exitcode) for p in procs)
                    for archive in [a for a in wanted_of if a not in finished]:
                        yield died(archive, f"not read to its end: every worker died (exit codes {codes})")
                continue
            if isinstance(event, tuple):
                if event[0] == "failed":
                    raise CxrError(f"{event[1]}: reading it failed: {event[2]}")
                at[event[1]] = event[2]
                continue
            if isinstance(event, Finished):
                if event.archive in finished:
                    continue
                finished.add(event.archive)
                at = {i: a for i, a in at.items() if a != event.archive}
            else:
                seen[event.archive].add(event.member)
            yield event
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.join()
