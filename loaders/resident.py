"""``resident``: the whole split held as uint8 on the device; per batch only index, float, augment.

The uint8 pixels at ``spec.res`` come from the store's cache (prepared once, on demand), so after
the first load there is no CPU work per epoch at all: on a GPU a 20,000-image split is 7.2 GB at
600 px and 2 GB at 320 px, which fits; on a CPU the same tensor lives in RAM. Indexing, conversion
and the paper's augmentation (``cxr_fast.augment``) run where the tensor is.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from cxr_fast.augment import AugmentConfig, OutputPool, cpu_path, epoch_generator
from cxr_fast.loaders.base import LoaderSpec
from cxr_fast.loaders.common import batch_slices, epoch_order, finish, n_batches, open_for, rows_for
from cxr_fast.runtime import to_device
from cxr_fast.stores.cache import FORMAT as STORE_FORMAT  # what cxr_fast.feed.make_loader prepares for this backend

NAME = "resident"


def available() -> tuple[bool, str]:
    if torch.cuda.is_available():
        return True, "uint8 split resident in GPU memory, augmentation on the GPU"
    return True, f"uint8 split resident in RAM (no GPU here), augmentation by {cpu_path()}"


class ResidentLoader:
    def __init__(self, spec: LoaderSpec, cfg: AugmentConfig = AugmentConfig()) -> None:
        self.spec = spec
        self.cfg = cfg
        store = open_for(spec, STORE_FORMAT)
        rows, targets = rows_for(spec, store)
        # Sorted reads from the memmap, then one copy to the device; kept in spec order.
        order = np.argsort(rows, kind="stable")
        host = np.empty((len(rows), spec.res, spec.res), dtype=np.uint8)
        host[order] = store.cache_array(spec.res)[rows[order]]
        self.images = torch.from_numpy(host)[:, None].to(spec.device)
        self.targets = torch.from_numpy(targets).to(spec.device)
        self.epoch = 0
        self.pool = OutputPool() if spec.device.type == "cpu" else None

    @property
    def nbytes(self) -> int:
        return self.images.numel()

    def __len__(self) -> int:
        return n_batches(len(self.targets), self.spec)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        spec = self.spec
        order = to_device(torch.from_numpy(epoch_order(len(self.targets), spec, self.epoch)), spec.device)
        gen = epoch_generator(spec.seed, self.epoch) if spec.train and spec.augment else None
        for s in batch_slices(len(order), spec.batch_size, spec.drop_last):
            idx = order[s]
            yield finish(self.images, spec, gen, self.cfg, self.pool, rows=idx), self.targets[idx]


def build(spec: LoaderSpec) -> ResidentLoader:
    return ResidentLoader(spec, spec.augmentation)
