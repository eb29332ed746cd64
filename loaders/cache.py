"""``cache``: the prepared uint8 array, memory-mapped, batch by batch to the device, augmented there.

Per batch the only CPU work is a gather of ``batch x res x res`` bytes and the batch's labels from the
page cache straight into pinned memory (done one batch ahead in a thread; one copy, not a gather then a
pin); pinned memory makes the copies to a GPU asynchronous, so the host never waits; conversion to
float and the paper's augmentation run on the device (``cxr_fast.augment``). The store is
``spec.store`` (``cxr_fast.feed.make_loader`` makes one in the cache folder when none is given).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from cxr_fast.augment import AugmentConfig, OutputPool, cpu_path, epoch_generator
from cxr_fast.errors import CxrError
from cxr_fast.loaders.base import LoaderSpec
from cxr_fast.loaders.common import batch_slices, epoch_order, finish, n_batches, open_for, prefetch, rows_for
from cxr_fast.runtime import host_buffer
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
        self.rows, self.targets = rows_for(spec, self.store)
        self.epoch = 0
        self.pool = OutputPool() if spec.device.type == "cpu" else None

    def __len__(self) -> int:
        return n_batches(len(self.rows), self.spec)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _gather(self, rows: np.ndarray) -> torch.Tensor:
        """Rows of the memmap copied once, straight into a (pinned, on a GPU) ``N x 1 x res x res`` buffer."""
        n, res = len(rows), self.spec.res
        if n and (rows.min() < 0 or rows.max() >= len(self.array)):
            raise CxrError(f"{self.store.root}: rows {rows.min()}..{rows.max()} outside its {len(self.array)}-row "
                           f"{res} px cache; rebuild it with cxr-fast prepare")
        out = host_buffer((n, 1, res, res), torch.uint8, self.spec.device)
        np.take(self.array, rows, axis=0, out=out.numpy()[:, 0], mode="clip")  # bounds checked above
        return out

    def _labels(self, pos: np.ndarray) -> torch.Tensor:
        """The batch's labels gathered on the host into (pinned) memory: a device lookup would upload the
        positions with a blocking copy."""
        out = host_buffer((len(pos),), torch.float32, self.spec.device)
        np.take(self.targets, pos, out=out.numpy())
        return out

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        spec = self.spec
        order = epoch_order(len(self.rows), spec, self.epoch)
        slices = batch_slices(len(order), spec.batch_size, spec.drop_last)
        gen = epoch_generator(spec.seed, self.epoch) if spec.train and spec.augment else None

        def make(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            pos = order[slices[i]]
            return self._gather(self.rows[pos]), self._labels(pos)

        for host, labels in prefetch(make, len(slices)):  # type: ignore[misc]
            x = host.to(spec.device, non_blocking=True)  # pinned on a GPU: the host does not wait
            yield finish(x, spec, gen, self.cfg, self.pool), labels.to(spec.device, non_blocking=True)


def build(spec: LoaderSpec) -> CacheLoader:
    return CacheLoader(spec, spec.augmentation)
