"""CheXpert, MIMIC-CXR-JPG and the generic CSV table: each written from a tiny NIH phantom in its real layout
(``write_phantom``), then read back: the right rows, the phantom's labels through each dataset's label table, each
policy changing exactly the rows it should, the official split, patients, one-line errors, paths outside."""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from cxr_fast.data.phantom import make_phantom
from cxr_fast.data.reader import DataWarning, read_gray
from cxr_fast.data.sets.base import DatasetOptions, flat_name
from cxr_fast.data.sets.chexpert import CheXpertDataset
from cxr_fast.data.sets.mimic import MimicDataset
from cxr_fast.data.sets.nih import NihDataset, read_nih_folder
from cxr_fast.data.sets.table import TableDataset
from cxr_fast.errors import CxrError

# Irvin et al. 2019's observations that are ChestX-ray14 findings (the rest have no counterpart, Lung Lesion included).
EXPECTED_MAP = {"Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Consolidation": "Consolidation",
                "Edema": "Edema", "Pleural Effusion": "Effusion", "Pneumonia": "Pneumonia",
                "Pneumothorax": "Pneumothorax", "No Finding": "No Finding"}
STUDY = ("Atelectasis", "Cardiomegaly", "Effusion", "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "No Finding")
CLASSES = {"chexpert": CheXpertDataset, "mimic": MimicDataset, "csv": TableDataset}


@pytest.fixture(scope="module")
def nih(tmp_path_factory: pytest.TempPathFactory) -> NihDataset:
    root = make_phantom(tmp_path_factory.mktemp("nih") / "data", n=40, size=256, seed=0, quiet=True,
                        workers=min(2, os.cpu_count() or 1),
                        enrich=("Pneumonia", "Edema", "Cardiomegaly", "Pneumothorax"), enrich_fraction=0.5)
    return read_nih_folder(root)


@pytest.fixture(scope="module")
def written(nih: NihDataset, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("layouts")
    for name, cls in CLASSES.items():
        cls.write_phantom(nih, base / name, seed=0)
    return {name: base / name for name in CLASSES}


def _gz_rows(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _records(layout: str, root: Path, nih: NihDataset) -> dict[str, dict]:
    """Our own reading of the written files: id -> the NIH image it came from, view, cells by study label, side."""
    out = {}
    if layout == "chexpert":
        of_patient: dict[int, list[str]] = {}  # a patient's k-th image in the phantom's order is its study k
        for name, patient in zip(nih.metadata.image_ids.tolist(), nih.metadata.patient_ids.tolist()):
            of_patient.setdefault(patient, []).append(name)
        for name, side in (("train.csv", "train"), ("valid.csv", "test")):
            with open(root / name, encoding="utf-8", newline="") as fh:
                rows = list(csv.DictReader(fh))
            for row in rows:
                rel = row["Path"].split("/", 1)[1]
                patient, study = (int(x) for x in re.search(r"patient(\d+)/study(\d+)/", rel).groups())
                out[flat_name(rel)] = {
                      "nih": of_patient[patient][study - 1], "patient": patient, "side": side,
                    "view": "LATERAL" if row["Frontal/Lateral"] == "Lateral" else row["AP/PA"],
                    "cells": {study_name: row[col] for col, study_name in EXPECTED_MAP.items()}}
        return out
    labels = {row["study_id"]: row for row in _gz_rows(root / "mimic-cxr-2.0.0-chexpert.csv.gz")}
    split = {row["dicom_id"]: row["split"] for row in _gz_rows(root / "mimic-cxr-2.0.0-split.csv.gz")}
    for row in _gz_rows(root / "mimic-cxr-2.0.0-metadata.csv.gz"):
        cells = labels.get(row["study_id"])
        out[row["dicom_id"] + ".jpg"] = {
            "nih": str(nih.metadata.image_ids[int(row["study_id"]) - 50_000_000]), "patient": int(row["subject_id"]),
            "side": "test" if split[row["dicom_id"]] == "test" else "train", "view": row["ViewPosition"],
            "cells": None if cells is None else {s: cells[c] for c, s in EXPECTED_MAP.items()}}
    return out


def _cells(ds, records: dict[str, dict]) -> np.ndarray:
    """The written cells, row-aligned with ``ds.metadata`` (N x STUDY)."""
    return np.array([[records[i]["cells"][n] for n in STUDY] for i in ds.metadata.image_ids.tolist()], dtype=object)


def _truth(ds, records: dict[str, dict], nih: NihDataset) -> np.ndarray:
    row_of = {name: k for k, name in enumerate(nih.metadata.image_ids.tolist())}
    rows = [row_of[records[i]["nih"]] for i in ds.metadata.image_ids.tolist()]
    return np.stack([nih.metadata.has(n)[rows] for n in STUDY], axis=1)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("layout", ["chexpert", "mimic"])
def test_the_phantom_reads_back_with_its_labels_patients_and_split(layout, written, nih, capsys):
    cls, root = CLASSES[layout], written[layout]
    ds = cls.read(root, DatasetOptions())
    records = _records(layout, root, nih)
    frontal = {i for i, r in records.items() if r["view"] in ("PA", "AP")}
    unlabelled = {i for i in frontal if records[i]["cells"] is None}
    assert set(ds.metadata.image_ids.tolist()) == frontal - unlabelled
    assert len(frontal) == len(nih.metadata)  # one frontal per phantom image; laterals are extra rows
    assert dict(cls.label_map) == EXPECTED_MAP and ds.metadata.label_names == STUDY
    cells, truth = _cells(ds, records), _truth(ds, records, nih)
    assert not ((cells == "1.0") & ~truth).any() and not (np.isin(cells, ["0.0", ""]) & truth).any()
    assert (ds.metadata.labels == (cells == "1.0")).all()  # uncertain ignored, blank zero
    # positives: the phantom's, less the cells written uncertain and the studies the chexpert file lacks
    phantom = {n: int(nih.metadata.has(n).sum()) for n in STUDY}
    lost = {n: sum(nih.metadata.has(n)[list(nih.metadata.image_ids).index(records[i]["nih"])] for i in unlabelled)
            for n in STUDY}
    found = {n: int(ds.metadata.has(n).sum()) for n in STUDY}
    uncertain_pos = {n: int(((cells == "-1.0") & truth)[:, k].sum()) for k, n in enumerate(STUDY)}
    assert found == {n: phantom[n] - lost[n] - uncertain_pos[n] for n in STUDY}
    assert sum(found.values()) > 0 and all(phantom[n] > 0 for n in ("Pneumonia", "Edema", "Cardiomegaly"))
    laterals = len(records) - len(frontal)
    assert ds.left_out == {"lateral view": laterals, **({"study not in the chexpert file": len(unlabelled)}
                                                         if unlabelled else {})}
    assert laterals > 0 and (layout == "chexpert" or unlabelled)
    for k, image_id in enumerate(ds.metadata.image_ids.tolist()):
        assert ds.metadata.patient_ids[k] == records[image_id]["patient"]
        assert ds.official_split[image_id] == records[image_id]["side"]
    assert set(ds.official_split.values()) == {"train", "test"}
    same = {}
    for k, image_id in enumerate(ds.metadata.image_ids.tolist()):  # one NIH patient, one patient here
        same.setdefault(records[image_id]["nih"][:8], set()).add(int(ds.metadata.patient_ids[k]))
    assert all(len(v) == 1 for v in same.values())
    assert ds.version == {"chexpert": "v1.0-small", "mimic": "2.0.0"}[layout]
    assert ds.policy == {"uncertain": "ignore", "blank": "zero", "views": "frontal"}
    with capsys.disabled():
        print(f"\n{layout}: {len(ds.metadata)} rows, labels {', '.join(STUDY)}, positives {found}, "
              f"left out {ds.left_out}")


@pytest.mark.parametrize("layout", ["chexpert", "mimic"])
def test_uncertain_and_blank_policies_change_exactly_their_cells(layout, written, nih):
    cls, root = CLASSES[layout], written[layout]
    read = {(u, b): cls.read(root, DatasetOptions(uncertain=u, blank=b)).metadata
            for u, b in (("ignore", "zero"), ("zero", "zero"), ("one", "zero"), ("ignore", "ignore"))}
    base = read["ignore", "zero"]
    records = _records(layout, root, nih)
    for meta in read.values():
        assert (meta.image_ids == base.image_ids).all()
    cells, truth = _cells(base_ds := cls.read(root, DatasetOptions()), records), _truth(base_ds, records, nih)
    uncertain, blank = cells == "-1.0", cells == ""
    assert (uncertain & truth).any() and (uncertain & ~truth).any() and blank.any()
    assert (base.known == ~uncertain).all()
    assert (read["zero", "zero"].labels == base.labels).all() and read["zero", "zero"].known.all()
    assert ((read["one", "zero"].labels != base.labels) == uncertain).all() and read["one", "zero"].known.all()
    assert (read["ignore", "ignore"].labels == base.labels).all()
    assert (read["ignore", "ignore"].known == ~(uncertain | blank)).all()
    assert cls.read(root, DatasetOptions(uncertain="one")).policy["uncertain"] == "one"


@pytest.mark.parametrize("layout", ["chexpert", "mimic", "csv"])
def test_views_all_adds_exactly_the_laterals(layout, written):
    cls, root = CLASSES[layout], written[layout]
    frontal, every = cls.read(root, DatasetOptions()), cls.read(root, DatasetOptions(views="all"))
    added = np.setdiff1d(every.metadata.image_ids, frontal.metadata.image_ids)
    assert set(frontal.metadata.image_ids) <= set(every.metadata.image_ids)
    laterals = sum(n for why, n in frontal.left_out.items() if "view" in why)
    unlabelled = "study not in the chexpert file"  # MIMIC: a lateral of an unlabelled study is left out for that
    assert len(added) + every.left_out.get(unlabelled, 0) - frontal.left_out.get(unlabelled, 0) == laterals > 0
    views = every.metadata.views[np.isin(every.metadata.image_ids, added)]
    assert set(views.tolist()) <= {"LATERAL", "LL"}
    assert not any("view" in why for why in every.left_out)
    assert every.policy["views"] == "all"


@pytest.mark.parametrize("layout", ["chexpert", "mimic"])
def test_a_label_the_dataset_lacks_is_one_line_naming_its_labels(layout, written):
    ds = CLASSES[layout].read(written[layout], DatasetOptions())
    with pytest.raises(CxrError) as exc:
        ds.metadata.has("Nodule")
    assert "no Nodule label" in _one_line(exc) and ", ".join(STUDY) in str(exc.value)


def _copy_csvs(layout: str, src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        if p.is_file():
            shutil.copy(p, dst / p.name)
    return dst


def _edit(path: Path, change) -> None:
    """Rewrite a CSV (plain or .gz) through ``change(rows)``, rows being lists with the header first."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(change(rows))
    with opener(path, "wt", encoding="utf-8", newline="") as fh:
        fh.write(buf.getvalue())


LABEL_FILE = {"chexpert": "train.csv", "mimic": "mimic-cxr-2.0.0-chexpert.csv.gz"}


@pytest.mark.parametrize("layout", ["chexpert", "mimic"])
def test_a_bad_cell_or_a_missing_column_is_one_line_naming_file_and_line(layout, written, tmp_path):
    root = _copy_csvs(layout, written[layout], tmp_path / "bad")
    target = root / LABEL_FILE[layout]

    def two(rows):
        rows[3][rows[0].index("Edema")] = "2.0"
        return rows

    _edit(target, two)
    with pytest.raises(CxrError) as exc:
        CLASSES[layout].read(root, DatasetOptions())
    assert f"{target}:4: 'Edema' holds '2.0'" in _one_line(exc)
    _edit(target, lambda rows: [r[:rows[0].index("Edema")] + r[rows[0].index("Edema") + 1:] for r in rows])
    with pytest.raises(CxrError) as exc:
        CLASSES[layout].read(root, DatasetOptions())
    assert str(target) in _one_line(exc) and "'Edema' column" in str(exc.value)


@pytest.mark.parametrize("layout", ["chexpert", "mimic"])
def test_a_path_with_dotdot_is_left_out_as_outside(layout, written, tmp_path):
    root = _copy_csvs(layout, written[layout], tmp_path / "escape")
    before = len(CLASSES[layout].read(root, DatasetOptions()).metadata)
    if layout == "chexpert":
        _edit(root / "train.csv", lambda rows: rows + [[
            "CheXpert-v1.0-small/train/patient00001/study1/../../../../../etc/x.jpg"] + rows[1][1:]])
    else:
        _edit(root / "mimic-cxr-2.0.0-metadata.csv.gz", lambda rows: rows + [["../../../../etc/x"] + rows[1][1:]])
    with pytest.warns(DataWarning, match="outside"):
        ds = CLASSES[layout].read(root, DatasetOptions())
    assert len(ds.metadata) == before
    assert len(ds.outside) == 1 and "'..'" in next(iter(ds.outside.values()))


@pytest.mark.parametrize("layout", ["chexpert", "mimic", "csv"])
def test_images_are_the_phantoms_pixels_read_through_path_of(layout, written, nih):
    ds = CLASSES[layout].read(written[layout], DatasetOptions())
    for image_id in ds.metadata.image_ids.tolist():
        pixels = read_gray(ds.path_of(image_id))
        assert pixels.shape == (256, 256) and ds.path_of(image_id).is_relative_to(ds.root)
    sizes = ds.metadata.original_size
    assert sizes is None or (sizes == 256).all()
    if layout == "chexpert":
        first = ds.metadata.image_ids[0]
        original = read_gray(nih.path_of(_records(layout, written[layout], nih)[first]["nih"]))
        assert np.abs(read_gray(ds.path_of(first)).astype(int) - original).mean() < 2  # JPEG at quality 95


def test_detect_finds_each_layout_and_nothing_in_another(written, nih):
    for name, cls in CLASSES.items():
        assert cls.detect(written[name])
        assert not cls.detect(nih.root)
        assert not any(other.detect(written[name]) for o, other in CLASSES.items() if o != name)
    assert not NihDataset.detect(written["chexpert"])


def test_auto_detection_finds_these_layouts(written):
    from cxr_fast.data import sets

    try:
        found = {name: sets.detect(root) for name, root in written.items()}
    except ModuleNotFoundError as exc:
        pytest.skip(f"not every dataset module exists yet ({exc})")
    assert found == {name: name for name in written}


def test_chexpert_parent_folder_names_its_version_and_both_downloads_are_ambiguous(written, tmp_path):
    shutil.copytree(written["chexpert"], tmp_path / "CheXpert-v1.0")
    assert CheXpertDataset.detect(tmp_path)
    ds = CheXpertDataset.read(tmp_path, DatasetOptions())
    assert ds.root == tmp_path / "CheXpert-v1.0" and ds.version == "v1.0"
    assert len(ds.metadata) == len(CheXpertDataset.read(written["chexpert"], DatasetOptions()).metadata)
    assert read_gray(ds.path_of(ds.metadata.image_ids[0])).shape == (256, 256)
    shutil.copytree(written["chexpert"], tmp_path / "CheXpert-v1.0-small")
    with pytest.raises(CxrError, match="holds both") as exc:
        CheXpertDataset.read(tmp_path, DatasetOptions())
    _one_line(exc)


def test_mimic_reads_a_later_version_by_its_file_names(written, tmp_path):
    root = _copy_csvs("mimic", written["mimic"], tmp_path / "m")
    for p in root.glob("mimic-cxr-2.0.0-*"):
        p.rename(root / p.name.replace("2.0.0", "2.1.0"))
    assert MimicDataset.read(root, DatasetOptions()).version == "2.1.0"
    (root / "mimic-cxr-2.1.0-split.csv.gz").unlink()
    with pytest.raises(CxrError, match="no mimic-cxr-2.*-split") as exc:
        MimicDataset.read(root, DatasetOptions())
    _one_line(exc)


# --- the generic CSV table -----------------------------------------------------------------------------------------


def test_csv_phantom_reads_back_with_its_labels_patients_and_split(written, nih, capsys):
    ds = TableDataset.read(written["csv"], DatasetOptions())
    meta = nih.metadata
    assert sorted(ds.metadata.image_ids.tolist()) == sorted(f"images__{i}" for i in meta.image_ids.tolist())
    row_of = {f"images__{name}": k for k, name in enumerate(meta.image_ids.tolist())}
    rows = [row_of[i] for i in ds.metadata.image_ids.tolist()]
    carried = [n for n in meta.label_names if n in ds.metadata.label_names]
    assert "Effusion" in carried and set(ds.metadata.label_names) == {n for n in meta.label_names[:15]
                                                                      if meta.has(n).any()}
    for n in carried:
        assert (ds.metadata.has(n) == meta.has(n)[rows]).all()
    assert (ds.metadata.patient_ids == meta.patient_ids[rows]).all()
    assert set(ds.official_split.values()) == {"train", "test"}
    assert ds.policy == {"views": "frontal"} and ds.label_map == {"Pleural Effusion": "Effusion"}
    with capsys.disabled():
        print(f"\ncsv: {len(ds.metadata)} rows, labels {', '.join(ds.metadata.label_names)}, positives "
              f"{ {n: int(ds.metadata.has(n).sum()) for n in ds.metadata.label_names} }, left out {ds.left_out}")


def _table(root: Path, yaml: str, lines: list[str]) -> Path:
    root.mkdir(exist_ok=True)
    (root / "cxr-dataset.yaml").write_text(yaml)
    (root / "t.csv").write_text("\n".join(lines) + "\n")
    return root


def test_csv_label_columns_and_a_label_it_lacks(written, tmp_path):
    src = written["csv"]
    shutil.copytree(src / "images", tmp_path / "t" / "pics")
    names = sorted(p.name for p in (tmp_path / "t" / "pics").iterdir())
    lines = ["file,eff,oedema"] + [f"pics/{n},{k % 2},{1.0 if k % 3 == 0 else 0.0}" for k, n in enumerate(names)]
    root = _table(tmp_path / "t", "csv: t.csv\npath: file\nlabels: {effusion: eff, Edema: oedema}\n", lines)
    with pytest.warns(DataWarning, match="each image counts as its own patient"):
        ds = TableDataset.read(root, DatasetOptions())
    assert ds.metadata.label_names == ("Effusion", "Edema") and ds.official_split is None and ds.policy == {}
    assert int(ds.metadata.has("Effusion").sum()) == len(names) // 2
    assert int(ds.metadata.has("Edema").sum()) == len(range(0, len(names), 3))
    assert len(set(ds.metadata.patient_ids.tolist())) == len(names)
    with pytest.raises(CxrError) as exc:
        ds.metadata.has("Nodule")
    assert "its labels: Effusion, Edema" in _one_line(exc)
    lines[3] = lines[3].rsplit(",", 1)[0] + ",2.0"
    _table(root, (root / "cxr-dataset.yaml").read_text(), lines)
    with pytest.raises(CxrError) as exc:
        TableDataset.read(root, DatasetOptions())
    assert f"{root / 't.csv'}:4: 'oedema' holds '2.0'" in _one_line(exc)


@pytest.mark.parametrize("yaml, expected", [
    ("csv: t.csv\npath: file\nlabels: {Edema: e}\ncolour: red\n", "unknown key 'colour'"),
    ("csv: t.csv\npath: file\nlabels: {Edema: e}\nlabels_column: f\n", "give labels"),
    ("csv: t.csv\npath: file\nlabels: {Oedema: e}\n", "unknown label 'Oedema'"),
    ("csv: ../t.csv\npath: file\nlabels: {Edema: e}\n", "'..'"),
    ("csv: t.csv\npath: nowhere\nlabels: {Edema: e}\n", "no 'nowhere' column"),
], ids=["unknown-key", "both-label-forms", "unknown-label", "csv-outside", "missing-column"])
def test_csv_yaml_mistakes_are_one_line_naming_the_file(tmp_path, yaml, expected):
    root = _table(tmp_path / "t", yaml, ["file,e", "a.png,1"])
    with pytest.raises(CxrError) as exc:
        TableDataset.read(root, DatasetOptions())
    assert expected in _one_line(exc) and str(root) in str(exc.value)


def test_csv_findings_names_map_or_are_refused_and_dotdot_is_outside(tmp_path):
    yaml = "csv: t.csv\npath: file\npatient: who\nlabels_column: found\nseparator: ';'\nlabel_names: {Tubes: null}\n"
    lines = ["file,who,found", "a.png,p1,Edema;Tubes", "b.png,p1,", "../c.png,p2,Edema"]
    with pytest.warns(DataWarning, match="outside"):
        ds = TableDataset.read(_table(tmp_path / "t", yaml, lines), DatasetOptions())
    assert ds.metadata.image_ids.tolist() == ["a.png", "b.png"] and ds.metadata.label_names == ("Edema",)
    assert ds.metadata.has("Edema").tolist() == [True, False] and len(set(ds.metadata.patient_ids.tolist())) == 1
    assert list(ds.outside) == ["../c.png"] and ds.policy == {}
    lines[2] = "b.png,p1,Edema;Lung Lesion"
    with pytest.raises(CxrError) as exc:
        TableDataset.read(_table(tmp_path / "t", yaml, lines), DatasetOptions())
    assert "t.csv:3: 'found' names 'Lung Lesion'" in _one_line(exc) and "label_names" in str(exc.value)
