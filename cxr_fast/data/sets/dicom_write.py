"""DICOM radiographs written for the fixtures of the DICOM layouts (``vindr``, ``rsna``: their ``write_phantom``).

pydicom is the ``dicom`` extra: imported only when a file is written, and its absence is one line naming the extra.

The pixel map is stated so a test can hold the reader (``data.dicom``) to it: an 8-bit phantom value v (inverted,
255 - v, for MONOCHROME1, whose stored values grow darker) goes linearly onto the stored range,
``s = lo + round(v * (hi - lo) / 255)``:

- without a header window, [lo, hi] is the whole stored range [0, 2^bits - 1] and the reader's ``bits`` step maps
  it back;
- with one, [lo, hi] is 5%..95% of that range and the header says Window Center/Width of exactly that interval
  (LINEAR, PS3.3 C.11.2.1.2: center - 0.5 -+ (width - 1) / 2 are lo and hi), which the ``header-window`` step maps
  back.

Either way the reader gives back v exactly for 9 bits and more (the steps are at least one stored value apart).
The 8-bit JPEG baseline (``jpeg``) is lossy: Pillow at quality 100 stays within one gray level of v.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr_fast.errors import CxrError
from cxr_fast.io import atomic_path

# explicit: Explicit VR Little Endian, uncompressed; rle: RLE Lossless; j2k: JPEG 2000 Lossless (the openjpeg plugin);
# jpeg: JPEG Baseline 8-bit (1.2.840.10008.1.2.4.50), encoded by Pillow and encapsulated, as pydicom has no encoder.
SYNTAXES: tuple[str, ...] = ("explicit", "rle", "j2k", "jpeg")
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
WINDOW_SHARE = (0.05, 0.95)  # the part of the stored range a header window spans


@dataclass(frozen=True)
class Variant:
    """How one fixture DICOM is stored: transfer syntax, photometric interpretation, bits stored, whether the header
    carries a window, and which element holds the spacing (Pixel Spacing, or Imager Pixel Spacing at the detector)."""

    syntax: str = "explicit"
    photometric: str = "MONOCHROME2"
    bits: int = 12
    window: bool = False
    spacing_tag: str = "PixelSpacing"


def pydicom_for(layout: str) -> Any:
    """pydicom, or one line saying that writing ``layout`` needs the dicom extra."""
    try:
        import pydicom
    except ImportError:
        raise CxrError(f"writing the {layout} layout needs the dicom extra (pydicom and its plugins): "
                       "pip install 'cxr-fast[dicom]'") from None
    return pydicom


def syntax_uid(syntax: str) -> Any:
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

    return {"explicit": ExplicitVRLittleEndian, "rle": RLELossless, "j2k": JPEG2000Lossless,
            "jpeg": JPEGBaseline8Bit}[syntax]


def available_syntaxes() -> tuple[str, ...]:
    """The syntaxes this install can both write and read back: explicit always; rle and j2k when pydicom has an
    encoder for them (j2k: pylibjpeg-openjpeg); jpeg when a decoder is installed (Pillow or pylibjpeg-libjpeg)."""
    from pydicom.pixels import get_decoder, get_encoder

    found = ["explicit"]
    for syntax in SYNTAXES[1:]:
        uid = syntax_uid(syntax)
        encodes = syntax == "jpeg" or get_encoder(uid).is_available
        if encodes and get_decoder(uid).is_available:
            found.append(syntax)
    return tuple(found)


def stored_values(gray8: np.ndarray, variant: Variant) -> tuple[np.ndarray, tuple[float, float] | None]:
    """The stored pixels for an 8-bit image under ``variant`` (the module's map) and the header window
    (center, width) when it carries one."""
    if variant.syntax == "jpeg" and (variant.bits != 8 or variant.window):
        raise ValueError("JPEG baseline holds 8 bits, without a window")
    top = (1 << variant.bits) - 1
    v = gray8.astype(np.float64)
    if variant.photometric == "MONOCHROME1":
        v = 255.0 - v
    lo, hi = ((round(top * WINDOW_SHARE[0]), round(top * WINDOW_SHARE[1])) if variant.window else (0, top))
    stored = lo + np.rint(v * (hi - lo) / 255.0)
    dtype = np.uint8 if variant.bits <= 8 else np.uint16
    window = (lo + 0.5 + (hi - lo) / 2.0, float(hi - lo + 1)) if variant.window else None
    return stored.astype(dtype), window


def _number(x: float) -> str:
    """A DS value (at most 16 characters)."""
    return f"{x:.10g}"


def write_radiograph(path: Path, gray8: np.ndarray, variant: Variant, spacing_mm: tuple[float, float] | None,
                     layout: str, sop_class: str = DX_STORAGE, **elements: Any) -> Path:
    """Write ``gray8`` (an HxW uint8 image) as a one-frame DICOM under ``variant``; ``spacing_mm`` is (row, column)
    mm per pixel, None for none; ``elements`` are set on the dataset (PatientID, ViewPosition, ...)."""
    pydicom_for(layout)
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    stored, window = stored_values(gray8, variant)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax_uid("explicit")
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX" if sop_class == DX_STORAGE else "CR"
    ds.Rows, ds.Columns = (int(x) for x in stored.shape)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = variant.photometric
    ds.BitsAllocated = 8 if variant.bits <= 8 else 16
    ds.BitsStored = variant.bits
    ds.HighBit = variant.bits - 1
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = _number(window[0]), _number(window[1])
    if spacing_mm is not None and all(np.isfinite(spacing_mm)):
        setattr(ds, variant.spacing_tag, [_number(spacing_mm[0]), _number(spacing_mm[1])])
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.PixelData = stored.tobytes()
    if variant.syntax == "jpeg":
        _jpeg_baseline(ds, stored)
    elif variant.syntax != "explicit":
        ds.compress(syntax_uid(variant.syntax), stored)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


def _jpeg_baseline(ds: Any, stored: np.ndarray) -> None:
    """Encapsulate a Pillow JPEG (baseline, quality 100) as the pixel data, marked lossy (PS3.3 C.7.6.1.1.5)."""
    from PIL import Image
    from pydicom.encaps import encapsulate

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(stored, dtype=np.uint8)).save(buf, format="JPEG", quality=100)
    ds.file_meta.TransferSyntaxUID = syntax_uid("jpeg")
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
