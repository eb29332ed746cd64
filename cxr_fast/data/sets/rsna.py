"""RSNA Pneumonia Detection Challenge, stage 2 (Shih et al. 2019, Radiology: AI 1:e180041; Kaggle): DICOMs with
boxes around lung opacities.

Layout (Kaggle's ``rsna-pneumonia-detection-challenge``): ``stage_2_train_labels.csv`` (``patientId,x,y,width,height,
Target``: one row per box, so an image with several boxes has several rows, and one row with blank box and Target
0 for an image without any), optionally ``stage_2_detailed_class_info.csv`` (``patientId,class``: Lung Opacity,
Normal, or No Lung Opacity / Not Normal), and images ``stage_2_train_images/{patientId}.dcm``.

- Label: ``Target`` 1 is RSNA's positive class, "Lung Opacity": opacities suggestive of pneumonia, RSNA's proxy for
  pneumonia; it is mapped to the study's Pneumonia and is the only label. The class file, when present, must agree
  (Lung Opacity exactly where Target is 1) and gives each row's label string.
- Derived from NIH: the images are ChestX-ray14's (Shih et al. 2019 relabelled them), so RSNA is never an external
  test for a model trained on NIH (``derived_from``).
- Patients: ``patientId``, which names one image each (one image per patient in the challenge).
- Views: every image is a frontal radiograph, PA or AP (ChestX-ray14's views); the DICOM header's View Position is
  not read at parse, so the views are '' (unknown) and no option applies.
- No official split: the stage 2 test images come without labels.
- Pixel spacing: only the DICOM headers say it (``pixel_spacing_mm`` reads them lazily).
"""

from __future__ import annotations

import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr_fast.data.reader import DataWarning, name_problem, read_gray
from cxr_fast.data.sets.base import (Dataset, DatasetOptions, DicomHeaderSpacing, applied, csv_rows, csv_text,
                                     empty_folder, make_metadata)
from cxr_fast.errors import CxrError
from cxr_fast.io import write_text

LABELS_CSV = "stage_2_train_labels.csv"
CLASS_CSV = "stage_2_detailed_class_info.csv"
IMAGES = "stage_2_train_images"
LABEL_MAP: dict[str, str] = {"Target": "Pneumonia"}  # RSNA's "Lung Opacity" class; nothing else is labelled
OPACITY = "Lung Opacity"
CLASSES = (OPACITY, "Normal", "No Lung Opacity / Not Normal")


def _number(text: str, path: Path, line: int, column: str) -> float | None:
    """A box coordinate (px), None when blank; anything else names the file and line."""
    if not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value) or value < 0:
        raise CxrError(f"{path}:{line}: {column} holds {text!r}, not a coordinate in pixels")
    return value


