"""The one image reader every stage uses: any NIH PNG in, 8-bit grayscale out.

About 500 of the real ChestX-ray14 PNGs are RGBA and a few are 16-bit; both are converted here so that
``verify``, ``prepare`` and every loader see the same pixels: every other mode to gray by ITU-R 601 luminance
(counted by the mode it had), 16-bit gray by the one high-bit rule (``data.pixels``, with a PNG's sBIT), an
EXIF orientation applied. Refused, by name: an image over ``MAX_PIXELS`` (a decompression bomb), and a
16-bit colour or gray-alpha PNG, which Pillow cuts to its top 8 bits. ``read_usable`` adds the one shape
rule (``shape_problem``): what ``verify`` and ``prepare`` both keep or leave out. A DICOM (a ``.dcm`` name
or the DICM mark) goes through ``data.dicom`` under the same limits and the same ``ImageInfo``.

Also the one gate for where a file may be read from (``contained_path``): an image name from a
metadata file or a store manifest is a bare file name, and the file it names, links followed, stays
inside its root folder (the dataset, or the store). The metadata is third-party text: without the
gate a name like ``../../home/me/x.png`` or a link in ``images/`` would be read into a store.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cxr_fast.data import dicom
from cxr_fast.data.pixels import high_bit_to_gray8
from cxr_fast.errors import CxrError
from cxr_fast.vocabulary import PAPER_RESOLUTIONS

# Pillow's 16-bit grayscale modes.
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
# Radiographs are up to about 4,300 x 4,300 px (18.5 M); an image over 6,000 x 6,000 is refused before its
# pixels are decoded (a decompression bomb: a small file that decodes to gigabytes).
MAX_PIXELS = 6000 * 6000
# A chest X-ray is roughly square and hundreds of pixels wide (NIH's are 1024 px). A side under the study's
# smallest resolution (32 px), or an aspect ratio beyond MAX_ASPECT, is a thumbnail, a strip or a broken export:
# resizing it to a square would feed the model a smear. Images already made small (32 px and up) are kept.
MIN_SIDE = min(PAPER_RESOLUTIONS)
MAX_ASPECT = 4.0
_PNG = b"\x89PNG\r\n\x1a\n"
_ORIENTATION = 0x0112  # the EXIF tag: 1 upright, 2-8 mirrored and/or turned


class ImageError(CxrError):
    """An image that cannot be used: missing, truncated or undecodable. Names the file."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}", exit_code=1)
        self.path = str(path)
        self.reason = reason


class OddShapeError(ImageError):
    """An image that decodes but has no chest X-ray's shape (``shape_problem``); keeps what was read."""

    def __init__(self, path: str | Path, reason: str, info: ImageInfo) -> None:
        super().__init__(path, reason)
        self.info = info


class OutsideRootError(ImageError):
    """A name that is not a bare file name, or a file that resolves (links followed) outside its root."""


