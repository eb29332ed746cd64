"""Issue 19, the pixel classes: what the reader, ``verify`` and ``prepare`` make of hostile or unusual images.

1. 12-bit pixels in 16-bit files kept 17 gray levels (scaled as if they used all 16 bits): one stated rule
   for high-bit-depth pixels (``data.pixels``), recorded in the store's manifest.
2. ``col.png``, ``col.PNG`` and ``col.jpg`` all became ``jpeg/col.jpg``: store entries are injective, and
   ``verify --store`` checks every entry is one image's.
6. A decompression bomb escaped the reader and aborted ``verify``/``prepare``: named, counted unreadable,
   and the rest goes on; a radiograph-sized image passes the pixel limit.
14. ``verify`` and ``prepare`` disagreed (a 200 x 40 strip stored; EXIF orientation ignored; P and LA counted
    as RGBA): one set of rules, the reader's ``read_usable``.

Each test fails on the code before the fix. Tiny images in ``tmp_path``, CPU only.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from cxr_fast.cli import main
from cxr_fast.data.reader import ImageError, read_gray, read_gray_with_info
from imagesets import make_dataset

pytestmark = pytest.mark.usefixtures("one_thread")
ORIENTATION = 0x0112


def _nih(tmp_path: Path, n: int = 4) -> Path:
    return make_dataset(tmp_path / "data", n=n, size=96)[0]


def _add(root: Path, name: str, write, finding: str = "Effusion") -> None:
    """Write image ``name`` with ``write(path)`` and give it a metadata row of its own patient."""
    write(root / "images" / name)
    patient = 500 + sum(1 for _ in (root / "images").iterdir())
    with open(root / "Data_Entry_2017_v2020.csv", "a", encoding="utf-8") as fh:
        fh.write(f"{name},{finding},0,{patient},50,M,PA,96,96,0.143,0.143\n")


def _prepare(root: Path, out: Path, *extra: str) -> int:
    return main(["prepare", str(root), "--label", "effusion", "--out", str(out), "--size", "40", "--workers", "1",
                 "--quiet", *extra])


def _verify(root: Path, tmp_path: Path) -> tuple[int, dict]:
    out = tmp_path / "verify.json"
    code = main(["verify", str(root), "--json", str(out), "--quiet", "--workers", "1"])
    return code, json.loads(out.read_text())


def _gradient(bits: int, size: int = 96) -> np.ndarray:
    """A smooth 16-bit image using ``bits`` bits: every value 0..2^bits-1 reachable, most of them present."""
    ramp = np.linspace(0, (1 << bits) - 1, size * size)
    return np.rint(ramp).astype(np.uint16).reshape(size, size)


def _png16(path: Path, values: np.ndarray, sbit: int | None = None) -> None:
    info = PngImagePlugin.PngInfo()
    if sbit is not None:
        info.add(b"sBIT", bytes([sbit]))
    Image.fromarray(values.astype(np.uint16)).save(path, pnginfo=info)


def _raw_png(width: int, height: int, depth: int = 8, ctype: int = 0, idat: bytes = b"") -> bytes:
    """A PNG built by hand: a header declaring any size, and whatever IDAT (never decoded when refused)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, ctype, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat or zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def _store_row(store: Path, name: str, res: int) -> np.ndarray:
    manifest = json.loads((store / "manifest.json").read_text())
    return np.load(store / "cache" / f"{res}.npy")[manifest["image_ids"].index(name)]


# ==================================================================================================
# Class 1: one rule for high-bit-depth pixels
# ==================================================================================================

@pytest.mark.parametrize("bits", [10, 12, 14, 16])
def test_high_bit_png_keeps_its_contrast_whatever_bits_it_uses(tmp_path: Path, bits: int):
    _png16(tmp_path / "x.png", _gradient(bits))
    gray, info = read_gray_with_info(tmp_path / "x.png")
    assert len(np.unique(gray)) >= 250  # the old full-range rule left 12 bits 17 levels, 10 bits 5
    assert gray.min() <= 2 and gray.max() >= 253
    assert info.scaled_16bit and info.window == "percentile"


@pytest.mark.parametrize("bits", [10, 12, 14, 16])
def test_one_burned_in_pixel_does_not_collapse_the_window(tmp_path: Path, bits: int):
    values = _gradient(bits)
    values[0, 0] = 65535  # a marker at full white: a min-max stretch would leave the image dark
    _png16(tmp_path / "x.png", values)
    gray = read_gray(tmp_path / "x.png")
    assert len(np.unique(gray[1:])) >= 250 and abs(int(gray[48, 48]) - 128) <= 3


