"""Issue 20, part 2: DICOM decoded right (``data.dicom``), through the one reader every stage uses.

Outputs are checked against values worked out by hand: a ramp of every stored value 0..4095 (the value s
sits at flat index s), Rescale Slope 2 and Intercept -1024 (modality m = 2 s - 1024), and the LINEAR window
center 510.5, width 1021, which PS3.3 C.11.2.1.2 puts as [0, 1020] in m: s <= 512 gives 0, s >= 1022 gives
255, s = 716 (m = 408) gives 408 / 1020 * 255 = 102 exactly, s = 818 (m = 612) gives 153. Plus pydicom's
own sample files (other writers, other syntaxes), cross-checked against pydicom's LUT functions.

Tiny images in ``tmp_path``, CPU only, offline (pydicom's bundled files only).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from dicoms import SYNTAXES, ramp, write_dicom
from imagesets import make_dataset

from cxr_fast.cli import main
from cxr_fast.data.reader import (
    ImageError,
    header_problem,
    read_gray,
    read_gray_with_info,
    read_usable,
)

pytestmark = pytest.mark.usefixtures("one_thread")
HAND = {"RescaleSlope": 2, "RescaleIntercept": -1024, "WindowCenter": 510.5, "WindowWidth": 1021}
# stored value -> its uint8 output under HAND, MONOCHROME2
EXPECTED = {0: 0, 511: 0, 512: 0, 716: 102, 818: 153, 1022: 255, 1023: 255, 4095: 255}


def _at(gray: np.ndarray, stored: int) -> int:
    return int(gray.ravel()[stored])


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_a_known_ramp_through_a_known_rescale_and_window(tmp_path: Path, syntax: str, photometric: str):
    path = write_dicom(tmp_path / "x.dcm", ramp(12), 12, syntax, photometric, **HAND)
    gray, info = read_gray_with_info(path)
    flip = photometric == "MONOCHROME1"
    for stored, want in EXPECTED.items():
        assert _at(gray, stored) == (255 - want if flip else want), (stored, syntax, photometric)
    m = ramp(12).astype(np.float64) * 2 - 1024  # the whole image, by the formula written out
    whole = np.clip(np.rint(m * 255 / 1020), 0, 255).astype(np.uint8)
    assert np.array_equal(gray, 255 - whole if flip else whole)
    assert info.window == "header-window" and info.inverted is flip
    assert info.mode == f"DICOM {photometric} 12-bit" and (info.width, info.height) == (64, 64)


def test_linear_exact_and_sigmoid_windows_and_the_first_of_several(tmp_path: Path):
    exact = write_dicom(tmp_path / "exact.dcm", ramp(12), 12, VOILUTFunction="LINEAR_EXACT",
                        RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=510, WindowWidth=1020)
    gray = read_gray(exact)
    assert {s: _at(gray, s) for s in EXPECTED} == EXPECTED  # [c - w/2, c + w/2] = [0, 1020] too
    several = write_dicom(tmp_path / "several.dcm", ramp(12), 12, RescaleSlope=2, RescaleIntercept=-1024,
                          WindowCenter=[510.5, 3000], WindowWidth=[1021, 10])
    assert np.array_equal(read_gray(several), gray)  # the first window, not the second
    sigmoid = write_dicom(tmp_path / "sigmoid.dcm", ramp(12), 12, VOILUTFunction="SIGMOID",
                          RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=1000, WindowWidth=400)
    m = ramp(12).astype(np.float64) * 2 - 1024
    want = np.rint(255 / (1 + np.exp(-4 * (m - 1000) / 400))).astype(np.uint8)
    assert np.array_equal(read_gray(sigmoid), want) and _at(want, 0) == 0 and _at(want, 4095) == 255


@pytest.mark.parametrize("bits", [8, 10, 12, 16])
@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_no_window_maps_the_stored_bits(tmp_path: Path, bits: int, syntax: str, photometric: str):
    top = (1 << bits) - 1
    path = write_dicom(tmp_path / "x.dcm", ramp(bits), bits, syntax, photometric, RescaleSlope=2, RescaleIntercept=-1024)
    gray, info = read_gray_with_info(path)
    assert info.window == "bits" and info.inverted is (photometric == "MONOCHROME1")
    if info.inverted:
        gray = 255 - gray
    assert np.array_equal(gray, np.rint(ramp(bits) * (255 / top)).astype(np.uint8))
    third = ramp(bits).ravel().tolist().index(top // 3) if top % 3 == 0 else None
    if third is not None:  # 2^bits - 1 divisible by 3 (8, 12, 16 bits): a third of the way is 85 exactly
        assert _at(gray, third) == 85


def test_presentation_lut_shape_inverse_inverts_once(tmp_path: Path):
    plain = read_gray(write_dicom(tmp_path / "a.dcm", ramp(12), 12, **HAND))
    inverse = write_dicom(tmp_path / "b.dcm", ramp(12), 12, PresentationLUTShape="INVERSE", **HAND)
    gray, info = read_gray_with_info(inverse)
    assert np.array_equal(gray, 255 - plain) and info.inverted
    both = write_dicom(tmp_path / "c.dcm", ramp(12), 12, "explicit", "MONOCHROME1",
                       PresentationLUTShape="INVERSE", **HAND)  # DX: the two say one inversion
    assert np.array_equal(read_gray(both), 255 - plain)


def test_for_processing_images_take_the_percentile_window_and_say_so(tmp_path: Path):
    path = write_dicom(tmp_path / "raw.dcm", ramp(12), 12, PresentationIntentType="FOR PROCESSING", **HAND)
    gray, info = read_gray_with_info(path)
    # 4096 pixels, one of each value: 0.5% is 20.48 pixels, so lo = stored 20 and hi = stored 4075
    assert info.window == "percentile-for-processing"
    assert _at(gray, 20) == 0 and _at(gray, 4075) == 255 and _at(gray, 2047) == 127  # (2027/4055)*255 = 127.47


def test_pixel_spacing_is_read_row_then_column(tmp_path: Path):
    both = write_dicom(tmp_path / "a.dcm", ramp(12), 12, PixelSpacing=[0.139, 0.143], ImagerPixelSpacing=[0.2, 0.2])
    imager = write_dicom(tmp_path / "b.dcm", ramp(12), 12, ImagerPixelSpacing=[0.2, 0.175])
    none = write_dicom(tmp_path / "c.dcm", ramp(12), 12)
    assert read_gray_with_info(both)[1].spacing_mm == (0.139, 0.143)
    assert read_gray_with_info(imager)[1].spacing_mm == (0.2, 0.175)
    assert read_gray_with_info(none)[1].spacing_mm is None


def test_colour_becomes_gray_by_luminance_as_a_png_does(tmp_path: Path):
    from PIL import Image

    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    gray, info = read_gray_with_info(write_dicom(tmp_path / "c.dcm", rgb))
    assert np.array_equal(gray, np.asarray(Image.fromarray(rgb, "RGB").convert("L")))
    assert info.converted_from == "RGB" and int(gray[0, 0]) == 124  # 0.299*200 + 0.587*100 + 0.114*50 = 124.2


@pytest.mark.parametrize("elements, reason", [
    ({"NumberOfFrames": 2}, "x.dcm: 2 frames: a multi-frame DICOM"),
    ({"VOILUTFunction": "LOG", "WindowCenter": 100, "WindowWidth": 100}, "x.dcm: VOI LUT Function LOG"),
    ({"WindowCenter": 100, "WindowWidth": 0}, "x.dcm: Window Width 0"),
    ({"PhotometricInterpretation": "PALETTE COLOR"}, "x.dcm: photometric interpretation PALETTE COLOR"),
])
def test_what_the_rule_does_not_cover_is_refused_in_one_line(tmp_path: Path, elements: dict, reason: str):
    path = write_dicom(tmp_path / "x.dcm", ramp(12), 12, **elements)
    with pytest.raises(ImageError, match=reason) as caught:
        read_gray(path)
    assert "\n" not in str(caught.value)
    assert str(caught.value).endswith(header_problem(path) or "the header screen passed it")  # screen agrees


def test_a_header_element_pydicom_cannot_read_is_one_line(tmp_path: Path):
    path = write_dicom(tmp_path / "x.dcm", ramp(12), 12, WindowCenter="777", WindowWidth=50)
    data = path.read_bytes()
    path.write_bytes(data.replace(b"777", b"abc", 1))  # a Window Center no number
    with pytest.raises(ImageError, match=r"x.dcm: corrupt DICOM \(could not convert string to float: 'abc'\)$"):
        read_gray(path)
    assert header_problem(path) == "corrupt DICOM (could not convert string to float: 'abc')"


def _lut(descriptor: list[int], entries: np.ndarray):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.LUTDescriptor, item.LUTData = descriptor, entries.astype("<u2").tobytes()
    return item


def test_a_voi_lut_sequence_is_applied_before_any_window(tmp_path: Path):
    whole = write_dicom(tmp_path / "whole.dcm", ramp(12), 12, VOILUTSequence=[_lut([4096, 0, 8], ramp(12).ravel() // 16)],
                        WindowCenter=100, WindowWidth=10)  # the LUT, not this window
    gray, info = read_gray_with_info(whole)
    assert info.window == "voi-lut" and np.array_equal(gray, (ramp(12) // 16).astype(np.uint8))  # 8-bit entries as-is
    # 2048 entries e_i = 2 i of 12 bits from stored 1024: below clamps to e_0, above to e_2047; 2389 -> 2730 -> 170
    part = write_dicom(tmp_path / "part.dcm", ramp(12), 12, VOILUTSequence=[_lut([2048, 1024, 12], 2 * np.arange(2048))])
    gray = read_gray(part)
    assert _at(gray, 0) == _at(gray, 1024) == 0 and _at(gray, 2389) == 170
    assert _at(gray, 3071) == _at(gray, 4095) == 255  # 4094 / 4095 * 255 = 254.94


def test_a_modality_lut_sequence_and_a_lut_unlike_its_descriptor_are_refused(tmp_path: Path):
    write_dicom(tmp_path / "mod.dcm", ramp(12), 12, ModalityLUTSequence=[_lut([4096, 0, 8], ramp(12).ravel() // 16)])
    write_dicom(tmp_path / "voi.dcm", ramp(12), 12, VOILUTSequence=[_lut([4096, 0, 8], ramp(12).ravel())])
    with pytest.raises(ImageError, match="mod.dcm: a Modality LUT Sequence"):
        read_gray(tmp_path / "mod.dcm")
    with pytest.raises(ImageError, match=r"voi.dcm: a VOI LUT whose data \(4096 entries, up to 4095\) does not match"):
        read_gray(tmp_path / "voi.dcm")


def _no_pixels(path: Path) -> Path:
    import pydicom

    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    return path


def _unsupported_syntax(path: Path) -> Path:
    import pydicom

    ds = pydicom.dcmread(path)
    from pydicom.encaps import encapsulate

    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no pixel decoder exists in pydicom
    ds.PixelData = encapsulate([ds.PixelData])
    ds.save_as(path, little_endian=True, implicit_vr=False)
    return path


def test_verify_names_dicoms_it_cannot_decode_and_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = make_dataset(tmp_path / "data", n=4, size=96)[0]
    images = root / "images"
    write_dicom(images / "good.dcm", ramp(12, 96), 12, "explicit", "MONOCHROME1", **HAND)
    write_dicom(images / "rle.dcm", ramp(16, 96), 16, "rle")
    _no_pixels(write_dicom(images / "empty.dcm", ramp(12, 96), 12))
    _unsupported_syntax(write_dicom(images / "mpeg.dcm", ramp(12, 96), 12))
    cut = write_dicom(images / "cut.dcm", ramp(12, 96), 12)
    cut.write_bytes(cut.read_bytes()[:-5000])
    (images / "junk.dcm").write_bytes(b"not a dicom at all")
    names = ["good.dcm", "rle.dcm", "empty.dcm", "mpeg.dcm", "cut.dcm", "junk.dcm"]
    with open(root / "Data_Entry_2017_v2020.csv", "a", encoding="utf-8") as fh:
        fh.writelines(f"{name},Effusion,0,{700 + i},50,M,PA,96,96,0.143,0.143\n" for i, name in enumerate(names))
    out = tmp_path / "verify.json"
    assert main(["verify", str(root), "--json", str(out), "--quiet", "--workers", "1"]) == 1
    report = json.loads(out.read_text())
    assert report["n_images"] == 10 and report["n_ok"] == 6  # 4 PNGs + good + rle
    why = {u["image"]: u["reason"] for u in report["unreadable"]}
    assert sorted(why) == ["cut.dcm", "empty.dcm", "junk.dcm", "mpeg.dcm"]
    assert "no pixel data" in why["empty.dcm"] and "unsupported transfer syntax" in why["mpeg.dcm"]
    assert "truncated or corrupt" in why["cut.dcm"] and "not a DICOM file" in why["junk.dcm"]
    assert report["windowed"] == {"header-window": 1, "bits": 1} and report["inverted"] == 1
    assert report["modes"]["DICOM MONOCHROME1 12-bit"] == 1 and report["modes"]["DICOM MONOCHROME2 16-bit"] == 1
    for name in names:  # the header screen agrees with the full decode
        assert (header_problem(images / name) is None) == (name not in why), name


def test_a_missing_plugin_is_named_with_the_install_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from types import SimpleNamespace

    import pydicom.pixels

    path = write_dicom(tmp_path / "j2k.dcm", ramp(12), 12, "j2k")
    absent = SimpleNamespace(is_available=False, missing_dependencies=["pylibjpeg>=2.0", "pylibjpeg-openjpeg>=2.0"])
    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: absent)  # as if the plugins were not installed
    with pytest.raises(ImageError, match=r"j2k.dcm: no plugin installed decodes the transfer syntax JPEG 2000.*"
                                         r"pip install cxr-fast\[dicom\]"):
        read_gray(path)


def test_without_pydicom_a_dicom_is_one_line_naming_it_and_the_install(tmp_path: Path, monkeypatch, capsys):
    root = make_dataset(tmp_path / "data", n=4, size=96)[0]
    write_dicom(root / "images" / "x.dcm", ramp(12, 96), 12, **HAND)
    with open(root / "Data_Entry_2017_v2020.csv", "a", encoding="utf-8") as fh:
        fh.write("x.dcm,Effusion,0,900,50,M,PA,96,96,0.143,0.143\n")
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom now raises ImportError
    with pytest.raises(ImageError) as caught:
        read_gray(root / "images" / "x.dcm")
    assert str(caught.value) == (f"{root / 'images' / 'x.dcm'}: a DICOM file, and pydicom is not installed: "
                                 "pip install cxr-fast[dicom]")
    out = tmp_path / "verify.json"
    assert main(["verify", str(root), "--json", str(out), "--quiet", "--workers", "1"]) == 1
    assert json.loads(out.read_text())["unreadable"][0]["reason"].endswith("pip install cxr-fast[dicom]")


def test_a_dicom_goes_through_prepare_into_the_store_as_read(tmp_path: Path):
    root = make_dataset(tmp_path / "data", n=4, size=96)[0]
    write_dicom(root / "images" / "x.dcm", ramp(12, 96), 12, "j2k", "MONOCHROME1", **HAND)
    with open(root / "Data_Entry_2017_v2020.csv", "a", encoding="utf-8") as fh:
        fh.write("x.dcm,Effusion,0,900,50,M,PA,96,96,0.143,0.143\n")
    store = tmp_path / "store"
    assert main(["prepare", str(root), "--label", "effusion", "--out", str(store), "--size", "5", "--workers", "1",
                 "--res", "96", "--format", "cache", "--quiet"]) == 0
    manifest = json.loads((store / "manifest.json").read_text())
    assert "x.dcm" in manifest["image_ids"] and manifest["pixels"]["dicom"]["invert"]
    row = np.load(store / "cache" / "96.npy")[manifest["image_ids"].index("x.dcm")]
    assert np.array_equal(np.squeeze(row), read_usable(root / "images" / "x.dcm")[0])  # 96 px: no resize


def _sample(name: str) -> Path:
    from pydicom.data import get_testdata_file

    found = get_testdata_file(name, download=False)
    if found is None:
        pytest.fail(f"pydicom's bundled test file {name} is missing")  # never skipped: the extra ships them
    return Path(found)


@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm",
                                  "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "image_dfl.dcm",
                                  "JPEG2000.dcm", "JPGExtended.dcm", "CT_small.dcm", "JPEGLSNearLossless_16.dcm"])
def test_other_writers_files_match_pydicoms_own_luts(name: str):
    """Cross-check only (this code does not call these functions): modality LUT, VOI LUT, then the rule."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = _sample(name)
    ds = pydicom.dcmread(path)
    gray, info = read_gray_with_info(path)  # before this issue: "not a readable image"
    from cxr_fast.data.pixels import window_to_gray8
    arr = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    first = -(1 << (ds.BitsStored - 1)) if ds.PixelRepresentation else 0
    ends = apply_modality_lut(np.array([first, first + (1 << ds.BitsStored) - 1], np.float64), ds)
    y_min, y_max = float(min(ends)), float(max(ends))  # the output range pydicom's windowing maps onto
    if info.window == "header-window":
        voi = apply_voi_lut(arr, ds, index=0, prefer_lut=False).astype(np.float64)
        want = window_to_gray8(voi, y_min, y_max)
    else:
        assert info.window == "bits", name
        want = window_to_gray8(arr, y_min, y_max)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        want = 255 - want
    diff = np.abs(gray.astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (name, info.window, diff.max())  # two roundings


@pytest.mark.parametrize("name", ["SC_rgb_rle.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_small_odd_big_endian.dcm"])
def test_other_writers_colour_files_become_gray_by_luminance(name: str):
    import pydicom
    from PIL import Image

    path = _sample(name)
    gray, info = read_gray_with_info(path)
    rgb = pydicom.dcmread(path).pixel_array  # pydicom turns YBR into RGB
    assert info.window == "color" and info.converted_from is not None
    assert np.array_equal(gray, np.asarray(Image.fromarray(rgb, "RGB").convert("L"))), name


@pytest.mark.parametrize("name, reason", [("SC_rgb_rle_2frame.dcm", "2 frames: a multi-frame DICOM"),
                                          ("SC_rgb_rle_16bit.dcm", "16-bit colour: only 8-bit colour")])
def test_other_writers_files_outside_the_rule_are_refused(name: str, reason: str):
    with pytest.raises(ImageError, match=f"{name}: {reason}"):
        read_gray(_sample(name))
