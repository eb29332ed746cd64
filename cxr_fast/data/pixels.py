"""The one rule for gray pixels deeper than 8 bits (16-bit PNGs now, DICOM next): how they become the uint8
gray every store and loader sees.

Why a rule: a 16-bit file may use 10 to 16 of its bits (most radiographs use 12: values 0-4095). Scaling the
container's whole range (0-65535) onto 0-255 leaves such an image 17 gray levels; a per-image min-max stretch
is undone by one burned-in marker at full white. The window [lo, hi] put onto 0..255 is, first that applies:

1. ``window``: a window the file declares (a DICOM VOI window, as its lowest and highest value);
2. ``bits``: the significant bits the file declares (a PNG's sBIT chunk, a DICOM's Bits Stored): 0..2^bits-1.
   Values stored shifted up to the container's depth (as the PNG standard says: any value above 2^bits-1)
   are shifted back down first;
3. ``percentile``: the image's own 0.5th to 99.5th percentile, so up to 0.5% of the pixels at either end
   (markers, collimator edges) cannot set the contrast. An image that flat (``hi == lo``) gets the
   container's whole range instead (``flat``).

The window maps linearly onto 0..255, rounded; values outside it clip (``window_to_gray8``). ``RULE`` (name
and parameters) is recorded in every store's manifest, and a store made under another rule is not reused.

DICOM (``data.dicom``) follows the same order on its modality values (stored values through Rescale Slope and
Intercept): 1. the header's VOI: its first VOI LUT (``voi-lut``, whose entries' bits are the window), else its
window (``header-window``: Window Center/Width, first value, by its VOI LUT Function:
LINEAR and LINEAR_EXACT are windows [lo, hi] of this rule, SIGMOID the curve of PS3.3 C.11.2.1.3.1); 2. the
stored bits (Bits Stored, through the rescale); 3. the percentile, for "FOR PROCESSING" images only (raw detector
values, whose header window is not meant for display). Then MONOCHROME1 or a Presentation LUT Shape INVERSE
inverts the result (once: in DX the two say the same thing, PS3.3 C.8.11.6.1.2).
"""

from __future__ import annotations

import numpy as np

PERCENTILES = (0.5, 99.5)
RULE: dict = {"name": "high-bit-window", "version": 2, "order": ["window", "bits", "percentile"],
              "percentiles": list(PERCENTILES), "flat": "container range",
              "dicom": {"modality": "rescale slope/intercept", "voi": ["voi-lut", "header-window", "bits"],
                        "window_functions": ["LINEAR", "LINEAR_EXACT", "SIGMOID"], "for_processing": "percentile",
                        "invert": "MONOCHROME1 or INVERSE, once", "color": "ITU-R 601 luminance"}}


def high_bit_to_gray8(values: np.ndarray, depth: int = 16, bits: int | None = None,
                      window: tuple[float, float] | None = None) -> tuple[np.ndarray, str]:
    """``values`` (integers in 0..2^depth-1) onto uint8 by ``RULE``; also which step set the window.

    A lookup table over every possible value: exact, and no float copy of a large image."""
    if not 8 < depth <= 16:
        raise ValueError(f"a {depth}-bit container: this rule maps 9 to 16 bits")
    top = (1 << depth) - 1
    if values.size and (int(values.min()) < 0 or int(values.max()) > top):
        raise ValueError(f"values outside 0..{top} for a {depth}-bit image")
    source = np.arange(top + 1, dtype=np.int64)
    if window is not None:
        (lo, hi), how = window, "window"
        if not hi > lo:
            raise ValueError(f"a declared window must have its top above its bottom, got {lo}..{hi}")
    elif bits is not None:
        if not 1 <= bits <= depth:
            raise ValueError(f"{bits} significant bits declared for a {depth}-bit image")
        if values.size and int(values.max()) > (1 << bits) - 1:
            source >>= depth - bits  # stored shifted up to the container's depth
        (lo, hi), how = (0, (1 << bits) - 1), "bits"
    else:
        (lo, hi), how = _percentile_window(values, top)
    return window_to_gray8(source, lo, hi)[values], how


def window_to_gray8(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The rule's one linear map: ``lo`` onto 0, ``hi`` onto 255, rounded, clipped outside. ``hi == lo`` (a DICOM
    LINEAR window of width 1) is a threshold: above ``lo`` white, else black."""
    if hi == lo:
        return np.where(x > lo, 255, 0).astype(np.uint8)
    return np.clip(np.rint((x - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def sigmoid_to_gray8(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """A DICOM SIGMOID VOI window onto 0..255, rounded (PS3.3 C.11.2.1.3.1: 255 / (1 + exp(-4 (x - c) / w)))."""
    return np.rint(255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))).astype(np.uint8)


def percentile_window(counts: np.ndarray) -> tuple[int, int] | None:
    """The percentile step over a histogram (``counts[i]``: pixels of the i-th value): the indices lo, hi of
    ``_percentile_window``, or None for an image that flat."""
    cdf = np.cumsum(counts)
    n = int(cdf[-1])
    lo = int(np.searchsorted(cdf, n * PERCENTILES[0] / 100, side="right"))
    hi = int(np.searchsorted(cdf, n * PERCENTILES[1] / 100, side="left"))
    return None if hi <= lo else (lo, hi)


def _percentile_window(values: np.ndarray, top: int) -> tuple[tuple[int, int], str]:
    """lo: the lowest value with more than 0.5% of the pixels at or below it; hi: the lowest with at least
    99.5% at or below it (so at most 0.5% clip at either end); the whole range for a flat image."""
    found = percentile_window(np.bincount(values.ravel(), minlength=top + 1))
    return ((0, top), "flat") if found is None else (found, "percentile")
