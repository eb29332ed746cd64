"""The one image reader every stage uses: any NIH PNG in, 8-bit grayscale out.

About 500 of the real ChestX-ray14 PNGs are RGBA and a few are 16-bit; both are converted here
(RGBA by ITU-R 601 luminance, 16-bit by scaling the full range to 8 bits) so that ``verify``,
``prepare`` and every loader see the same pixels.

Also the one gate for where a file may be read from (``contained_path``): an image name from a
metadata file or a store manifest is a bare file name, and the file it names, links followed, stays
inside its root folder (the dataset, or the store). The metadata is third-party text: without the
gate a name like ``../../home/me/x.png`` or a link in ``images/`` would be read into a store.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxr_fast.errors import CxrError

# Pillow's 16-bit grayscale modes.
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


class ImageError(CxrError):
    """An image that cannot be used: missing, truncated or undecodable. Names the file."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}", exit_code=1)
        self.path = str(path)
        self.reason = reason


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


@dataclass(frozen=True)
class ImageInfo:
    """What the reader found and what it did: the counts ``verify`` reports."""

    mode: str
    width: int
    height: int
    converted_rgba: bool
    scaled_16bit: bool


def to_gray8(img: Image.Image) -> tuple[np.ndarray, bool, bool]:
    """Convert a decoded Pillow image to a HxW uint8 array; say whether RGBA or 16-bit was handled."""
    mode = img.mode
    if mode in _SIXTEEN_BIT:
        arr = np.asarray(img, dtype=np.uint32 if mode == "I" else np.uint16)
        if mode == "I":
            arr = np.clip(arr, 0, 65535)
        # Full 16-bit range onto 0..255 with rounding: 65535 -> 255, 0 -> 0.
        return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8), False, True
    if mode in ("RGBA", "LA", "P", "PA"):
        gray = img.convert("RGBA").convert("L") if mode != "LA" else img.convert("L")
        return np.asarray(gray, dtype=np.uint8), True, False
    if mode == "L":
        return np.asarray(img, dtype=np.uint8), False, False
    if mode == "1":
        return np.asarray(img.convert("L"), dtype=np.uint8), False, False
    return np.asarray(img.convert("L"), dtype=np.uint8), False, False


def read_gray_with_info(path: str | Path) -> tuple[np.ndarray, ImageInfo]:
    """Decode ``path`` fully (a truncated file fails here, not later) into uint8 gray plus what was done."""
    p = Path(path)
    if not p.is_file():
        raise ImageError(p, _absent(p))
    return _decode(p, p)


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


def _decode(source: Path | BinaryIO, p: str | Path) -> tuple[np.ndarray, ImageInfo]:
    try:
        with Image.open(source) as img:
            img.load()
            mode = img.mode
            arr, rgba, sixteen = to_gray8(img)
    except UnidentifiedImageError:
        raise ImageError(p, "not a readable image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower() or isinstance(exc, (SyntaxError, ValueError)):
            reason = f"truncated or corrupt ({reason})"
        raise ImageError(p, reason) from None
    if arr.ndim != 2 or arr.size == 0:
        raise ImageError(p, f"unexpected decoded shape {arr.shape}")
    return arr, ImageInfo(mode, arr.shape[1], arr.shape[0], rgba, sixteen)


def read_gray(path: str | Path) -> np.ndarray:
    """Decode one image to a HxW uint8 array (RGBA to luminance, 16-bit scaled to 8-bit)."""
    return read_gray_with_info(path)[0]
