"""The reference pixels every backend is held to: shared reader -> float [0, 1] -> antialiased bilinear resize.

One definition of "the right image at ``res``" keeps the backends honest: a store, a GPU decoder or a
baseline that drifts from it (wrong interpolation, forgotten antialiasing, a channel mix-up) fails
``tests/test_loaders.py``. ``prepare`` uses the same resize, so the uint8 cache differs from the
reference by rounding only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from cxr_fast.data.nih import NihDataset
from cxr_fast.data.reader import read_gray


def resize(images: torch.Tensor, res: int) -> torch.Tensor:
    """Float ``N x C x H x W`` -> ``N x C x res x res``: bilinear, antialiased, half-pixel centres.

    Antialiasing matters on the way down (1024 -> 32 averages 32x32 source pixels, as PIL does);
    without it, small resolutions alias the rib pattern. Same size in and out returns the input.
    """
    if images.shape[-2:] == (res, res):
        return images
    return F.interpolate(images, size=(res, res), mode="bilinear", antialias=True, align_corners=False)


def resize_uint8(gray: np.ndarray, res: int) -> np.ndarray:
    """HxW uint8 -> res x res uint8 via the reference resize, rounded to nearest (what stores keep)."""
    x = torch.from_numpy(np.require(gray, np.uint8, ["C", "W"])).to(torch.float32).div_(255.0)[None, None]
    y = resize(x, res)[0, 0]
    return y.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8).numpy()


def reference_image(path: str | Path, res: int) -> torch.Tensor:
    """One image as ``1 x res x res`` float32 in [0, 1]."""
    x = torch.from_numpy(np.require(read_gray(path), np.uint8, ["C", "W"])).to(torch.float32).div_(255.0)[None, None]
    return resize(x, res)[0]


def reference_batch(dataset: NihDataset, image_ids: Iterable[str], res: int) -> torch.Tensor:
    """``N x 1 x res x res`` float32 reference pixels for ``image_ids`` in order."""
    return torch.stack([reference_image(dataset.path_of(str(i)), res) for i in image_ids])
