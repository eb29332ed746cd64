"""The ``cache`` format: ``cache/<res>.npy``, N x res x res uint8, the reference resize (``data.resize``)
rounded; rows in manifest order, opened memory-mapped.

A resolution in progress is ``<res>.npy.partial`` plus ``<res>.state.npy`` (per row: 0 to do, 1 done,
2 unreadable), checkpointed every few seconds: a second run resumes from there. The array appears under
its final name by an atomic rename once every row is done or judged unreadable.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np

from cxr_fast.errors import CxrError
from cxr_fast.io import atomic_path, check_space, disk_full_error, is_disk_full
from cxr_fast.stores.files import file_record

FORMAT = "cache"
FOLDER = FORMAT  # the store's folder for this format
TODO, DONE, BAD = 0, 1, 2  # a row's state while a resolution is being filled


def path(root: Path, res: int) -> Path:
    """Where a store at ``root`` keeps its ``res`` px array."""
    return root / FOLDER / f"{res}.npy"


def npy_problem(path: Path, shape: tuple[int, ...], size: int) -> str | None:
    """Why the ``.npy`` at ``path`` is not a C-order uint8 array of ``shape`` filling ``size`` bytes, or None."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version not in readers:
                return f"unknown .npy format version {version}"
            found, fortran, dtype = readers[version](fh)
            offset = fh.tell()
    except (OSError, ValueError, SyntaxError) as exc:
        return f"not a readable .npy ({exc})"
    if tuple(found) != shape or dtype != np.uint8 or fortran:
        return f"holds {tuple(found)} {dtype}, expected {shape} uint8"
    if offset + int(np.prod(shape)) != size:
        return f"{size} bytes where a {shape} array needs {offset + int(np.prod(shape))}"
    return None


_HEADER = 4096  # at most what open_memmap puts before the pixels


def _reserve(partial: Path) -> None:
    """Allocate every block of the mapped ``partial`` now: a page written later into a full disk would kill
    the process with SIGBUS, where this fails first in one line (``DiskFullError``) naming the file and
    what it needs. A resumed file needs only its blocks not yet allocated; checked free before allocating."""
    size = partial.stat().st_size
    missing = max(0, size - partial.stat().st_blocks * 512)
    check_space(partial, missing)
    if not hasattr(os, "posix_fallocate"):  # macOS: the check above is all there is
        return
    fd = os.open(partial, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(partial, 0, missing) from None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise  # a file system that cannot preallocate keeps the check above, which is all it can have
    finally:
        os.close(fd)


class CacheJob:
    """One resolution of the uint8 cache being filled: partial array + per-row state, resumable.

    ``root`` is the store, ``n`` its number of images (rows)."""

    def __init__(self, root: Path, n: int, res: int) -> None:
        self.res = res
        self.final = path(root, res)
        self.partial = self.final.with_name(f"{res}.npy.partial")
        self.state_path = self.final.with_name(f"{res}.state.npy")
        self.final.parent.mkdir(parents=True, exist_ok=True)
        state = None
        if self.partial.exists() and self.state_path.exists():
            try:
                state = np.load(self.state_path, allow_pickle=False)
                arr = np.load(self.partial, mmap_mode="r+", allow_pickle=False)
                if arr.shape != (n, res, res) or state.shape != (n,):
                    state = None
            except (OSError, ValueError):
                state = None
        if state is None:
            self.partial.unlink(missing_ok=True)  # a stale one's blocks count as free for the new array
            check_space(self.partial, _HEADER + n * res * res)
            arr = np.lib.format.open_memmap(self.partial, mode="w+", dtype=np.uint8, shape=(n, res, res))
            state = np.zeros(n, dtype=np.int8)
        _reserve(self.partial)
        self.array = arr
        self.state = state

    def todo(self) -> np.ndarray:
        return np.flatnonzero(self.state == TODO)

    def done(self) -> int:
        """How many rows hold their pixels."""
        return int((self.state == DONE).sum())

    def put(self, row: int, img: np.ndarray | None) -> None:
        if img is None:
            self.state[row] = BAD
            return
        if img.shape != (self.res, self.res) or img.dtype != np.uint8:
            raise CxrError(f"internal error: resized image has shape {img.shape}, expected {(self.res, self.res)}")
        self.array[row] = img
        self.state[row] = DONE

    def checkpoint(self) -> None:
        """Pixels first, then the state that vouches for them: a kill between the two loses work, not truth."""
        self.array.flush()
        with atomic_path(self.state_path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, self.state)

    def finish(self) -> dict:
        """Put the array under its final name; returns its manifest record."""
        self.array.flush()
        del self.array
        os.replace(self.partial, self.final)
        self.state_path.unlink(missing_ok=True)
        return file_record(self.final)
