"""Any chest X-ray table (dataset name ``csv``): a CSV of image paths and labels, its columns named in a small YAML,
``cxr-dataset.yaml``, beside it in the data folder. The keys (anything else is refused, naming the key)::

    csv: labels.csv          # the table, relative to the folder
    path: image              # column: the image's path, relative to the folder (PNG, JPEG or DICOM)
    patient: patient_id      # optional column; without it each image is its own patient (a warning says so)
    view: view               # optional column; frontal: its frontal values (default [PA, AP])
    frontal: [PA, AP]
    labels: {Effusion: effusion, Nodule: nodule}   # study name (data.labels) -> its 0/1 column; or:
    labels_column: findings  # one column listing each image's findings,
    separator: "|"           # split on this (default "|"),
    label_names: {Pleural Effusion: Effusion, Support Devices: null}   # their name -> study name, null: dropped
    split: split             # optional column: train or test (the official split; 'test' is validated on)

With ``labels``, the dataset has those labels, each cell 0 or 1. With ``labels_column``, a name is the study's own
spelling or one that ``label_names`` maps; an empty cell is no finding, and the dataset has the labels that
``label_names`` maps to plus those its rows name. An image's id is its path, flattened (``base.flat_name``); a path
leading outside the folder is left out (``outside``). Only ``views`` concerns this dataset, and only when a view
column is named: without one every image is kept and no view policy is recorded.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxr_fast.config import parse_yaml
from cxr_fast.data.labels import ALL_LABELS, CONTROL_LABELS, NO_FINDING, canonical_label
from cxr_fast.data.reader import DataWarning, read_gray
from cxr_fast.data.sets.base import (Dataset, DatasetOptions, applied, csv_rows, flat_name, make_metadata,
                                     relative_problem, view_mask)
from cxr_fast.errors import CxrError
from cxr_fast.io import write_bytes, write_text

CONFIG = "cxr-dataset.yaml"
KEYS = ("csv", "path", "patient", "view", "frontal", "labels", "labels_column", "separator", "label_names", "split")
_ONE_ZERO = {"1": True, "1.0": True, "0": False, "0.0": False}
_SPLITS = ("train", "test")
# The fixture (write_phantom): shares of images given a lateral and of patients on the test side.
LATERAL_SHARE, TEST_SHARE = 0.25, 0.2


@dataclass(frozen=True)
class TableConfig:
    """``cxr-dataset.yaml``, checked: column names, and the labels as study name -> column (``labels``) or their
    name -> study name or None (``label_names``, with ``labels_column``)."""

    csv: str
    path: str
    patient: str | None
    view: str | None
    frontal: tuple[str, ...]
    labels: dict[str, str] | None
    labels_column: str | None
    separator: str
    label_names: dict[str, str | None]
    split: str | None


def _study_name(name: Any, where: str) -> str:
    try:
        label = canonical_label(str(name))
    except CxrError as exc:
        raise CxrError(f"{where}: {exc}") from None
    if label in CONTROL_LABELS:
        raise CxrError(f"{where}: {label} is the phantom's control label; real data never carries it")
    return label


def _their_label(cfg: TableConfig, name: str, where: str) -> str | None:
    """A findings cell's name as a study label: ``label_names``' mapping (None: dropped), else the study's spelling."""
    if not name:
        return None
    if name in cfg.label_names:
        return cfg.label_names[name]
    try:
        return _study_name(name, where)
    except CxrError:
        raise CxrError(f"{where}: {cfg.labels_column!r} names {name!r}, not a study label; map it in {CONFIG}'s "
                       "label_names (their name: study name, or null to drop it)") from None


