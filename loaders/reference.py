"""The reference pixels every backend is held to: shared reader -> float [0, 1] -> antialiased bilinear resize.

One definition of "the right image at ``res``" keeps the backends honest: a store, a GPU decoder or a
baseline that drifts from it (wrong interpolation, forgotten antialiasing, a channel mix-up) fails
``tests/test_loaders.py``. ``stores`` use the same resize (``cxr_fast.data.resize``), so the uint8
cache differs from the reference by rounding only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from cxr_fast.data.sets.base import Dataset
from cxr_fast.data.reader import read_gray
from cxr_fast.data.resize import resize


def reference_image(path: str | Path, res: int) -> torch.Tensor:
    """One image as ``1 x res x res`` float32 in [0, 1]."""
    x = torch.from_numpy(np.require(read_gray(path), np.uint8, ["C", "W"])).to(torch.float32).div_(255.0)[None, None]
    return resize(x, res)[0]


def reference_batch(dataset: Dataset, image_ids: Iterable[str], res: int) -> torch.Tensor:
    """``N x 1 x res x res`` float32 reference pixels for ``image_ids`` in order."""
    return torch.stack([reference_image(dataset.path_of(str(i)), res) for i in image_ids])
