"""MIMIC-CXR-JPG 2.x (Johnson et al. 2019, "MIMIC-CXR-JPG, a large publicly available database of labeled chest
radiographs", arXiv:1901.07042; PhysioNet, physionet.org/content/mimic-cxr-jpg/2.0.0/).

Layout (the PhysioNet project page, "Files"): ``mimic-cxr-2.0.0-metadata.csv.gz`` (one row per image),
``mimic-cxr-2.0.0-chexpert.csv.gz`` (one row per study: the CheXpert labeler's 14 observations on its report),
``mimic-cxr-2.0.0-split.csv.gz`` (one row per image) and ``files/pNN/pSUBJECT/sSTUDY/DICOM_ID.jpg``, pNN being the
subject id's first two digits. A later 2.x release whose files differ only in the version in their names is read
the same (the newest of each file; the versions are recorded); plain ``.csv`` copies are read too.

An image's id is ``DICOM_ID.jpg``; its patient is ``subject_id``. A study's labels hold for each of its images, with
CheXpert's cells, label table and policies (``chexpert``: -1.0 uncertain, blank not mentioned). An image whose
study has no row in the chexpert file (no report section the labeler read) is left out and counted. Views:
``ViewPosition`` PA and AP are frontal; LATERAL, LL and the rest (blank included) are not. The official split's
``test`` is the study's 'test' side; ``train`` and ``validate`` are both 'train' (the study draws its own
validation from them only with split=image or patient; with split=official it validates on ``test``). The
metadata gives each image's Rows and Columns (stored as is: the JPEGs keep the DICOMs' size), not its spacing.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr_fast.data.reader import DataWarning, name_problem, read_gray
from cxr_fast.data.sets.base import (Dataset, DatasetOptions, applied, csv_rows, csv_text, empty_folder,
                                     make_metadata, relative_problem, view_mask)
from cxr_fast.data.sets.chexpert import (COLUMNS, FRONTAL, LABEL_MAP, LATERAL_SHARE, STUDY_LABELS,
                                         label_codes, phantom_cells, pick, policy_labels, save_jpeg)
from cxr_fast.errors import CxrError
from cxr_fast.io import write_bytes

# The documented headers (PhysioNet project page), exactly.
METADATA_HEADER = ("dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
                   "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                   "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning")
CHEXPERT_HEADER = ("subject_id", "study_id", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                   "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion", "Lung Opacity", "No Finding",
                   "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices")
SPLIT_HEADER = ("dicom_id", "study_id", "subject_id", "split")
KINDS = ("metadata", "chexpert", "split")
_SIDES = {"train": "train", "validate": "train", "test": "test"}
_VERSION = re.compile(r"mimic-cxr-(2\.\d+\.\d+)-")
_COUNT = re.compile(r"\d+(\.0*)?|")  # a pixel count, or blank
# The fixture (write_phantom): study ids count up from here, one per source row; shares of studies left out of the
# chexpert file and of subjects in the test and validate splits.
STUDY_BASE = 50_000_000
UNLABELLED_SHARE, TEST_SHARE, VALIDATE_SHARE = 0.05, 0.2, 0.1


def find_files(root: Path) -> dict[str, Path]:
    """The newest ``mimic-cxr-2.*-{metadata,chexpert,split}.csv[.gz]`` of each kind; a missing kind is an error."""
    found: dict[str, Path] = {}
    for kind in KINDS:
        paths = [p for pattern in (f"mimic-cxr-2.*-{kind}.csv.gz", f"mimic-cxr-2.*-{kind}.csv")
                 for p in Path(root).glob(pattern) if _VERSION.match(p.name)]
        if not paths:
            raise CxrError(f"{root}: no mimic-cxr-2.*-{kind}.csv.gz (the {MimicDataset.title} layout: "
                           f"{MimicDataset.layout()})")
        found[kind] = max(paths, key=lambda p: (_version(p), p.name.endswith(".gz")))
    return found


def _version(path: Path) -> tuple[int, ...]:
    return tuple(int(x) for x in _VERSION.match(path.name).group(1).split("."))  # type: ignore[union-attr]


def _int(path: Path, line: int, row: dict[str, str], column: str) -> int:
    if not row[column].isdigit():
        raise CxrError(f"{path}:{line}: {column!r} holds {row[column]!r}, not a whole number")
    return int(row[column])


def _size(path: Path, line: int, row: dict[str, str]) -> tuple[float, float]:
    """(Columns, Rows): width and height in px; blank is NaN (unknown), anything else not a count is an error."""
    cells = (row["Columns"], row["Rows"])
    if not all(_COUNT.fullmatch(c) for c in cells):
        raise CxrError(f"{path}:{line}: Rows/Columns hold {cells[1]!r}/{cells[0]!r}, not pixel counts")
    return tuple(float(c) if c else float("nan") for c in cells)  # type: ignore[return-value]


@dataclass
class MimicDataset(Dataset):
    """A MIMIC-CXR-JPG 2.x folder; see the module's docstring for the layout and policies."""

    name = "mimic"
    title = "MIMIC-CXR-JPG 2.x"
    label_map = LABEL_MAP  # the same labeler's 14 observations as CheXpert's, mapped the same way
    options_used = ("uncertain", "blank", "views")

    @classmethod
    def layout(cls) -> str:
        return ("mimic-cxr-2.0.0-{metadata,chexpert,split}.csv.gz and files/pNN/pSUBJECT/sSTUDY/DICOM_ID.jpg")

    @classmethod
    def detect(cls, root: Path) -> bool:
        return any(p for pattern in ("mimic-cxr-2.*-metadata.csv.gz", "mimic-cxr-2.*-metadata.csv")
                   for p in Path(root).glob(pattern))

    @classmethod
    def read(cls, root: Path, options: DatasetOptions = DatasetOptions()) -> "MimicDataset":
        root = Path(root)
        files = find_files(root)
        what = "MIMIC-CXR-JPG {}"
        studies: dict[tuple[int, int], list[int]] = {}
        path = files["chexpert"]
        for line, row in csv_rows(path, ("subject_id", "study_id") + COLUMNS, what.format("chexpert")):
            key = (_int(path, line, row, "subject_id"), _int(path, line, row, "study_id"))
            if key in studies:
                raise CxrError(f"{path}:{line}: study {key[1]} of subject {key[0]} is listed twice")
            studies[key] = label_codes(path, line, row, COLUMNS)
        split: dict[str, str] = {}
        path = files["split"]
        for line, row in csv_rows(path, SPLIT_HEADER, what.format("split")):
            if row["split"] not in _SIDES:
                raise CxrError(f"{path}:{line}: split {row['split']!r} is not train, validate or test")
            split[row["dicom_id"]] = _SIDES[row["split"]]
        ids, keys, views, sizes = [], [], [], []
        outside: dict[str, str] = {}
        path = files["metadata"]
        for line, row in csv_rows(path, ("dicom_id", "subject_id", "study_id", "ViewPosition", "Rows", "Columns"),
                                  what.format("metadata")):
            subject, study = _int(path, line, row, "subject_id"), _int(path, line, row, "study_id")
            rel = f"files/p{str(subject)[:2]}/p{subject}/s{study}/{row['dicom_id']}.jpg"
            problem = relative_problem(rel) or name_problem(f"{row['dicom_id']}.jpg")
            if problem is not None:
                outside[rel] = problem
                continue
            ids.append(f"{row['dicom_id']}.jpg")
            keys.append((subject, study))
            views.append(row["ViewPosition"].upper())
            sizes.append(_size(path, line, row))
        if outside:
            first = next(iter(outside))
            warnings.warn(f"{path}: {len(outside)} image(s) lead outside {root} and are skipped "
                          f"(e.g. {first!r}: {outside[first]})", DataWarning, stacklevel=2)
        left_out: Counter[str] = Counter()
        keep = view_mask(views, FRONTAL, options.views)
        rows = []
        for i in range(len(ids)):
            if not keep[i]:
                left_out["lateral view" if views[i] in ("LATERAL", "LL") else "view not PA or AP"] += 1
            elif keys[i] not in studies:
                left_out["study not in the chexpert file"] += 1
            elif ids[i][:-4] not in split:
                left_out["image not in the split file"] += 1
            else:
                rows.append(i)
        labels, known = policy_labels(np.asarray([studies[keys[i]] for i in rows], dtype=np.int8)
                                      .reshape(len(rows), len(COLUMNS)), options)
        meta = make_metadata(str(path), [ids[i] for i in rows], labels, STUDY_LABELS,
                             np.asarray([keys[i][0] for i in rows], dtype=np.int64), [views[i] for i in rows],
                             known=known, original_size=np.asarray([sizes[i] for i in rows], dtype=np.float64)
                             .reshape(len(rows), 2), original_spacing=np.full((len(rows), 2), np.nan))
        versions = {kind: _VERSION.match(p.name).group(1) for kind, p in files.items()}  # type: ignore[union-attr]
        version = versions["metadata"] if len(set(versions.values())) == 1 else \
            ", ".join(f"{kind} {v}" for kind, v in versions.items())
        paths = {ids[i]: root / "files" / f"p{str(keys[i][0])[:2]}" / f"p{keys[i][0]}" / f"s{keys[i][1]}" / ids[i]
                 for i in rows}
        return cls(root, meta, paths, {ids[i]: split[ids[i][:-4]] for i in rows}, outside, version=version,
                   policy=applied(options, cls.options_used), left_out=dict(left_out))

    @classmethod
    def write_phantom(cls, source: Dataset, out: Path, seed: int = 0) -> None:
        """``source`` (an NIH-layout phantom) as MIMIC-CXR-JPG 2.0.0 in ``out``: source row i is study
        ``STUDY_BASE + i`` of subject ``10000000 + (P % 10) * 1000000 + P`` (NIH patient P < 1,000,000), its
        image a JPEG of its pixels named by a seeded hash; a seeded share of studies also has a lateral (the
        frontal mirrored; ViewPosition LATERAL or LL), of studies no chexpert row, of subjects the test or validate
        split, and of cells -1.0 or blank (``chexpert.phantom_cells``)."""
        out = Path(out)
        empty_folder(out)
        meta = source.metadata
        if len(meta) and int(meta.patient_ids.max()) >= 1_000_000:
            raise CxrError(f"{meta.source}: patient ids of 1,000,000 and over have no place in MIMIC's subject ids")
        rng = np.random.default_rng(seed)
        cells = phantom_cells(np.stack([meta.has(n) for n in STUDY_LABELS], axis=1), rng)
        lateral = set(pick(rng, np.arange(len(meta)), LATERAL_SHARE).tolist())
        unlabelled = set(pick(rng, np.arange(len(meta)), UNLABELLED_SHARE).tolist())
        subjects = rng.permutation(np.unique(meta.patient_ids))
        n_test, n_validate = (max(1, round(share * len(subjects))) for share in (TEST_SHARE, VALIDATE_SHARE))
        side_of = {int(p): "test" if k < n_test else "validate" if k < n_test + n_validate else "train"
                   for k, p in enumerate(subjects)}
        metadata, labels, splits = [], [], []
        for i, image_id in enumerate(meta.image_ids.tolist()):
            patient = int(meta.patient_ids[i])
            subject, study = 10_000_000 + (patient % 10) * 1_000_000 + patient, STUDY_BASE + i
            pixels = read_gray(source.path_of(image_id))
            view = str(meta.views[i]).upper()
            shots = [(view, pixels)] + ([("LATERAL" if i % 2 else "LL", np.fliplr(pixels))] if i in lateral else [])
            for k, (position, image) in enumerate(shots):
                digest = hashlib.sha1(f"{seed}:{image_id}:{k}".encode()).hexdigest()
                dicom = "-".join(digest[j:j + 8] for j in range(0, 40, 8))
                save_jpeg(image, out / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg")
                procedure = "CHEST (PORTABLE AP)" if view == "AP" else "CHEST (PA AND LAT)"
                meaning = {"PA": "postero-anterior", "AP": "antero-posterior", "LL": "left lateral"}.get(position,
                                                                                                          "lateral")
                metadata.append([dicom, str(subject), str(study), procedure, position, str(image.shape[0]),
                                 str(image.shape[1]), f"21{50 + i % 40:02d}{1 + i % 12:02d}{1 + i % 28:02d}",
                                 f"{(i * 7) % 24:02d}{(i * 13) % 60:02d}00.000", procedure, meaning,
                                 "Recumbent" if position == "AP" else "Erect"])
                splits.append([dicom, str(study), str(subject), side_of[patient]])
            if i not in unlabelled:
                by_column = dict(zip(COLUMNS, cells[i]))
                labels.append([str(subject), str(study)] + [by_column.get(c, "") for c in CHEXPERT_HEADER[2:]])
        for kind, header, lines in (("metadata", METADATA_HEADER, metadata), ("chexpert", CHEXPERT_HEADER, labels),
                                    ("split", SPLIT_HEADER, splits)):
            data = gzip.compress(csv_text(header, lines).encode(), mtime=0)  # mtime 0: the same bytes every time
            write_bytes(out / f"mimic-cxr-2.0.0-{kind}.csv.gz", data)


DATASET_CLASS = MimicDataset
