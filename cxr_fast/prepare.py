"""Decode once: turn a label's PNGs into a store the fast loaders read every epoch.

A store is a folder::

    manifest.json           what it holds: image ids, labels, split, the source files' sizes and
                            mtimes, formats and resolutions done, images that could not be read
    jpeg/<stem>.jpg         8-bit gray JPEG at source size (DALI's ``mixed`` decoder decodes these on a
    jpeg/files.txt          GPU; it decodes PNG on the CPU even in mixed mode) and DALI's file list
    cache/<res>.npy         N x res x res uint8, the reference resize (``data.resize``) rounded;
                            opened memory-mapped
    ffcv/<res>.beton        FFCV: the same uint8 pixels as a one-channel ``NDArrayField`` (see
                            ``write_beton``), with the label and the store position

Every file appears by an atomic rename, so a killed run leaves no half file under its final name.
A cache resolution in progress is ``<res>.npy.partial`` plus ``<res>.state.npy`` (per row: 0 to do,
1 done, 2 unreadable), checkpointed every few seconds: a second run resumes from there. Images the
shared reader rejects (missing, truncated) are listed by name in the manifest and skipped, as
``verify`` reports them, instead of stopping the run. A store whose sources changed since it was
made (size or mtime), or that holds other images or labels, is refused with an error naming it.

Images held in NIH's ``images_NNN.tar.gz`` archives (``data.archives``) are streamed, one worker per
archive, and decoded straight into the store: no PNG is written to disk, and the store is byte for byte
the one the extracted folder gives. An archive that breaks is named with the member where it did; what
was decoded before is kept (even in a new store) and a rerun after a fresh fetch finishes the rest. A
member that failed to decode in an archive that then proved broken is not judged: it is left to do.
(Such a store records no source sizes or mtimes, as for missing files: an archive is checked by fetch.)

Nothing in a store is trusted unchecked. The manifest records each file's size, sha256 and mtime
(``files``); its image ids must be bare file names and its resolutions whole pixels, so no path it
yields can leave the store. Opening a store (``open_store``) checks every finished file cheaply: size,
the ``.npy`` header, links leading out, and the sha256 of any file whose mtime moved (a file
overwritten in place). ``cxr-fast verify --store`` and every ``prepare`` that reuses a store check
every sha256; ``prepare`` rebuilds the damaged parts it is asked for. Each damaged file is one line
naming it and the command that rebuilds it. A ``prepare`` that fails with an error removes a store it
started from nothing; an interrupted one (Ctrl-C, kill) keeps its work for the next run to resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from cxr_fast.data.archives import Finished, imap_members
from cxr_fast.data.nih import NihDataset
from cxr_fast.data.reader import DataWarning, ImageError, name_problem
from cxr_fast.errors import CxrError
from cxr_fast.io import atomic_path, write_bytes, write_json, write_text
from cxr_fast.parallel import imap_progress, mp_context
from cxr_fast.paths import cache_dir
from cxr_fast.store import (FORMATS, MANIFEST, STORE_VERSION, DamagedStoreError, StaleStoreError, Store,
                            file_record, open_store, source_identity)
from cxr_fast.vocabulary import check_res

LOCK = ".lock"
_TODO, _DONE, _BAD = 0, 1, 2
_CHECKPOINT_S = 3.0
_SAID = 20  # damaged files named one line each by a repairing prepare before one line sums up the rest


class UnfinishedStoreError(CxrError):
    """The store could not be finished (an archive broke) but keeps what was decoded: never discarded."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=1)


@dataclass(frozen=True)
class PrepareConfig:
    """What to write. ``resolutions`` apply to ``cache`` and ``ffcv``; ``jpeg`` keeps the source size."""

    resolutions: tuple[int, ...] = ()
    formats: tuple[str, ...] = ("cache",)
    jpeg_quality: int = 95
    workers: int | None = None  # None: all cores
    quiet: bool = False
    ffcv_timeout_s: float = 3600.0  # FFCV's writer can hang forever; never wait longer than this


def _check_formats(formats: Iterable[str]) -> tuple[str, ...]:
    out = tuple(dict.fromkeys(f.strip().lower() for f in formats if f.strip()))
    for f in out:
        if f not in FORMATS:
            raise CxrError(f"unknown store format {f!r}; choose from {', '.join(FORMATS)}")
    return out


def _check_resolutions(resolutions: Iterable[int]) -> tuple[int, ...]:
    """Sorted, unique, each within the study's limits (``vocabulary.check_res``)."""
    return tuple(sorted({check_res(r, "--res") for r in resolutions}))