def read_config(root: Path) -> TableConfig:
    """``root/cxr-dataset.yaml`` parsed safely (``config.parse_yaml``) and checked; errors are one line naming it."""
    path = root / CONFIG
    if not path.is_file():
        raise CxrError(f"{path} not found (the csv dataset's description: {TableDataset.layout()})")
    data = parse_yaml(path.read_text(encoding="utf-8"), path)
    if not isinstance(data, dict):
        raise CxrError(f"{path}: expected a mapping of {', '.join(KEYS)}")
    unknown = [k for k in data if k not in KEYS]
    if unknown:
        raise CxrError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")

    def text(key: str, required: bool = False) -> str | None:
        value = data.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            raise CxrError(f"{path}: {key} must name a column (a string), got {value!r}")
        return value.strip()

    def mapping(key: str) -> dict[Any, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict) or not value:
            raise CxrError(f"{path}: {key} must be a mapping, got {value!r}")
        return value

    if ("labels" in data) == ("labels_column" in data):
        raise CxrError(f"{path}: give labels (study name: 0/1 column) or labels_column (one column of findings)")
    labels = None
    if "labels" in data:
        labels = {}
        for name, column in mapping("labels").items():
            label = _study_name(name, f"{path}: labels")
            if label in labels or not isinstance(column, str):
                raise CxrError(f"{path}: labels: {name!r} is named twice or maps to {column!r}, not one column")
            labels[label] = column
    names = {str(k): None if v is None else _study_name(v, f"{path}: label_names")
             for k, v in (mapping("label_names").items() if "label_names" in data else ())}
    if names and labels is not None:
        raise CxrError(f"{path}: label_names goes with labels_column; with labels, the keys are study names")
    separator = data.get("separator", "|")
    if not isinstance(separator, str) or not separator:
        raise CxrError(f"{path}: separator must be a non-empty string, got {separator!r}")
    frontal = data.get("frontal", ["PA", "AP"])
    if not isinstance(frontal, list) or not all(isinstance(v, str) for v in frontal) or not frontal:
        raise CxrError(f"{path}: frontal must be a list of view values, got {frontal!r}")
    if "frontal" in data and "view" not in data:
        raise CxrError(f"{path}: frontal names values of the view column; name that column (view:)")
    table = text("csv", required=True)
    assert table is not None
    problem = relative_problem(table)
    if problem is not None:
        raise CxrError(f"{path}: csv {table!r} is {problem}; name a file inside {root}")
    return TableConfig(table, text("path", required=True) or "", text("patient"), text("view"), tuple(frontal),
                       labels, text("labels_column"), separator, names, text("split"))


