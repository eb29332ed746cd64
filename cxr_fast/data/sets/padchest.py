"""PadChest (Bustos et al. 2020, Medical Image Analysis 66:101797; BIMCV, Hospital San Juan, Alicante): 16-bit
PNGs with labels extracted from Spanish reports.

Layout: ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` (or ``.csv.gz``; any
``PADCHEST_chest_x_ray_images_labels_*.csv*``, whose date part is recorded as the version) and images
``{ImageDir}/{ImageID}``, ``ImageDir`` the numbered folder (0 to 54) of the zip the image came in.

- Labels: the ``Labels`` column, a Python list written as text (``"['pleural effusion', 'cardiomegaly']"``), read
  with ``ast.literal_eval`` and refused unless it is a list of strings; blank items are skipped, names stripped.
  A row whose ``Labels`` is blank has no labels and is left out ("no labels").
- Label source (``DatasetOptions.label_source``): ``MethodLabel`` says who labelled the row: ``Physician`` (27% of
  the images, read by radiologists) or ``RNN_model`` (the rest, by the authors' network trained on those);
  ``physician`` keeps the first, ``all`` both.
- Views (``DatasetOptions.views``): ``Projection`` PA, AP and AP_horizontal (AP supine) are frontal; L, COSTAL and
  the rest are not.
- Patients: ``PatientID``. Pixel spacing: ``PixelSpacing_DICOM`` (row, column mm, as the DICOM wrote it; else
  ``SpatialResolution_DICOM``, one number) with ``Columns_DICOM`` x ``Rows_DICOM``: the PNGs are the full DICOM size.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, PngImagePlugin

from cxr_fast.data.reader import DataWarning, name_problem, read_gray
from cxr_fast.data.sets.base import (Dataset, DatasetOptions, applied, csv_rows, empty_folder, make_metadata,
                                     relative_problem, view_mask)
from cxr_fast.errors import CxrError
from cxr_fast.io import atomic_path, write_text

CSV_NAME = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
_CSV_PATTERN = re.compile(r"PADCHEST_chest_x_ray_images_labels_(.+?)\.csv(\.gz)?$")
# The columns, as the paper's data description and the CSV's header spell them.
COLUMNS = ("ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
           "ViewPosition_DICOM", "Projection", "MethodProjection", "Labels", "Localizations",
           "LabelsLocalizationsBySentence", "labelCUIS", "LocalizationsCUIS", "Modality_DICOM", "Manufacturer_DICOM",
           "Rows_DICOM", "Columns_DICOM", "PixelSpacing_DICOM", "SpatialResolution_DICOM", "BitsStored_DICOM",
           "WindowCenter_DICOM", "WindowWidth_DICOM", "Report", "MethodLabel")
REQUIRED = ("ImageID", "ImageDir", "PatientID", "Projection", "Labels", "MethodLabel")
FRONTAL = ("PA", "AP", "AP_horizontal")
METHODS = ("Physician", "RNN_model")
# PadChest's label names (lower case, as the Labels column writes them) -> the study's. The first term of each study
# label is the one PadChest's hierarchy of findings (Bustos et al. 2020, released with the data) names for it; the
# others are its children there, the same finding more precisely ("round atelectasis" is an atelectasis).
# Unmapped, on purpose: subcutaneous emphysema (air in the soft tissues, not the lung's emphysema), hydropneumothorax
# (both effusion and pneumothorax), mediastinal, pleural, breast and soft tissue masses (no lung mass), pseudonodule
# (no nodule), the interstitial, alveolar and ground glass patterns and air bronchogram (patterns, not findings of
# their own in ChestX-ray14), post radiotherapy changes and asbestosis signs, COPD signs, and the ~170 others.
LABEL_MAP: dict[str, str] = {
    "atelectasis": "Atelectasis", "total atelectasis": "Atelectasis", "lobar atelectasis": "Atelectasis",
    "segmental atelectasis": "Atelectasis", "laminar atelectasis": "Atelectasis", "round atelectasis": "Atelectasis",
    "atelectasis basal": "Atelectasis",
    "cardiomegaly": "Cardiomegaly",
    "pleural effusion": "Effusion", "loculated pleural effusion": "Effusion",
    "infiltrates": "Infiltration",
    "mass": "Mass", "pulmonary mass": "Mass",
    "nodule": "Nodule", "multiple nodules": "Nodule",
    "pneumonia": "Pneumonia", "atypical pneumonia": "Pneumonia",
    "pneumothorax": "Pneumothorax",
    "consolidation": "Consolidation",
    "pulmonary edema": "Edema",
    "emphysema": "Emphysema",
    "pulmonary fibrosis": "Fibrosis",
    "pleural thickening": "Pleural_Thickening", "apical pleural thickening": "Pleural_Thickening",
    "calcified pleural thickening": "Pleural_Thickening",
    "hiatal hernia": "Hernia",
    "normal": "No Finding",
}
LABEL_NAMES = tuple(dict.fromkeys(LABEL_MAP.values()))  # the study's, in the table's order
_PRIMARY = {study: own for own, study in reversed(LABEL_MAP.items())}  # study -> its first PadChest term
_CHILD = {study: own for own, study in LABEL_MAP.items() if own != _PRIMARY[study]}  # study -> one child term
_NOISE = ("chronic changes", "aortic elongation", "kyphosis", "COPD signs", "unchanged")  # unmapped, for the fixture
STORED_BITS = 12  # the fixture's PNGs: 12 significant bits, as BitsStored_DICOM says


def find_csv(root: Path) -> Path | None:
    """The label CSV in ``root`` (the 01.02.19 release's name first), or None."""
    found = sorted(p for p in root.glob("PADCHEST_chest_x_ray_images_labels_*.csv*") if _CSV_PATTERN.match(p.name))
    return next((p for p in found if p.name.startswith(CSV_NAME)), found[0] if found else None)


def parse_labels(text: str, path: Path, line: int) -> list[str] | None:
    """The ``Labels`` cell as stripped names (blank items skipped); None for a blank cell. Anything but a list of
    strings (evaluated as a literal only, never as code) is one line naming the file and line."""
    t = text.strip()
    if not t or t.lower() in ("nan", "none"):
        return None
    value = None
    if len(t) <= 20_000:
        try:
            value = ast.literal_eval(t)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            value = None
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise CxrError(f"{path}:{line}: Labels {t[:60]!r} is not a list of label names "
                       "(PadChest writes e.g. \"['pleural effusion', 'cardiomegaly']\")")
    return [x.strip().lower() for x in value if x.strip()]


def _positive(text: str, path: Path, line: int, column: str) -> float:
    """A positive number from a cell; NaN for a blank one (unknown); anything else names the file and line."""
    try:  # the common case, first: a plain number
        value = float(text)
        if 0 < value < float("inf"):
            return value
    except ValueError:
        pass
    t = text.strip().strip("'\"")
    if not t or t.lower() in ("nan", "none"):
        return float("nan")
    try:
        value = float(t)
    except ValueError:
        value = -1.0
    if not (np.isfinite(value) and value > 0):
        raise CxrError(f"{path}:{line}: {column} holds {text!r}, not a positive number")
    return value


def _spacing(row: dict[str, str], path: Path, line: int) -> tuple[float, float]:
    """(x, y) mm per pixel: ``PixelSpacing_DICOM`` is DICOM's (row, column) pair, written as a list; else
    ``SpatialResolution_DICOM``, one number for both; NaN when neither says."""
    text = row.get("PixelSpacing_DICOM", "").strip()
    if text and text.lower() not in ("nan", "none"):
        parts = [p for p in re.split(r"[\s,\\]+", text.strip("[]() ")) if p]
        values = [_positive(p, path, line, "PixelSpacing_DICOM") for p in parts]
        if len(values) not in (1, 2):
            raise CxrError(f"{path}:{line}: PixelSpacing_DICOM holds {text!r}, not one or two numbers")
        return values[-1], values[0]
    one = _positive(row.get("SpatialResolution_DICOM", ""), path, line, "SpatialResolution_DICOM")
    return one, one


def _age(row: dict[str, str]) -> int:
    """Age at the study from ``StudyDate_DICOM`` (YYYYMMDD) and ``PatientBirth`` (a year); -1 unknown."""
    try:
        return max(-1, int(row.get("StudyDate_DICOM", "")[:4]) - int(float(row.get("PatientBirth", ""))))
    except ValueError:
        return -1


class _Row(NamedTuple):
    image: str
    relative: str
    patient: str
    view: str
    method: str
    labels: list[str]
    age: int
    sex: str
    geometry: tuple[float, ...]  # original width, height (px), spacing x, y (mm)


def _parse(path: Path, root: Path) -> tuple[list[_Row], dict[str, str], int]:
    """Every row checked (errors name the file and line); the usable ones, the ones whose path leads outside
    ``root`` (id -> why, with one ``DataWarning``), and how many had no labels."""
    rows: list[_Row] = []
    outside: dict[str, str] = {}
    first: dict[str, int] = {}
    no_labels = 0
    parsed: dict[str, list[str] | None] = {}  # Labels text -> names: most rows repeat a few hundred label lists
    spacings: dict[tuple[str, str], tuple[float, float]] = {}  # and a few hundred spacings
    for line, row in csv_rows(path, REQUIRED, "PadChest labels"):
        image, method = row["ImageID"], row["MethodLabel"]
        if image in first:
            raise CxrError(f"{path}:{line}: ImageID {image} is listed again (line {first[image]}); keep one row per "
                           "image")
        first[image] = line
        text = row["Labels"]
        labels = parsed[text] if text in parsed else parsed.setdefault(text, parse_labels(text, path, line))
        if method not in METHODS:
            raise CxrError(f"{path}:{line}: MethodLabel {method!r} is neither {' nor '.join(METHODS)}")
        size = tuple(_positive(row.get(c, ""), path, line, c) for c in ("Columns_DICOM", "Rows_DICOM"))
        key = (row.get("PixelSpacing_DICOM", ""), row.get("SpatialResolution_DICOM", ""))
        geometry = size + (spacings[key] if key in spacings else spacings.setdefault(key, _spacing(row, path, line)))
        folder = row["ImageDir"]
        relative = f"{folder}/{image}"
        problem = name_problem(image) or (None if folder.isdigit() else relative_problem(relative))
        if problem:
            outside[image] = problem
        elif labels is None:
            no_labels += 1
        else:
            sex = row.get("PatientSex_DICOM", "")
            rows.append(_Row(image, relative, row["PatientID"], row["Projection"], method, labels, _age(row),
                             sex if sex in ("M", "F") else "", geometry))
    if outside:
        example = next(iter(outside))
        warnings.warn(f"{path}: {len(outside)} image path(s) lead outside {root} and are skipped (e.g. {example!r}: "
                      f"{outside[example]})", DataWarning, stacklevel=3)
    return rows, outside, no_labels


@dataclass
class PadchestDataset(Dataset):
    """A PadChest folder: image id ``ImageID`` (a unique PNG name), no official split."""

    name = "padchest"
    title = "PadChest"
    label_map = LABEL_MAP
    options_used = ("views", "label_source")

    @classmethod
    def layout(cls) -> str:
        return "PADCHEST_chest_x_ray_images_labels_*.csv[.gz] and {ImageDir}/{ImageID}.png (ImageDir 0..54)"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return find_csv(Path(root)) is not None

    @classmethod
    def read(cls, root: Path, options: DatasetOptions = DatasetOptions()) -> "PadchestDataset":
        root = Path(root)
        path = find_csv(root)
        if path is None:
            raise CxrError(f"{root}: no PADCHEST_chest_x_ray_images_labels_*.csv[.gz] file")
        rows, outside, no_labels = _parse(path, root)
        frontal = view_mask([r.view for r in rows], FRONTAL, options.views)
        physician = np.array([r.method == "Physician" or options.label_source == "all" for r in rows], dtype=bool)
        left_out = {"no labels": no_labels, "not a frontal view": int((~frontal).sum()),
                    "labelled by the RNN model": int((frontal & ~physician).sum())}
        kept = [rows[i] for i in np.flatnonzero(frontal & physician)]
        if not kept:
            raise CxrError(f"{path}: no rows left under views={options.views}, label_source={options.label_source} "
                           f"(left out: {left_out})")
        labels = np.zeros((len(kept), len(LABEL_NAMES)), dtype=bool)
        for r, row in enumerate(kept):
            for own in row.labels:
                if own in LABEL_MAP:
                    labels[r, LABEL_NAMES.index(LABEL_MAP[own])] = True
        numbers = np.array([r.geometry for r in kept], dtype=np.float64).reshape(len(kept), 4)
        meta = make_metadata(str(path), [r.image for r in kept], labels, LABEL_NAMES, [r.patient for r in kept],
                             [r.view for r in kept], ages=[r.age for r in kept], genders=[r.sex for r in kept],
                             label_strings=["|".join(r.labels) for r in kept], original_size=numbers[:, :2],
                             original_spacing=numbers[:, 2:])
        version = _CSV_PATTERN.match(path.name)[1]  # type: ignore[index]
        date = re.search(r"\d\d\.\d\d\.\d\d", version)
        folders = {folder: root / folder for folder in {r.relative.rsplit("/", 1)[0] for r in kept}}
        paths = {r.image: folders[r.relative.rsplit("/", 1)[0]] / r.image for r in kept}
        return cls(root, meta, paths, None, outside,
                   version=date[0] if date else version, policy=applied(options, cls.options_used),
                   left_out={k: v for k, v in left_out.items() if v})

    @classmethod
    def write_phantom(cls, source: Dataset, out: Path, seed: int = 0) -> None:
        """The phantom in PadChest's layout: 16-bit PNGs holding 12 bits (v * 4095 / 255, rounded, with an sBIT chunk
        of 12, so the reader's ``bits`` step gives back v). Seeded shares of the rows: labelled by ``RNN_model``
        (30%), AP written AP_horizontal (40% of AP), a child term of the hierarchy for a finding (25%), unmapped
        terms and blank items beside the mapped ones; and an extra lateral (``L``) row for 15% of the studies, after
        the frontal rows, which keep the phantom's order."""
        out = empty_folder(out)
        meta = source.metadata
        rng = np.random.default_rng([seed, 0x504144])
        frontal_rows, lateral_rows = [], []
        sbit = PngImagePlugin.PngInfo()
        sbit.add(b"sBIT", bytes([STORED_BITS]))
        for i, source_id in enumerate(meta.image_ids.tolist()):
            gray = read_gray(source.path_of(source_id))
            terms = []
            for label, on in zip(meta.label_names, meta.labels[i]):
                if on and label in _PRIMARY:
                    terms.append(_CHILD[label] if label in _CHILD and rng.random() < 0.25 else _PRIMARY[label])
            if rng.random() < 0.3:
                terms.insert(int(rng.integers(len(terms) + 1)), str(rng.choice(_NOISE)))
            if rng.random() < 0.1:
                terms.append("")
            labels = str([(" " + t if rng.random() < 0.1 else t) for t in terms])
            view = str(meta.views[i])
            projection = "AP_horizontal" if view == "AP" and rng.random() < 0.4 else view
            method = "RNN_model" if rng.random() < 0.3 else "Physician"
            spacing = (np.full(2, np.nan) if meta.original_spacing is None else meta.original_spacing[i])
            study = {"seed": seed, "patient": int(meta.patient_ids[i]), "follow_up": int(meta.follow_up[i]),
                     "age": int(meta.ages[i]), "sex": str(meta.genders[i]), "labels": labels, "method": method,
                     "spacing": spacing, "index": i}
            frontal_rows.append(_row(source_id, projection, study, gray, out, sbit))
            if rng.random() < 0.15:
                lateral_rows.append(_row(source_id + ":L", "L", study, gray[:, ::-1], out, sbit))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(frontal_rows + lateral_rows)
        write_text(out / CSV_NAME, buf.getvalue())


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _row(key: str, projection: str, study: dict, gray: np.ndarray, out: Path,
         sbit: PngImagePlugin.PngInfo) -> dict[str, str]:
    """One CSV row of the fixture, its 16-bit PNG written under ``out``."""
    digest = int(_digest(f"{study['seed']}:{key}")[:24], 16)
    image = (f"2168401113669640{digest % 10**28:028d}_{study['index'] % 100:02d}-{digest % 997:03d}-"
             f"{digest % 991:03d}.png")
    folder = str(digest % 55)
    stored = np.rint(gray.astype(np.float64) * ((1 << STORED_BITS) - 1) / 255.0).astype(np.uint16)
    with atomic_path(out / folder / image) as tmp:
        Image.fromarray(np.ascontiguousarray(stored)).save(tmp, format="PNG", pnginfo=sbit, compress_level=1)
    year = 2009 + study["patient"] % 9
    x, y = (float(v) for v in study["spacing"])
    terms = ast.literal_eval(study["labels"])
    return {
        "ImageID": image, "ImageDir": folder,
        "StudyDate_DICOM": f"{year}{1 + study['follow_up'] % 12:02d}{1 + study['index'] % 28:02d}",
        "StudyID": _digest(f"study:{study['patient']}:{study['follow_up']}")[:32],
        "PatientID": _digest(f"patient:{study['patient']}")[:32],
        "PatientBirth": str(year - study["age"]) if study["age"] >= 0 else "", "PatientSex_DICOM": study["sex"],
        "ViewPosition_DICOM": {"PA": "POSTEROANTERIOR", "L": "LATERAL"}.get(projection, "ANTEROPOSTERIOR"),
        "Projection": projection, "MethodProjection": "Manual review of DICOM fields", "Labels": study["labels"],
        "Localizations": "[]", "LabelsLocalizationsBySentence": str([[t.strip()] for t in terms if t.strip()]),
        "labelCUIS": "[]", "LocalizationsCUIS": "[]", "Modality_DICOM": "CR",
        "Manufacturer_DICOM": "PhilipsMedicalSystems", "Rows_DICOM": str(gray.shape[0]),
        "Columns_DICOM": str(gray.shape[1]), "PixelSpacing_DICOM": f"[{y:g}, {x:g}]" if np.isfinite(x) else "",
        "SpatialResolution_DICOM": f"{x:g}" if np.isfinite(x) else "", "BitsStored_DICOM": str(STORED_BITS),
        "WindowCenter_DICOM": "2048", "WindowWidth_DICOM": "4096",
        "Report": ("hallazgos: " + ", ".join(t.strip() for t in terms if t.strip())) if terms else "sin hallazgos",
        "MethodLabel": study["method"],
    }


DATASET_CLASS = PadchestDataset
