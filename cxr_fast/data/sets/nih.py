"""NIH ChestX-ray14 (Wang et al. 2017): metadata and image layout.

Reads ``Data_Entry_2017*.csv`` (or ``.csv.gz``) in both forms in circulation: torchxrayvision's v2020
file and NIH's original, whose header and rows end with a trailing comma. Finds images in ``images/``
or in the ``images_001/images`` ... ``images_012/images`` folders the NIH tarballs extract to, or in
the ``images_NNN.tar.gz`` tarballs themselves, read in place (``data.archives``; a file on disk wins).

Two rules hold before anything downstream (sampling, splits, stores) sees a row:

- An ``Image Index`` names a bare file inside the data folder (``reader.contained_path``). A name with
  a path separator or ``..``, or a file that is a link leading out of the folder, is skipped with one
  warning (``read_nih_folder``); ``verify`` lists such rows as bad. A layout folder that is itself a link
  to another disk counts as outside too: link the whole data folder instead.
- A label is one of ChestX-ray14's. The one exception is the phantom's negative control, ``NULL_LABEL``:
  a label the phantom assigns at random and draws nothing for. Only a phantom folder (one holding
  ``PHANTOM_MARKER``) may carry it (``read_metadata(controls=True)``); in any other file it is an unknown
  label, so real data can never be mixed with it, and it can never co-occur with a real finding's pixels.
- An ``Image Index`` appears once. Repeated rows that agree on findings and patient are dropped (the
  first kept) with one warning that counts them; repeats that disagree are refused, since either
  copy could be the truth (``read_metadata``). ``verify`` lists the repeats.
"""

from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr_fast.data.archives import attach_archives
from cxr_fast.data.labels import ALL_LABELS, CONTROL_LABELS, PHANTOM_MARKER
from cxr_fast.data.reader import DataWarning, contained_path, is_inside, name_problem
from cxr_fast.data.sets.base import Dataset, DatasetOptions, Metadata, open_text
from cxr_fast.errors import CxrError

_FIRST_COLUMNS = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
                  "Patient Gender", "View Position"]
# The geometry columns that follow, as the csv module splits their unquoted names: "OriginalImage[Width,Height]"
# and "OriginalImagePixelSpacing[x,y]" (NIH's README_CHESTXRAY and its Kaggle page list them as the original
# image's width and height in pixels and its pixel spacing in mm along x and y).
_GEOMETRY_COLUMNS = ["OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"]
# NIH's README_CHESTXRAY ("Image format: 112,120 total images with size 1024 x 1024"): every distributed PNG is
# the original squeezed to 1024 x 1024, whatever the original's shape.
NIH_STORED_WIDTH = 1024


