"""Decode once: turn a label's PNGs into a store the fast loaders read every epoch.

``prepare_store`` makes or finishes a store; the decoding itself is ``stores.decode``, each format's files
its own module's. One writer per store: it holds the store's ``.lock`` (``locks.exclusive``), so a second
process (a bench beside a training run) waits, then finds the work done instead of racing on the same
partial files. Every ``prepare`` that reuses a store checks every sha256 first (``_repair``) and rebuilds
the damaged parts it is asked for; ``cxr-fast verify --store`` runs the same check. A ``prepare`` that fails
with an error removes a store it started from nothing; an interrupted one (Ctrl-C, kill) keeps its work for
the next run to resume, and so does one an archive left unfinished (``UnfinishedStoreError``).

``ensure_store`` makes what a loader backend reads on demand (``cxr_fast.feed``), in the cache folder
(``auto_store_dir``) unless a store is named; ``prepare_subsample`` is the ``prepare`` command's job.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from cxr_fast.data.sets.base import Dataset
from cxr_fast.data.pixels import RULE
from cxr_fast.data.reader import DataWarning, name_problem
from cxr_fast.errors import CxrError
from cxr_fast.io import DiskFullError, write_json
from cxr_fast.locks import exclusive
from cxr_fast.paths import cache_dir
from cxr_fast.stores import cache, ffcv, jpeg
from cxr_fast.stores.decode import UnfinishedStoreError, decode_all
from cxr_fast.stores.files import file_record
from cxr_fast.stores.manifest import (FORMATS, MANIFEST, STORE_VERSION, DamagedStoreError, StaleStoreError, Store,
                                      open_store, save_manifest, source_identity)
from cxr_fast.vocabulary import check_res

LOCK = ".lock"
_SAID = 20  # damaged files named one line each by a repairing prepare before one line sums up the rest


@dataclass(frozen=True)
class PrepareConfig:
    """What to write. ``resolutions`` apply to ``cache`` and ``ffcv``; ``jpeg`` keeps the source size."""

    resolutions: tuple[int, ...] = ()
    formats: tuple[str, ...] = (cache.FORMAT,)
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


# ----------------------------------------------------------------------------- writing


def _manifest_for(dataset: Dataset, image_ids: np.ndarray, targets: np.ndarray | None, info: dict) -> dict:
    return {
        "version": STORE_VERSION,
        "dataset": dataset.name,
        "label": info.get("label"),
        "split": info.get("split"),
        "seed": info.get("seed"),
        "size": info.get("size"),
        "image_ids": [str(i) for i in image_ids],
        "targets": None if targets is None else [float(t) for t in targets],  # None: a dataset's store
        "is_val": None if info.get("is_val") is None else [bool(v) for v in info["is_val"]],
        "sources": source_identity(dataset, image_ids),
        "pixels": copy.deepcopy(RULE),  # how 16-bit images became 8-bit: a store made under another rule is not reused
        "formats": {},
        "bad": {},
        "files": {},
    }


def _open_or_create(dataset: Dataset, image_ids: np.ndarray, targets: np.ndarray | None, out: Path,
                    info: dict) -> Store:
    if (out / MANIFEST).exists():
        store = open_store(out, check=False)  # the caller runs the full check and repairs
        m = store.manifest
        same_targets = m["targets"] == (None if targets is None else [float(t) for t in targets])
        if m["image_ids"] != [str(i) for i in image_ids] or not same_targets:
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


def prepare_store(dataset: Dataset, image_ids: Sequence[str], targets: Sequence[float] | None, out: str | Path,
                  cfg: PrepareConfig = PrepareConfig(), info: dict | None = None) -> Store:
    """Make or finish the store ``out`` for these images and labels; returns it opened. ``targets`` None: a
    dataset's store (a study's, for every label: each run brings its own labels, as every loader takes them).

    ``info`` (label, split, seed, size, is_val) is recorded in the manifest for the user and ``train``.
    An existing store gets the full check first (``_repair``). On an error a store this call started
    from nothing is removed; an existing one keeps its finished parts, and an interrupt keeps all.
    """
    formats = _check_formats(cfg.formats)
    resolutions = _check_resolutions(cfg.resolutions)
    if (cache.FORMAT in formats or ffcv.FORMAT in formats) and not resolutions:
        raise CxrError("formats cache and ffcv need at least one resolution (--res)")
    ids = np.asarray([str(i) for i in image_ids])
    tg = None if targets is None else np.asarray(targets, dtype=np.float32)
    if len(ids) == 0:
        raise CxrError("nothing to prepare: no images")
    if tg is not None and len(ids) != len(tg):
        raise CxrError(f"{len(ids)} images but {len(tg)} labels")
    for name in ids:
        if name_problem(name) is not None:  # a store names its files after its images
            raise CxrError(f"image id {name!r} is {name_problem(name)}; a store holds images by file name only")
        if jpeg.FORMAT in formats and len(jpeg.entry(name)) > jpeg.MAX_ENTRY:
            raise CxrError(f"image id {name!r} is too long for a store entry ({len(jpeg.entry(name))} bytes "
                           f"escaped, at most {jpeg.MAX_ENTRY}); rename the image")
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise CxrError(f"{root} is a file, not a store folder")
    if root.is_dir() and not (root / MANIFEST).exists() and any(p.name != LOCK for p in root.iterdir()):
        raise CxrError(f"{root} exists and is not a cxr-fast store; choose an empty or new folder")
    created = not root.exists()
    with exclusive(root / LOCK):  # waits for another writer, then finds its work done
        new = not (root / MANIFEST).exists()
        try:
            _remove_leftovers(root)
            store = _open_or_create(dataset, ids, tg, root, info or {})
            cache_res = resolutions if (cache.FORMAT in formats or ffcv.FORMAT in formats) else ()
            if not new:
                _repair(store, {(f, r) for f in formats for r in (cache_res if f != jpeg.FORMAT else (None,))})
            decode_all(store, dataset, cache_res, jpeg.FORMAT in formats, workers=cfg.workers, quiet=cfg.quiet,
                       jpeg_quality=cfg.jpeg_quality)
            if ffcv.FORMAT in formats:
                for r in resolutions:
                    if not store.has(ffcv.FORMAT, r):
                        beton = _write_beton(store, r, cfg)
                        store.manifest["files"][store.rel(beton)] = file_record(beton)
                        done = store.manifest["formats"].setdefault(ffcv.FORMAT, [])
                        store.manifest["formats"][ffcv.FORMAT] = sorted(set(done) | {r})
                        save_manifest(store)
        except Exception as exc:
            if new and not isinstance(exc, (UnfinishedStoreError, DiskFullError)):  # no half-made store; a
                # full disk keeps what was decoded, for the rerun after space is freed
                _discard(root, created)
            raise
    return store


def _write_beton(store: Store, res: int, cfg: PrepareConfig) -> Path:
    """The store's ``ffcv/<res>.beton`` from its ``res`` cache, readable rows only (``stores.ffcv``)."""
    pixels = store.cache_array(res)
    _, keep = store.positions(store.manifest["image_ids"])
    return ffcv.write_beton(store.root, res, pixels, store.targets, np.flatnonzero(keep), workers=cfg.workers,
                            quiet=cfg.quiet, timeout_s=cfg.ffcv_timeout_s)


