"""The one base every dataset stands on: its rows (``Metadata``), where each image is (``Dataset.path_of``), and
the policies it was read under (``DatasetOptions``), recorded with every run.

A dataset module (one per dataset: ``nih``, ``chexpert``, ...) declares its layout, its label table (its own
names -> the study's, ``data.labels``), its patient ids, views and official split, and parses its documented
files into ``Metadata``; ``write_phantom`` writes the built-in phantom in its layout, so every reader has a
fixture in the real layout. Every image id is a bare, unique file name (a store names its files after it);
where a dataset nests its images, the id is its relative path with ``/`` spelled ``__`` (``flat_name``).
"""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Iterable, Iterator, Sequence

import numpy as np

from cxr_fast.data.archives import Archives
from cxr_fast.data.labels import ALL_LABELS, CONTROL_LABELS, FINDINGS, canonical_label
from cxr_fast.data.reader import OutsideRootError, is_inside, name_problem
from cxr_fast.errors import CxrError
from cxr_fast.vocabulary import BLANK_POLICIES, LABEL_SOURCES, UNCERTAIN_POLICIES, VIEW_POLICIES, VOTES


class LabelMissingError(CxrError):
    """A label the dataset does not map (CheXpert has no Nodule): names the labels it has."""


@dataclass(frozen=True)
class DatasetOptions:
    """How a dataset's labels and views are read (``vocabulary``); each dataset applies the ones that concern it
    and records those (``Dataset.policy``): NIH has no uncertain labels, PadChest no radiologists' votes."""

    uncertain: str = "ignore"
    blank: str = "zero"
    views: str = "frontal"
    label_source: str = "physician"
    vote: str = "majority"

    def __post_init__(self) -> None:
        for name, allowed in (("uncertain", UNCERTAIN_POLICIES), ("blank", BLANK_POLICIES), ("views", VIEW_POLICIES),
                              ("label_source", LABEL_SOURCES), ("vote", VOTES)):
            if getattr(self, name) not in allowed:
                raise CxrError(f"unknown {name} policy {getattr(self, name)!r}; choose one of {', '.join(allowed)}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass
class Metadata:
    """One row per image, as parallel arrays (112,120 rows parse in well under a second).

    ``labels`` has one column per name in ``label_names`` (the study's spelling, ``data.labels``): the labels this
    dataset maps. ``known`` (same shape, None: all known) is False where a row's label is neither positive nor
    negative under the dataset's policy (CheXpert's uncertain labels with ``ignore``): that image is left out of
    that label's subsample, and only that label's.
    """

    source: str
    image_ids: np.ndarray  # str, a bare unique file name, e.g. '00000001_000.png'
    labels: np.ndarray  # bool, N x len(label_names)
    patient_ids: np.ndarray  # int (a dataset whose patient ids are strings numbers them in order of appearance)
    follow_up: np.ndarray  # int; 0 where the dataset does not number them
    ages: np.ndarray  # int; -1 unknown
    genders: np.ndarray  # str 'M'/'F'; '' unknown
    views: np.ndarray  # str: 'PA', 'AP', 'LATERAL', ... ('' unknown)
    label_strings: np.ndarray = field(repr=False)  # str, the row's findings as the dataset wrote them
    duplicates: tuple[str, ...] = ()  # ids of repeated rows dropped at parse
    controls: np.ndarray | None = None  # bool, N x len(CONTROL_LABELS); None: not a phantom, no control labels
    original_size: np.ndarray | None = None  # float, N x 2 (width, height) px of the original; NaN: unknown
    original_spacing: np.ndarray | None = None  # float, N x 2 (x, y) mm per pixel of the original; NaN: unknown
    label_names: tuple[str, ...] = ALL_LABELS
    known: np.ndarray | None = None  # bool, like ``labels``; None: every label of every row is known

    def __len__(self) -> int:
        return len(self.image_ids)

    def _column(self, label: str) -> int | None:
        """The column of ``label`` (a study name), None for a control label; a label the dataset lacks is an error."""
        name = canonical_label(label)
        if name in CONTROL_LABELS:
            return None
        if name not in self.label_names:
            raise LabelMissingError(f"{self.source} has no {name} label; its labels: {', '.join(self.label_names)}")
        return self.label_names.index(name)

    def has(self, label: str) -> np.ndarray:
        """Boolean mask of images carrying ``label``; a control label only in a phantom folder's metadata."""
        col = self._column(label)
        if col is not None:
            return self.labels[:, col]
        name = canonical_label(label)
        if self.controls is None:
            raise CxrError(f"{name} is the phantom's control label, and {self.source} is not in a phantom folder; "
                           "real data never carries it")
        return self.controls[:, CONTROL_LABELS.index(name)]

    def known_for(self, label: str) -> np.ndarray:
        """Boolean mask of images whose ``label`` is known (positive or negative) under the dataset's policy."""
        col = self._column(label)
        if col is None or self.known is None:
            return np.ones(len(self), dtype=bool)
        return self.known[:, col]

    def finding_counts(self) -> np.ndarray:
        """Number of findings (not counting 'No Finding') per image."""
        cols = [i for i, name in enumerate(self.label_names) if name in FINDINGS]
        return self.labels[:, cols].sum(axis=1)

    def subset(self, index: np.ndarray) -> "Metadata":
        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[index]

        return Metadata(
            self.source, self.image_ids[index], self.labels[index], self.patient_ids[index],
            self.follow_up[index], self.ages[index], self.genders[index], self.views[index],
            self.label_strings[index], self.duplicates, pick(self.controls), pick(self.original_size),
            pick(self.original_spacing), self.label_names, pick(self.known),
        )


def make_metadata(source: str, image_ids: Sequence[str], labels: np.ndarray, label_names: Sequence[str],
                  patients: Sequence[Any], views: Sequence[str], *, known: np.ndarray | None = None,
                  ages: Sequence[int] | None = None, genders: Sequence[str] | None = None,
                  label_strings: Sequence[str] | None = None, original_size: np.ndarray | None = None,
                  original_spacing: np.ndarray | None = None) -> Metadata:
    """``Metadata`` from a parser's lists: ids checked bare and unique, patient ids numbered, blanks filled.

    A repeated id is refused (not dropped): two rows of one image could put it on both sides of a split.
    """
    n = len(image_ids)
    if n == 0:
        raise CxrError(f"{source}: no images listed")
    ids = np.asarray([str(i) for i in image_ids])
    for name in ids[:1].tolist() + [i for i in ids.tolist() if name_problem(i)][:1]:
        problem = name_problem(name)
        if problem:
            raise CxrError(f"{source}: image id {name!r} is {problem}")
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise CxrError(f"{source}: image {unique[counts > 1][0]!r} is listed {int(counts.max())} times; keep one row "
                       "per image")
    names = tuple(canonical_label(x) for x in label_names)
    lab = np.asarray(labels, dtype=bool).reshape(n, len(names))
    if isinstance(patients, np.ndarray) and patients.dtype.kind in "iu":
        pid = patients.astype(np.int64)
    else:  # strings (a hash, a UUID): numbered in order of appearance, equal strings equal numbers
        _, first, inverse = np.unique(np.asarray([str(p) for p in patients]), return_index=True, return_inverse=True)
        pid = np.argsort(np.argsort(first))[inverse].astype(np.int64)
    if label_strings is None:
        label_strings = ["|".join(x for x, on in zip(names, row) if on) for row in lab]
    return Metadata(
        source=source, image_ids=ids, labels=lab, patient_ids=pid,
        follow_up=np.zeros(n, dtype=np.int64),
        ages=np.asarray(ages if ages is not None else [-1] * n, dtype=np.int64),
        genders=np.asarray(genders if genders is not None else [""] * n),
        views=np.asarray([str(v) for v in views]), label_strings=np.asarray(label_strings),
        original_size=original_size, original_spacing=original_spacing, label_names=names,
        known=None if known is None else np.asarray(known, dtype=bool).reshape(n, len(names)),
    )


def flat_name(relative: str) -> str:
    """A nested image's id: its path under the dataset folder with ``/`` spelled ``__`` (a store names files by
    id, and ids must be bare names): ``train/patient00001/study1/view1_frontal.jpg`` ->
    ``train__patient00001__study1__view1_frontal.jpg``."""
    return "__".join(PurePosixPath(relative.replace("\\", "/")).parts)


def relative_problem(relative: str) -> str | None:
    """Why a path read from a dataset's CSV cannot name a file inside its folder (absolute, ``..``, NUL), or None."""
    text = relative.replace("\\", "/")
    if not text.strip() or "\0" in text:
        return "not a path"
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        return "an absolute path"
    if ".." in PurePosixPath(text).parts:
        return "a path with '..'"
    return None


def open_text(path: Path) -> io.TextIOBase:
    """A CSV file, plain or ``.gz`` (MIMIC ships ``.csv.gz``), as text."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def csv_rows(path: Path, required: Iterable[str], what: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, row as a dict) of a CSV with a header, after checking that the header has ``required`` columns;
    a missing file, a missing column or an unreadable file is one line naming the file (``what``: whose file)."""
    if not path.is_file():
        raise CxrError(f"{what}: {path} not found")
    try:
        with open_text(path) as fh:
            reader = csv.reader(fh)
            header = [h.strip().lstrip("\ufeff") for h in next(reader, [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise CxrError(f"{path}: not a {what} file: no {', '.join(repr(m) for m in missing)} column "
                               f"(header starts {header[:4]})")
            for lineno, row in enumerate(reader, start=2):
                if not row or not any(c.strip() for c in row):
                    continue
                if len(row) < len(header):
                    row = row + [""] * (len(header) - len(row))
                yield lineno, dict(zip(header, (c.strip() for c in row)))
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise CxrError(f"{path}: cannot read {what} file ({exc})") from None


def view_mask(views: Sequence[str], frontal: Iterable[str], policy: str) -> np.ndarray:
    """Rows to keep under the views policy: all, or those whose view is one of the dataset's ``frontal`` spellings."""
    if policy == "all":
        return np.ones(len(views), dtype=bool)
    wanted = {v.upper() for v in frontal}
    return np.array([str(v).strip().upper() in wanted for v in views], dtype=bool)


@dataclass
class Dataset:
    """A dataset folder: its rows, where each image lives, its official split if it has one, and how it was read.

    ``image_paths``: id -> file, for every row a layout names (NIH also finds files on disk by name). ``outside``:
    rows left out because their path leads outside ``root`` (id -> why), for ``verify``. ``left_out``: rows not
    used and why (laterals under ``views: frontal``, ...), counted for the record.
    """

    root: Path
    metadata: Metadata
    image_paths: dict[str, Path]
    official_split: dict[str, str] | None
    outside: dict[str, str] = field(default_factory=dict)
    archives: Archives | None = None
    version: str | None = None
    policy: dict[str, str] = field(default_factory=dict)
    left_out: dict[str, int] = field(default_factory=dict)

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    # The dataset's own label names -> the study's (``data.labels``), as its module writes them down.
    label_map: ClassVar[dict[str, str]] = {}
    # Datasets whose images these are (RSNA's are NIH ChestX-ray14's): never an external test for those.
    derived_from: ClassVar[tuple[str, ...]] = ()
    # Options this dataset reads (``DatasetOptions`` names); the rest do not concern it and are not recorded.
    options_used: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def detect(cls, root: Path) -> bool:
        """Whether ``root`` holds this dataset's layout (its metadata files where the dataset puts them)."""
        raise NotImplementedError

    @classmethod
    def read(cls, root: Path, options: DatasetOptions) -> "Dataset":
        raise NotImplementedError

    @classmethod
    def layout(cls) -> str:
        """The files this dataset's folder holds, as its documentation gives them (for errors and --help)."""
        return ""

    def path_of(self, image_id: str) -> Path:
        """Where ``image_id`` is; ``reader.OutsideRootError`` for an id not in the metadata or a file outside ``root``."""
        found = self.image_paths.get(image_id)
        if found is None:
            raise OutsideRootError(repr(image_id), f"not an image of {self.metadata.source}")
        if not is_inside(self.root, found):
            raise OutsideRootError(found, f"resolves outside {self.root}")
        return found

    def says_spacing(self) -> bool:
        """Whether this dataset can give pixel spacing at all: its metadata has the columns (DICOM datasets
        override it: theirs is in each file's header)."""
        return self.metadata.original_spacing is not None

    def stored_width(self, rows: np.ndarray) -> np.ndarray:
        """Width in px of each image as stored: by default the original's (DICOMs, PadChest's PNGs)."""
        assert self.metadata.original_size is not None
        return self.metadata.original_size[rows, 0]

    def pixel_spacing_mm(self, image_ids: Sequence[str], res: int | None = None) -> np.ndarray:
        """Millimetres per pixel across each image (along x), as stored (``res`` None) or squeezed to ``res`` px wide
        for training; NaN where the dataset does not say. The one place the formula lives: the field of view
        (original spacing x original width) over the pixels across it. An id not in the metadata is an error."""
        meta = self.metadata
        ids = [str(i) for i in image_ids]
        if meta.original_size is None or meta.original_spacing is None or not ids:
            return np.full(len(ids), np.nan)
        row_of = {name: i for i, name in enumerate(meta.image_ids.tolist())}
        missing = [name for name in ids if name not in row_of]
        if missing:
            raise CxrError(f"{meta.source}: no row for image {missing[0]!r} ({len(missing)} image(s) not in the "
                           "metadata)")
        rows = np.array([row_of[name] for name in ids], dtype=np.int64)
        field_mm = meta.original_spacing[rows, 0] * meta.original_size[rows, 0]
        return field_mm / (float(res) if res is not None else self.stored_width(rows))

    def provenance(self) -> dict[str, Any]:
        """What a run records of its data: the dataset, its version, its label table and the policies applied."""
        return {"dataset": self.name, "version": self.version, "labels": list(self.metadata.label_names),
                "label_map": dict(self.label_map), "policy": dict(self.policy), "left_out": dict(self.left_out)}


def applied(options: DatasetOptions, names: Iterable[str]) -> dict[str, str]:
    """The options a dataset reads, as its record holds them."""
    return {n: getattr(options, n) for n in names}


class DicomHeaderSpacing:
    """For a dataset of DICOMs whose spacing is in each file's header (VinDr-CXR, RSNA): read when asked."""

    def says_spacing(self) -> bool:
        return True

    def pixel_spacing_mm(self, image_ids: Sequence[str], res: int | None = None) -> np.ndarray:
        """From the DICOM headers (Pixel Spacing, else Imager Pixel Spacing), read once per image when asked."""
        return header_spacing_mm(self, image_ids, res)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- for the fixtures (write_phantom)

def csv_text(header: Sequence[str], rows: list[list]) -> str:
    """A fixture's CSV: the header, then the rows, as the datasets write theirs (comma, minimal quoting, LF)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def empty_folder(out: Path) -> Path:
    """``out`` as a new or empty folder; anything in it is refused rather than mixed with a fixture."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CxrError(f"{out} exists and is not an empty folder; choose another folder for the fixture")
    out.mkdir(parents=True, exist_ok=True)
    return out


def header_spacing_mm(dataset: Dataset, image_ids: Sequence[str], res: int | None) -> np.ndarray:
    """mm per pixel across each image (``Dataset.pixel_spacing_mm``'s contract) from its DICOM header: column
    spacing x Columns / (``res`` or Columns). Headers are read once each (pixels never) and kept on ``dataset``;
    NaN where the header has no usable spacing, the file cannot be read, or pydicom is not installed."""
    ids = [str(i) for i in image_ids]
    missing = [i for i in ids if i not in dataset.image_paths]
    if missing:
        raise CxrError(f"{dataset.metadata.source}: no row for image {missing[0]!r} ({len(missing)} image(s) not in "
                       "the metadata)")
    cache: dict[str, tuple[float, float]] = dataset.__dict__.setdefault("_header_geometry", {})
    try:
        import pydicom

        from cxr_fast.data.dicom import spacing_of
    except ImportError:
        return np.full(len(ids), np.nan)
    out = np.full(len(ids), np.nan)
    for k, name in enumerate(ids):
        if name not in cache:
            cache[name] = (np.nan, np.nan)
            try:
                ds = pydicom.dcmread(dataset.path_of(name), stop_before_pixels=True, force=True)
                spacing, columns = spacing_of(ds), int(ds.get("Columns", 0) or 0)
                if spacing is not None and columns > 0:
                    cache[name] = (spacing[1], float(columns))
            except Exception:  # noqa: BLE001, S110 - an unreadable header: its spacing is unknown (verify names it)
                pass
        column_mm, columns = cache[name]
        out[k] = column_mm * columns / (float(res) if res is not None else columns)
    return out