def read_metadata(path: str | Path, controls: bool | None = None) -> Metadata:
    """Parse a ``Data_Entry_2017*.csv[.gz]`` file; errors name the file and line.

    ``controls``: the file is a phantom's, so ``CONTROL_LABELS`` are accepted; otherwise they are unknown
    labels like any other. None: decided by whether the file's folder holds ``PHANTOM_MARKER``.

    A repeated ``Image Index`` would be counted twice and could land on both sides of a split: an
    exact repeat (same findings and patient) is dropped with one ``DataWarning``, a conflicting one
    is an error naming both lines.
    """
    p = Path(path)
    if not p.is_file():
        raise CxrError(f"metadata file not found: {p}")
    if controls is None:
        controls = (p.parent / PHANTOM_MARKER).is_file()
    ids: list[str] = []
    label_rows: list[list[bool]] = []
    control_rows: list[list[bool]] = []
    label_strings: list[str] = []
    patients: list[int] = []
    follow: list[int] = []
    ages: list[int] = []
    genders: list[str] = []
    views: list[str] = []
    index_of = {name: i for i, name in enumerate(ALL_LABELS)}
    control_of = {name: i for i, name in enumerate(CONTROL_LABELS)} if controls else {}
    first_seen: dict[str, tuple[int, int]] = {}  # Image Index -> (position in the lists, line)
    duplicates: list[str] = []
    geometry: list[str] = []  # per row: original width, height, spacing x, y, as written, joined by commas
    has_geometry = False
    try:
        with open_text(p) as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or not any(h.strip() for h in header):
                raise CxrError(f"{p}: empty metadata file (no header)")
            if [h.strip() for h in header[: len(_FIRST_COLUMNS)]] != _FIRST_COLUMNS:
                raise CxrError(f"{p}: not a ChestX-ray14 Data_Entry file; header starts {header[:3]}")
            has_geometry = [h.strip() for h in header[7:11]] == _GEOMETRY_COLUMNS
            for lineno, row in enumerate(reader, start=2):
                if not row or not any(c.strip() for c in row):
                    continue
                if len(row) < len(_FIRST_COLUMNS):
                    raise CxrError(f"{p}:{lineno}: expected at least {len(_FIRST_COLUMNS)} columns, got {len(row)}")
                flags = [False] * len(ALL_LABELS)
                control_flags = [False] * len(CONTROL_LABELS)
                for raw in row[1].split("|"):
                    name = raw.strip()
                    if name in control_of:
                        control_flags[control_of[name]] = True
                        continue
                    if name not in index_of:
                        why = " (a phantom control label, and this file is not in a phantom folder)" \
                            if name in CONTROL_LABELS else ""
                        raise CxrError(f"{p}:{lineno}: unknown label {name!r} for image {row[0]}{why}")
                    flags[index_of[name]] = True
                try:
                    patient, follow_up, age = int(row[3]), int(row[2]), int(row[4].strip().rstrip("YyMmDd") or -1)
                except ValueError:
                    raise CxrError(f"{p}:{lineno}: non-numeric patient id, follow-up or age in {row[:5]}") from None
                image = row[0].strip()
                if image in first_seen:
                    at, line = first_seen[image]
                    if flags != label_rows[at] or control_flags != control_rows[at] or patient != patients[at]:
                        raise CxrError(f"{p}:{lineno}: image {image} is listed again with other findings or patient "
                                       f"than on line {line}; keep one row per image")
                    duplicates.append(image)
                    continue
                first_seen[image] = (len(ids), lineno)
                patients.append(patient)
                follow.append(follow_up)
                ages.append(age)
                ids.append(image)
                label_rows.append(flags)
                control_rows.append(control_flags)
                label_strings.append(row[1].strip())
                if has_geometry:
                    # one string per row: 112,120 small lists would cost the garbage collector a third of a second
                    geometry.append(",".join(row[7:11] if len(row) >= 11 else (row[7:] + [""] * 4)[:4]))
                genders.append(row[5].strip())
                views.append(row[6].strip())
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise CxrError(f"{p}: cannot read metadata ({exc})") from None
    if not ids:
        raise CxrError(f"{p}: metadata file has a header but no rows")
    if duplicates:
        warnings.warn(f"{p}: {len(duplicates)} repeated Image Index row(s) dropped, the first of each kept "
                      f"(e.g. {duplicates[0]})", DataWarning, stacklevel=2)
    meta = Metadata(
        source=str(p),
        image_ids=np.array(ids),
        labels=np.array(label_rows, dtype=bool),
        patient_ids=np.array(patients, dtype=np.int64),
        follow_up=np.array(follow, dtype=np.int64),
        ages=np.array(ages, dtype=np.int64),
        genders=np.array(genders),
        views=np.array(views),
        label_strings=np.array(label_strings),
        duplicates=tuple(duplicates),
        controls=np.array(control_rows, dtype=bool).reshape(len(ids), len(CONTROL_LABELS)) if controls else None,
    )
    if has_geometry:
        numbers = _geometry(p, geometry, [first_seen[i][1] for i in ids])
        meta.original_size, meta.original_spacing = numbers[:, :2], numbers[:, 2:]
    return meta


def _geometry(path: Path, joined: list[str], lines: list[int]) -> np.ndarray:
    """Original width, height (px) and spacing x, y (mm) per row, N x 4; a blank or absent cell is NaN (unknown),
    anything else that is not a positive number is an error naming its line: shifted columns look like this."""
    cells = ",".join(joined).split(",")  # four per row, unless a quoted cell held a comma
    if len(cells) != 4 * len(lines):
        raise CxrError(f"{path}: a cell of the OriginalImage or OriginalImagePixelSpacing columns holds a comma; "
                       "each must be one number")
    try:
        values = np.fromiter(map(float, cells), dtype=np.float64, count=len(cells))
    except ValueError:  # a blank cell (unknown) or a word: one cell at a time
        values = np.array([_number(c) for c in cells], dtype=np.float64)
    values = values.reshape(len(lines), 4)
    bad = ~(np.isnan(values) | (np.isfinite(values) & (values > 0)))
    if bad.any():
        row, col = (int(x[0]) for x in np.nonzero(bad))
        raise CxrError(f"{path}:{lines[row]}: {_GEOMETRY_COLUMNS[col]!r} column holds {cells[4 * row + col]!r}, not "
                       "a positive number (OriginalImage[Width,Height] in px, OriginalImagePixelSpacing[x,y] in mm)")
    return values


def _number(cell: str) -> float:
    """A cell's number; NaN for a blank one (unknown), -inf for one that is no number (refused by the caller)."""
    if not cell.strip():
        return float("nan")
    try:
        value = float(cell)
    except ValueError:
        return float("-inf")
    return float("-inf") if np.isnan(value) else value


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


