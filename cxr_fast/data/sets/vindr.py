"""VinDr-CXR 1.0.0 (Nguyen et al. 2022, Sci Data 9:429; PhysioNet, doi:10.13026/3akn-b287): DICOMs with
per-radiologist image labels.

Layout (PhysioNet's ``vindr-cxr/1.0.0/``): ``annotations/image_labels_train.csv`` (``image_id,rad_id`` then one 0/1
column per label; three rows per training image, one per radiologist), ``annotations/image_labels_test.csv``
(``image_id`` then the labels: one row per image, the consensus of five radiologists), images
``train/{image_id}.dicom`` and ``test/{image_id}.dicom``. The paper's test set is the official split's 'test'.

- Votes (``DatasetOptions.vote``): a training image's label is positive when a majority of its radiologists marked
  it (``majority``: 2 of the 3), or when any one did (``any``); every column is voted alike, No finding included.
- Patients: the release has no patient ids (the DICOMs were de-identified), so each image is its own patient.
- Views: every image is a postero-anterior chest radiograph (the paper: "18,000 postero-anterior (PA) view CXR
  scans"), so ``views`` changes nothing here.
- Pixel spacing: only the DICOM headers say it; ``pixel_spacing_mm`` reads the asked images' headers lazily.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr_fast.data.labels import ALL_LABELS
from cxr_fast.data.reader import DataWarning, name_problem, read_gray
from cxr_fast.data.sets.base import (Dataset, DatasetOptions, DicomHeaderSpacing, applied, csv_rows, csv_text,
                                     empty_folder, make_metadata, relative_problem)
from cxr_fast.errors import CxrError
from cxr_fast.io import write_text

TRAIN_CSV = "annotations/image_labels_train.csv"
TEST_CSV = "annotations/image_labels_test.csv"
# The label columns in the release's order (PhysioNet page, "Data description": 22 local findings, 6 global
# diagnoses, No finding). The training file spells the 28th "Other diseases", the test file "Other disease".
FINDING_COLUMNS = ("Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
                   "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity",
                   "Lung cavity", "Lung cyst", "Mediastinal shift", "Nodule/Mass", "Pleural effusion",
                   "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "Rib fracture", "Other lesion", "COPD",
                   "Lung tumor", "Pneumonia", "Tuberculosis")
TRAIN_COLUMNS = FINDING_COLUMNS + ("Other diseases", "No finding")
TEST_COLUMNS = FINDING_COLUMNS + ("Other disease", "No finding")
# VinDr-CXR's names -> the study's (Nguyen et al. 2022, Table 2 defines each). Unmapped: Aortic enlargement,
# Calcification, Clavicle fracture, Enlarged PA, ILD (a pattern, not ChestX-ray14's Fibrosis), Lung Opacity, Lung
# cavity, Lung cyst, Mediastinal shift, Rib fracture, Other lesion, COPD, Lung tumor, Tuberculosis, Other
# disease(s); and Nodule/Mass, one label for two findings ChestX-ray14 keeps apart: a positive could be either, so
# it says nothing certain of Nodule or of Mass (the paper's small-lesion labels), and neither is mapped.
LABEL_MAP: dict[str, str] = {
    "Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Pleural effusion": "Effusion",
    "Infiltration": "Infiltration", "Pneumonia": "Pneumonia", "Pneumothorax": "Pneumothorax",
    "Consolidation": "Consolidation", "Edema": "Edema", "Emphysema": "Emphysema", "Pulmonary fibrosis": "Fibrosis",
    "Pleural thickening": "Pleural_Thickening", "No finding": "No Finding",
}
MAPPED_COLUMNS = tuple(sorted(LABEL_MAP, key=lambda c: ALL_LABELS.index(LABEL_MAP[c])))  # in the study's order
# For the fixture only: where a phantom finding without a VinDr-CXR label of its own is written.
_PHANTOM_EXTRA = {"Mass": "Nodule/Mass", "Nodule": "Nodule/Mass", "Hernia": "Other lesion"}


def _flag(value: str, path: Path, line: int, column: str) -> int:
    """A label cell: 0 or 1 (also written 0.0, 1.0); anything else is one line naming the file and line."""
    v = value.strip()
    if v in ("0", "1", "0.0", "1.0"):
        return int(float(v))
    raise CxrError(f"{path}:{line}: column {column!r} holds {value!r}; VinDr-CXR's labels are 0 or 1")


def _labels(path: Path, line: int, row: dict[str, str], columns: Sequence[str]) -> np.ndarray:
    """Every label cell of a row checked; the mapped ones as flags, in ``MAPPED_COLUMNS`` order."""
    flags = {c: _flag(row[c], path, line, c) for c in columns}
    return np.array([flags[c] for c in MAPPED_COLUMNS], dtype=np.int64)


@dataclass
class VindrDataset(DicomHeaderSpacing, Dataset):
    """A VinDr-CXR 1.0.0 folder: image id ``{image_id}.dicom``, official split train/test by folder."""

    name = "vindr"
    title = "VinDr-CXR"
    label_map = LABEL_MAP
    options_used = ("vote",)

    @classmethod
    def layout(cls) -> str:
        return f"{TRAIN_CSV} (and {TEST_CSV}), train/{{image_id}}.dicom, test/{{image_id}}.dicom"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / TRAIN_CSV).is_file()

    @classmethod
    def read(cls, root: Path, options: DatasetOptions = DatasetOptions()) -> "VindrDataset":
        root = Path(root)
        train_path, test_path = root / TRAIN_CSV, root / TEST_CSV
        votes: dict[str, np.ndarray] = {}  # image -> positive votes per mapped label
        raters: dict[str, dict[str, int]] = {}  # image -> rad_id -> line
        columns: list[str] = []
        for line, row in csv_rows(train_path, ("image_id", "rad_id", *MAPPED_COLUMNS), "VinDr-CXR image_labels_train"):
            columns = columns or [c for c in row if c not in ("image_id", "rad_id")]
            image, rad = row["image_id"], row["rad_id"]
            if not image:
                raise CxrError(f"{train_path}:{line}: no image_id")
            seen = raters.setdefault(image, {})
            if rad in seen:
                raise CxrError(f"{train_path}:{line}: radiologist {rad!r} labels image {image} again "
                               f"(line {seen[rad]})")
            seen[rad] = line
            votes[image] = votes.get(image, 0) + _labels(train_path, line, row, columns)
        ids, sides = list(votes), ["train"] * len(votes)
        rows = [count >= (len(raters[image]) // 2 + 1 if options.vote == "majority" else 1)
                for image, count in votes.items()]
        has_test = test_path.is_file()
        if has_test:
            first: dict[str, int] = {}
            columns = []
            for line, row in csv_rows(test_path, ("image_id", *MAPPED_COLUMNS), "VinDr-CXR image_labels_test"):
                columns = columns or [c for c in row if c != "image_id"]
                image = row["image_id"]
                if not image:
                    raise CxrError(f"{test_path}:{line}: no image_id")
                if image in votes or image in first:
                    where = "the training labels" if image in votes else f"line {first[image]}"
                    raise CxrError(f"{test_path}:{line}: image {image} is already listed in {where}")
                first[image] = line
                ids.append(image)
                sides.append("test")
                rows.append(_labels(test_path, line, row, columns) > 0)
        labels = np.array(rows, dtype=bool).reshape(len(ids), len(MAPPED_COLUMNS))
        return cls._build(root, train_path, ids, sides, labels, options, has_test)

    @classmethod
    def _build(cls, root: Path, source: Path, ids: list[str], sides: list[str], labels: np.ndarray,
               options: DatasetOptions, has_test: bool) -> "VindrDataset":
        keep, paths, outside, split = [], {}, {}, {}
        for i, (image, side) in enumerate(zip(ids, sides)):
            name, relative = f"{image}.dicom", f"{side}/{image}.dicom"
            problem = name_problem(name) or relative_problem(relative)
            if problem:
                outside[name] = problem
                continue
            keep.append(i)
            paths[name] = root / relative
            split[name] = side
        if outside:
            first = next(iter(outside))
            warnings.warn(f"{source}: {len(outside)} image id(s) lead outside {root} and are skipped (e.g. {first!r}: "
                          f"{outside[first]})", DataWarning, stacklevel=3)
        names = [f"{ids[i]}.dicom" for i in keep]
        lab = labels[keep]
        strings = ["|".join(c for c, on in zip(MAPPED_COLUMNS, r) if on) for r in lab]
        meta = make_metadata(str(source), names, lab, [LABEL_MAP[c] for c in MAPPED_COLUMNS], names,
                             ["PA"] * len(names), label_strings=strings)
        return cls(root, meta, paths, split if has_test else None, outside,
                   version="1.0.0" if root.name == "1.0.0" else None, policy=applied(options, cls.options_used))

    @classmethod
    def write_phantom(cls, source: Dataset, out: Path, seed: int = 0) -> None:
        """The phantom in VinDr-CXR's layout. A seeded fifth of the images go to ``test/`` (one consensus row); each
        training image gets three radiologists: two give the phantom's labels, the third dissents on a seeded share
        of labels (a positive he misses, a negative he marks), so ``majority`` gives back the phantom's labels and
        ``any`` adds the third's marks. The DICOMs cycle through the stored variants (``cycle_variants``)."""
        from cxr_fast.data.sets.dicom_write import available_syntaxes, pydicom_for, write_radiograph

        pydicom_for(cls.title)
        out = empty_folder(out)
        meta, n = source.metadata, len(source.metadata)
        rng = np.random.default_rng([seed, 0x56494E])
        test = rng.random(n) < 0.2
        if n >= 2:
            test[0], test[1] = False, True
        inverse = {v: k for k, v in LABEL_MAP.items()} | _PHANTOM_EXTRA
        train_rows, test_rows = [], []
        variants = cycle_variants(n, tuple(s for s in available_syntaxes() if s != "jpeg"))
        for i, source_id in enumerate(meta.image_ids.tolist()):
            image = hashlib.sha256(f"{seed}:{source_id}".encode()).hexdigest()[:32]
            truth = {c: 0 for c in TRAIN_COLUMNS}
            for label, on in zip(meta.label_names, meta.labels[i]):
                if on and label in inverse:
                    truth[inverse[label]] = 1
            truth["No finding"] = int(not any(truth[c] for c in FINDING_COLUMNS))
            spacing = None if meta.original_spacing is None else tuple(meta.original_spacing[i, ::-1])
            side = "test" if test[i] else "train"
            write_radiograph(out / side / f"{image}.dicom", read_gray(source.path_of(source_id)), variants[i], spacing,
                             cls.title, PatientSex=str(meta.genders[i]), ViewPosition="PA",
                             PatientAge=f"{int(meta.ages[i]):03d}Y" if meta.ages[i] >= 0 else "")
            if test[i]:
                test_rows.append([image] + [truth[c] for c in FINDING_COLUMNS] + [0, truth["No finding"]])
                continue
            dissenter = int(rng.integers(3))
            for k, rad in enumerate(rng.choice(np.arange(1, 18), size=3, replace=False)):
                marks = {c: truth[c] for c in FINDING_COLUMNS}
                if k == dissenter:
                    for c in FINDING_COLUMNS:
                        marks[c] ^= int(rng.random() < (0.3 if truth[c] else 0.03))
                no_finding = int(not any(marks.values()))
                train_rows.append([image, f"R{rad}"] + [marks[c] for c in FINDING_COLUMNS] + [0, no_finding])
        write_text(out / TEST_CSV, csv_text(("image_id",) + TEST_COLUMNS, test_rows))
        write_text(out / TRAIN_CSV, csv_text(("image_id", "rad_id") + TRAIN_COLUMNS, train_rows))


def cycle_variants(n: int, syntaxes: tuple[str, ...]) -> list:
    """The stored variant of each of ``n`` fixture images: syntax (i mod the syntaxes), MONOCHROME1 on odd i, 16 bits
    on i mod 4 in 2..3, a header window on i mod 8 in 4..7, Imager Pixel Spacing on i mod 16 in 8..15. With three
    syntaxes every (syntax, photometric, bits, window) combination appears within the first 24 images."""
    from cxr_fast.data.sets.dicom_write import Variant

    return [Variant(syntaxes[i % len(syntaxes)], ("MONOCHROME2", "MONOCHROME1")[i % 2], (12, 16)[(i // 2) % 2],
                    bool((i // 4) % 2), ("PixelSpacing", "ImagerPixelSpacing")[(i // 8) % 2]) for i in range(n)]


DATASET_CLASS = VindrDataset
