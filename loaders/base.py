"""The one contract every loader backend keeps.

A backend module defines ``NAME``, ``available() -> (bool, reason)`` and ``build(spec) -> Loader``.
Iterating a loader yields ``(images, labels)``: images float32 in [0, 1], shape ``N x 1 x H x W``,
on ``spec.device`` (channels-last memory format when ``spec.channels_last``); labels float32 ``N``.
Normalisation to the model's input statistics is the model's job (``cxr_fast.models``), so every
backend can be held to the same reference pixels. Train mode shuffles each epoch and augments;
eval mode does neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch

from cxr_fast.augment import AugmentConfig
from cxr_fast.data.sets.base import Dataset


@dataclass
class LoaderSpec:
    """What to load and how. ``image_ids``/``targets`` usually come from ``Subsample.part(...)``."""

    dataset: Dataset
    image_ids: np.ndarray
    targets: np.ndarray
    res: int
    batch_size: int
    train: bool
    device: torch.device
    seed: int = 0
    channels_last: bool = True
    drop_last: bool = False
    augment: bool = True  # only used in train mode
    store: Path | None = None  # a prepared store (``cxr-fast prepare``) for backends that read one
    num_workers: int | None = None  # None: all cores
    # Strengths and probabilities of the training (and TTA) augmentation: the run's recipe picks them.
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)


class Loader(Protocol):
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...