class DataWarning(UserWarning):
    """Rows or files left out of the data, said once with a count and an example."""


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a bare file name (a separator, ``..``, an absolute path, NUL), or None."""
    if not name or name in (".", ".."):
        return "not a file name"
    if "/" in name or "\\" in name:  # both separators, whatever the platform: the CSV may come from Windows
        return "not a bare file name (has a path separator)"
    if "\0" in name:
        return "not a file name (has a NUL byte)"
    return None


def is_inside(root: str | Path, path: str | Path) -> bool:
    """Whether ``path``, every link followed, lies inside ``root`` (itself resolved)."""
    real_root, real = os.path.realpath(root), os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def contained_path(root: str | Path, name: str, folder: str | Path | None = None) -> Path:
    """``folder/name`` (``folder`` defaults to ``root``) when ``name`` is a bare file name and the file,
    links followed, stays inside ``root``; otherwise ``OutsideRootError`` naming it.

    Every lookup of an image or store file by a name read from a file goes through here.
    """
    problem = name_problem(name)
    if problem is not None:
        raise OutsideRootError(repr(name), problem)
    path = Path(root if folder is None else folder) / name
    if not is_inside(root, path):
        raise OutsideRootError(path, f"resolves outside {root}")
    return path


def shape_problem(width: int, height: int) -> str | None:
    """Why a ``width x height`` image is no plausible chest X-ray (see MIN_SIDE, MAX_ASPECT), or None."""
    if min(width, height) < MIN_SIDE:
        return f"odd shape {width}x{height}: a side under {MIN_SIDE} px"
    if max(width, height) > MAX_ASPECT * min(width, height):
        return f"odd shape {width}x{height}: aspect ratio beyond 1:{MAX_ASPECT:g}"
    return None


@dataclass(frozen=True)
class ImageInfo:
    """What the reader found and what it did: the counts ``verify`` reports. ``converted_from``: the mode
    converted to gray (None for 8-bit gray); ``window``: which step of the high-bit rule set a 16-bit
    image's window (``data.pixels``); ``reoriented``: turned by its EXIF orientation. DICOM (``data.dicom``):
    ``window`` is header-window, bits or percentile-for-processing; ``inverted``: MONOCHROME1 or Presentation LUT
    Shape INVERSE; ``spacing_mm``: (row, column) mm per pixel from Pixel Spacing or Imager Pixel Spacing."""

    mode: str
    width: int
    height: int
    converted_from: str | None = None
    window: str | None = None
    reoriented: bool = False
    inverted: bool = False
    spacing_mm: tuple[float, float] | None = None

    @property
    def converted_rgba(self) -> bool:
        return self.converted_from == "RGBA"

    @property
    def scaled_16bit(self) -> bool:
        return self.window is not None


def to_gray8(img: Image.Image, sbit: int | None = None) -> tuple[np.ndarray, str | None, str | None]:
    """A decoded Pillow image as a HxW uint8 array; also the mode converted to gray (None for "L") and, for
    16-bit gray, which step of the high-bit rule set its window (``sbit``: the PNG's significant bits)."""
    mode = img.mode
    if mode in _SIXTEEN_BIT:
        arr = np.asarray(img)
        if mode == "I":  # 32-bit integers: a 16-bit PNG in older Pillows; kept to the 16-bit range
            arr = np.clip(arr, 0, 65535)
        gray, how = high_bit_to_gray8(arr.astype(np.uint16, copy=False), 16, bits=sbit)
        return gray, None, how
    if mode == "L":
        return np.asarray(img, dtype=np.uint8), None, None
    if mode in ("P", "PA"):  # a palette's colours (and transparency) first, then luminance
        img = img.convert("RGBA")
    return np.asarray(img.convert("L"), dtype=np.uint8), mode, None


def read_usable(path: str | Path) -> tuple[np.ndarray, ImageInfo]:
    """``read_gray_with_info``, refusing (``OddShapeError``) an image no chest X-ray has the shape of: the one
    set of rules by which ``verify`` counts an image usable and ``prepare`` stores it."""
    return _usable(*read_gray_with_info(path), path)


def decode_usable(data: bytes, where: str | Path) -> tuple[np.ndarray, ImageInfo]:
    """``read_usable`` for an image already in memory (an archive member)."""
    return _usable(*decode_gray_with_info(data, where), where)


def _usable(arr: np.ndarray, info: ImageInfo, where: str | Path) -> tuple[np.ndarray, ImageInfo]:
    problem = shape_problem(info.width, info.height)
    if problem is not None:
        raise OddShapeError(where, problem, info)
    return arr, info


def read_gray_with_info(path: str | Path) -> tuple[np.ndarray, ImageInfo]:
    """Decode ``path`` fully (a truncated file fails here, not later) into uint8 gray plus what was done."""
    p = Path(path)
    if not p.is_file():
        raise ImageError(p, _absent(p))
    try:
        with open(p, "rb") as fh:
            return _decode(fh, p)
    except OSError as exc:  # could not open it: unreadable, named
        raise ImageError(p, exc.strerror or str(exc)) from None


def decode_gray_with_info(data: bytes, where: str | Path) -> tuple[np.ndarray, ImageInfo]:
    """``read_gray_with_info`` for an image already in memory (an archive member, ``data.archives``), so the
    same rules and conversions hold whether an image came from a file or a tarball; errors name ``where``."""
    return _decode(io.BytesIO(data), where)


def _absent(p: Path) -> str:
    """Why ``p`` cannot be opened: ``missing``, or that it is a member of a ``.tar.gz`` archive, which cannot
    be read at random (a gzip stream is read from its start), so only ``verify`` and ``prepare`` read it."""
    for parent in p.parents:
        if parent.name.endswith(".tar.gz") and parent.is_file():
            return (f"a member of the archive {parent.name}, which only verify and prepare read (in one pass); "
                    "use a store (cxr-fast prepare, or a cache, resident, dali or ffcv loader) or extract it")
    return "missing"


def _png_header(fh: BinaryIO) -> tuple[int, int, int | None] | None:
    """A PNG's bit depth, colour type and sBIT (its first significant-bits byte), read from the chunks before
    the first IDAT (Pillow keeps no sBIT); None when ``fh`` holds no PNG. Leaves ``fh`` at its start."""
    try:
        if fh.read(8) != _PNG:
            return None
        depth = ctype = -1
        sbit = None
        while len(head := fh.read(8)) == 8:
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IHDR" and length >= 10:
                depth, ctype = fh.read(10)[8:10]
                fh.seek(length - 10 + 4, os.SEEK_CUR)
            elif kind == b"sBIT" and length >= 1:
                sbit = fh.read(1)[0]
                fh.seek(length - 1 + 4, os.SEEK_CUR)
            elif kind in (b"IDAT", b"IEND"):
                break
            else:
                fh.seek(length + 4, os.SEEK_CUR)
        return depth, ctype, sbit
    finally:
        fh.seek(0)


def _refusal(header: tuple[int, int, int | None] | None, img: Image.Image) -> str | None:
    """Why an opened image is refused before its pixels are decoded (a bomb, a 16-bit colour PNG), or None."""
    width, height = img.size
    if width * height > MAX_PIXELS:
        return _too_many(f"{width}x{height} px")
    if img.mode == "F":
        return "a floating-point image: no stated rule maps its values to 8 bits"
    if header is not None and header[0] == 16 and img.mode not in _SIXTEEN_BIT:
        return ("a 16-bit colour or gray-alpha PNG, which the decoder cuts to its top 8 bits: "
                "save it as 16-bit grayscale (one channel)")
    if header is not None and header[2] is not None and img.mode in _SIXTEEN_BIT and not 1 <= header[2] <= 16:
        return f"an invalid sBIT chunk ({header[2]} significant bits in a 16-bit image)"
    return None


def _too_many(size: str) -> str:
    return (f"{size} is over the limit of {MAX_PIXELS:,} pixels (6000x6000; radiographs are up to about "
            "4300x4300): a decompression bomb, or no radiograph")


def header_problem(path: str | Path) -> str | None:
    """Why ``path`` is unusable, judged without decoding its pixels, or None: missing, not an image, refused
    by the rules ``_decode`` applies before decoding (``_refusal``), of no chest X-ray's shape
    (``shape_problem``), or failing Pillow's ``verify`` (a PNG's chunk checksums: a truncated file fails).
    A thousandth of a decode's cost, so a run reading source files can screen all of them first."""
    p = Path(path)
    if not p.is_file():
        return _absent(p)
    try:
        with open(p, "rb") as fh:
            if _is_dicom(fh, p):
                problem, size = dicom.screen_header(fh, MAX_PIXELS)
                return problem or shape_problem(*size)  # type: ignore[misc]
            header = _png_header(fh)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(fh) as img:
                    refused = _refusal(header, img) or shape_problem(*img.size)
                    if refused is None:
                        img.verify()
    except Image.DecompressionBombError:
        return _too_many("its size")
    except UnidentifiedImageError:
        return "not a readable image"
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        return f"truncated or corrupt ({str(exc) or type(exc).__name__})"
    return refused


def _is_dicom(source: BinaryIO, p: str | Path) -> bool:
    """Whether ``source`` (left at its start) is a DICOM: a ``.dcm`` name or the DICM mark."""
    head = source.read(132)
    source.seek(0)
    return dicom.is_dicom(head, str(p))


def _decode_dicom(source: BinaryIO, p: str | Path) -> tuple[np.ndarray, ImageInfo]:
    """A DICOM through ``data.dicom``, its refusals as ``ImageError`` naming ``p``."""
    try:
        img = dicom.decode(source, MAX_PIXELS)
    except dicom.DicomProblem as exc:
        raise ImageError(p, str(exc)) from None
    arr = img.gray
    if arr.ndim != 2 or arr.size == 0:
        raise ImageError(p, f"unexpected decoded shape {arr.shape}")
    return arr, ImageInfo(img.mode, arr.shape[1], arr.shape[0], img.converted_from, img.window,
                          inverted=img.inverted, spacing_mm=img.spacing_mm)


def _decode(source: BinaryIO, p: str | Path) -> tuple[np.ndarray, ImageInfo]:
    if _is_dicom(source, p):
        return _decode_dicom(source, p)
    try:
        header = _png_header(source)
        with warnings.catch_warnings():  # Pillow's own bomb warning: MAX_PIXELS refuses those first
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source)
        with img:
            refused = _refusal(header, img)
            if refused is not None:
                raise ImageError(p, refused)
            img.load()
            mode = img.mode
            reoriented = img.getexif().get(_ORIENTATION, 1) in range(2, 9)
            upright = ImageOps.exif_transpose(img) if reoriented else img
            sbit = header[2] if header is not None else None
            arr, converted, window = to_gray8(upright, sbit)
    except Image.DecompressionBombError as exc:  # past Pillow's own limit: refused when opened
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise ImageError(p, _too_many(f"{int(found[1]):,} pixels" if found else "its size")) from None
    except UnidentifiedImageError:
        raise ImageError(p, "not a readable image") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower() or not isinstance(exc, OSError):
            reason = f"truncated or corrupt ({reason})"
        raise ImageError(p, reason) from None
    if arr.ndim != 2 or arr.size == 0:
        raise ImageError(p, f"unexpected decoded shape {arr.shape}")
    return arr, ImageInfo(mode, arr.shape[1], arr.shape[0], converted, window, reoriented)


def read_gray(path: str | Path) -> np.ndarray:
    """Decode one image to a HxW uint8 array (any mode to gray, 16-bit by the high-bit rule, EXIF upright)."""
    return read_gray_with_info(path)[0]
