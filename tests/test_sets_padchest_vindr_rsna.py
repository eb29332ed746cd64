"""Issue 20: PadChest, VinDr-CXR and RSNA Pneumonia read in their own layouts.

Each layout's fixture is written from one small NIH phantom (``write_phantom``) and read back by its module: the
rows, the mapped labels and their positives, each policy's rows, the official split, the pixel spacing, and every
image through the one reader, matched to the phantom image it came from by its pixels. Refusals are one line
naming the file and line. The DICOM layouts need pydicom (the dicom extra) and are skipped only without it.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from cxr_fast.data.labels import PAPER_LABELS
from cxr_fast.data.reader import read_gray, read_gray_with_info
from cxr_fast.data.sets.base import Dataset, DatasetOptions
from cxr_fast.data.sets.nih import NihDataset, read_nih_folder
from cxr_fast.data.sets.padchest import CSV_NAME, FRONTAL, PadchestDataset
from cxr_fast.data.sets.rsna import CLASS_CSV, LABELS_CSV, RsnaDataset
from cxr_fast.data.sets.vindr import MAPPED_COLUMNS, TEST_CSV, TRAIN_CSV, VindrDataset
from cxr_fast.errors import CxrError

HAS_PYDICOM = importlib.util.find_spec("pydicom") is not None
needs_pydicom = pytest.mark.skipif(not HAS_PYDICOM, reason="the dicom extra (pydicom) is not installed")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> NihDataset:
    from cxr_fast.data.phantom import make_phantom

    root = make_phantom(tmp_path_factory.mktemp("nih") / "data", n=40, size=256, seed=0, quiet=True,
                        workers=min(2, os.cpu_count() or 1), enrich=("Pneumonia", "Effusion"))
    return read_nih_folder(root)


@pytest.fixture(scope="module")
def pixels(phantom: NihDataset) -> np.ndarray:
    return np.stack([read_gray(phantom.path_of(i)) for i in phantom.metadata.image_ids.tolist()]).astype(np.int16)


def _fixture(cls: type[Dataset], phantom: NihDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp(cls.name) / "data"
    cls.write_phantom(phantom, out, seed=0)
    return out


@pytest.fixture(scope="module")
def padchest(phantom, tmp_path_factory) -> Path:
    return _fixture(PadchestDataset, phantom, tmp_path_factory)


@pytest.fixture(scope="module")
def vindr(phantom, tmp_path_factory) -> Path:
    if not HAS_PYDICOM:
        pytest.skip("the dicom extra (pydicom) is not installed")
    return _fixture(VindrDataset, phantom, tmp_path_factory)


@pytest.fixture(scope="module")
def rsna(phantom, tmp_path_factory) -> Path:
    if not HAS_PYDICOM:
        pytest.skip("the dicom extra (pydicom) is not installed")
    return _fixture(RsnaDataset, phantom, tmp_path_factory)


def _match(ds: Dataset, pixels: np.ndarray, ids=None) -> tuple[np.ndarray, np.ndarray]:
    """For each image of ``ds`` (decoded by the one reader): the phantom image nearest in pixels, and how far."""
    where, worst = [], []
    for name in (ds.metadata.image_ids.tolist() if ids is None else ids):
        gray = read_gray(ds.path_of(name)).astype(np.int16)
        diffs = np.abs(pixels - gray).reshape(len(pixels), -1).max(axis=1)
        where.append(int(diffs.argmin()))
        worst.append(int(diffs.min()))
    return np.array(where), np.array(worst)


def _table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _edited(src: Path, dst: Path, line: int, column: str, value: str) -> Path:
    """A copy of the CSV ``src`` at ``dst`` with one cell (file line ``line``, the header being line 1) changed."""
    with open(src, newline="") as fh:
        rows = list(csv.reader(fh))
    rows[line - 1][rows[0].index(column)] = value
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)
    return dst


def _one_line_error(call, *parts: str) -> str:
    """The one-line ``CxrError`` that ``call`` raises, holding every one of ``parts``."""
    with pytest.raises(CxrError) as err:
        call()
    message = str(err.value)
    assert all(p in message for p in parts) and "\n" not in message, message
    return message


def _labels_match_phantom(ds: Dataset, phantom: NihDataset, rows: np.ndarray) -> None:
    for label in ds.metadata.label_names:
        got, want = ds.metadata.has(label), phantom.metadata.has(label)[rows]
        assert np.array_equal(got, want), label
        assert got.sum() == want.sum()


# --- PadChest -------------------------------------------------------------------------------------------------------


def test_padchest_reads_the_phantom_rows_labels_and_pixels(padchest, phantom, pixels):
    ds = PadchestDataset.read(padchest, DatasetOptions())
    table = _table(padchest / CSV_NAME)
    kept = [r["ImageID"] for r in table if r["Projection"] in FRONTAL and r["MethodLabel"] == "Physician"]
    assert ds.metadata.image_ids.tolist() == kept and 0 < len(kept) < len(phantom.metadata)
    rows, worst = _match(ds, pixels)
    assert worst.max() == 0 and len(set(rows.tolist())) == len(rows)  # 12 bits in 16: every level comes back
    _labels_match_phantom(ds, phantom, rows)
    assert set(PAPER_LABELS) <= set(ds.metadata.label_names)  # all eight of the paper's labels
    assert ds.policy == {"views": "frontal", "label_source": "physician"} and ds.official_split is None
    assert ds.version == "01.02.19"
    assert ds.metadata.has("No Finding").sum() == sum("normal" in r["Labels"] for r in table if r["ImageID"] in kept)


def test_padchest_policies_change_exactly_their_rows(padchest):
    table = _table(padchest / CSV_NAME)
    ids = {(v, s): set(PadchestDataset.read(padchest, DatasetOptions(views=v, label_source=s)).metadata.image_ids)
           for v in ("frontal", "all") for s in ("physician", "all")}
    frontal = {r["ImageID"] for r in table if r["Projection"] in FRONTAL}
    physician = {r["ImageID"] for r in table if r["MethodLabel"] == "Physician"}
    assert ids["all", "physician"] - ids["frontal", "physician"] == physician - frontal != set()
    assert ids["frontal", "all"] - ids["frontal", "physician"] == frontal - physician != set()
    assert ids["all", "all"] == {r["ImageID"] for r in table}
    assert {r["Projection"] for r in table} >= {"PA", "AP", "AP_horizontal", "L"}
    ds = PadchestDataset.read(padchest, DatasetOptions())
    assert ds.left_out == {"not a frontal view": len(ids["all", "all"] - frontal),
                           "labelled by the RNN model": len(frontal - physician)}


def test_padchest_spacing_and_size_come_from_the_csv(padchest, phantom, pixels):
    ds = PadchestDataset.read(padchest, DatasetOptions())
    ids = ds.metadata.image_ids.tolist()
    rows, _ = _match(ds, pixels, ids[:5])
    want = phantom.pixel_spacing_mm(phantom.metadata.image_ids[rows])
    assert np.allclose(ds.pixel_spacing_mm(ids[:5]), want) and np.allclose(want, 0.143 * 1024 / 256)
    assert np.allclose(ds.pixel_spacing_mm(ids[:5], res=64), want * 256 / 64)
    assert np.all(ds.metadata.original_size == 256)


def test_padchest_images_are_16_bit_pngs_windowed_by_their_bits(padchest):
    from PIL import Image

    ds = PadchestDataset.read(padchest, DatasetOptions())
    path = ds.path_of(ds.metadata.image_ids[0])
    assert path.parent.name.isdigit() and 0 <= int(path.parent.name) <= 54
    with Image.open(path) as img:
        assert img.mode == "I;16" and max(img.getextrema()) <= 4095
    assert read_gray_with_info(path)[1].window == "bits"


@pytest.mark.parametrize("junk", ["['normal', 3]", "__import__('os').system('true')", "['normal'", "{'normal'}",
                                  "normal", "[['normal']]"])
def test_padchest_a_labels_cell_that_is_no_list_of_names_is_refused(padchest, tmp_path, junk):
    bad = _edited(padchest / CSV_NAME, tmp_path / CSV_NAME, 3, "Labels", junk)
    _one_line_error(lambda: PadchestDataset.read(tmp_path, DatasetOptions()), f"{bad}:3: Labels")


@pytest.mark.parametrize("column, value, said", [
    ("PixelSpacing_DICOM", "[0.1, wide]", "PixelSpacing_DICOM"), ("Rows_DICOM", "-5", "Rows_DICOM"),
    ("MethodLabel", "Robot", "MethodLabel 'Robot'")])
def test_padchest_a_bad_value_is_one_line_naming_file_and_line(padchest, tmp_path, column, value, said):
    bad = _edited(padchest / CSV_NAME, tmp_path / CSV_NAME, 4, column, value)
    _one_line_error(lambda: PadchestDataset.read(tmp_path, DatasetOptions()), f"{bad}:4: {said}")


def test_padchest_a_repeated_image_and_the_gz_form(padchest, tmp_path):
    first = _table(padchest / CSV_NAME)[0]["ImageID"]
    bad = _edited(padchest / CSV_NAME, tmp_path / "a" / CSV_NAME, 5, "ImageID", first)
    message = _one_line_error(lambda: PadchestDataset.read(tmp_path / "a", DatasetOptions()), f"{bad}:5: ImageID")
    assert "line 2" in message
    gz = tmp_path / "b" / "PADCHEST_chest_x_ray_images_labels_160K_05.06.20.csv.gz"
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress((padchest / CSV_NAME).read_bytes()))
    assert PadchestDataset.detect(gz.parent)
    again = PadchestDataset.read(gz.parent, DatasetOptions())
    assert again.version == "05.06.20"
    assert again.metadata.image_ids.tolist() == PadchestDataset.read(padchest).metadata.image_ids.tolist()


# --- VinDr-CXR ------------------------------------------------------------------------------------------------------


def _votes(root: Path) -> dict[str, np.ndarray]:
    """Positive votes per mapped label of each training image, counted straight from the CSV."""
    out: dict[str, np.ndarray] = {}
    for r in _table(root / TRAIN_CSV):
        out[r["image_id"]] = out.get(r["image_id"], 0) + np.array([int(r[c]) for c in MAPPED_COLUMNS])
    return out


@needs_pydicom
def test_vindr_majority_gives_back_the_phantom(vindr, phantom, pixels):
    ds = VindrDataset.read(vindr, DatasetOptions())
    assert len(ds.metadata) == len(phantom.metadata) and set(ds.metadata.views) == {"PA"}
    rows, worst = _match(ds, pixels)
    assert worst.max() == 0 and sorted(rows.tolist()) == list(range(len(phantom.metadata)))
    _labels_match_phantom(ds, phantom, rows)
    assert len(set(ds.metadata.patient_ids.tolist())) == len(ds.metadata)  # each image its own patient
    assert ds.policy == {"vote": "majority"}
    assert all(len([r for r in _table(vindr / TRAIN_CSV) if r["image_id"] == i]) == 3 for i in _votes(vindr))


@needs_pydicom
def test_vindr_any_vote_adds_exactly_the_minority_marks(vindr):
    majority, anyone = (VindrDataset.read(vindr, DatasetOptions(vote=v)) for v in ("majority", "any"))
    assert anyone.policy == {"vote": "any"}
    votes = _votes(vindr)
    minority = {f"{i}.dicom" for i, v in votes.items() if ((v >= 1) & (v < 2)).any()}
    changed = {name for name, a, b in zip(majority.metadata.image_ids.tolist(), majority.metadata.labels,
                                          anyone.metadata.labels) if (a != b).any()}
    assert changed == minority != set()
    for name, row in zip(anyone.metadata.image_ids.tolist(), anyone.metadata.labels):
        if name[:-6] in votes:
            assert np.array_equal(row, votes[name[:-6]] >= 1)


@needs_pydicom
def test_vindr_official_split_is_the_test_folder(vindr):
    ds = VindrDataset.read(vindr, DatasetOptions())
    test = {f"{r['image_id']}.dicom" for r in _table(vindr / TEST_CSV)}
    assert {k for k, v in ds.official_split.items() if v == "test"} == test != set()
    assert set(ds.official_split.values()) == {"train", "test"}
    assert all(ds.path_of(k).parent.name == v for k, v in ds.official_split.items())
    assert "Other disease" in _table(vindr / TEST_CSV)[0] and "Other diseases" in _table(vindr / TRAIN_CSV)[0]


@needs_pydicom
def test_vindr_has_no_nodule_label_and_says_which_it_has(vindr):
    ds = VindrDataset.read(vindr, DatasetOptions())
    message = _one_line_error(lambda: ds.metadata.has("Nodule"), "has no Nodule label; its labels: Atelectasis")
    assert "Effusion" in message and "Nodule/Mass" not in ds.label_map


@needs_pydicom
@pytest.mark.parametrize("csv_name, line, column, value, said", [
    (TRAIN_CSV, 4, "Cardiomegaly", "2", "column 'Cardiomegaly' holds '2'"),
    (TRAIN_CSV, 3, "rad_id", None, "labels image"),
    (TEST_CSV, 2, "No finding", "yes", "column 'No finding' holds 'yes'")])
def test_vindr_a_bad_value_is_one_line_naming_file_and_line(vindr, tmp_path, csv_name, line, column, value, said):
    shutil.copytree(vindr / "annotations", tmp_path / "annotations")
    if value is None:  # the radiologist of the line before, again
        value = _table(vindr / csv_name)[line - 3][column]
    bad = _edited(vindr / csv_name, tmp_path / csv_name, line, column, value)
    _one_line_error(lambda: VindrDataset.read(tmp_path, DatasetOptions()), f"{bad}:{line}: ", said)


@needs_pydicom
def test_vindr_every_dicom_variant_decodes_to_the_phantom(vindr, pixels):
    import pydicom

    from cxr_fast.data.sets.dicom_write import available_syntaxes, syntax_uid

    ds = VindrDataset.read(vindr, DatasetOptions())
    seen = set()
    for name in ds.metadata.image_ids.tolist():
        h = pydicom.dcmread(ds.path_of(name), stop_before_pixels=True)
        seen.add((h.file_meta.TransferSyntaxUID.name, h.PhotometricInterpretation, int(h.BitsStored),
                  "WindowCenter" in h, "PixelSpacing" in h))
    written = [s for s in available_syntaxes() if s != "jpeg"]  # explicit, rle, and j2k where openjpeg is installed
    assert {s[0] for s in seen} == {syntax_uid(s).name for s in written} and len(written) >= 2
    assert len({s[:3] for s in seen}) == len(written) * 2 * 2  # every syntax as MONOCHROME1 and 2, 12 and 16 bits
    assert {s[3] for s in seen} == {True, False} and {s[4] for s in seen} == {True, False}
    _, worst = _match(ds, pixels)
    assert worst.max() == 0


@needs_pydicom
def test_vindr_spacing_comes_from_the_dicom_headers(vindr):
    ds = VindrDataset.read(vindr, DatasetOptions())
    ids = ds.metadata.image_ids.tolist()[:12]  # Pixel Spacing and Imager Pixel Spacing both among them
    assert np.allclose(ds.pixel_spacing_mm(ids), 0.143 * 1024 / 256)
    assert np.allclose(ds.pixel_spacing_mm(ids, res=128), 0.143 * 1024 / 128)
    with pytest.raises(CxrError, match="no row for image"):
        ds.pixel_spacing_mm(["nope.dicom"])


@needs_pydicom
def test_without_pydicom_metadata_reads_spacing_is_unknown_and_writing_says_the_extra(vindr, rsna, phantom,
                                                                                      tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom now raises ImportError
    for cls, root in ((VindrDataset, vindr), (RsnaDataset, rsna)):
        ds = cls.read(root, DatasetOptions())
        assert np.isnan(ds.pixel_spacing_mm(ds.metadata.image_ids[:2])).all()
        _one_line_error(lambda c=cls: c.write_phantom(phantom, tmp_path / c.name), "needs the dicom extra")


# --- RSNA Pneumonia -------------------------------------------------------------------------------------------------


@needs_pydicom
def test_rsna_reads_one_row_per_image_with_the_phantoms_pneumonia(rsna, phantom, pixels):
    ds = RsnaDataset.read(rsna, DatasetOptions())
    assert len(ds.metadata) == len(phantom.metadata) < len(_table(rsna / LABELS_CSV))  # some images have 2 boxes
    rows, worst = _match(ds, pixels)
    assert worst.max() <= 1 and sorted(rows.tolist()) == list(range(len(phantom.metadata)))  # JPEG at quality 100
    _labels_match_phantom(ds, phantom, rows)
    assert ds.metadata.label_names == ("Pneumonia",) and ds.metadata.has("Pneumonia").sum() >= 5
    assert ds.derived_from == ("nih",) and ds.official_split is None and ds.policy == {}
    _one_line_error(lambda: ds.metadata.has("Effusion"), "has no Effusion label; its labels: Pneumonia")


@needs_pydicom
def test_rsna_dicoms_are_8_bit_jpeg_baseline_with_spacing(rsna):
    import pydicom

    from cxr_fast.data.sets.dicom_write import available_syntaxes, syntax_uid

    ds = RsnaDataset.read(rsna, DatasetOptions())
    h = pydicom.dcmread(ds.path_of(ds.metadata.image_ids[0]), stop_before_pixels=True)
    want = "jpeg" if "jpeg" in available_syntaxes() else "explicit"  # JPEG baseline wherever a decoder is installed
    assert h.file_meta.TransferSyntaxUID == syntax_uid(want)
    assert (h.PhotometricInterpretation, int(h.BitsStored)) == ("MONOCHROME2", 8)
    assert np.allclose(ds.pixel_spacing_mm(ds.metadata.image_ids), 0.143 * 1024 / 256)


@needs_pydicom
@pytest.mark.parametrize("csv_name, line, column, value, said", [
    (LABELS_CSV, 2, "Target", "2", "Target holds '2'"),
    (LABELS_CSV, 3, "x", "left", "x holds 'left'"),
    (CLASS_CSV, 2, "class", "Lung Opacity?", "class 'Lung Opacity?'")])
def test_rsna_a_bad_value_is_one_line_naming_file_and_line(rsna, tmp_path, csv_name, line, column, value, said):
    for name in (LABELS_CSV, CLASS_CSV):
        shutil.copy(rsna / name, tmp_path / name)
    if column == "x":  # a positive's box
        line = 1 + next(k for k, r in enumerate(_table(rsna / LABELS_CSV), 1) if r["Target"] == "1")
    bad = _edited(rsna / csv_name, tmp_path / csv_name, line, column, value)
    _one_line_error(lambda: RsnaDataset.read(tmp_path, DatasetOptions()), f"{bad}:{line}: {said}")


@needs_pydicom
def test_rsna_a_target_or_class_that_disagrees_is_refused(rsna, tmp_path):
    table = _table(rsna / LABELS_CSV)
    k = next(k for k in range(1, len(table)) if table[k]["patientId"] == table[k - 1]["patientId"])  # a 2nd box
    line = k + 2  # the header is line 1; the class file has one row per label row, in the same order
    for name, edits, said in ((LABELS_CSV, {"x": "", "y": "", "width": "", "height": "", "Target": "0"},
                               f"has Target 0 here and 1 on line {line - 1}"),
                              (CLASS_CSV, {"class": "Normal"}, "whose Target is 1")):
        folder = tmp_path / name
        folder.mkdir()
        for other in (LABELS_CSV, CLASS_CSV):
            shutil.copy(rsna / other, folder / other)
        for column, value in edits.items():
            _edited(folder / name, folder / name, line, column, value)
        _one_line_error(lambda f=folder: RsnaDataset.read(f, DatasetOptions()), f"{folder / name}:{line}: ", said)


# --- detection ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [PadchestDataset, VindrDataset, RsnaDataset])
def test_detect_finds_its_own_layout_and_no_other(cls, request, phantom):
    if cls is not PadchestDataset and not HAS_PYDICOM:
        pytest.skip("the dicom extra (pydicom) is not installed")
    own = request.getfixturevalue(cls.name)
    assert cls.detect(own) and not cls.detect(phantom.root) and not NihDataset.detect(own)
    for other in (PadchestDataset, VindrDataset, RsnaDataset):
        if other is not cls:
            assert not other.detect(own), other.name


@pytest.mark.parametrize("name", ["padchest", "vindr", "rsna"])
def test_auto_detection_among_all_datasets_names_the_layout(name, request):
    from cxr_fast.data.sets import dataset_class, detect, read_dataset
    from cxr_fast.vocabulary import DATASETS

    try:
        for other in DATASETS:
            dataset_class(other)
    except (ImportError, AttributeError) as exc:  # a sibling module not written yet
        pytest.skip(f"not every dataset module imports yet: {exc}")
    if name != "padchest" and not HAS_PYDICOM:
        pytest.skip("the dicom extra (pydicom) is not installed")
    root = request.getfixturevalue(name)
    assert detect(root) == name
    assert read_dataset(root).name == name