# ----------------------------------------------------------------------------- workers


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _work(job: tuple[int, str, tuple[int, ...], str | None, int]
          ) -> tuple[int, dict[int, np.ndarray] | None, str | None, dict | None]:
    """Decode one image once; return its resized copies, and write its JPEG (atomically) with the
    JPEG's manifest record (hashed from the bytes written, no second read)."""
    from cxr_fast.data.reader import read_gray

    row, path, resolutions, jpeg_out, quality = job
    try:
        gray = read_gray(path)
    except ImageError as exc:
        return row, None, exc.reason, None
    return _outputs(row, gray, resolutions, jpeg_out, quality)


def _work_member(job: tuple[int, str, tuple[int, ...], str | None, int], data: bytes
                 ) -> tuple[int, dict[int, np.ndarray] | None, str | None, dict | None]:
    """``_work`` for an archive member already read into memory: same reader, same outputs."""
    from cxr_fast.data.reader import decode_gray_with_info

    row, where, resolutions, jpeg_out, quality = job
    try:
        gray = decode_gray_with_info(data, where)[0]
    except ImageError as exc:
        return row, None, exc.reason, None
    return _outputs(row, gray, resolutions, jpeg_out, quality)


def _outputs(row: int, gray: np.ndarray, resolutions: tuple[int, ...], jpeg_out: str | None, quality: int
             ) -> tuple[int, dict[int, np.ndarray], None, dict | None]:
    import io

    from PIL import Image

    from cxr_fast.loaders.reference import resize_uint8

    outs = {r: resize_uint8(gray, r) for r in resolutions}
    record = None
    if jpeg_out is not None:
        buf = io.BytesIO()
        Image.fromarray(gray, mode="L").save(buf, format="JPEG", quality=quality)
        write_bytes(jpeg_out, buf.getvalue())
        record = file_record(jpeg_out, hashlib.sha256(buf.getvalue()).hexdigest())
    return row, outs, None, record


# ----------------------------------------------------------------------------- writing


def _manifest_for(dataset: NihDataset, image_ids: np.ndarray, targets: np.ndarray, info: dict) -> dict:
    return {
        "version": STORE_VERSION,
        "label": info.get("label"),
        "split": info.get("split"),
        "seed": info.get("seed"),
        "size": info.get("size"),
        "image_ids": [str(i) for i in image_ids],
        "targets": [float(t) for t in targets],
        "is_val": None if info.get("is_val") is None else [bool(v) for v in info["is_val"]],
        "sources": source_identity(dataset, image_ids),
        "formats": {},
        "bad": {},
        "files": {},
    }


