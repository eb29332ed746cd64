"""NIH ChestX-ray14 metadata and image layout.

Reads ``Data_Entry_2017*.csv`` (or ``.csv.gz``) in both forms in circulation: torchxrayvision's v2020
file and NIH's original, whose header and rows end with a trailing comma. Finds images in ``images/``
or in the ``images_001/images`` ... ``images_012/images`` folders the NIH tarballs extract to.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr_fast.errors import CxrError

FINDINGS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
NO_FINDING = "No Finding"
ALL_LABELS: tuple[str, ...] = FINDINGS + (NO_FINDING,)
# The eight labels the paper models, in the order of its Table 1.
PAPER_LABELS: tuple[str, ...] = (
    "Emphysema", "Cardiomegaly", "Hernia", "Atelectasis", "Edema", "Effusion", "Mass", "Nodule",
)

_ALIASES = {name.lower().replace("_", " "): name for name in ALL_LABELS}
_ALIASES["infiltrate"] = "Infiltration"  # the spelling used in BBox_List_2017.csv

_FIRST_COLUMNS = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
                  "Patient Gender", "View Position"]


def canonical_label(name: str) -> str:
    """``'nodule'``, ``'Pleural Thickening'`` -> the dataset's spelling; unknown names are an error."""
    key = name.strip().lower().replace("_", " ")
    if key not in _ALIASES:
        raise CxrError(f"unknown label {name!r}; known labels: {', '.join(ALL_LABELS)}")
    return _ALIASES[key]


