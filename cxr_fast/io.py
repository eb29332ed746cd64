"""Atomic file writes: a crash or a kill never leaves a half-written result behind, and a full disk is one
line naming the file and the space it needs (``DiskFullError``), never a torn file, a SIGBUS or a traceback."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from cxr_fast.errors import CxrError
from cxr_fast.units import GIB, MIB

_UMASK = os.umask(0)
os.umask(_UMASK)
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_FULL_TEXTS = ("No space left", "Disk quota exceeded")
# torch.save's zip writer reports a short write as a RuntimeError ("unexpected pos 576 vs 534", "PytorchStreamWriter
# failed writing file ..."); given a Python file, with the OSError as its context, given a path, with nothing more.
_TORCH_WRITER = ("inline_container", "PytorchStreamWriter")


class DiskFullError(CxrError):
    """No room on a disk for a file: names the file and the space it needs (exit status 1). The file's
    previous version, and the work finished before, are kept, so a rerun after freeing space resumes."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=1)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc``, or an exception it was raised from, says a disk or quota is full (ENOSPC, EDQUOT)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _FULL_ERRNOS:
            return True
        if isinstance(seen, RuntimeError) and any(t in str(seen) for t in _FULL_TEXTS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _filled_disk(exc: BaseException, tmp: Path) -> bool:
    """Whether a failed write into ``tmp`` found its disk full: said so (``is_disk_full``), or torch's writer
    failed with the disk left under 1 MiB free, which is all a path-given ``torch.save`` lets one see."""
    if is_disk_full(exc):
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc) for t in _TORCH_WRITER) and _free(tmp) < MIB


def size_text(nbytes: float) -> str:
    """``nbytes`` for a person: GiB from 1 GiB up, MiB from 1 MiB up, else bytes."""
    if nbytes >= GIB:
        return f"{nbytes / GIB:.2f} GiB"
    return f"{nbytes / MIB:.1f} MiB" if nbytes >= MIB else f"{nbytes:,.0f} bytes"


def _free(path: Path) -> int:
    """Free bytes on the disk holding ``path`` (or its nearest existing folder)."""
    here = path
    while not here.exists() and here != here.parent:
        here = here.parent
    return shutil.disk_usage(here).free


def _full(path: Path, need: str | None, free: int) -> DiskFullError:
    room = f"it needs {need}, {size_text(free)} free there" if need else \
        f"it needs more than the {size_text(free)} free there"
    return DiskFullError(f"{path}: not enough disk space: {room}; free some space and rerun (finished work is kept)")


def check_space(path: str | os.PathLike[str], need: int, spare: int = 0) -> None:
    """Refuse (``DiskFullError``) unless ``path``'s disk has ``need`` bytes free, plus ``spare`` kept back.

    Called before a file is mapped or filled: a memory-mapped page that finds the disk full is a SIGBUS."""
    target = Path(path)
    free = _free(target)
    if need + spare > free:
        raise _full(target, size_text(need + spare), free)


def disk_full_error(path: str | os.PathLike[str], written: int = 0, need: int | None = None) -> DiskFullError:
    """The one line for a write to ``path`` that found the disk full after ``written`` bytes."""
    target = Path(path)
    if need is not None and need > written:
        wanted: str | None = size_text(need)
    else:
        wanted = f"more than {size_text(written)}" if written else None
    return _full(target, wanted, _free(target))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], need: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    ``need`` (bytes, when known) is checked free first. A write that finds the disk full, whatever wrote it
    (``OSError`` ENOSPC, torch's ``RuntimeError``), becomes ``DiskFullError`` naming ``path``; the previous
    ``path`` is untouched either way."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if need is not None:
        check_space(target, need)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(target, 0, need) from None
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the user's usual mode
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except (OSError, RuntimeError) as exc:
        if not _filled_disk(exc, tmp_path):
            raise
        written = tmp_path.stat().st_size if tmp_path.exists() else 0
        tmp_path.unlink(missing_ok=True)
        raise disk_full_error(target, written, need) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path, need=len(data)) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def append_jsonl(path: str | os.PathLike[str], obj: Any) -> None:
    """Append one JSON line and fsync it: a log line is either whole or absent."""
    line = json.dumps(obj, default=_json_default) + "\n"
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    start = target.stat().st_size if target.exists() else 0
    try:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        os.truncate(target, start)  # no torn line left for the next append to bury mid-file
        raise disk_full_error(target, 0, len(line.encode())) from None


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read JSON lines. A torn last line (a kill mid-write) is skipped with a warning that says so; a bad
    line anywhere else means the file was damaged, and is an error naming the file and line."""
    return [row for _, row in read_jsonl_numbered(path)]


def read_jsonl_numbered(path: str | os.PathLike[str]) -> list[tuple[int, Any]]:
    """``read_jsonl`` with each value's line number, so a checker can name ``file:line`` of a bad row."""
    import warnings

    from cxr_fast.errors import CxrError

    rows: list[tuple[int, Any]] = []
    target = Path(path)
    if not target.exists():
        return rows
    try:
        text = target.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CxrError(f"{target} is damaged (not UTF-8 text); restore it or remove it to redo its runs") from None
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError:
            if number == len(lines) and not text.endswith("\n"):
                warnings.warn(f"{target}: skipped a torn last line (a write was interrupted)", stacklevel=2)
                continue
            raise CxrError(f"{target}:{number} is not valid JSON; the file is damaged (restore it, or delete "
                           "that line to redo its run)") from None
    return rows


def numpy_failure(exc: BaseException) -> str:
    """Why a numpy file would not load, in our words: numpy's own text for a garbage file advises loading it
    with pickles allowed, which would run whatever the file holds, so that text is never passed on."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "pickle" in text.lower():
        return "not a numpy array file (it would need unpickling, which is never done)"
    return f"damaged or cut short ({text})"


def load_npy(path: str | os.PathLike[str], mmap_mode: Any = None) -> Any:
    """One ``.npy`` array, never unpickled; a damaged or foreign file is one line naming it."""
    import numpy as np

    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise CxrError(f"{path}: {numpy_failure(exc)}") from None


def read_npz(path: str | os.PathLike[str], names: tuple[str, ...]) -> dict[str, Any]:
    """The arrays ``names`` of an ``.npz`` file, read whole and never unpickled; a damaged or truncated file,
    or one without those arrays, is one line naming it."""
    import zipfile
    import zlib

    import numpy as np

    try:  # our own handle: numpy leaves its own open when a truncated file fails to parse
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            missing = [n for n in names if n not in z.files]
            if missing:
                raise CxrError(f"{path}: no {', '.join(missing)} array in it (has {', '.join(z.files) or 'none'})")
            return {n: np.asarray(z[n]) for n in names}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise CxrError(f"{path}: {numpy_failure(exc)}") from None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