def _open_or_create(dataset: NihDataset, image_ids: np.ndarray, targets: np.ndarray, out: Path, info: dict) -> Store:
    if (out / MANIFEST).exists():
        store = open_store(out, check=False)  # the caller runs the full check and repairs
        m = store.manifest
        if m["image_ids"] != [str(i) for i in image_ids] or m["targets"] != [float(t) for t in targets]:
            raise StaleStoreError(
                f"{out} holds another subsample ({len(m['image_ids'])} images, label {m.get('label')}); "
                "choose another --out or delete it"
            )
        store.check_fresh(dataset)
        return store
    if out.exists() and any(p.name != LOCK for p in out.iterdir()):
        raise CxrError(f"{out} exists and is not a cxr-fast store; choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    manifest = _manifest_for(dataset, image_ids, targets, info)
    write_json(out / MANIFEST, manifest)
    return Store(out, manifest)


def _save_manifest(store: Store) -> None:
    write_json(store.root / MANIFEST, store.manifest)


class _CacheJob:
    """One resolution of the uint8 cache being filled: partial array + per-row state, resumable."""

    def __init__(self, store: Store, res: int) -> None:
        self.res = res
        n = len(store.manifest["image_ids"])
        self.final = store.cache_path(res)
        self.partial = self.final.with_name(f"{res}.npy.partial")
        self.state_path = self.final.with_name(f"{res}.state.npy")
        self.final.parent.mkdir(parents=True, exist_ok=True)
        state = None
        if self.partial.exists() and self.state_path.exists():
            try:
                state = np.load(self.state_path)
                arr = np.load(self.partial, mmap_mode="r+")
                if arr.shape != (n, res, res) or state.shape != (n,):
                    state = None
            except (OSError, ValueError):
                state = None
        if state is None:
            arr = np.lib.format.open_memmap(self.partial, mode="w+", dtype=np.uint8, shape=(n, res, res))
            state = np.zeros(n, dtype=np.int8)
        self.array = arr
        self.state = state

    def todo(self) -> np.ndarray:
        return np.flatnonzero(self.state == _TODO)

    def put(self, row: int, img: np.ndarray | None) -> None:
        if img is None:
            self.state[row] = _BAD
            return
        if img.shape != (self.res, self.res) or img.dtype != np.uint8:
            raise CxrError(f"internal error: resized image has shape {img.shape}, expected {(self.res, self.res)}")
        self.array[row] = img
        self.state[row] = _DONE

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


def _decode_all(store: Store, dataset: NihDataset, resolutions: tuple[int, ...], jpeg: bool, cfg: PrepareConfig) -> None:
    """One decode per image for everything still missing: cache rows at each resolution and JPEGs."""

    ids = store.manifest["image_ids"]
    bad: dict[str, str] = dict(store.manifest.get("bad", {}))
    caches = [_CacheJob(store, r) for r in resolutions if not store.has("cache", r)]
    needs: dict[int, list[int]] = {}
    for job in caches:
        for row in job.todo():
            needs.setdefault(int(row), []).append(job.res)
    files = store.manifest["files"]
    jpeg_rows: set[int] = set()
    if jpeg and not store.has("jpeg"):
        (store.root / "jpeg").mkdir(parents=True, exist_ok=True)
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
        _save_manifest(store)

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
               str(store.jpeg_path(ids[row])) if row in jpeg_rows else None, cfg.jpeg_quality)
        member = archives.member_at(source) if archives is not None else None
        if member is not None:
            held.setdefault(member[0], {})[member[1]] = job
        elif broken and not os.path.lexists(source):
            left += 1  # may lie past where a broken archive stopped: not missing yet
        else:
            jobs.append(job)

    what = ", ".join([f"{r}px" for r in resolutions if any(j.res == r for j in caches)] + (["jpeg"] if jpeg_rows else []))
    last = time.monotonic()
    parked: dict[str, list] = {}  # archive -> rows that failed to decode, judged once the archive reads to its end
    try:
        for result in imap_progress(_work, jobs, f"decoding once -> {what}", workers=cfg.workers,
                                    quiet=cfg.quiet or not jobs, initializer=_init_worker):
            record(result)
            if time.monotonic() - last > _CHECKPOINT_S:
                checkpoint()
                last = time.monotonic()
        for event in imap_members(_work_member, list(held.items()), f"decoding once from archives -> {what}",
                                  workers=cfg.workers, quiet=cfg.quiet or not held, initializer=_init_worker):
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
        done = int((caches[0].state == _DONE).sum()) if caches else sum(k.startswith("jpeg/") for k in files)
        raise UnfinishedStoreError(
            f"{first}{more}; kept in {store.root}: {done} image(s) decoded, {left} left to do: fetch the archive "
            f"again (cxr-fast fetch nih {dataset.root}) and rerun prepare, or move it away to go on without its images")
    for job in caches:
        files[store.rel(job.final)] = job.finish()
        store.manifest["formats"].setdefault("cache", [])
        store.manifest["formats"]["cache"] = sorted(set(store.manifest["formats"]["cache"]) | {job.res})
    if jpeg and not store.has("jpeg"):
        lines = [f"{store.jpeg_path(name).name} {i}" for i, name in enumerate(ids) if name not in bad]
        listing = store.root / "jpeg" / "files.txt"
        write_text(listing, "\n".join(lines) + "\n")
        files[store.rel(listing)] = file_record(listing)
        store.manifest["formats"]["jpeg"] = {"quality": cfg.jpeg_quality}
    store.manifest["bad"] = bad
    _save_manifest(store)


