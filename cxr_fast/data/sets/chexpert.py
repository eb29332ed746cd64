"""CheXpert v1.0 (Irvin et al. 2019, "CheXpert: A Large Chest Radiograph Dataset with Uncertainty Labels and
Expert Comparison", AAAI; Stanford ML Group), the small (JPEGs about 390 x 320) and the full download.

Layout (the download's own, and stanfordmlgroup.github.io/competitions/chexpert): the zip unpacks to
``CheXpert-v1.0-small/`` (or ``CheXpert-v1.0/``) holding ``train.csv``, ``valid.csv`` and
``{train,valid}/patientNNNNN/studyN/viewN_{frontal,lateral}.jpg``. A CSV's ``Path`` is relative to the folder
ABOVE that one (``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``). ``--data`` may name that
folder or its parent (holding exactly one of the two): the dataset's ``root`` is the folder holding the CSVs, and
a path's leading ``CheXpert-v1.0[-small]/`` means that folder, whatever it is called now (a renamed copy, or
``cxr-fast synth``'s fixture). An image's id is its path under that folder, flattened (``base.flat_name``).

Labels, per the paper: 1.0 positive, 0.0 negative, -1.0 uncertain, blank not mentioned. Uncertain takes
``--uncertain`` (ignore, zero, one: the paper's U-Ignore, U-Zeros, U-Ones); blank takes ``--blank`` (zero, as the
paper reads it, or ignore: No Finding, written 1.0 or blank, then has no negatives). A label left neither
positive nor negative is unknown (``Metadata.known``). A patient is its ``patientNNNNN`` folder (the number);
``studyN`` is follow-up N - 1. ``valid.csv`` is the official 'test' side (the 234 images of 200 studies the
paper's radiologists labelled); the hidden test set is not distributed.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from cxr_fast.data.labels import ALL_LABELS, NO_FINDING
from cxr_fast.data.reader import DataWarning, read_gray
from cxr_fast.data.sets.base import (Dataset, DatasetOptions, applied, csv_rows, csv_text, empty_folder, flat_name,
                                     make_metadata, relative_problem, view_mask)
from cxr_fast.errors import CxrError
from cxr_fast.io import atomic_path, write_text

# The header of train.csv and valid.csv, exactly as distributed (CheXpert-v1.0-small/train.csv, line 1).
HEADER = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly",
          "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
          "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices")
# CheXpert's observation -> the study's finding (Irvin et al. 2019, Table 1; ChestX-ray14's names, data.labels).
# Unmapped, because none is the same finding as one of ChestX-ray14's:
#   Lung Lesion (the labeler's "nodule", "mass", "lesion", ... mentions together: neither NIH's Nodule, under 3 cm,
#     nor its Mass, over 3 cm; nothing in the label says which), Lung Opacity (the parent of Edema, Consolidation,
#     Pneumonia, Lung Lesion and Atelectasis in CheXpert's hierarchy, wider than NIH's Infiltration), Enlarged
#     Cardiomediastinum (the parent of Cardiomegaly), Pleural Other (thickening, fibrosis, calcification together),
#     Fracture, Support Devices. NIH's Infiltration, Mass, Nodule, Emphysema, Fibrosis, Pleural_Thickening and
#     Hernia have no CheXpert column.
LABEL_MAP: dict[str, str] = {
    "Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Consolidation": "Consolidation",
    "Edema": "Edema", "Pleural Effusion": "Effusion", "Pneumonia": "Pneumonia", "Pneumothorax": "Pneumothorax",
    "No Finding": "No Finding",
}
STUDY_LABELS: tuple[str, ...] = tuple(n for n in ALL_LABELS if n in LABEL_MAP.values())  # the study's order
COLUMNS: tuple[str, ...] = tuple({v: k for k, v in LABEL_MAP.items()}[n] for n in STUDY_LABELS)
BLANK = 2  # a cell's code: 1, 0, -1 as written, BLANK for an empty cell
_CODES = {"1.0": 1, "1": 1, "0.0": 0, "0": 0, "-1.0": -1, "-1": -1, "": BLANK}
FRONTAL = ("PA", "AP")
_PREFIX = re.compile(r"CheXpert-(v1\.0(?:-small)?)")
_PATIENT = re.compile(r"(?:^|/)patient(\d+)/study(\d+)/")
# The fixture's shares (write_phantom): of positive and of negative finding cells written -1.0, of the remaining
# 0.0 cells written blank, of studies given a lateral, of patients put in valid.csv.
UNCERTAIN_SHARE, BLANK_SHARE, LATERAL_SHARE, VALID_SHARE = 0.1, 0.3, 0.25, 0.2


def label_codes(path: Path, line: int, row: dict[str, str], columns: Sequence[str]) -> list[int]:
    """A row's cells as codes (1, 0, -1, BLANK); any other value is one line naming the file and line."""
    codes = []
    for col in columns:
        code = _CODES.get(row[col])
        if code is None:
            raise CxrError(f"{path}:{line}: {col!r} holds {row[col]!r}; a CheXpert label is 1.0, 0.0, -1.0 "
                           "(uncertain) or blank")
        codes.append(code)
    return codes


