"""The one resize of the project: bilinear, antialiased, half-pixel centres, as PIL's.

``stores.decode`` writes it (rounded to uint8, ``resize_uint8``) into stores, and ``loaders.reference`` holds every backend to it,
so it lives below both.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


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