def test_a_declared_sbit_sets_the_window_shifted_or_not(tmp_path: Path):
    dark = _gradient(11)  # a 12-bit image using only half its range: sBIT says 12, so it stays half bright
    _png16(tmp_path / "plain.png", dark, sbit=12)
    _png16(tmp_path / "shifted.png", dark << 4, sbit=12)  # stored shifted up to 16 bits, as PNG says
    expected = np.rint(dark * (255 / 4095)).astype(np.uint8)
    for name in ("plain.png", "shifted.png"):
        gray, info = read_gray_with_info(tmp_path / name)
        assert info.window == "bits" and np.array_equal(gray, expected), name
    _png16(tmp_path / "bad.png", dark, sbit=0)
    with pytest.raises(ImageError, match="bad.png: an invalid sBIT"):
        read_gray(tmp_path / "bad.png")


def test_a_sixteen_bit_colour_png_is_refused_not_cut_to_its_top_byte(tmp_path: Path):
    row = b"\0" + struct.pack(">6H", 4095, 4095, 4095, 100, 100, 100)
    (tmp_path / "rgb16.png").write_bytes(_raw_png(2, 1, depth=16, ctype=2, idat=zlib.compress(row)))
    with pytest.raises(ImageError, match="rgb16.png: a 16-bit colour"):
        read_gray(tmp_path / "rgb16.png")