def policy_labels(codes: np.ndarray, options: DatasetOptions) -> tuple[np.ndarray, np.ndarray]:
    """(labels, known) from cell codes under ``options.uncertain`` and ``options.blank`` (Irvin et al. 2019)."""
    uncertain, blank = codes == -1, codes == BLANK
    labels = (codes == 1) | (uncertain & (options.uncertain == "one"))
    known = ~((uncertain & (options.uncertain == "ignore")) | (blank & (options.blank == "ignore")))
    return labels, known


def pick(rng: np.random.Generator, pool: np.ndarray, share: float) -> np.ndarray:
    """A seeded ``share`` of ``pool``, at least one where the pool has any (every policy gets rows to act on)."""
    if len(pool) == 0:
        return pool[:0]
    return rng.choice(pool, size=min(len(pool), max(1, round(share * len(pool)))), replace=False)


def phantom_cells(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cells for ``truth`` (N x STUDY_LABELS, bool) in CheXpert's spelling: 1.0/0.0, No Finding 1.0 or blank (as
    CheXpert writes it), then a seeded share of positive finding cells -1.0, and of negative ones in studies with a
    finding (the labeler's No Finding means none positive or uncertain), and of the other 0.0 cells blank (never a
    positive, so blank=zero keeps the truth)."""
    cells = np.where(truth, "1.0", "0.0").astype(object)
    finding = np.array([n != NO_FINDING for n in STUDY_LABELS])
    cells[:, ~finding] = np.where(truth[:, ~finding], "1.0", "")
    flat = cells.reshape(-1)
    abnormal = ~truth[:, ~finding].any(axis=1, keepdims=True)  # No Finding rules out an uncertain cell
    for side in (truth & finding, ~truth & finding & abnormal):
        flat[pick(rng, np.flatnonzero(side), UNCERTAIN_SHARE)] = "-1.0"
    flat[pick(rng, np.flatnonzero(flat == "0.0"), BLANK_SHARE)] = ""
    return cells


def save_jpeg(pixels: np.ndarray, dest: Path) -> None:
    """An 8-bit gray image as a quality-95 JPEG (the datasets' own format), written atomically."""
    with atomic_path(dest) as tmp:
        Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), "L").save(tmp, format="JPEG", quality=95)


def _is_chexpert(folder: Path) -> bool:
    """Whether ``folder`` holds a ``train.csv`` with CheXpert's header (its first line only is read)."""
    try:
        with open(folder / "train.csv", encoding="utf-8", errors="replace") as fh:
            first = fh.readline(4096)
    except OSError:
        return False
    return first.lstrip("\ufeff").startswith("Path,") and "Frontal/Lateral" in first


def _candidates(root: Path) -> list[Path]:
    if _is_chexpert(root):
        return [root]
    return [root / n for n in ("CheXpert-v1.0-small", "CheXpert-v1.0") if _is_chexpert(root / n)]


def relative_path(raw: str) -> tuple[str, str | None]:
    """A CSV ``Path`` under the dataset folder (its leading ``CheXpert-v1.0[-small]/`` dropped), and why it cannot
    name a file inside it (None when it can)."""
    parts = PurePosixPath(raw.replace("\\", "/")).parts
    rel = "/".join(parts[1:]) if parts and _PREFIX.fullmatch(parts[0]) else raw
    return rel, relative_problem(raw) or relative_problem(rel)


