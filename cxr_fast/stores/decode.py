"""Decode once: each image is read by the shared reader one time, for everything its store still misses
(a row of each cache resolution being filled, its JPEG).

Worker processes decode, resize (the reference resize rounded, ``data.resize.resize_uint8``) and write
the JPEG themselves; the parent puts the rows into the cache arrays (``stores.cache.CacheJob``), records
each file, and checkpoints the arrays' state and the manifest every few seconds, so a killed run keeps
its work. Images the shared reader rejects (missing, truncated) are listed by name in the manifest and
skipped, as ``verify`` reports them, instead of stopping the run.

Images held in NIH's ``images_NNN.tar.gz`` archives (``data.archives``) are streamed, one worker per
archive, and decoded straight into the store: no PNG is written to disk, and the store is byte for byte
the one the extracted folder gives. An archive that breaks is named with the member where it did; what
was decoded before is kept (even in a new store) and a rerun after a fresh fetch finishes the rest. A
member that failed to decode in an archive that then proved broken is not judged: it is left to do.
(Such a store records no source sizes or mtimes, as for missing files: an archive is checked by fetch.)
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from cxr_fast.data.archive_stream import Finished, imap_members
from cxr_fast.data.sets.base import Dataset
from cxr_fast.data.reader import ImageError
from cxr_fast.errors import CxrError
from cxr_fast.parallel import imap_progress
from cxr_fast.stores import cache, jpeg
from cxr_fast.stores.manifest import Store, save_manifest

_CHECKPOINT_S = 3.0


class UnfinishedStoreError(CxrError):
    """The store could not be finished (an archive broke) but keeps what was decoded: never discarded."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=1)


# ----------------------------------------------------------------------------- workers


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _work(job: tuple[int, str, tuple[int, ...], str | None, int]
          ) -> tuple[int, dict[int, np.ndarray] | None, str | None, dict | None]:
    """Decode one image once; return its resized copies, and write its JPEG (atomically) with the
    JPEG's manifest record (hashed from the bytes written, no second read). An image ``verify`` counts
    unusable (``read_usable``: unreadable, or of no chest X-ray's shape) is left out, with its reason."""
    from cxr_fast.data.reader import read_usable

    row, path, resolutions, jpeg_out, quality = job
    try:
        gray = read_usable(path)[0]
    except ImageError as exc:
        return row, None, exc.reason, None
    return _outputs(row, gray, resolutions, jpeg_out, quality)


def _work_member(job: tuple[int, str, tuple[int, ...], str | None, int], data: bytes
                 ) -> tuple[int, dict[int, np.ndarray] | None, str | None, dict | None]:
    """``_work`` for an archive member already read into memory: same reader, same outputs."""
    from cxr_fast.data.reader import decode_usable

    row, where, resolutions, jpeg_out, quality = job
    try:
        gray = decode_usable(data, where)[0]
    except ImageError as exc:
        return row, None, exc.reason, None
    return _outputs(row, gray, resolutions, jpeg_out, quality)


def _outputs(row: int, gray: np.ndarray, resolutions: tuple[int, ...], jpeg_out: str | None, quality: int
             ) -> tuple[int, dict[int, np.ndarray], None, dict | None]:
    from cxr_fast.data.resize import resize_uint8

    outs = {r: resize_uint8(gray, r) for r in resolutions}
    record = jpeg.write_jpeg(gray, jpeg_out, quality) if jpeg_out is not None else None
    return row, outs, None, record


# ----------------------------------------------------------------------------- the parent