def scan_images(root: str | Path) -> tuple[dict[str, Path], dict[str, str]]:
    """Image file name -> path over every image folder (one directory listing each), and name -> reason
    for the PNGs that resolve outside ``root`` (a linked folder or file): those are never read.

    Same rule as ``reader.contained_path``, paid once per folder plus once per link rather than once
    per file (resolving 112,120 paths takes over a second).
    """
    found: dict[str, Path] = {}
    outside: dict[str, str] = {}
    for folder in image_folders(root):
        folder_inside = is_inside(root, folder)
        with os.scandir(folder) as it:
            for entry in it:
                if not entry.name.lower().endswith((".png", ".dcm")) or entry.name in found or entry.name in outside:
                    continue
                if folder_inside and (not entry.is_symlink() or is_inside(root, entry.path)):
                    found[entry.name] = Path(entry.path)
                else:
                    outside.setdefault(entry.name, f"{entry.path} resolves outside {root}")
    return found, outside


def index_images(root: str | Path) -> dict[str, Path]:
    """Map image file name -> path over every image folder, leaving out files that resolve outside ``root``."""
    return scan_images(root)[0]


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
class NihDataset(Dataset):
    """An NIH ChestX-ray14 folder (or the built-in phantom, which is written in its layout).

    ``path_of`` also finds an image by file name in any image folder or tarball; a name absent on disk maps to
    ``images/NAME`` (reported missing by ``verify``).
    """

    name = "nih"
    title = "NIH ChestX-ray14"
    label_map = {n: n for n in ALL_LABELS}  # the study's names are NIH's own

    @classmethod
    def layout(cls) -> str:
        return "Data_Entry_2017*.csv[.gz] and images/*.png (or images_NNN/images/, or images_NNN.tar.gz)"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return any(root.glob("Data_Entry_2017*.csv")) or any(root.glob("Data_Entry_2017*.csv.gz"))

    @classmethod
    def read(cls, root: Path, options: DatasetOptions = DatasetOptions()) -> "NihDataset":
        """Every NIH image is frontal (PA or AP) and fully labelled: no option concerns it."""
        return read_nih_folder(root)

    @classmethod
    def write_phantom(cls, source: Dataset, out: Path, seed: int = 0) -> None:
        """The phantom is made in NIH's layout (``data.phantom``): a copy of its metadata, marker and images."""
        import shutil

        meta_file = Path(source.metadata.source)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(meta_file, out / meta_file.name)
        if (source.root / PHANTOM_MARKER).is_file():
            shutil.copy2(source.root / PHANTOM_MARKER, out / PHANTOM_MARKER)
        (out / "images").mkdir(exist_ok=True)
        for name in source.metadata.image_ids.tolist():
            shutil.copy2(source.path_of(name), out / "images" / name)

    def path_of(self, image_id: str) -> Path:
        """Where ``image_id`` should be; a name absent on disk maps to ``images/NAME`` (reported missing).

        Raises ``reader.OutsideRootError`` for a name that is not a bare file name or leads outside ``root``.
        """
        found = self.image_paths.get(image_id)
        if found is not None:
            return found  # listed by scan_images, which applied the same rule
        return contained_path(self.root, image_id, self.root / "images")

    def stored_width(self, rows: np.ndarray) -> np.ndarray:
        """NIH's README_CHESTXRAY: every distributed PNG is the original squeezed to 1024 px wide; the phantom
        renders each image at the size it records as the original."""
        if (self.root / PHANTOM_MARKER).is_file():
            return super().stored_width(rows)
        return np.full(len(rows), float(NIH_STORED_WIDTH))


def read_nih_folder(root: str | Path) -> NihDataset:
    """Open an NIH-layout folder; rows naming files outside it are left out with one ``DataWarning``."""
    r = Path(root)
    meta = read_metadata(find_metadata_file(r), controls=(r / PHANTOM_MARKER).is_file())
    found, outside_files = scan_images(r)
    archives = attach_archives(r, meta.image_ids.tolist(), found, outside_files)
    outside: dict[str, str] = {}
    for name in meta.image_ids.tolist():
        reason = name_problem(name) or outside_files.get(name)
        if reason is not None:
            outside[name] = reason
    if outside:
        first = next(iter(outside))
        warnings.warn(f"{meta.source}: {len(outside)} image name(s) lead outside {r} and are skipped "
                      f"(e.g. {first!r}: {outside[first]})", DataWarning, stacklevel=2)
        meta = meta.subset(np.flatnonzero(~np.isin(meta.image_ids, list(outside))))
    return NihDataset(r, meta, found, read_official_split(r), outside, archives,
                      version="v2020" if "v2020" in Path(meta.source).name else None)
DATASET_CLASS = NihDataset