@dataclass
class TableDataset(Dataset):
    """A folder described by ``cxr-dataset.yaml``; see the module's docstring."""

    name = "csv"
    title = "CSV table (cxr-dataset.yaml)"
    label_map = {}  # the table's own, per folder: cxr-dataset.yaml's labels or label_names
    options_used = ("views",)  # recorded only when the YAML names a view column

    @classmethod
    def layout(cls) -> str:
        return f"{CONFIG} naming a CSV (csv:, path:, labels: or labels_column:) and the images it lists"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (Path(root) / CONFIG).is_file()

    @classmethod
    def read(cls, root: Path, options: DatasetOptions = DatasetOptions()) -> "TableDataset":
        root = Path(root)
        cfg = read_config(root)
        table = root / cfg.csv
        label_columns = list(cfg.labels.values()) if cfg.labels is not None else [cfg.labels_column]
        required = [c for c in (cfg.path, cfg.patient, cfg.view, cfg.split, *label_columns) if c]
        ids, patients, views, sides, rows_labels, paths = [], [], [], [], [], []
        outside: dict[str, str] = {}
        seen: set[str] = {v for v in cfg.label_names.values() if v}
        for line, row in csv_rows(table, required, f"{CONFIG}'s csv"):
            raw = row[cfg.path]
            problem = relative_problem(raw)
            if problem is not None:
                outside[raw] = problem
                continue
            if cfg.labels is not None:
                cells = {label: row[column] for label, column in cfg.labels.items()}
                bad = next((c for c, v in zip(cfg.labels.values(), cells.values()) if v not in _ONE_ZERO), None)
                if bad is not None:
                    raise CxrError(f"{table}:{line}: {bad!r} holds {row[bad]!r}; a label column holds 0 or 1")
                found = {label for label, v in cells.items() if _ONE_ZERO[v]}
            else:
                found = {label for name in row[str(cfg.labels_column)].split(cfg.separator)
                         for label in [_their_label(cfg, name.strip(), f"{table}:{line}")] if label}
                seen |= found
            if cfg.split is not None and row[cfg.split].lower() not in _SPLITS:
                raise CxrError(f"{table}:{line}: {cfg.split!r} holds {row[cfg.split]!r}, not train or test")
            if cfg.patient is not None and not row[cfg.patient]:
                raise CxrError(f"{table}:{line}: {cfg.patient!r} is blank; every image needs its patient")
            ids.append(flat_name(raw))
            paths.append(root / raw)
            rows_labels.append(found)
            patients.append(row[cfg.patient] if cfg.patient else flat_name(raw))
            views.append(row[cfg.view] if cfg.view else "")
            sides.append(row[cfg.split].lower() if cfg.split else "")
        if outside:
            first = next(iter(outside))
            warnings.warn(f"{table}: {len(outside)} path(s) lead outside {root} and are skipped "
                          f"(e.g. {first!r}: {outside[first]})", DataWarning, stacklevel=2)
        if cfg.patient is None:
            warnings.warn(f"{root / CONFIG} names no patient column: each image counts as its own patient",
                          DataWarning, stacklevel=2)
        names = tuple(cfg.labels) if cfg.labels is not None else tuple(n for n in ALL_LABELS if n in seen)
        if not ids:
            raise CxrError(f"{table}: lists no images inside {root}")
        keep = view_mask(views, cfg.frontal, options.views if cfg.view else "all")
        rows = np.flatnonzero(keep)
        labels = np.array([[n in rows_labels[i] for n in names] for i in rows], dtype=bool)
        labels = labels.reshape(len(rows), len(names))
        kept = [patients[i] for i in rows]
        pid: Any = np.asarray([int(p) for p in kept], dtype=np.int64) if all(p.isdigit() for p in kept) else kept
        meta = make_metadata(str(table), [ids[i] for i in rows], labels, names, pid, [views[i] for i in rows])
        ds = cls(root, meta, {ids[i]: paths[i] for i in rows},
                 {ids[i]: sides[i] for i in rows} if cfg.split else None, outside,
                 policy=applied(options, cls.options_used if cfg.view else ()),
                 left_out={f"view not {' or '.join(cfg.frontal)}": int((~keep).sum())} if (~keep).any() else {})
        ds.label_map = dict(cfg.label_names) if cfg.labels is None else {c: n for n, c in cfg.labels.items()}
        return ds

    @classmethod
    def write_phantom(cls, source: Dataset, out: Path, seed: int = 0) -> None:
        """``source`` (an NIH-layout phantom) as a table: ``labels.csv`` (image, patient, view, split, findings: NIH's
        names joined by "|", Effusion spelled "Pleural Effusion" and mapped back by ``label_names``), the PNGs
        copied as they are to ``images/``, a seeded share of images with a lateral (``NAME_lateral.png``, mirrored,
        view LATERAL, same findings) and of patients on the test side; the YAML names every column."""
        out = Path(out)
        if out.exists() and any(out.iterdir()):
            raise CxrError(f"{out} exists and is not an empty folder; choose a new or empty one")
        meta = source.metadata
        rng = np.random.default_rng(seed)
        patients = np.unique(meta.patient_ids)
        test = set(rng.choice(patients, size=max(1, round(TEST_SHARE * len(patients))), replace=False).tolist())
        lateral = set(rng.choice(len(meta), size=max(1, round(LATERAL_SHARE * len(meta))), replace=False).tolist())
        has = {n: meta.has(n) for n in ALL_LABELS if n in meta.label_names}
        lines = ["image,patient,view,split,findings"]
        for i, image_id in enumerate(meta.image_ids.tolist()):
            findings = "|".join("Pleural Effusion" if n == "Effusion" else n for n, on in has.items() if on[i])
            patient = int(meta.patient_ids[i])
            side = "test" if patient in test else "train"
            stem = Path(image_id).stem
            write_bytes(out / "images" / f"{stem}.png", source.path_of(image_id).read_bytes())
            lines.append(f"images/{stem}.png,{patient},{meta.views[i]},{side},{findings or NO_FINDING}")
            if i in lateral:
                buf = io.BytesIO()
                mirrored = np.ascontiguousarray(np.fliplr(read_gray(source.path_of(image_id))))
                Image.fromarray(mirrored).save(buf, format="PNG")
                write_bytes(out / "images" / f"{stem}_lateral.png", buf.getvalue())
                lines.append(f"images/{stem}_lateral.png,{patient},LATERAL,{side},{findings or NO_FINDING}")
        write_text(out / "labels.csv", "\n".join(lines) + "\n")
        write_text(out / CONFIG, "# cxr-fast's csv layout (cxr_fast/data/sets/table.py), written by its phantom\n"
                   "csv: labels.csv\npath: image\npatient: patient\nview: view\nfrontal: [PA, AP]\n"
                   "labels_column: findings\nseparator: \"|\"\nlabel_names: {Pleural Effusion: Effusion}\n"
                   "split: split\n")


DATASET_CLASS = TableDataset
