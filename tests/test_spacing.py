"""Pixel spacing (issue 20): NIH's original spacing and width give each image's mm per pixel as stored and at
each training resolution; runs record their validation images' median, and the report gives every resolution
in millimetres, or says "unknown" in one line when the data folder is not here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from imagesets import HEADER, make_dataset
from PIL import Image
from test_report import make_study
from torch import nn

from cxr_fast.cli import main
from cxr_fast.data.sets.nih import read_metadata, read_nih_folder
from cxr_fast.errors import CxrError
from cxr_fast.models import Normalize
from cxr_fast.report.build import make_report

# (image, original width, original height, spacing x, spacing y) as NIH writes them; one row left blank.
ROWS = [("a.png", "2500", "2048", "0.16", "0.16"), ("b.png", "3000", "2000", "0.1", "0.2"), ("c.png", "", "", "", "")]


def _nih_folder(root: Path, rows: list[tuple[str, ...]], label: str = "Nodule") -> Path:
    """An NIH-layout folder whose metadata holds ``rows``' geometry; images are tiny gray squares."""
    (root / "images").mkdir(parents=True)
    lines = [HEADER]
    for i, (name, *geometry) in enumerate(rows):
        lines.append(",".join([name, label if i % 3 else "No Finding", "0", str(i + 1), "50", "M", "PA", *geometry]))
        Image.fromarray(np.full((40, 40), 100, np.uint8), mode="L").save(root / "images" / name)
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    return root


def test_spacing_as_stored_and_at_a_resolution_is_computed_by_hand(tmp_path):
    data = read_nih_folder(_nih_folder(tmp_path / "d", ROWS))
    # As stored: NIH's PNGs are 1024 px wide, so 0.16 mm x 2500 px / 1024 = 0.390625; 0.1 x 3000 / 1024.
    stored = data.pixel_spacing_mm(["a.png", "b.png", "c.png"])
    assert stored[:2] == pytest.approx([0.390625, 0.29296875]) and np.isnan(stored[2])
    # At 250 px: the 400 mm and 300 mm fields of view over 250 pixels; x is the width's spacing, not y's.
    assert data.pixel_spacing_mm(["b.png", "a.png"], res=250)[:2] == pytest.approx([1.2, 1.6])
    with pytest.raises(CxrError, match="no row for image 'zz.png'"):
        data.pixel_spacing_mm(["a.png", "zz.png"])


def test_nih_original_form_with_a_trailing_comma_keeps_its_spacing(tmp_path):
    csv = tmp_path / "Data_Entry_2017.csv"
    csv.write_text(HEADER + ",\nx.png,Mass,0,1,50,M,PA,2048,2500,0.125,0.125,\n")
    (tmp_path / "images").mkdir()
    data = read_nih_folder(tmp_path)
    assert data.pixel_spacing_mm(["x.png"])[0] == pytest.approx(0.25)  # 0.125 x 2048 / 1024


@pytest.mark.parametrize("cell", ["abc", "0", "-0.14", "inf"])
def test_a_spacing_cell_that_is_no_positive_number_is_one_line_naming_file_and_line(tmp_path, cell):
    csv = tmp_path / "Data_Entry_2017.csv"
    csv.write_text(f"{HEADER}\nx.png,Mass,0,1,50,M,PA,2048,2500,0.14,0.14\ny.png,Mass,0,2,50,M,PA,2048,2500,{cell},0.14\n")
    with pytest.raises(CxrError, match=rf"Data_Entry_2017.csv:3: 'OriginalImagePixelSpacing\[x' column holds '{cell}'"):
        read_metadata(csv)


def test_phantom_spacing_matches_its_size(tmp_path):
    """The phantom writes OriginalImage = its size and spacing 0.143 x 1024 / size: its images are stored at
    that size, so 0.143 mm per pixel at 1024 px, twice that at 512 px (the same 146 mm field)."""
    from cxr_fast.data.phantom import make_phantom

    data = read_nih_folder(make_phantom(tmp_path / "ph", n=3, size=64, seed=0, workers=1, quiet=True))
    ids = data.metadata.image_ids.tolist()
    with Image.open(data.path_of(ids[0])) as img:
        assert img.size == (64, 64)
    assert data.pixel_spacing_mm(ids) == pytest.approx([2.288] * 3)  # 0.143 x 1024 / 64, as stored
    assert data.pixel_spacing_mm(ids, res=32) == pytest.approx([4.576] * 3)  # the 146.4 mm field over 32 px


# --- the report -------------------------------------------------------------------------------------------

GRID = {"name": "table2", "labels": ["Nodule"], "resolutions": [32, 128], "archs": ["resnet34"], "epochs": 3}
N_VAL = 20


def _study_on(tmp_path: Path, data: str | None) -> Path:
    """A synthetic study of Nodule at 32 and 128 px whose study.yaml names ``data``."""
    study = tmp_path / "study"
    make_study(study, {("Nodule", 32, "resnet34", 3): 1.0, ("Nodule", 128, "resnet34", 3): 2.0}, [GRID], n=N_VAL)
    config = yaml.safe_load((study / "study.yaml").read_text())
    config["train"]["data"] = data
    (study / "study.yaml").write_text(yaml.safe_dump(config))
    return study