def _repair(store: Store, wanted: set[tuple[str, int | None]]) -> None:
    """Full check of a store about to be reused: each damaged file is forgotten and its part marked
    undone, so this run rebuilds the parts it was asked for (``wanted``); one warning line per file."""
    damaged = store.damage(full=True)
    for i, d in enumerate(damaged):
        store.manifest["files"].pop(store.rel(d.path), None)
        formats = store.manifest["formats"]
        if d.fmt == jpeg.FORMAT:
            formats.pop(jpeg.FORMAT, None)
        elif d.res in formats.get(d.fmt, []):
            formats[d.fmt] = [r for r in formats[d.fmt] if r != d.res]
        action = "rebuilding it" if (d.fmt, d.res) in wanted else store.rebuild_hint(d.fmt, d.res)
        if i < _SAID:
            warnings.warn(f"{d.path}: damaged ({d.reason}); {action}", DataWarning, stacklevel=3)
    if len(damaged) > _SAID:
        warnings.warn(f"{store.root}: {len(damaged) - _SAID} more damaged file(s) handled the same way "
                      f"(cxr-fast verify --store {store.root} lists every one)", DataWarning, stacklevel=3)
    if damaged:
        save_manifest(store)


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
    for folder in (root, root / jpeg.FOLDER, root / cache.FOLDER, root / ffcv.FOLDER):
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- on demand


def auto_store_dir(dataset: Dataset, image_ids: Sequence[str], targets: Sequence[float] | None) -> Path:
    """A cache folder keyed by dataset and the exact images and labels: one store per subsample part."""
    h = hashlib.sha256()
    h.update(str(Path(dataset.root).resolve()).encode())
    h.update(b"\0".join(str(i).encode() for i in image_ids))
    h.update(b"no labels" if targets is None else np.asarray(targets, dtype=np.float32).tobytes())
    return cache_dir() / "stores" / h.hexdigest()[:20]


def ensure_store(dataset: Dataset, image_ids: Sequence[str], targets: Sequence[float] | None, fmt: str, res: int | None,
                 store: str | Path | None = None, quiet: bool = True, workers: int | None = None,
                 info: dict | None = None) -> Store:
    """A store holding ``fmt`` (at ``res``) for these images, made now if missing (``info`` as for
    ``prepare_store``, recorded when the store is made).

    With ``store`` given it is used (and extended with the missing format or resolution); a stale,
    damaged or foreign one is an error. Without it the store lives in the cache folder, where a stale
    or damaged one is rebuilt, since no user made it.
    """
    ids = [str(i) for i in image_ids]
    tg = None if targets is None else np.asarray(targets, dtype=np.float32)
    cfg = PrepareConfig(resolutions=(res,) if res is not None else (), formats=(fmt,), quiet=quiet, workers=workers)
    if store is not None:
        root = Path(store)
        if (root / MANIFEST).exists():
            opened = open_store(root, dataset)
            opened.positions(ids)  # every asked image must be in it
            if opened.has(fmt, res):
                return opened
            return prepare_store(dataset, opened.manifest["image_ids"], opened.manifest["targets"], root, cfg)
        return prepare_store(dataset, ids, tg, root, cfg, info)
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
    return prepare_store(dataset, ids, tg, root, cfg, info)


def prepare_subsample(dataset: Dataset, sub: Any, out: str | Path, cfg: PrepareConfig) -> Store:
    """A label's drawn subsample (``RunConfig.draw_subsample``: train and validation) into ``out``, with how
    it was drawn recorded in the manifest. The store never draws one itself: the run's settings do."""
    return prepare_store(dataset, sub.image_ids, sub.targets, out, cfg, subsample_info(sub))


def subsample_info(sub: Any) -> dict:
    """How a subsample was drawn, as a store's manifest records it (``prepare_store``'s ``info``)."""
    return {"label": sub.label, "split": sub.split, "seed": sub.seed, "size": sub.size, "is_val": sub.is_val}