@dataclass
class CheXpertDataset(Dataset):
    """A CheXpert v1.0 folder (small or full); see the module's docstring for the layout and policies."""

    name = "chexpert"
    title = "CheXpert v1.0"
    label_map = LABEL_MAP
    options_used = ("uncertain", "blank", "views")

    @classmethod
    def layout(cls) -> str:
        return ("train.csv and valid.csv (Path,Sex,Age,Frontal/Lateral,AP/PA,<14 observations>) with "
                "{train,valid}/patientNNNNN/studyN/viewN_*.jpg, in CheXpert-v1.0-small/ or CheXpert-v1.0/ or here")

    @classmethod
    def detect(cls, root: Path) -> bool:
        return bool(_candidates(Path(root)))

    @classmethod
    def read(cls, root: Path, options: DatasetOptions = DatasetOptions()) -> "CheXpertDataset":
        """Parse ``train.csv`` ('train') and ``valid.csv`` ('test'); rows whose path leads outside are skipped with
        one ``DataWarning``, views outside the policy are counted in ``left_out``."""
        found = _candidates(Path(root))
        if len(found) != 1:
            raise CxrError(f"{root} holds both CheXpert-v1.0-small and CheXpert-v1.0; point --data at one" if found
                           else f"{root} is not in the {cls.title} layout (expected {cls.layout()})")
        folder = found[0]
        ids, codes, patients, studies, views, ages, sexes, sides, paths = ([] for _ in range(9))
        outside: dict[str, str] = {}
        prefixes: set[str] = set()
        for csv_name, side in (("train.csv", "train"), ("valid.csv", "test")):
            path = folder / csv_name
            for line, row in csv_rows(path, HEADER[:5] + COLUMNS, "CheXpert"):
                raw = row["Path"]
                rel, problem = relative_path(raw)
                if problem is not None:
                    outside[raw] = problem
                    continue
                prefixes.add(PurePosixPath(raw.replace("\\", "/")).parts[0])
                row_codes = label_codes(path, line, row, COLUMNS)
                frontal = row["Frontal/Lateral"]
                if frontal not in ("Frontal", "Lateral"):
                    raise CxrError(f"{path}:{line}: 'Frontal/Lateral' holds {frontal!r}, not Frontal or Lateral")
                found_patient = _PATIENT.search(rel)
                if found_patient is None:
                    raise CxrError(f"{path}:{line}: path {raw!r} has no patientNNNNN/studyN/ folders")
                age = row["Age"]
                ids.append(flat_name(rel))
                paths.append(folder / rel)
                codes.append(row_codes)
                patients.append(int(found_patient.group(1)))
                studies.append(int(found_patient.group(2)) - 1)
                views.append("LATERAL" if frontal == "Lateral" else row["AP/PA"].upper())
                ages.append(int(float(age)) if re.fullmatch(r"\d+(\.0*)?", age) else -1)
                sexes.append({"Male": "M", "Female": "F"}.get(row["Sex"], ""))
                sides.append(side)
        if outside:
            first = next(iter(outside))
            warnings.warn(f"{folder}: {len(outside)} path(s) in train.csv/valid.csv lead outside it and are skipped "
                          f"(e.g. {first!r}: {outside[first]})", DataWarning, stacklevel=2)
        if not ids:
            raise CxrError(f"{folder}: train.csv and valid.csv list no images inside it")
        keep = view_mask(views, FRONTAL, options.views)
        left_out = Counter("lateral view" if v == "LATERAL" else "frontal view not PA or AP"
                           for v, k in zip(views, keep) if not k)
        rows = np.flatnonzero(keep)
        labels, known = policy_labels(np.asarray(codes, dtype=np.int8)[rows], options)
        meta = make_metadata(str(folder), [ids[i] for i in rows], labels, STUDY_LABELS,
                             np.asarray(patients, dtype=np.int64)[rows], [views[i] for i in rows], known=known,
                             ages=[ages[i] for i in rows], genders=[sexes[i] for i in rows])
        meta.follow_up = np.asarray(studies, dtype=np.int64)[rows]
        named = _PREFIX.fullmatch(folder.name) or next(
            (m for m in map(_PREFIX.fullmatch, sorted(prefixes)) if m), None)
        return cls(folder, meta, {ids[i]: paths[i] for i in rows}, {ids[i]: sides[i] for i in rows}, outside,
                   version=named.group(1) if named else None, policy=applied(options, cls.options_used),
                   left_out=dict(left_out))

    @classmethod
    def write_phantom(cls, source: Dataset, out: Path, seed: int = 0) -> None:
        """``source`` (an NIH-layout phantom) as ``CheXpert-v1.0-small``, written into ``out`` (the folder holding
        the CSVs): NIH patient P's k-th image in ``source``'s order is ``patientPPPPP/studyK/view1_frontal.jpg``
        (its pixels, as a JPEG); a seeded share of patients is in valid.csv, of studies has a lateral
        (``view2_lateral.jpg``: the frontal mirrored, the same labels, as CheXpert labels studies), and of cells is
        -1.0 or blank (``phantom_cells``)."""
        out = Path(out)
        empty_folder(out)
        meta = source.metadata
        rng = np.random.default_rng(seed)
        cells = phantom_cells(np.stack([meta.has(n) for n in STUDY_LABELS], axis=1), rng)
        valid = set(pick(rng, np.unique(meta.patient_ids), VALID_SHARE).tolist())
        lateral = set(pick(rng, np.arange(len(meta)), LATERAL_SHARE).tolist())
        rows: dict[str, list[list[str]]] = {"train": [], "valid": []}
        studies: Counter[int] = Counter()
        for i, image_id in enumerate(meta.image_ids.tolist()):
            patient = int(meta.patient_ids[i])
            studies[patient] += 1
            side = "valid" if patient in valid else "train"
            study = f"{side}/patient{patient:05d}/study{studies[patient]}"
            by_column = dict(zip(COLUMNS, cells[i]))
            label_cells = [by_column.get(col, "") for col in HEADER[5:]]
            sex = {"M": "Male", "F": "Female"}.get(str(meta.genders[i]), "Unknown")
            age = str(meta.ages[i]) if meta.ages[i] >= 0 else ""
            pixels = read_gray(source.path_of(image_id))
            shots = [("view1_frontal.jpg", "Frontal", str(meta.views[i]), pixels)]
            if i in lateral:
                shots.append(("view2_lateral.jpg", "Lateral", "", np.fliplr(pixels)))
            for file_name, frontal, projection, image in shots:
                save_jpeg(image, out / study / file_name)
                rows[side].append([f"CheXpert-v1.0-small/{study}/{file_name}", sex, age, frontal, projection]
                                  + label_cells)
        for side, lines in rows.items():
            write_text(out / f"{side}.csv", csv_text(HEADER, lines))


DATASET_CLASS = CheXpertDataset