def prepare_store(dataset: NihDataset, image_ids: Sequence[str], targets: Sequence[float], out: str | Path,
                  cfg: PrepareConfig = PrepareConfig(), info: dict | None = None) -> Store:
    """Make or finish the store ``out`` for these images and labels; returns it opened.

    ``info`` (label, split, seed, size, is_val) is recorded in the manifest for the user and ``train``.
    An existing store gets the full check first (``_repair``). On an error a store this call started
    from nothing is removed; an existing one keeps its finished parts, and an interrupt keeps all.
    """
    formats = _check_formats(cfg.formats)
    resolutions = _check_resolutions(cfg.resolutions)
    if ("cache" in formats or "ffcv" in formats) and not resolutions:
        raise CxrError("formats cache and ffcv need at least one resolution (--res)")
    ids = np.asarray([str(i) for i in image_ids])
    tg = np.asarray(targets, dtype=np.float32)
    if len(ids) == 0:
        raise CxrError("nothing to prepare: no images")
    if len(ids) != len(tg):
        raise CxrError(f"{len(ids)} images but {len(tg)} labels")
    for name in ids:
        if name_problem(name) is not None:  # a store names its files after its images
            raise CxrError(f"image id {name!r} is {name_problem(name)}; a store holds images by file name only")
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise CxrError(f"{root} is a file, not a store folder")
    if root.is_dir() and not (root / MANIFEST).exists() and any(p.name != LOCK for p in root.iterdir()):
        raise CxrError(f"{root} exists and is not a cxr-fast store; choose an empty or new folder")
    created = not root.exists()
    with _locked(root):
        new = not (root / MANIFEST).exists()
        try:
            _remove_leftovers(root)
            store = _open_or_create(dataset, ids, tg, root, info or {})
            cache_res = resolutions if ("cache" in formats or "ffcv" in formats) else ()
            if not new:
                _repair(store, {(f, r) for f in formats for r in (cache_res if f != "jpeg" else (None,))})
            _decode_all(store, dataset, cache_res, "jpeg" in formats, cfg)
            if "ffcv" in formats:
                for r in resolutions:
                    if not store.has("ffcv", r):
                        store.manifest["files"][store.rel(store.ffcv_path(r))] = file_record(write_beton(store, r, cfg))
                        store.manifest["formats"].setdefault("ffcv", [])
                        store.manifest["formats"]["ffcv"] = sorted(set(store.manifest["formats"]["ffcv"]) | {r})
                        _save_manifest(store)
        except Exception as exc:
            if new and not isinstance(exc, UnfinishedStoreError):  # leave no half-made store behind
                _discard(root, created)
            raise
    return store


def _repair(store: Store, wanted: set[tuple[str, int | None]]) -> None:
    """Full check of a store about to be reused: each damaged file is forgotten and its part marked
    undone, so this run rebuilds the parts it was asked for (``wanted``); one warning line per file."""
    damaged = store.damage(full=True)
    for i, d in enumerate(damaged):
        store.manifest["files"].pop(store.rel(d.path), None)
        formats = store.manifest["formats"]
        if d.fmt == "jpeg":
            formats.pop("jpeg", None)
        elif d.res in formats.get(d.fmt, []):
            formats[d.fmt] = [r for r in formats[d.fmt] if r != d.res]
        action = "rebuilding it" if (d.fmt, d.res) in wanted else store.rebuild_hint(d.fmt, d.res)
        if i < _SAID:
            warnings.warn(f"{d.path}: damaged ({d.reason}); {action}", DataWarning, stacklevel=3)
    if len(damaged) > _SAID:
        warnings.warn(f"{store.root}: {len(damaged) - _SAID} more damaged file(s) handled the same way "
                      f"(cxr-fast verify --store {store.root} lists every one)", DataWarning, stacklevel=3)
    if damaged:
        _save_manifest(store)


def _discard(root: Path, created: bool) -> None:
    """Remove a store that a failed call started: the folder if the call made it, else what it wrote."""
    if created:
        shutil.rmtree(root, ignore_errors=True)
        return
    for child in root.iterdir():
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        elif child.name != LOCK:
            child.unlink(missing_ok=True)


def _remove_leftovers(root: Path) -> None:
    """Temporary files a killed run left (never under a final name); safe to delete under the lock."""
    for folder in (root, root / "jpeg", root / "cache", root / "ffcv"):
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One writer per store: a second process (a bench beside a training run) waits, then finds the
    work done instead of racing on the same partial files."""
    import fcntl

    while True:
        root.mkdir(parents=True, exist_ok=True)
        fh = open(root / LOCK, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
            if os.fstat(fh.fileno()).st_ino == os.stat(root / LOCK).st_ino:
                break  # still the store's lock file, not one a failed run removed while we waited
        except FileNotFoundError:
            pass
        except BaseException:
            fh.close()
            raise
        fh.close()
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


# ----------------------------------------------------------------------------- FFCV


class _BetonSource:
    """What FFCV's writer indexes: (pixels, label, store row) per readable row of the cache."""

    def __init__(self, cache: str, targets: np.ndarray, rows: np.ndarray) -> None:
        self.cache = cache
        self.targets = targets
        self.rows = rows
        self._arr: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        if self._arr is None:
            self._arr = np.load(self.cache, mmap_mode="r")
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