@dataclass
class RsnaDataset(DicomHeaderSpacing, Dataset):
    """An RSNA Pneumonia stage 2 folder: image id ``{patientId}.dcm``."""

    name = "rsna"
    title = "RSNA Pneumonia Detection Challenge"
    label_map = LABEL_MAP
    derived_from = ("nih",)
    options_used = ()

    @classmethod
    def layout(cls) -> str:
        return f"{LABELS_CSV} (and {CLASS_CSV}), {IMAGES}/{{patientId}}.dcm"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (Path(root) / LABELS_CSV).is_file()

    @classmethod
    def read(cls, root: Path, options: DatasetOptions = DatasetOptions()) -> "RsnaDataset":
        root = Path(root)
        path = root / LABELS_CSV
        target: dict[str, tuple[int, int]] = {}  # patientId -> (Target, first line)
        for line, row in csv_rows(path, ("patientId", "x", "y", "width", "height", "Target"), "RSNA train labels"):
            patient, value = row["patientId"], row["Target"].strip()
            if not patient:
                raise CxrError(f"{path}:{line}: no patientId")
            if value not in ("0", "1"):
                raise CxrError(f"{path}:{line}: Target holds {row['Target']!r}; RSNA's Target is 0 or 1")
            box = [row[c] for c in ("x", "y", "width", "height")]
            present = [_number(v, path, line, c) is not None for v, c in zip(box, ("x", "y", "width", "height"))]
            if not (all(present) if value == "1" else not any(present)):
                raise CxrError(f"{path}:{line}: Target {value} with box {box}; a box goes with Target 1, a blank box "
                               "with Target 0")
            if patient in target and target[patient][0] != int(value):
                raise CxrError(f"{path}:{line}: patientId {patient} has Target {value} here and "
                               f"{target[patient][0]} on line {target[patient][1]}")
            target.setdefault(patient, (int(value), line))
        classes = cls._classes(root / CLASS_CSV, target)
        ids, flags, strings, paths, outside = [], [], [], {}, {}
        for patient, (value, _) in target.items():
            name = f"{patient}.dcm"
            problem = name_problem(name)
            if problem:
                outside[name] = problem
                continue
            ids.append(name)
            flags.append(bool(value))
            strings.append(classes.get(patient, OPACITY if value else ""))
            paths[name] = root / IMAGES / name
        if outside:
            example = next(iter(outside))
            warnings.warn(f"{path}: {len(outside)} patientId(s) lead outside {root} and are skipped (e.g. {example!r}: "
                          f"{outside[example]})", DataWarning, stacklevel=2)
        meta = make_metadata(str(path), ids, np.array(flags, dtype=bool).reshape(-1, 1), ["Pneumonia"], ids,
                             [""] * len(ids), label_strings=strings)
        return cls(root, meta, paths, None, outside, version="stage 2", policy=applied(options, cls.options_used))

    @staticmethod
    def _classes(path: Path, target: dict[str, tuple[int, int]]) -> dict[str, str]:
        """patientId -> class from the optional class file, checked against Target (Lung Opacity iff Target 1)."""
        if not path.is_file():
            return {}
        out: dict[str, str] = {}
        for line, row in csv_rows(path, ("patientId", "class"), "RSNA detailed class info"):
            patient, name = row["patientId"], row["class"]
            if name not in CLASSES:
                raise CxrError(f"{path}:{line}: class {name!r} is none of {', '.join(CLASSES)}")
            if patient in target and (name == OPACITY) != bool(target[patient][0]):
                raise CxrError(f"{path}:{line}: class {name!r} for {patient}, whose Target is {target[patient][0]} "
                               f"({LABELS_CSV} line {target[patient][1]})")
            if out.setdefault(patient, name) != name:
                raise CxrError(f"{path}:{line}: patientId {patient} has class {name!r} here and {out[patient]!r} above")
        return out

    @classmethod
    def write_phantom(cls, source: Dataset, out: Path, seed: int = 0) -> None:
        """The phantom in RSNA's layout. The real images are 1024 x 1024, MONOCHROME2, 8 bits stored, JPEG baseline
        (1.2.840.10008.1.2.4.50); so are these, at the phantom's size, encoded by Pillow at quality 100 (within one
        gray level of the phantom). Target is the phantom's Pneumonia; a positive gets one box, or two (a seeded
        40%, and the first positive), one row each; a negative's class is Normal where the phantom says No Finding."""
        from cxr_fast.data.sets.dicom_write import (CR_STORAGE, Variant, available_syntaxes, pydicom_for,
                                                    write_radiograph)

        pydicom_for(cls.title)
        out = empty_folder(out)
        meta = source.metadata
        rng = np.random.default_rng([seed, 0x52534E])
        variant = Variant("jpeg" if "jpeg" in available_syntaxes() else "explicit", "MONOCHROME2", 8)
        pneumonia, normal = meta.has("Pneumonia"), meta.has("No Finding")
        labels, classes = [["patientId", "x", "y", "width", "height", "Target"]], [["patientId", "class"]]
        for i, source_id in enumerate(meta.image_ids.tolist()):
            patient = str(uuid.uuid5(uuid.NAMESPACE_URL, f"cxr-fast-rsna:{seed}:{source_id}"))
            gray = read_gray(source.path_of(source_id))
            spacing = None if meta.original_spacing is None else tuple(meta.original_spacing[i, ::-1])
            write_radiograph(out / IMAGES / f"{patient}.dcm", gray, variant, spacing, cls.title, CR_STORAGE,
                             PatientID=patient, PatientSex=str(meta.genders[i]), ViewPosition=str(meta.views[i]),
                             BodyPartExamined="CHEST", PatientAge=f"{max(int(meta.ages[i]), 0):03d}Y")
            if not pneumonia[i]:
                labels.append([patient, "", "", "", "", 0])
                classes.append([patient, "Normal" if normal[i] else CLASSES[2]])
                continue
            h, w = gray.shape
            two = rng.random() < 0.4 or i == int(np.argmax(pneumonia))  # the first positive always has two
            for _ in range(2 if two else 1):
                bw, bh = rng.uniform(0.15, 0.3) * w, rng.uniform(0.2, 0.4) * h
                x, y = rng.uniform(0.1 * w, 0.9 * w - bw), rng.uniform(0.1 * h, 0.9 * h - bh)
                labels.append([patient] + [f"{v:.1f}" for v in (x, y, bw, bh)] + [1])
                classes.append([patient, OPACITY])
        write_text(out / CLASS_CSV, csv_text(classes[0], classes[1:]))
        write_text(out / LABELS_CSV, csv_text(labels[0], labels[1:]))


DATASET_CLASS = RsnaDataset