def test_report_gives_each_resolution_in_millimetres(tmp_path):
    # The study's validation images are Nodule_00000.png ... Nodule_00019.png (make_study); image i is
    # 2000 + 100 i px wide at 0.2 mm: a field of 400 + 20 i mm; one more row the study never validated on.
    rows = [(f"Nodule_{i:05d}.png", str(2000 + 100 * i), "2000", "0.2", "0.2") for i in range(N_VAL)]
    data = _nih_folder(tmp_path / "data", rows + [("other.png", "9000", "9000", "1", "1")])
    study = _study_on(tmp_path, str(data))
    result = make_report(study, json_path=tmp_path / "report.json")
    fields = np.array([400.0 + 20 * i for i in range(N_VAL)])  # median 590 mm; 10th, 90th percentile 438, 742
    p10, median, p90 = np.percentile(fields, [10, 50, 90])
    assert (median, p10, p90) == pytest.approx((590.0, 438.0, 742.0))
    text = (result.out / "report.md").read_text()
    assert "## Resolution in millimetres" in text
    assert "| 32 × 32 | 18.438 (13.688–23.188) |" in text  # 590 / 32, 438 / 32, 742 / 32
    assert "| 128 × 128 | 4.609 (3.422–5.797) |" in text
    assert "Nodule: 20 of 20" in text
    doc = json.loads((tmp_path / "report.json").read_text())["mm_per_px"]
    assert doc["unknown"] is None
    by_res = {r["res"]: r for r in doc["records"]}
    assert by_res[32]["mm_per_px_median"] == pytest.approx(590 / 32)
    assert by_res[128]["mm_per_px_p90"] == pytest.approx(742 / 128)
    assert (result.out / "spacing.csv").read_text().splitlines()[1].startswith("Nodule,32,20,20,18.4375")


def test_report_says_unknown_in_one_line_when_the_data_is_not_here(tmp_path, capsys):
    study = _study_on(tmp_path, str(tmp_path / "moved-away"))
    assert main(["report", str(study), "--json", str(tmp_path / "r.json")]) == 0
    text = (study / "report" / "report.md").read_text()
    lines = [line for line in text.splitlines() if "Millimetres per pixel" in line]
    assert lines == [f"Millimetres per pixel: unknown (data folder {tmp_path / 'moved-away'} is not here)."]
    doc = json.loads((tmp_path / "r.json").read_text())["mm_per_px"]
    assert doc["records"] == [] and doc["unknown"] == "data folder moved-away is not here"  # no machine paths


def test_report_says_unknown_for_metadata_without_spacing_columns(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = "".join(f"Nodule_{i:05d}.png,Nodule,0,{i + 1},50,M,PA\n" for i in range(N_VAL))
    (data / "Data_Entry_2017.csv").write_text(",".join(HEADER.split(",")[:7]) + "\n" + rows)
    result = make_report(_study_on(tmp_path, str(data)))
    assert "Millimetres per pixel: unknown (" in (result.out / "report.md").read_text()
    assert "no OriginalImagePixelSpacing column" in (result.out / "spacing.md").read_text()


# --- the run's record --------------------------------------------------------------------------------------

def _tiny_model(arch: str = "resnet34", recipe: str = "fastai07", weights=None,
                head_bn_init: str = "ones") -> nn.Module:
    return nn.Sequential(Normalize(), nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 2), nn.LogSoftmax(dim=1))


def test_metrics_record_the_validation_images_median_mm_per_pixel(tmp_path, monkeypatch, one_thread):
    monkeypatch.setattr("cxr_fast.models.build_model", _tiny_model)
    root, ids, _ = make_dataset(tmp_path / "data", n=24, size=64)
    # Image i: 2000 + 40 i px wide at 0.15 mm (a 300 + 6 i mm field); the last image's spacing is unknown.
    lines = (root / "Data_Entry_2017_v2020.csv").read_text().splitlines()
    for i in range(len(ids)):
        geometry = f"{2000 + 40 * i},2000,0.15,0.15"
        lines[i + 1] = ",".join(lines[i + 1].split(",")[:7]) + "," + (geometry if i < len(ids) - 1 else ",,,")
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    assert main(["train", "--label", "Effusion", "--res", "32", "--epochs", "1", "--data", str(root), "--out",
                 str(out), "--init", "random", "--device", "cpu", "--tta", "0", "--workers", "1", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    val = np.load(out / "predictions.npz")["image_ids"].tolist()
    fields = [300 + 6 * ids.index(name) for name in val if ids.index(name) < len(ids) - 1]
    assert metrics["val_mm_per_px"] == pytest.approx(float(np.median(fields)) / 32)
    assert metrics["val_mm_per_px_n"] == len(fields) > 0


def test_report_says_unknown_when_the_data_folder_does_not_hold_the_validated_images(tmp_path):
    data = _nih_folder(tmp_path / "data", ROWS)  # other images than the study's Nodule_000NN.png
    result = make_report(_study_on(tmp_path, str(data)))
    text = (result.out / "report.md").read_text()
    assert "Millimetres per pixel: unknown (" in text and "no row for image 'Nodule_00" in text