@dataclass
class Metadata:
    """One row per image, as parallel arrays (112,120 rows parse in well under a second)."""

    source: str
    image_ids: np.ndarray  # str, e.g. '00000001_000.png'
    labels: np.ndarray  # bool, N x len(ALL_LABELS)
    patient_ids: np.ndarray  # int
    follow_up: np.ndarray  # int
    ages: np.ndarray  # int
    genders: np.ndarray  # str 'M'/'F'
    views: np.ndarray  # str 'PA'/'AP'
    label_strings: np.ndarray = field(repr=False)  # str, the original 'A|B' field

    def __len__(self) -> int:
        return len(self.image_ids)

    def has(self, label: str) -> np.ndarray:
        """Boolean mask of images carrying ``label``."""
        return self.labels[:, ALL_LABELS.index(canonical_label(label))]

    def finding_counts(self) -> np.ndarray:
        """Number of findings (not counting 'No Finding') per image."""
        return self.labels[:, : len(FINDINGS)].sum(axis=1)

    def subset(self, index: np.ndarray) -> "Metadata":
        return Metadata(
            self.source, self.image_ids[index], self.labels[index], self.patient_ids[index],
            self.follow_up[index], self.ages[index], self.genders[index], self.views[index],
            self.label_strings[index],
        )


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_metadata(path: str | Path) -> Metadata:
    """Parse a ``Data_Entry_2017*.csv[.gz]`` file; errors name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise CxrError(f"metadata file not found: {p}")
    ids: list[str] = []
    label_rows: list[list[bool]] = []
    label_strings: list[str] = []
    patients: list[int] = []
    follow: list[int] = []
    ages: list[int] = []
    genders: list[str] = []
    views: list[str] = []
    index_of = {name: i for i, name in enumerate(ALL_LABELS)}
    try:
        with _open_text(p) as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or not any(h.strip() for h in header):
                raise CxrError(f"{p}: empty metadata file (no header)")
            if [h.strip() for h in header[: len(_FIRST_COLUMNS)]] != _FIRST_COLUMNS:
                raise CxrError(f"{p}: not a ChestX-ray14 Data_Entry file; header starts {header[:3]}")
            for lineno, row in enumerate(reader, start=2):
                if not row or not any(c.strip() for c in row):
                    continue
                if len(row) < len(_FIRST_COLUMNS):
                    raise CxrError(f"{p}:{lineno}: expected at least {len(_FIRST_COLUMNS)} columns, got {len(row)}")
                flags = [False] * len(ALL_LABELS)
                for raw in row[1].split("|"):
                    name = raw.strip()
                    if name not in index_of:
                        raise CxrError(f"{p}:{lineno}: unknown label {name!r} for image {row[0]}")
                    flags[index_of[name]] = True
                try:
                    patients.append(int(row[3]))
                    follow.append(int(row[2]))
                    ages.append(int(row[4].strip().rstrip("YyMmDd") or -1))
                except ValueError:
                    raise CxrError(f"{p}:{lineno}: non-numeric patient id, follow-up or age in {row[:5]}") from None
                ids.append(row[0].strip())
                label_rows.append(flags)
                label_strings.append(row[1].strip())
                genders.append(row[5].strip())
                views.append(row[6].strip())
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise CxrError(f"{p}: cannot read metadata ({exc})") from None
    if not ids:
        raise CxrError(f"{p}: metadata file has a header but no rows")
    return Metadata(
        source=str(p),
        image_ids=np.array(ids),
        labels=np.array(label_rows, dtype=bool),
        patient_ids=np.array(patients, dtype=np.int64),
        follow_up=np.array(follow, dtype=np.int64),
        ages=np.array(ages, dtype=np.int64),
        genders=np.array(genders),
        views=np.array(views),
        label_strings=np.array(label_strings),
    )


def find_metadata_file(root: str | Path) -> Path:
    """The ``Data_Entry_2017*.csv[.gz]`` inside a dataset folder (v2020 preferred when both exist)."""
    r = Path(root)
    if not r.is_dir():
        raise CxrError(f"data folder not found: {r}")
    found = sorted(r.glob("Data_Entry_2017*.csv")) + sorted(r.glob("Data_Entry_2017*.csv.gz"))
    if not found:
        raise CxrError(f"{r}: no Data_Entry_2017*.csv or .csv.gz metadata file")
    return found[-1] if len(found) > 1 and any("v2020" in f.name for f in found) else found[0]


def image_folders(root: str | Path) -> list[Path]:
    """Folders that hold PNGs: ``images/``, the tarballs' ``images_NNN/images/``, or the root itself."""
    r = Path(root)
    folders = [r / "images"] if (r / "images").is_dir() else []
    folders += sorted(d / "images" for d in r.glob("images_[0-9][0-9][0-9]") if (d / "images").is_dir())
    folders += sorted(d for d in r.glob("images_[0-9][0-9][0-9]") if d.is_dir() and not (d / "images").is_dir())
    return folders or [r]


def index_images(root: str | Path) -> dict[str, Path]:
    """Map image file name -> path over every image folder (one directory listing each)."""
    found: dict[str, Path] = {}
    for folder in image_folders(root):
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.lower().endswith(".png"):
                    found.setdefault(entry.name, Path(entry.path))
    return found


def read_official_split(root: str | Path) -> dict[str, str] | None:
    """NIH's ``train_val_list.txt`` / ``test_list.txt`` as name -> 'train'/'test', or None if absent."""
    r = Path(root)
    train, test = r / "train_val_list.txt", r / "test_list.txt"
    if not (train.is_file() and test.is_file()):
        return None
    split: dict[str, str] = {}
    for path, side in ((train, "train"), (test, "test")):
        for line in path.read_text(encoding="utf-8").split():
            split[line.strip()] = side
    return split


@dataclass
class NihDataset:
    """A dataset folder: its metadata, where each image lives, and NIH's split if shipped."""

    root: Path
    metadata: Metadata
    image_paths: dict[str, Path]
    official_split: dict[str, str] | None

    def path_of(self, image_id: str) -> Path:
        """Where ``image_id`` should be; a name absent on disk maps to ``images/NAME`` (reported missing)."""
        return self.image_paths.get(image_id, self.root / "images" / image_id)


def open_dataset(root: str | Path) -> NihDataset:
    r = Path(root)
    meta = read_metadata(find_metadata_file(r))
    return NihDataset(r, meta, index_images(r), read_official_split(r))
