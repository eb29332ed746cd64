"""A store's manifest and the opened store, below both the writer (``stores.prepare``) and the readers
(``cxr_fast.loaders``): reading and writing both depend on this module, and neither on the other.

``manifest.json`` records what a store holds: image ids, labels, split, the source files' sizes and mtimes,
formats and resolutions done, images that could not be read, and every finished file's size, sha256 and
mtime (``files``). Where each format keeps its files is said by its module (``stores.jpeg``,
``stores.cache``, ``stores.ffcv``).

Nothing in a store is trusted unchecked: its image ids must be bare file names and its resolutions whole
pixels, so no path it yields can leave the store; opening it (``open_store``) checks every finished file
cheaply (size, the ``.npy`` header, links leading out, and the sha256 of any file whose mtime moved: a file
overwritten in place), and ``Store.damage(full=True)`` checks every sha256. Each damaged file is one line
naming it and the command that rebuilds it. A store whose sources changed since it was made (size or
mtime), or that holds other images or labels, is refused with an error naming it.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from cxr_fast.data.sets.base import Dataset
from cxr_fast.data.pixels import RULE
from cxr_fast.data.reader import ImageError, is_inside, name_problem
from cxr_fast.errors import CxrError
from cxr_fast.io import numpy_failure, write_json
from cxr_fast.stores import cache, ffcv, jpeg
from cxr_fast.stores.files import sha256_file
from cxr_fast.vocabulary import check_res

# 2: every file's size, sha256 and mtime in the manifest; 3: JPEG entries named by the whole escaped image id
# (``stores.jpeg.entry``: no two images share one) and the high-bit pixel rule recorded (``pixels``)
STORE_VERSION = 3
FORMATS: tuple[str, ...] = (jpeg.FORMAT, cache.FORMAT, ffcv.FORMAT)
MANIFEST = "manifest.json"


class StaleStoreError(CxrError):
    """A store made from other files, images or labels than the ones asked for."""


class DamagedStoreError(CxrError):
    """A store file missing, cut short or changed since ``prepare`` wrote it: the data failed a check."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=1)


@dataclass(frozen=True)
class Damage:
    """One damaged file of a finished part (``fmt`` at ``res``; ``res`` is None for jpeg)."""

    fmt: str
    res: int | None
    path: Path
    reason: str