def decode_all(store: Store, dataset: Dataset, resolutions: tuple[int, ...], with_jpeg: bool, *,
               workers: int | None = None, quiet: bool = False, jpeg_quality: int = 95) -> None:
    """One decode per image for everything still missing: cache rows at each resolution and JPEGs."""

    ids = store.manifest["image_ids"]
    bad: dict[str, str] = dict(store.manifest.get("bad", {}))
    caches = [cache.CacheJob(store.root, len(ids), r) for r in resolutions if not store.has(cache.FORMAT, r)]
    needs: dict[int, list[int]] = {}
    for job in caches:
        for row in job.todo():
            needs.setdefault(int(row), []).append(job.res)
    files = store.manifest["files"]
    jpeg_rows: set[int] = set()
    if with_jpeg and not store.has(jpeg.FORMAT):
        (store.root / jpeg.FOLDER).mkdir(parents=True, exist_ok=True)
        # A JPEG without a record was written by a killed run after its last checkpoint: write it again.
        jpeg_rows = {i for i, name in enumerate(ids)
                     if name not in bad and store.rel(store.jpeg_path(name)) not in files}

    def record(result: tuple[int, dict | None, str | None, dict | None]) -> None:
        row, outs, reason, jpeg_record = result
        if reason is not None:
            bad[ids[row]] = reason
        if jpeg_record is not None:
            files[store.rel(store.jpeg_path(ids[row]))] = jpeg_record
        for job in caches:
            if row in needs and job.res in needs[row]:
                job.put(row, None if outs is None else outs[job.res])

    def checkpoint() -> None:
        for job in caches:
            job.checkpoint()
        store.manifest["bad"] = bad
        save_manifest(store)

    jobs = []
    archives = dataset.archives
    held: dict[str, dict[str, tuple]] = {}  # archive -> member -> job
    broken = dict(archives.broken) if archives is not None else {}
    left = 0  # rows left to do because an archive broke
    for row in sorted(set(needs) | jpeg_rows):
        try:
            source = str(dataset.path_of(ids[row]))
        except ImageError as exc:  # a file that leads outside the data folder: never read
            record((row, None, exc.reason, None))
            continue
        job = (row, source, tuple(needs.get(row, ())),
               str(store.jpeg_path(ids[row])) if row in jpeg_rows else None, jpeg_quality)
        member = archives.member_at(source) if archives is not None else None
        if member is not None:
            held.setdefault(member[0], {})[member[1]] = job
        elif broken and not os.path.lexists(source):
            left += 1  # may lie past where a broken archive stopped: not missing yet
        else:
            jobs.append(job)

    what = ", ".join([f"{r}px" for r in resolutions if any(j.res == r for j in caches)]
                     + (["jpeg"] if jpeg_rows else []))
    last = time.monotonic()
    parked: dict[str, list] = {}  # archive -> rows that failed to decode, judged once the archive reads to its end
    try:
        for result in imap_progress(_work, jobs, f"decoding once -> {what}", workers=workers,
                                    quiet=quiet or not jobs, initializer=_init_worker):
            record(result)
            if time.monotonic() - last > _CHECKPOINT_S:
                checkpoint()
                last = time.monotonic()
        for event in imap_members(_work_member, list(held.items()), f"decoding once from archives -> {what}",
                                  workers=workers, quiet=quiet or not held, initializer=_init_worker):
            if not isinstance(event, Finished):
                if event.result[2] is None:
                    record(event.result)
                else:
                    parked.setdefault(event.archive, []).append(event.result)
            elif event.problem is None:
                for result in parked.pop(event.archive, []):
                    record(result)
                for job in event.unread:  # listed, yet not there: the archive changed since it was listed
                    record((job[0], None, f"not in {Path(event.archive).name}, whose listing has it", None))
            else:
                broken[event.archive] = event.problem
                left += len(event.unread) + len(parked.pop(event.archive, []))
            if time.monotonic() - last > _CHECKPOINT_S:
                checkpoint()
                last = time.monotonic()
    finally:
        checkpoint()
    if broken:
        first = broken[min(broken)]
        more = f" ({len(broken) - 1} more broken archive(s))" if len(broken) > 1 else ""
        done = caches[0].done() if caches else sum(k.startswith(f"{jpeg.FOLDER}/") for k in files)
        raise UnfinishedStoreError(
            f"{first}{more}; kept in {store.root}: {done} image(s) decoded, {left} left to do: fetch the archive "
            f"again (cxr-fast fetch nih {dataset.root}) and rerun prepare, or move it away to go on without its images")
    for job in caches:
        files[store.rel(job.final)] = job.finish()
        done_res = store.manifest["formats"].setdefault(cache.FORMAT, [])
        store.manifest["formats"][cache.FORMAT] = sorted(set(done_res) | {job.res})
    if with_jpeg and not store.has(jpeg.FORMAT):
        files[store.rel(jpeg.listing_path(store.root))] = jpeg.write_listing(store.root, ids, bad)
        store.manifest["formats"][jpeg.FORMAT] = {"quality": jpeg_quality}
    store.manifest["bad"] = bad
    save_manifest(store)