def write_beton(store: Store, res: int, cfg: PrepareConfig = PrepareConfig()) -> Path:
    """Write ``ffcv/<res>.beton`` from the ``res`` cache, in a child process bounded by ``ffcv_timeout_s``.

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
    arr = store.cache_array(res)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[1:] != (res, res):
        raise CxrError(f"{store.cache_path(res)}: expected N x {res} x {res} uint8, found {arr.shape} {arr.dtype}")
    _, keep = store.positions(store.manifest["image_ids"])
    rows = np.flatnonzero(keep)
    if len(rows) == 0:
        raise CxrError(f"{store.root}: no readable image to write to FFCV")
    source = _BetonSource(str(store.cache_path(res)), store.targets, rows)
    target = store.ffcv_path(res)
    target.parent.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(cfg.workers or os.cpu_count() or 1, 8))
    with atomic_path(target) as tmp:
        ctx = mp_context()
        proc = ctx.Process(target=_write_beton_child, args=(str(tmp), source, res, workers, cfg.quiet))
        proc.start()
        proc.join(cfg.ffcv_timeout_s)
        if proc.is_alive():
            _kill_group(proc.pid)
            proc.join()
            raise CxrError(f"{target}: FFCV's writer did not finish in {cfg.ffcv_timeout_s:.0f} s; stopped it")
        if proc.exitcode != 0:
            raise CxrError(f"{target}: FFCV's writer failed (exit code {proc.exitcode})")
    return target


# ----------------------------------------------------------------------------- on demand


def auto_store_dir(dataset: NihDataset, image_ids: Sequence[str], targets: Sequence[float]) -> Path:
    """A cache folder keyed by dataset and the exact images and labels: one store per subsample part."""
    h = hashlib.sha256()
    h.update(str(Path(dataset.root).resolve()).encode())
    h.update(b"\0".join(str(i).encode() for i in image_ids))
    h.update(np.asarray(targets, dtype=np.float32).tobytes())
    return cache_dir() / "stores" / h.hexdigest()[:20]


def ensure_store(dataset: NihDataset, image_ids: Sequence[str], targets: Sequence[float], fmt: str, res: int | None,
                 store: str | Path | None = None, quiet: bool = True, workers: int | None = None) -> Store:
    """A store holding ``fmt`` (at ``res``) for these images, made now if missing.

    With ``store`` given it is used (and extended with the missing format or resolution); a stale,
    damaged or foreign one is an error. Without it the store lives in the cache folder, where a stale
    or damaged one is rebuilt, since no user made it.
    """
    ids = [str(i) for i in image_ids]
    tg = np.asarray(targets, dtype=np.float32)
    cfg = PrepareConfig(resolutions=(res,) if res is not None else (), formats=(fmt,), quiet=quiet, workers=workers)
    if store is not None:
        root = Path(store)
        if (root / MANIFEST).exists():
            opened = open_store(root, dataset)
            opened.positions(ids)  # every asked image must be in it
            if opened.has(fmt, res):
                return opened
            return prepare_store(dataset, opened.manifest["image_ids"], opened.manifest["targets"], root, cfg)
        return prepare_store(dataset, ids, tg, root, cfg)
    root = auto_store_dir(dataset, ids, tg)
    if (root / MANIFEST).exists():
        try:
            opened = open_store(root, dataset)
            if opened.has(fmt, res):
                return opened
        except (StaleStoreError, DamagedStoreError) as exc:
            if isinstance(exc, DamagedStoreError):
                warnings.warn(f"{exc}; remaking this cached store", DataWarning, stacklevel=2)
            shutil.rmtree(root)
    return prepare_store(dataset, ids, tg, root, cfg)


def prepare_subsample(dataset: NihDataset, label: str, out: str | Path, cfg: PrepareConfig, size: int = 20_000,
                      seed: int = 0, split: str = "image") -> Store:
    """The command's job: the label's paper subsample (train and validation) into ``out``."""
    from cxr_fast.data.sampling import subsample

    sub = subsample(dataset.metadata, label, size=size, seed=seed, split=split,  # type: ignore[arg-type]
                    official_split=dataset.official_split)
    info = {"label": sub.label, "split": split, "seed": seed, "size": size, "is_val": sub.is_val}
    return prepare_store(dataset, sub.image_ids, sub.targets, out, cfg, info)
