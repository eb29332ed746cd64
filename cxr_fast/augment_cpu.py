"""The CPU fast path of ``cxr_fast.augment``: one fused pass, uint8 in, augmented float32 out.

On a CPU, the torch path costs about five passes over every pixel (to float, lighting, building the
sampling grid, ``grid_sample``), which made augmentation, not decoding, the bottleneck of the fast
loaders. This kernel does the same arithmetic in one pass per output pixel: look up the image's
lighting table (``clamp(v * gain + bias, 0, 1)`` for the 256 uint8 values), sample bilinearly with
zero outside the picture, write float32. The results equal the torch path to float rounding
(``tests/test_augment.py`` holds them to 5e-4, float32 coordinates). Needs numba (an FFCV dependency); without it
``cxr_fast.augment`` uses the torch path.

fastai 0.7 lights the picture *after* rotating it, around the rotated picture's mean: for that order
the warp also sums each output row (``row_sums``), and ``light`` lights the output in place, a
second pass that costs a fraction of the warp.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange


@njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def _warp(src: np.ndarray, rows: np.ndarray, out: np.ndarray, coef: np.ndarray, lut: np.ndarray,
          kind: np.ndarray, sums: np.ndarray, want_sums: bool) -> None:  # pragma: no cover - jitted
    n, h, w = out.shape
    off = np.float32(16.0)  # coordinates shifted by +16 so int() truncation is floor() wherever it matters
    for k in prange(n * h):
        i = k // h
        y = k - i * h
        r = rows[i]
        if kind[i] == 1:  # no rotation or padding: a table lookup per pixel
            for x in range(w):
                out[i, y, x] = lut[i, src[r, y, x]]
        elif kind[i] == 2:  # flip only
            for x in range(w):
                out[i, y, x] = lut[i, src[r, y, w - 1 - x]]
        else:
            a00 = np.float32(coef[i, 0])
            a10 = np.float32(coef[i, 3])
            bx = np.float32(coef[i, 1] * y + coef[i, 2]) + off
            by = np.float32(coef[i, 4] * y + coef[i, 5]) + off
            for x in range(w):
                sx = a00 * np.float32(x) + bx
                sy = a10 * np.float32(x) + by
                xi = int(sx)
                yi = int(sy)
                fx = sx - np.float32(xi)
                fy = sy - np.float32(yi)
                x0 = xi - 16
                y0 = yi - 16
                if x0 >= 0 and y0 >= 0 and x0 < w - 1 and y0 < h - 1:  # inside: four taps, no checks
                    r0 = src[r, y0]
                    r1 = src[r, y0 + 1]
                    v00 = lut[i, r0[x0]]
                    v01 = lut[i, r0[x0 + 1]]
                    v10 = lut[i, r1[x0]]
                    v11 = lut[i, r1[x0 + 1]]
                elif x0 < -1 or y0 < -1 or x0 >= w or y0 >= h or sx < 0 or sy < 0:  # wholly outside: black
                    out[i, y, x] = 0.0
                    continue
                else:  # the picture's edge: taps outside it are black
                    v00 = np.float32(0.0)
                    v01 = np.float32(0.0)
                    v10 = np.float32(0.0)
                    v11 = np.float32(0.0)
                    if y0 >= 0:
                        if x0 >= 0:
                            v00 = lut[i, src[r, y0, x0]]
                        if x0 + 1 < w:
                            v01 = lut[i, src[r, y0, x0 + 1]]
                    if y0 + 1 < h:
                        if x0 >= 0:
                            v10 = lut[i, src[r, y0 + 1, x0]]
                        if x0 + 1 < w:
                            v11 = lut[i, src[r, y0 + 1, x0 + 1]]
                top = v00 + (v01 - v00) * fx
                bot = v10 + (v11 - v10) * fx
                out[i, y, x] = top + (bot - top) * fy
        if want_sums:  # the row is still in cache: summing it here saves a pass for the mean
            acc = 0.0
            for x in range(w):
                acc += out[i, y, x]
            sums[i, y] = acc


@njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def _light(out: np.ndarray, gain: np.ndarray, bias: np.ndarray) -> None:  # pragma: no cover - jitted
    n, h, w = out.shape
    for k in prange(n * h):
        i = k // h
        y = k - i * h
        g = gain[i]
        b = bias[i]
        for x in range(w):
            out[i, y, x] = min(max(out[i, y, x] * g + b, np.float32(0.0)), np.float32(1.0))


def warp(src: np.ndarray, coef: np.ndarray, lut: np.ndarray, threads: int,
         kind: np.ndarray | None = None, out: np.ndarray | None = None, rows: np.ndarray | None = None,
         row_sums: np.ndarray | None = None) -> np.ndarray:
    """``src`` M x H x W uint8, ``coef`` N x 6 pixel-space maps (output -> input), ``lut`` N x 256 float32.

    ``rows``: which source image each output image reads (default: the first N in order), so a loader
    holding the whole split gathers and augments in the same pass, with no copy of the batch.
    ``kind`` per image: 0 general affine, 1 identity, 2 horizontal flip only (exact, no sampling).
    ``out``: an array to write into (a recycled buffer), else a new one.
    ``row_sums``: an N x H float64 array to receive the sum of each output row (for the mean of the
    warped picture), or None.
    """
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    n = len(coef)
    rows = np.arange(n, dtype=np.int64) if rows is None else np.ascontiguousarray(rows, dtype=np.int64)
    if len(rows) != n or (n and (rows.min() < 0 or rows.max() >= len(src))):
        raise IndexError(f"rows must be {n} indices into {len(src)} source images")
    shape = (n,) + src.shape[1:]
    if out is None or out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        out = np.empty(shape, dtype=np.float32)
    if row_sums is not None and (row_sums.shape != shape[:2] or row_sums.dtype != np.float64
                                 or not row_sums.flags.c_contiguous):
        raise ValueError(f"row_sums must be a C-contiguous float64 array of shape {shape[:2]}")
    kinds = np.zeros(n, dtype=np.int8) if kind is None else np.ascontiguousarray(kind, dtype=np.int8)
    sums = np.empty((0, 0), dtype=np.float64) if row_sums is None else row_sums
    _warp(np.ascontiguousarray(src), rows, out, np.ascontiguousarray(coef, dtype=np.float64),
          np.ascontiguousarray(lut, dtype=np.float32), kinds, sums, row_sums is not None)
    return out


def light(out: np.ndarray, gain: np.ndarray, bias: np.ndarray, threads: int) -> np.ndarray:
    """``out[i] = clamp(out[i] * gain[i] + bias[i], 0, 1)`` in place; ``out`` N x H x W float32."""
    if out.dtype != np.float32 or out.ndim != 3 or not out.flags.c_contiguous:
        raise ValueError("out must be a C-contiguous N x H x W float32 array")
    if len(gain) != len(out) or len(bias) != len(out):
        raise ValueError(f"gain and bias must have one value per image ({len(out)})")
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    _light(out, np.ascontiguousarray(gain, dtype=np.float32), np.ascontiguousarray(bias, dtype=np.float32))
    return out
