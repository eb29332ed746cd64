"""Reading ChestX-ray14 metadata exactly as the paper did, in both CSV forms in circulation."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from cxr_fast.cli import main
from cxr_fast.data.labels import PAPER_LABELS, canonical_label
from cxr_fast.data.sets.nih import index_images, read_nih_folder, read_metadata, read_official_split
from cxr_fast.errors import CxrError

# Table 1 of Sabottke & Spieler 2020 (positives, single-finding cases, loss weight); Hernia's weight is
# 19773/227 = 87.1057..., which the paper prints as 87.105 and we round to 87.106.
PAPER_TABLE1 = {
    "Emphysema": (2516, 892, 6.949), "Cardiomegaly": (2776, 1093, 6.205), "Hernia": (227, 110, 87.106),
    "Atelectasis": (11559, 4215, 0.730), "Edema": (2303, 628, 7.684), "Effusion": (13317, 3955, 0.502),
    "Mass": (5782, 2139, 2.459), "Nodule": (6331, 2705, 2.159),
}


def _to_original_nih_form(src: Path, dst: Path) -> None:
    """NIH's own Data_Entry_2017.csv: a trailing comma on the header and every row, shorter spacings."""
    lines = gzip.open(src, "rt").read().splitlines()
    out = [lines[0] + ","]
    for line in lines[1:]:
        parts = line.split(",")
        parts[-2:] = [f"{float(x):.3f}".rstrip("0") for x in parts[-2:]]
        out.append(",".join(parts) + ",")
    dst.write_text("\n".join(out) + "\n")


def _table1_json(tmp_path: Path, metadata: Path) -> dict:
    out = tmp_path / f"{metadata.name}.json"
    assert main(["table1", "--metadata", str(metadata), "--json", str(out)]) == 0
    return {r["label"]: (r["positives"], r["single_finding"], r["loss_weight"]) for r in json.loads(out.read_text())["rows"]}


def test_table1_on_real_metadata_equals_the_paper(tmp_path, real_metadata):
    assert _table1_json(tmp_path, real_metadata) == PAPER_TABLE1


def test_original_nih_csv_form_gives_the_same_table1(tmp_path, real_metadata):
    original = tmp_path / "Data_Entry_2017.csv"
    _to_original_nih_form(real_metadata, original)
    assert original.read_text().splitlines()[1].endswith(",")
    assert _table1_json(tmp_path, original) == PAPER_TABLE1


def test_metadata_holds_patients_views_and_follow_ups(real_metadata):
    meta = read_metadata(real_metadata)
    assert len(meta) == 112_120
    assert len(set(meta.patient_ids.tolist())) == 30_805
    assert set(meta.views.tolist()) == {"PA", "AP"}
    first = list(meta.image_ids).index("00000001_001.png")
    assert meta.patient_ids[first] == 1 and meta.follow_up[first] == 1
    assert meta.has("Cardiomegaly")[first] and meta.has("Emphysema")[first] and not meta.has("No Finding")[first]


def _write_csv(path: Path, rows: list[str]) -> Path:
    header = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_unknown_label_is_a_one_line_error_naming_file_line_and_label(tmp_path):
    csv = _write_csv(tmp_path / "Data_Entry_2017.csv", [
        "a.png,Nodule,0,1,50,M,PA,1024,1024,0.14,0.14",
        "b.png,Nodule|Tumour,0,2,50,F,PA,1024,1024,0.14,0.14",
    ])
    with pytest.raises(CxrError, match=r"Data_Entry_2017.csv:3: unknown label 'Tumour'"):
        read_metadata(csv)


@pytest.mark.parametrize("content, message", [("", "empty metadata file"), ("header-only", "no rows")])
def test_empty_csv_is_rejected(tmp_path, content, message):
    path = tmp_path / "Data_Entry_2017.csv"
    if content == "header-only":
        _write_csv(path, [])
    else:
        path.write_text("")
    with pytest.raises(CxrError, match=message):
        read_metadata(path)


def test_table1_command_reports_bad_metadata_without_traceback(tmp_path, capsys):
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text("")
    assert main(["table1", "--metadata", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cxr-fast table1: error:") and "empty metadata file" in err and "\n" not in err


def test_label_names_are_matched_case_insensitively():
    assert canonical_label("nodule") == "Nodule"
    assert canonical_label("pleural thickening") == "Pleural_Thickening"
    with pytest.raises(CxrError, match="unknown label"):
        canonical_label("Tumour")
    assert len(PAPER_LABELS) == 8


def test_images_are_found_in_the_nih_tarball_folders_and_official_split_is_read(tmp_path):
    for folder, name in (("images_001/images", "a.png"), ("images_012/images", "b.png")):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / name).write_bytes(b"")
    _write_csv(tmp_path / "Data_Entry_2017.csv", ["a.png,Nodule,0,1,50,M,PA,1,1,1,1", "b.png,No Finding,0,2,50,F,PA,1,1,1,1"])
    (tmp_path / "train_val_list.txt").write_text("a.png\n")
    (tmp_path / "test_list.txt").write_text("b.png\n")
    found = index_images(tmp_path)
    assert found["a.png"] == tmp_path / "images_001/images/a.png"
    assert found["b.png"] == tmp_path / "images_012/images/b.png"
    assert read_official_split(tmp_path) == {"a.png": "train", "b.png": "test"}
    ds = read_nih_folder(tmp_path)
    assert ds.path_of("b.png") == found["b.png"] and len(ds.metadata) == 2