def test_the_store_records_the_pixel_rule_and_refuses_one_made_under_another(tmp_path: Path, capsys):
    root = _nih(tmp_path)
    _add(root, "twelve.png", lambda p: _png16(p, _gradient(12)))
    store = tmp_path / "store"
    assert _prepare(root, store, "--res", "64", "--format", "cache") == 0
    assert len(np.unique(_store_row(store, "twelve.png", 64))) >= 200  # 17 before
    code, report = _verify(root, tmp_path)
    assert code == 0 and report["windowed"] == {"percentile": 1} and report["pixel_rule"]["name"]
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["pixels"] == report["pixel_rule"]
    manifest["pixels"] = {"name": "full-range", "version": 0}
    (store / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert _prepare(root, store, "--res", "32", "--format", "cache") != 0
    err = capsys.readouterr().err
    assert "pixel rule" in err and err.count("\n") == 1


# ==================================================================================================
# Class 2: store entries are injective, and verify --store checks them
# ==================================================================================================

def test_images_named_alike_keep_three_store_entries(tmp_path: Path, capsys):
    root = _nih(tmp_path)
    levels = {"col.png": 40, "col.PNG": 130, "col.jpg": 220}
    for name, level in levels.items():
        fmt = "JPEG" if name.endswith(".jpg") else "PNG"
        _add(root, name, lambda p, v=level, f=fmt: Image.fromarray(np.full((96, 96), v, np.uint8)).save(p, format=f))
    store = tmp_path / "store"
    assert _prepare(root, store, "--format", "jpeg") == 0
    jpegs = sorted(p.name for p in (store / "jpeg").iterdir() if p.name != "files.txt")
    assert len(jpegs) == 4 + 3 and len({n.lower() for n in jpegs}) == 7  # apart on a case-blind disk too
    from cxr_fast.stores.manifest import open_store

    opened = open_store(store)
    for name, level in levels.items():
        assert abs(float(np.asarray(Image.open(opened.jpeg_path(name))).mean()) - level) < 3, name
    assert main(["verify", "--store", str(store)]) == 0
    listing = (store / "jpeg" / "files.txt").read_text().splitlines()
    assert len(listing) == 7 and len({line.rsplit(" ", 1)[0] for line in listing}) == 7


def test_verify_store_fails_an_entry_that_is_no_images(tmp_path: Path, capsys):
    root = _nih(tmp_path)
    store = tmp_path / "store"
    assert _prepare(root, store, "--format", "jpeg") == 0
    first = min(p for p in (store / "jpeg").iterdir() if p.name != "files.txt")
    (store / "jpeg" / "col.jpg").write_bytes(first.read_bytes())  # an entry no image of the store names
    capsys.readouterr()
    assert main(["verify", "--store", str(store)]) == 1
    assert "col.jpg: no image of the store has this entry" in capsys.readouterr().out


# ==================================================================================================
# Class 6: a decompression bomb is one unreadable image, named; radiographs pass the limit
# ==================================================================================================

def test_a_decompression_bomb_is_named_and_the_rest_goes_on(tmp_path: Path, capsys):
    root = _nih(tmp_path)
    _add(root, "bomb.png", lambda p: p.write_bytes(_raw_png(20000, 20000)))  # past Pillow's own error limit
    _add(root, "big.png", lambda p: p.write_bytes(_raw_png(7000, 7000)))  # past ours, under Pillow's
    code, report = _verify(root, tmp_path)
    assert code == 1 and report["n_ok"] == 4
    unreadable = {u["image"]: u["reason"] for u in report["unreadable"]}
    assert set(unreadable) == {"bomb.png", "big.png"}
    assert all("36,000,000 pixels" in why for why in unreadable.values()), unreadable
    store = tmp_path / "store"
    assert _prepare(root, store, "--res", "32", "--format", "cache") == 1  # done, with two images left out
    assert set(json.loads((store / "manifest.json").read_text())["bad"]) == {"bomb.png", "big.png"}
    assert "bomb.png: 400,000,000 pixels is over the limit" in capsys.readouterr().out


def test_a_radiograph_sized_image_passes_the_pixel_limit(tmp_path: Path):
    from cxr_fast.data.reader import MAX_PIXELS

    assert MAX_PIXELS >= 4300 * 4300
    Image.fromarray(np.zeros((4300, 4300), np.uint8)).save(tmp_path / "big.png", compress_level=1)
    assert read_gray(tmp_path / "big.png").shape == (4300, 4300)


# ==================================================================================================
# Class 14: verify and prepare apply one set of rules
# ==================================================================================================

def _exif_png(path: Path) -> None:
    """A 120 x 80 image with a bright left column, marked 'turn 90 degrees clockwise to view' (6)."""
    arr = np.full((80, 120), 60, np.uint8)
    arr[:, :10] = 250
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[ORIENTATION] = 6
    img.save(path, exif=exif)


def test_exif_orientation_is_applied(tmp_path: Path):
    _exif_png(tmp_path / "x.png")
    gray, info = read_gray_with_info(tmp_path / "x.png")
    assert gray.shape == (120, 80) and info.reoriented
    assert gray[:10].mean() > 240 and gray[20:].mean() < 70  # the bright left column is now the top row


def test_palette_and_gray_alpha_are_counted_as_what_they_are(tmp_path: Path):
    gray = np.tile(np.arange(0, 240, 2.5, dtype=np.uint8), (96, 1))
    Image.fromarray(gray).convert("P").save(tmp_path / "p.png")
    Image.fromarray(np.stack([gray, np.full_like(gray, 255)], -1), mode="LA").save(tmp_path / "la.png")
    for name, mode in (("p.png", "P"), ("la.png", "LA")):
        out, info = read_gray_with_info(tmp_path / name)
        assert not info.converted_rgba and info.converted_from == mode, name
        assert np.abs(out.astype(int) - gray).max() <= 1, name


def test_verify_and_prepare_keep_and_leave_out_the_same_images(tmp_path: Path):
    root = _nih(tmp_path)
    strip = np.full((40, 200), 120, np.uint8)  # 1:5, beyond MAX_ASPECT
    rgb = np.stack([np.full((96, 96), 200, np.uint8)] * 3, -1)
    _add(root, "strip.png", lambda p: Image.fromarray(strip).save(p))
    _add(root, "upright.png", _exif_png)
    _add(root, "palette.png", lambda p: Image.fromarray(rgb).convert("P").save(p))
    _add(root, "alpha.png", lambda p: Image.fromarray(np.stack([rgb[..., 0], rgb[..., 0]], -1), mode="LA").save(p))
    _add(root, "bomb.png", lambda p: p.write_bytes(_raw_png(20000, 20000)))
    code, report = _verify(root, tmp_path)
    assert code == 1 and [o["image"] for o in report["odd_shape"]] == ["strip.png"]
    assert report["converted"] == {"P": 1, "LA": 1} and report["rgba_converted"] == 0
    assert report["reoriented"] == 1 and report["sizes"].get("80x120") == 1
    store = tmp_path / "store"
    assert _prepare(root, store, "--res", "32", "--format", "cache,jpeg") == 1  # done, leaving two out
    manifest = json.loads((store / "manifest.json").read_text())
    unusable = {u["image"] for u in report["unreadable"]} | {o["image"] for o in report["odd_shape"]}
    assert set(manifest["bad"]) == unusable == {"strip.png", "bomb.png"}
    assert "odd shape 200x40" in manifest["bad"]["strip.png"]
    from cxr_fast.stores.manifest import open_store

    with Image.open(open_store(store).jpeg_path("upright.png")) as jpg:
        assert jpg.size == (80, 120)
