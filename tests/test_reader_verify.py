"""The shared image reader and `cxr-fast verify` on every kind of bad input the real data has."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_fast.cli import main
from cxr_fast.data.reader import ImageError, OutsideRootError, contained_path, read_gray, read_gray_with_info


def test_rgba_is_converted_to_gray_by_luminance(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255  # pure red
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "x.png")
    gray, info = read_gray_with_info(tmp_path / "x.png")
    assert info.converted_rgba and info.mode == "RGBA"
    assert gray.dtype == np.uint8 and gray.shape == (4, 4)
    assert int(gray[0, 0]) == round(200 * 299 / 1000)  # ITU-R 601 luma of red


def test_sixteen_bit_is_scaled_to_eight_bits(tmp_path):
    Image.fromarray(np.array([[0, 65535], [32768, 257]], dtype=np.uint16)).save(tmp_path / "x.png")
    gray, info = read_gray_with_info(tmp_path / "x.png")
    assert info.scaled_16bit
    assert gray.tolist() == [[0, 255], [128, 1]]


def test_truncated_and_missing_files_name_the_file(tmp_path):
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cut.png: truncated"):
        read_gray(tmp_path / "cut.png")
    with pytest.raises(ImageError, match="gone.png: missing"):
        read_gray(tmp_path / "gone.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageError, match="text.png: not a readable image"):
        read_gray(tmp_path / "text.png")


def test_only_bare_names_inside_the_root_pass_the_gate(tmp_path):
    """Links that stay inside the data folder are fine (tools deduplicate that way); names are file names."""
    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(tmp_path / "images" / "a.png")
    (tmp_path / "images" / "b.png").symlink_to("a.png")
    assert contained_path(tmp_path, "b.png", tmp_path / "images") == tmp_path / "images" / "b.png"
    (tmp_path / "images" / "c.png").symlink_to(tmp_path.parent)
    for name in ("../a.png", "/etc/hosts", "images/a.png", "..", "", "a\\b.png", "c.png"):
        with pytest.raises(OutsideRootError):
            contained_path(tmp_path, name, tmp_path / "images")


@pytest.fixture()
def damaged_copy(tiny_phantom: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """A copy of the phantom with one RGBA, one 16-bit, one truncated and one missing image."""
    root = tmp_path / "data"
    shutil.copytree(tiny_phantom, root)
    names = sorted(p.name for p in (root / "images").iterdir())
    rgba, sixteen, cut, gone = names[:4]
    gray = np.asarray(Image.open(root / "images" / rgba))
    Image.fromarray(np.stack([gray] * 3 + [np.full_like(gray, 255)], axis=-1), mode="RGBA").save(root / "images" / rgba)
    Image.fromarray(np.asarray(Image.open(root / "images" / sixteen)).astype(np.uint16) * 257).save(root / "images" / sixteen)
    data = (root / "images" / cut).read_bytes()
    (root / "images" / cut).write_bytes(data[: len(data) // 3])
    (root / "images" / gone).unlink()
    return root, [rgba, sixteen, cut, gone]


def test_verify_passes_a_phantom(tiny_phantom, tmp_path):
    out = tmp_path / "report.json"
    assert main(["verify", str(tiny_phantom), "--json", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert report["usable"] and report["n_ok"] == report["n_images"] == 64
    assert report["sizes"] == {"256x256": 64} and report["modes"] == {"L": 64}


def test_verify_counts_conversions_and_lists_bad_images_by_name(damaged_copy, tmp_path, capsys):
    root, (rgba, sixteen, cut, gone) = damaged_copy
    out = tmp_path / "report.json"
    assert main(["verify", str(root), "--json", str(out), "--quiet"]) == 1
    report = json.loads(out.read_text())
    assert report["rgba_converted"] == 1 and report["scaled_16bit"] == 1
    assert report["missing"] == [gone]
    assert [u["image"] for u in report["unreadable"]] == [cut]
    assert report["n_ok"] == 62
    printed = capsys.readouterr().out
    assert f"missing: {gone}" in printed and f"unreadable: {cut}" in printed


def test_verify_of_a_folder_without_metadata_is_one_line(tmp_path, capsys):
    assert main(["verify", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no dataset layout found" in err and "Data_Entry_2017" in err and err.count("\n") == 1