@dataclass
class Store:
    """An opened store: its manifest and where each format lives."""

    root: Path
    manifest: dict = field(repr=False)

    @property
    def image_ids(self) -> np.ndarray:
        return np.array(self.manifest["image_ids"])

    @property
    def targets(self) -> np.ndarray:
        """The labels the store was made with; NaN for every image of a dataset's store, which holds no label (its
        runs bring their own: every loader takes labels from the run, ``loaders.common.rows_for``)."""
        if self.manifest["targets"] is None:
            return np.full(len(self.manifest["image_ids"]), np.nan, dtype=np.float32)
        return np.array(self.manifest["targets"], dtype=np.float32)

    @property
    def bad(self) -> dict[str, str]:
        """Unreadable images, name -> reason (the reader's words)."""
        return dict(self.manifest.get("bad", {}))

    @property
    def cache_resolutions(self) -> list[int]:
        return sorted(int(r) for r in self.manifest["formats"].get(cache.FORMAT, []))

    def has(self, fmt: str, res: int | None = None) -> bool:
        done = self.manifest["formats"].get(fmt)
        if done is None:
            return False
        return True if fmt == jpeg.FORMAT else int(res) in [int(r) for r in done]

    def cache_path(self, res: int) -> Path:
        return cache.path(self.root, res)

    def cache_array(self, res: int) -> np.ndarray:
        """The ``N x res x res`` uint8 array, memory-mapped read-only (rows in manifest order)."""
        if not self.has(cache.FORMAT, res):
            raise CxrError(f"{self.root}: no {res} px cache; run cxr-fast prepare with --res {res} --format cache")
        try:
            return np.load(self.cache_path(res), mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:  # numpy's own text advises unpickling: never passed on
            raise DamagedStoreError(self.describe(Damage(cache.FORMAT, res, self.cache_path(res),
                                                         numpy_failure(exc)))) from None

    def jpeg_path(self, image_id: str) -> Path:
        return jpeg.path(self.root, image_id)

    def ffcv_path(self, res: int) -> Path:
        return ffcv.path(self.root, res)

    def rel(self, path: Path) -> str:
        """A store file's key in the manifest's ``files``: its path under the store, '/'-separated."""
        return path.relative_to(self.root).as_posix()

    # ------------------------------------------------------------------------- integrity

    def parts(self) -> list[tuple[str, int | None]]:
        """Finished parts, plus an unfinished jpeg part that already has files recorded."""
        formats, files = self.manifest["formats"], self.manifest["files"]
        out: list[tuple[str, int | None]] = []
        if jpeg.FORMAT in formats or any(k.startswith(f"{jpeg.FOLDER}/") for k in files):
            out.append((jpeg.FORMAT, None))
        return out + [(fmt, int(r)) for fmt in (cache.FORMAT, ffcv.FORMAT) for r in formats.get(fmt, [])]

    def part_files(self, fmt: str, res: int | None = None) -> list[Path]:
        """The files a part consists of (an unfinished jpeg part: the JPEGs recorded so far)."""
        if fmt == cache.FORMAT:
            return [self.cache_path(int(res))]  # type: ignore[arg-type]
        if fmt == ffcv.FORMAT:
            return [self.ffcv_path(int(res))]  # type: ignore[arg-type]
        done, bad, files = self.has(jpeg.FORMAT), self.manifest["bad"], self.manifest["files"]
        jpegs = [self.jpeg_path(n) for n in self.manifest["image_ids"] if n not in bad]
        if not done:
            return [p for p in jpegs if self.rel(p) in files]
        return [jpeg.listing_path(self.root)] + jpegs

    def damage(self, full: bool = False, parts: Iterable[tuple[str, int | None]] | None = None) -> list[Damage]:
        """Files of ``parts`` (default: all) that are missing, lead out of the store, differ in size or
        ``.npy`` header from what prepare wrote, or in sha256: checked when ``full`` or the mtime moved."""
        out: list[Damage] = []
        folders: dict[Path, bool] = {}
        for fmt, res in self.parts() if parts is None else parts:
            for path in self.part_files(fmt, res):
                if path.parent not in folders:
                    folders[path.parent] = is_inside(self.root, path.parent)
                reason = self._file_problem(path, fmt, res, full) if folders[path.parent] else \
                    f"its folder leads outside {self.root}"
                if reason is not None:
                    out.append(Damage(fmt, res, path, reason))
        return out

    def _file_problem(self, path: Path, fmt: str, res: int | None, full: bool) -> str | None:
        record = self.manifest["files"].get(self.rel(path))
        if record is None:
            return "no checksum recorded"
        try:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                if not is_inside(self.root, path):
                    return f"a link leading outside {self.root}"
                st = os.stat(path)
        except FileNotFoundError:
            return "missing"
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        if st.st_size != record["size"]:
            return f"{st.st_size} bytes where {record['size']} were written (cut short or replaced)"
        if fmt == cache.FORMAT:
            n, side = len(self.manifest["image_ids"]), int(res)  # type: ignore[arg-type]
            problem = cache.npy_problem(path, (n, side, side), st.st_size)
            if problem is not None:
                return problem
        if (full or st.st_mtime_ns != record["mtime_ns"]) and sha256_file(path) != record["sha256"]:
            return "content differs from the sha256 recorded when it was written"
        return None

    def rebuild_hint(self, fmt: str, res: int | None) -> str:
        """The command that rebuilds a damaged part (prepare repairs a store it reuses)."""
        m = self.manifest
        if not m.get("label"):
            return f"delete {self.root}; the next run that uses it makes it again"
        words = ["cxr-fast", "prepare", str(m["sources"].get("root", "DATA")), "--label", str(m["label"]),
                 "--out", str(self.root), "--format", fmt] + (["--res", str(res)] if res is not None else []) + \
                ["--size", str(m.get("size")), "--seed", str(m.get("seed")), "--split", str(m.get("split"))]
        return f"`{shlex.join(words)}` rebuilds it"

    def describe(self, d: Damage) -> str:
        """One line for one damaged file: which, why, and how to rebuild it."""
        return f"{d.path}: damaged ({d.reason}); {self.rebuild_hint(d.fmt, d.res)}"

    def entry_problems(self) -> list[str]:
        """Store entries that are not exactly one image's, one line each: a JPEG two image ids are named to,
        a file in ``jpeg/`` that no image of the store names, a line of DALI's list naming another image's JPEG.
        (``cache`` and ``ffcv`` keep images by store row, one row each.)"""
        if (jpeg.FORMAT, None) not in self.parts():
            return []
        ids, folder = self.manifest["image_ids"], self.root / jpeg.FOLDER
        owners: dict[str, list[str]] = {}
        for name in ids:
            owners.setdefault(jpeg.entry(name), []).append(name)
        out = [f"{folder / e}: the entry of {len(names)} images ({', '.join(names[:3])})"
               for e, names in owners.items() if len(names) > 1]
        if folder.is_dir():
            out += [f"{p}: no image of the store has this entry; delete it" for p in sorted(folder.iterdir())
                    if p.name != jpeg.LISTING and not p.name.startswith(".") and p.name not in owners]
        listing = jpeg.listing_path(self.root)
        if self.has(jpeg.FORMAT) and listing.is_file():
            for line in listing.read_text(encoding="utf-8", errors="replace").splitlines():
                e, _, row = line.rpartition(" ")
                if not row.isdigit() or int(row) >= len(ids) or jpeg.entry(ids[int(row)]) != e:
                    out.append(f"{listing}: line {line!r} names no image's entry at that row")
        return out

    def positions(self, image_ids: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """Rows of ``image_ids`` in this store, and a mask of the ones that are readable.

        An id the store does not hold is an error: the store was made for another subsample.
        """
        index = {name: i for i, name in enumerate(self.manifest["image_ids"])}
        bad = self.manifest.get("bad", {})
        rows, keep = [], []
        for name in image_ids:
            name = str(name)
            if name not in index:
                raise StaleStoreError(f"{self.root} does not hold image {name}; prepare a store for this subsample")
            rows.append(index[name])
            keep.append(name not in bad)
        return np.asarray(rows, dtype=np.int64), np.asarray(keep, dtype=bool)

    def check_fresh(self, dataset: Dataset) -> None:
        """Raise ``StaleStoreError`` when a source image changed (size or mtime) since the store was made, or
        the store's pixels were made under another high-bit rule than the reader's (``data.pixels.RULE``):
        its pixels would differ from what every other loader reads."""
        if self.manifest.get("pixels") != RULE:
            raise StaleStoreError(
                f"{self.root} was made under the pixel rule {self.manifest.get('pixels')}, not {RULE} (how 16-bit "
                "images become 8-bit); delete the store or prepare into a new folder")
        old = self.manifest["sources"]
        ids = self.manifest["image_ids"]
        now = source_identity(dataset, ids)
        for key in ("sizes", "mtimes_ns"):
            changed = [ids[i] for i, (a, b) in enumerate(zip(old[key], now[key])) if a != b]
            if changed:
                if old.get("root") != now["root"]:
                    raise StaleStoreError(f"{self.root} was made from {old.get('root')}, not {now['root']}; "
                                          f"give that data folder (--data), or prepare a store for this one")
                raise StaleStoreError(
                    f"{self.root} is stale: {len(changed)} source image(s) changed since it was made "
                    f"(first: {changed[0]} in {dataset.root}); delete the store or prepare into a new folder"
                )


def save_manifest(store: Store) -> None:
    """Write ``store.manifest`` (atomically) as the store's ``manifest.json``."""
    write_json(store.root / MANIFEST, store.manifest)


def source_identity(dataset: Dataset, image_ids: Sequence[str]) -> dict:
    """Size and mtime of each source file (-1 when missing): cheap to check on every open. (An image read
    from an ``images_NNN.tar.gz`` has no file of its own and records -1: a refetched archive keeps the
    store's decoded work, which the archive's gzip checks and the store's own sha256s still guard.)"""
    sizes, mtimes = [], []
    for name in image_ids:
        try:
            st = os.stat(dataset.path_of(str(name)))
            sizes.append(int(st.st_size))
            mtimes.append(int(st.st_mtime_ns))
        except (OSError, ImageError):  # missing, or a name leading outside the data folder
            sizes.append(-1)
            mtimes.append(-1)
    return {"root": str(Path(dataset.root).resolve()), "sizes": sizes, "mtimes_ns": mtimes}


def open_store(path: str | Path, dataset: Dataset | None = None, check: bool = True) -> Store:
    """Open a store: refuse a manifest naming anything outside it, and (``check``) run the cheap check
    of every finished file (``Store.damage``); with ``dataset``, refuse it when its sources changed."""
    root = Path(path)
    mf = root / MANIFEST
    if not mf.is_file():
        raise CxrError(f"{root} is not a cxr-fast store (no {MANIFEST}); make one with cxr-fast prepare")
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedStoreError(f"{mf}: unreadable store manifest ({exc}); delete {root} and prepare it again"
                                ) from None
    if not isinstance(manifest, dict) or manifest.get("version") != STORE_VERSION:
        version = manifest.get("version") if isinstance(manifest, dict) else None
        raise StaleStoreError(f"{root}: store version {version} is not {STORE_VERSION} (older stores keep no "
                              "checksums, or may name two images' JPEGs alike and record no pixel rule); "
                              "delete it and run cxr-fast prepare again")
    _check_manifest(root, manifest)
    store = Store(root, manifest)
    if check:
        damaged = store.damage()
        if damaged:
            more = f" ({len(damaged) - 1} more: cxr-fast verify --store {root} lists them)" if len(damaged) > 1 else ""
            raise DamagedStoreError(store.describe(damaged[0]) + more)
    if dataset is not None:
        store.check_fresh(dataset)
    return store


def data_of(data: str | Path | None, store: str | Path | None) -> str | Path | None:
    """``data``, or with none given and a prepared ``store``, the folder that store was made from.

    Looked up before any dataset is opened, since a built-in phantom could never match that store.
    """
    if data is not None or store is None:
        return data
    recorded = recorded_data_root(store)
    if recorded is None:
        return None
    if not recorded.is_dir():
        raise CxrError(f"{store} was made from {recorded}, which is not here; give its data folder (--data)")
    return recorded


def recorded_data_root(store: str | Path) -> Path | None:
    """The data folder a store's manifest says it was made from; None without a readable manifest."""
    try:
        return Path(json.loads((Path(store) / MANIFEST).read_text(encoding="utf-8"))["sources"]["root"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check_manifest(root: Path, m: dict) -> None:
    """Refuse a manifest that could make the store read anything but its own files (ids are bare file
    names, resolutions whole pixels), or that does not hang together; resolutions become ints."""

    def refuse(what: str) -> None:
        raise DamagedStoreError(f"{root / MANIFEST}: {what}; the store is refused: delete it and run cxr-fast "
                                "prepare again")

    ids = m.get("image_ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        refuse("image_ids is not a list of names")
    for name in ids:
        problem = name_problem(name)
        if problem is not None:
            refuse(f"image id {name!r} is {problem}")
    if len(set(ids)) != len(ids):
        refuse("image ids repeat")
    if m.get("targets") is not None and (not isinstance(m["targets"], list) or len(m["targets"]) != len(ids)):
        refuse("targets do not match the image ids")
    if m.get("is_val") is not None and (not isinstance(m["is_val"], list) or len(m["is_val"]) != len(ids)):
        refuse("is_val does not match the image ids")
    for key in ("formats", "files", "bad", "sources"):
        if not isinstance(m.get(key), dict):
            refuse(f"{key} is missing or not a mapping")
    if not set(m["formats"]) <= set(FORMATS) or not set(m["bad"]) <= set(ids):
        refuse("formats or bad images name something the store does not hold")
    for fmt in (cache.FORMAT, ffcv.FORMAT):
        if fmt in m["formats"]:
            try:
                m["formats"][fmt] = [check_res(r, f"{fmt} resolution") for r in m["formats"][fmt]]
            except (CxrError, TypeError) as exc:
                refuse(str(exc))
