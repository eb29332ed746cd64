"""``cache``: the prepared uint8 array, memory-mapped, batch by batch to the device, augmented there.

Per batch the only CPU work is a gather of ``batch x res x res`` bytes from the page cache (done
one batch ahead in a thread); pinned memory makes the copy to a GPU asynchronous; conversion to
float and the paper's augmentation run on the device (``cxr_fast.augment``). The store is
``spec.store`` (``cxr_fast.feed.make_loader`` makes one in the cache folder when none is given).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from cxr_fast.augment import AugmentConfig, OutputPool, cpu_path, epoch_generator
from cxr_fast.loaders.base import LoaderSpec
from cxr_fast.loaders.common import batch_slices, epoch_order, finish, n_batches, open_for, prefetch, rows_for
from cxr_fast.stores.cache import FORMAT as STORE_FORMAT  # what cxr_fast.feed.make_loader prepares for this backend

NAME = "cache"


def available() -> tuple[bool, str]:
    where = "the GPU" if torch.cuda.is_available() else cpu_path()
    return True, f"memory-mapped uint8 store, augmentation by {where}"


class CacheLoader:
    def __init__(self, spec: LoaderSpec, cfg: AugmentConfig = AugmentConfig()) -> None:
        self.spec = spec
        self.cfg = cfg
        self.store = open_for(spec, STORE_FORMAT)
        self.array = self.store.cache_array(spec.res)
        self.rows, targets = rows_for(spec, self.store)
        self.targets = torch.from_numpy(targets).to(spec.device)
        self.epoch = 0
        self.pin = spec.device.type == "cuda"
        self.pool = OutputPool() if spec.device.type == "cpu" else None

    def __len__(self) -> int:
        return n_batches(len(self.rows), self.spec)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _gather(self, rows: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(self.array[rows])[:, None]  # fancy index copies out of the memmap
        return x.pin_memory() if self.pin else x

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        spec = self.spec
        order = epoch_order(len(self.rows), spec, self.epoch)
        slices = batch_slices(len(order), spec.batch_size, spec.drop_last)
        gen = epoch_generator(spec.seed, self.epoch) if spec.train and spec.augment else None

        def make(i: int) -> tuple[torch.Tensor, np.ndarray]:
            pos = order[slices[i]]
            return self._gather(self.rows[pos]), pos

        for host, pos in prefetch(make, len(slices)):  # type: ignore[misc]
            x = host.to(spec.device, non_blocking=True)
            y = self.targets[torch.from_numpy(pos).to(spec.device)]
            yield finish(x, spec, gen, self.cfg, self.pool), y


def build(spec: LoaderSpec) -> CacheLoader:
    return CacheLoader(spec, spec.augmentation)
