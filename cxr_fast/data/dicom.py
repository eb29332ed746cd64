"""DICOM radiographs to the uint8 gray every store reads, by the one high-bit rule (``data.pixels``).

Optional: needs ``pip install cxr-fast[dicom]`` (pydicom 3 and the pylibjpeg plugins for JPEG, JPEG 2000 and
RLE). pydicom only parses the file and decompresses the pixels; every display step is applied here, in the
order of the DICOM grayscale pipeline (PS3.4 N.2), on a lookup table over every possible stored value:

1. the modality LUT: Rescale Slope and Intercept (a Modality LUT Sequence is refused);
2. the VOI: the first VOI LUT of a VOI LUT Sequence (``voi-lut``), else Window Center/Width from the header
   (``header-window``; the first pair when there are several) by its VOI LUT Function (LINEAR, LINEAR_EXACT or
   SIGMOID; others refused); with neither, the stored bits through the rescale (``bits``). "FOR PROCESSING"
   images (raw detector values, Presentation Intent Type) ignore any VOI in the header and take the percentile
   step, and say so (``window`` ends in ``-for-processing``), so ``verify`` counts them;
3. MONOCHROME1, or a Presentation LUT Shape INVERSE, inverts the result once.

Colour (RGB, YBR; 8 bits) becomes gray by ITU-R 601 luminance, as a colour PNG does. Refused, in one line
naming the file: more than one frame, a palette, no pixel data, a transfer syntax no installed plugin decodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from cxr_fast.data.pixels import percentile_window, sigmoid_to_gray8, window_to_gray8
from cxr_fast.errors import CxrError

INSTALL = "pip install cxr-fast[dicom]"
_COLOR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"}
_GRAY = {"MONOCHROME1", "MONOCHROME2"}
_FUNCTIONS = {"LINEAR", "LINEAR_EXACT", "SIGMOID"}


class DicomProblem(CxrError):
    """Why a DICOM cannot be used (the reader adds the file's name)."""


@dataclass(frozen=True)
class DicomImage:
    """A decoded DICOM: uint8 gray and what was done to it."""

    gray: np.ndarray
    mode: str  # e.g. "DICOM MONOCHROME1 12-bit"
    window: str  # header-window, bits, percentile[-for-processing], flat[-for-processing]; "color" for RGB/YBR
    inverted: bool
    converted_from: str | None  # the colour model converted to gray, or None
    spacing_mm: tuple[float, float] | None  # (row, column) mm per pixel


def is_dicom(head: bytes, name: str) -> bool:
    """A ``.dcm`` name or the ``DICM`` mark after the 128-byte preamble (``head``: the file's first 132 bytes)."""
    return name.lower().endswith(".dcm") or head[128:132] == b"DICM"


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError:
        raise DicomProblem(f"a DICOM file, and pydicom is not installed: {INSTALL}") from None
    return pydicom


def read_header(source: BinaryIO) -> Any:
    """The parsed dataset (pixel bytes read, not decoded); ``DicomProblem`` when it is no readable DICOM."""
    pydicom = _pydicom()
    try:
        return pydicom.dcmread(source, force=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on a damaged file: named, one line
        raise DicomProblem(f"not a readable DICOM ({_first_line(exc)})") from None


def header_refusal(ds: Any, max_pixels: int) -> str | None:
    """Why ``ds`` is refused before its pixels are decoded, or None: no pixel data, frames, size, photometric
    interpretation, transfer syntax, LUT sequences the rule does not implement."""
    if "PixelData" not in ds:
        if getattr(ds, "preamble", None) is None:  # read by force: a .dcm name, no DICM mark
            return "not a DICOM file (no DICM mark, no pixel data)"
        return "no pixel data (a DICOM without an image)"
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * cols > max_pixels:
        return f"{cols}x{rows} px is over the limit of {max_pixels:,} pixels: a decompression bomb, or no radiograph"
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return f"{ds.NumberOfFrames} frames: a multi-frame DICOM, not one radiograph"
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in _GRAY | _COLOR:
        return f"photometric interpretation {photometric or '(none)'}: only MONOCHROME1/2, RGB and YBR are read"
    if photometric in _COLOR and int(ds.get("BitsAllocated", 8)) != 8:
        return f"{ds.BitsAllocated}-bit colour: only 8-bit colour is read"
    if photometric in _GRAY:
        bits = int(ds.get("BitsStored", 0) or 0)
        if not 1 <= bits <= 16:
            return f"Bits Stored {bits}: only 1 to 16 bits are read"
        if "ModalityLUTSequence" in ds:
            return "a Modality LUT Sequence, which this reader does not apply (only Rescale Slope/Intercept)"
    return _syntax_problem(ds)


def _syntax_problem(ds: Any) -> str | None:
    """Why no installed plugin decodes ``ds``'s transfer syntax (named), or None."""
    from pydicom.pixels import get_decoder

    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid is None:
        return None  # no file meta: pydicom assumes implicit VR little endian, always decodable
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"unsupported transfer syntax {uid} ({getattr(uid, 'name', uid)})"
    if not decoder.is_available:
        return (f"no plugin installed decodes the transfer syntax {uid.name} ({uid}): "
                f"{INSTALL} (or one of: {'; '.join(decoder.missing_dependencies)})")
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def decode(source: BinaryIO, max_pixels: int) -> DicomImage:
    """Parse, check and decode one DICOM into uint8 gray by the rule (see the module's notes)."""
    try:
        return _decode(source, max_pixels)
    except DicomProblem:
        raise
    except Exception as exc:  # noqa: BLE001 - a header element pydicom cannot convert (a corrupt file): named
        raise DicomProblem(f"corrupt DICOM ({_first_line(exc)})") from None


def _decode(source: BinaryIO, max_pixels: int) -> DicomImage:
    ds = read_header(source)
    refused = header_refusal(ds, max_pixels)
    if refused is not None:
        raise DicomProblem(refused)
    try:
        stored = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - each decoder plugin raises its own kind on a corrupt stream
        raise DicomProblem(f"pixel data truncated or corrupt ({_first_line(exc)})") from None
    photometric = str(ds.PhotometricInterpretation)
    spacing = spacing_of(ds)
    if photometric in _COLOR:
        from PIL import Image

        if stored.ndim != 3 or stored.shape[-1] != 3:
            raise DicomProblem(f"{photometric} pixels decoded as shape {stored.shape}, not rows x columns x 3")
        gray = np.asarray(Image.fromarray(np.ascontiguousarray(stored, dtype=np.uint8), mode="RGB").convert("L"))
        return DicomImage(gray, f"DICOM {photometric}", "color", False, photometric, spacing)
    bits = int(ds.BitsStored)
    gray, window, inverted = _gray_to_gray8(ds, stored, bits)
    return DicomImage(gray, f"DICOM {photometric} {bits}-bit", window, inverted, None, spacing)


def _gray_to_gray8(ds: Any, stored: np.ndarray, bits: int) -> tuple[np.ndarray, str, bool]:
    """Stored gray values onto uint8: modality, VOI, inversion, as one table over every possible stored value."""
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    first = -(1 << (bits - 1)) if signed else 0
    last = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    if not signed:  # bits above Bits Stored are no part of the pixel (PS3.5 8.1.1)
        index = stored.astype(np.uint16 if bits > 8 else np.uint8, copy=False) & last
    elif stored.min() < first or stored.max() > last:
        raise DicomProblem(f"stored values outside the {bits}-bit signed range")
    else:
        index = stored.astype(np.int32) - first
    modality = _modality(ds, np.arange(first, last + 1, dtype=np.float64))
    lut, window = _voi(ds, modality, np.bincount(index.ravel(), minlength=last - first + 1))
    inverted = str(ds.PhotometricInterpretation) == "MONOCHROME1" or str(ds.get("PresentationLUTShape", "")) == "INVERSE"
    if inverted:
        lut = 255 - lut
    return lut[index], window, inverted


def _modality(ds: Any, stored: np.ndarray) -> np.ndarray:
    """The modality LUT: stored value * Rescale Slope + Rescale Intercept (1 and 0 when absent)."""
    slope = float(ds.RescaleSlope) if ds.get("RescaleSlope") is not None else 1.0
    intercept = float(ds.RescaleIntercept) if ds.get("RescaleIntercept") is not None else 0.0
    if slope == 0:
        raise DicomProblem("Rescale Slope 0: every pixel would be one value")
    return stored * slope + intercept


def _voi(ds: Any, modality: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, str]:
    """The VOI step: uint8 per stored value, and which step set it (``data.pixels`` order)."""
    if _for_processing(ds):
        found = percentile_window(counts)
        if found is None:
            return window_to_gray8(modality, modality.min(), modality.max()), "flat-for-processing"
        lo, hi = sorted((modality[found[0]], modality[found[1]]))
        return window_to_gray8(modality, lo, hi), "percentile-for-processing"
    if ds.get("VOILUTSequence"):
        return _voi_lut(ds, modality), "voi-lut"
    if "WindowCenter" in ds and "WindowWidth" in ds:
        return _header_window(ds, modality), "header-window"
    lo, hi = sorted((modality[0], modality[-1]))
    return window_to_gray8(modality, lo, hi), "bits"


def _voi_lut(ds: Any, modality: np.ndarray) -> np.ndarray:
    """The first VOI LUT of the sequence (PS3.3 C.11.2.1.1): a modality value below the first mapped one takes
    the first entry, above the last the last (values between integers: the one below); the entries' declared
    bits are their range, mapped onto 0..255 as a window [0, 2^bits - 1]."""
    item = ds.VOILUTSequence[0]
    try:
        n, first, bits = (int(v) for v in item.LUTDescriptor)
    except (AttributeError, TypeError, ValueError):
        raise DicomProblem("a VOI LUT without a three-value LUT Descriptor") from None
    n = n or 65536  # 0 means 2^16 entries
    entries = _lut_entries(item.get("LUTData"), n, ds)
    if not 8 <= bits <= 16:
        raise DicomProblem(f"a VOI LUT of {bits}-bit entries: only 8 to 16 are read")
    top = (1 << bits) - 1
    if entries.size != n or int(entries.max()) > top:
        raise DicomProblem(f"a VOI LUT whose data ({entries.size} entries, up to {int(entries.max())}) does not "
                           f"match its descriptor ({n} entries of {bits} bits)")
    index = np.clip(np.floor(modality) - first, 0, n - 1).astype(np.int64)
    return window_to_gray8(entries[index].astype(np.float64), 0, top)


def _lut_entries(data: Any, n: int, ds: Any) -> np.ndarray:
    """LUT Data as integers: a list (VR US), or bytes (VR OW: 16-bit words in the file's byte order; n bytes
    for n entries packed in 8 bits)."""
    if data is None:
        return np.zeros(0, np.int64)
    if isinstance(data, bytes):
        if len(data) == n:
            return np.frombuffer(data, np.uint8).astype(np.int64)
        little = (getattr(ds, "original_encoding", None) or (None, True))[1] is not False
        return np.frombuffer(data[: len(data) // 2 * 2], "<u2" if little else ">u2").astype(np.int64)
    values = data if isinstance(data, Sequence) else [data]
    return np.asarray([int(v) for v in values], np.int64)


def _first(value: Any) -> Any:
    """The first of a multi-valued element (several windows: the first is the default, PS3.3 C.11.2.1.2)."""
    return value[0] if isinstance(value, Sequence) and not isinstance(value, str) else value


def _header_window(ds: Any, modality: np.ndarray) -> np.ndarray:
    """Window Center/Width by the VOI LUT Function (PS3.3 C.11.2.1.2 and C.11.2.1.3)."""
    center, width = float(_first(ds.WindowCenter)), float(_first(ds.WindowWidth))
    function = str(_first(ds.get("VOILUTFunction", "")) or "LINEAR").strip().upper()
    if function not in _FUNCTIONS:
        raise DicomProblem(f"VOI LUT Function {function}: only LINEAR, LINEAR_EXACT and SIGMOID are applied")
    if function == "LINEAR":
        if width < 1:
            raise DicomProblem(f"Window Width {width:g} under 1, which a LINEAR window cannot have")
        half = (width - 1) / 2
        return window_to_gray8(modality, center - 0.5 - half, center - 0.5 + half)
    if width <= 0:
        raise DicomProblem(f"Window Width {width:g}: a {function} window needs one above 0")
    if function == "LINEAR_EXACT":
        return window_to_gray8(modality, center - width / 2, center + width / 2)
    return sigmoid_to_gray8(modality, center, width)


def _for_processing(ds: Any) -> bool:
    return str(ds.get("PresentationIntentType", "")).upper() == "FOR PROCESSING"


def spacing_of(ds: Any) -> tuple[float, float] | None:
    """Pixel Spacing, else Imager Pixel Spacing: (row, column) in mm per pixel, or None when absent or unusable."""
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(key)
        if value is not None:
            try:
                row, col = (float(v) for v in value)
            except (TypeError, ValueError):
                continue
            if row > 0 and col > 0:
                return row, col
    return None


def screen_header(source: BinaryIO, max_pixels: int) -> tuple[str | None, tuple[int, int] | None]:
    """Why a DICOM is unusable, without decoding its pixels (``header_refusal``, or uncompressed pixel data
    shorter than its rows x columns say: a truncated file), or None; and its (width, height) when known."""
    try:
        return _screen(source, max_pixels)
    except DicomProblem as exc:
        return str(exc), None
    except Exception as exc:  # noqa: BLE001 - a header element pydicom cannot convert (a corrupt file): named
        return f"corrupt DICOM ({_first_line(exc)})", None


def _screen(source: BinaryIO, max_pixels: int) -> tuple[str | None, tuple[int, int] | None]:
    ds = read_header(source)
    refused = header_refusal(ds, max_pixels)
    if refused is not None:
        return refused, None
    if str(ds.PhotometricInterpretation) in _GRAY:  # the rescale and VOI the decode applies, checked on one value
        _voi(ds, _modality(ds, np.zeros(1)), np.ones(1, np.int64))
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid is None or not uid.is_compressed:
        need = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8
        if len(ds.PixelData) < need:
            return f"truncated or corrupt (pixel data {len(ds.PixelData)} bytes, {need} expected)", None
    return None, (int(ds.Columns), int(ds.Rows))
