"""The ``jpeg`` format: ``jpeg/<entry>.jpg``, an 8-bit gray JPEG at source size per readable image, and
``jpeg/files.txt``, DALI's file list (file name and store row per line).

An entry is the whole image id, escaped (``entry``): ``col.png``, ``col.PNG`` and ``col.jpg`` are three
images and three entries, on a case-insensitive file system too, and no entry holds a space (DALI's list).

DALI's ``mixed`` decoder decodes these JPEGs on a GPU; it decodes PNG on the CPU even in mixed mode, which
is why a store keeps JPEGs for it. The part counts as done once the list is written; until then the JPEGs
recorded in the manifest are kept and a killed run writes only the rest.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Container, Sequence

import numpy as np

from cxr_fast.io import write_bytes, write_text
from cxr_fast.stores.files import file_record

FORMAT = "jpeg"
FOLDER = FORMAT  # the store's folder for this format
LISTING = "files.txt"


_KEPT = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789._-")
MAX_ENTRY = 255  # bytes in a file name, on every common file system


def entry(image_id: str) -> str:
    """The file name of ``image_id``'s JPEG: one name per image id, never two (injective). Every byte of the
    id but lower-case letters, digits and ``._-`` becomes ``%xx`` (lower-case hex; ``%`` itself too), so the
    name is all lower case and two ids differing only in case, or in extension, keep apart."""
    escaped = "".join(chr(b) if b in _KEPT else f"%{b:02x}" for b in image_id.encode("utf-8"))
    return escaped + ".jpg"


def path(root: Path, image_id: str) -> Path:
    """Where a store at ``root`` keeps the JPEG of ``image_id``."""
    return root / FOLDER / entry(image_id)


def listing_path(root: Path) -> Path:
    return root / FOLDER / LISTING


def write_jpeg(gray: np.ndarray, out: str | Path, quality: int) -> dict:
    """Encode ``gray`` into ``out`` (atomically); returns its manifest record, hashed from the bytes
    written (no second read)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(gray, mode="L").save(buf, format="JPEG", quality=quality)
    write_bytes(out, buf.getvalue())
    return file_record(out, hashlib.sha256(buf.getvalue()).hexdigest())


def write_listing(root: Path, image_ids: Sequence[str], bad: Container[str]) -> dict:
    """DALI's file list of the readable images, labelled by store row; returns its manifest record."""
    lines = [f"{path(root, name).name} {i}" for i, name in enumerate(image_ids) if name not in bad]
    listing = listing_path(root)
    write_text(listing, "\n".join(lines) + "\n")
    return file_record(listing)
