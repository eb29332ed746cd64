"""Small DICOM radiographs written with pydicom, for the DICOM reader tests (``data.dicom``).

``ramp`` gives stored values whose right uint8 output is known by hand once a rescale and a window are
chosen; ``write_dicom`` stores any such array uncompressed, RLE lossless or JPEG 2000 lossless, as
MONOCHROME1 or MONOCHROME2, 8 to 16 bits, with the header elements a test names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SYNTAXES = ("explicit", "rle", "j2k")


def ramp(bits: int, side: int = 64) -> np.ndarray:
    """A ``side x side`` image whose pixels run through 0 .. 2^bits - 1 in order (wrapping), uint16."""
    n = side * side
    return (np.arange(n, dtype=np.int64) * ((1 << bits) - 1) // (n - 1)).reshape(side, side).astype(np.uint16)


def write_dicom(path: Path, pixels: np.ndarray, bits: int = 12, syntax: str = "explicit",
                photometric: str = "MONOCHROME2", **elements) -> Path:
    """Write ``pixels`` (2-D uint, or HxWx3 uint8 for RGB) as a one-frame DICOM with ``elements`` set on it."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        JPEG2000Lossless,
        RLELossless,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape[:2]
    color = pixels.ndim == 3
    ds.SamplesPerPixel = 3 if color else 1
    ds.PhotometricInterpretation = "RGB" if color else photometric
    if color:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8 if color or bits <= 8 else 16
    ds.BitsStored = 8 if color else bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    dtype = np.uint8 if ds.BitsAllocated == 8 else np.uint16
    data = np.ascontiguousarray(pixels, dtype=dtype)
    ds.PixelData = data.tobytes()
    for key, value in elements.items():
        setattr(ds, key, value)
    if syntax != "explicit":
        ds.compress({"rle": RLELossless, "j2k": JPEG2000Lossless}[syntax], data)
    ds.save_as(path, enforce_file_format=True)
    return path
