"""The ``ffcv`` format: ``ffcv/<res>.beton``, FFCV 1.0.2's file of the ``res`` cache's readable rows: the
same uint8 pixels as a one-channel ``NDArrayField``, with the label and the store row (see ``write_beton``).

FFCV's writer runs in a child process in its own process group, bounded by a timeout (it can hang
forever), and writes under a temporary name: a stopped or failed write leaves nothing behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cxr_fast.errors import CxrError
from cxr_fast.io import atomic_path, load_npy
from cxr_fast.parallel import mp_context
from cxr_fast.stores import cache

FORMAT = "ffcv"
FOLDER = FORMAT  # the store's folder for this format


def path(root: Path, res: int) -> Path:
    """Where a store at ``root`` keeps its ``res`` px ``.beton``."""
    return root / FOLDER / f"{res}.beton"


class _BetonSource:
    """What FFCV's writer indexes: (pixels, label, store row) per readable row of the cache."""

    def __init__(self, cache_file: str, targets: np.ndarray, rows: np.ndarray) -> None:
        self.cache_file = cache_file
        self.targets = targets
        self.rows = rows
        self._arr: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        if self._arr is None:
            self._arr = load_npy(self.cache_file, mmap_mode="r")
        row = int(self.rows[i])
        return np.ascontiguousarray(self._arr[row]), float(self.targets[row]), row


def _write_beton_child(path: str, source: _BetonSource, res: int, workers: int, quiet: bool) -> None:
    import sys

    os.setpgrp()  # FFCV forks its own workers: one process group lets a timeout stop them all
    if quiet:
        sys.stderr = open(os.devnull, "w")  # FFCV's own tqdm bar
    from ffcv.fields import FloatField, IntField, NDArrayField
    from ffcv.writer import DatasetWriter

    writer = DatasetWriter(path, {"image": NDArrayField(np.dtype("uint8"), (res, res)), "label": FloatField(),
                                  "row": IntField()}, num_workers=workers)
    writer.from_indexed_dataset(source, chunksize=16)


def _kill_group(pid: int) -> None:
    import signal

    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def write_beton(root: Path, res: int, pixels: np.ndarray, targets: np.ndarray, rows: np.ndarray,
                workers: int | None = None, quiet: bool = False, timeout_s: float = 3600.0) -> Path:
    """Write ``ffcv/<res>.beton`` of the store at ``root`` from its ``res`` cache (``pixels``, opened), the
    readable ``rows`` with their ``targets`` (indexed by row), in a child process bounded by ``timeout_s``.

    One-channel raw uint8 (``NDArrayField``), not FFCV's ``RGBImageField``: that field takes three
    channels only (and its writer hangs forever when a worker fails on a one-channel image), a
    3x replicated JPEG would triple decode work and add JPEG error, and raw pixels are exactly the
    reference-rounded cache. Shapes are checked here, before FFCV sees anything.
    """
    try:
        from cxr_fast.runtime import keep_torch_threads

        with keep_torch_threads():
            import ffcv  # noqa: F401
    except ImportError as exc:
        raise CxrError(f"format ffcv needs FFCV installed (pip install ffcv==1.0.2): {exc}") from None
    source_path = cache.path(root, res)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[1:] != (res, res):
        raise CxrError(f"{source_path}: expected N x {res} x {res} uint8, found {pixels.shape} {pixels.dtype}")
    if len(rows) == 0:
        raise CxrError(f"{root}: no readable image to write to FFCV")
    source = _BetonSource(str(source_path), targets, rows)
    target = path(root, res)
    target.parent.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers or os.cpu_count() or 1, 8))
    with atomic_path(target, need=len(rows) * res * res) as tmp:  # FFCV maps its file: a full disk is a SIGBUS
        ctx = mp_context()
        proc = ctx.Process(target=_write_beton_child, args=(str(tmp), source, res, workers, quiet))
        proc.start()
        try:
            proc.join(timeout_s)
        except BaseException:  # Ctrl-C or a kill: its own process group hears neither, so stop it here
            _kill_group(proc.pid)
            raise
        if proc.is_alive():
            _kill_group(proc.pid)
            proc.join()
            raise CxrError(f"{target}: FFCV's writer did not finish in {timeout_s:.0f} s; stopped it")
        if proc.exitcode != 0:
            raise CxrError(f"{target}: FFCV's writer failed (exit code {proc.exitcode})")
    return target
