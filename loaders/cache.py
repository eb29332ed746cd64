"""``cache``: the prepared uint8 array, memory-mapped, batch by batch to the device, augmented there.

Per batch the only CPU work is a gather of ``batch x res x res`` bytes from the page cache (done
one batch ahead in a thread); pinned memory makes the copy to a GPU asynchronous; conversion to
float and the paper's augmentation run on the device (``cxr_fast.augment``). The store is
``spec.store`` or one made on demand in the cache folder (``cxr_fast.prepare.ensure_store``).

Also home of what the array-backed backends share (``resident``, ``ffcv``): which store rows a spec
means, the epoch order, and the batch finishing step.
"""

from __future__ import annotations

import queue
import threading
import warnings
from typing import Callable, Iterator

import numpy as np
import torch

from cxr_fast.augment import AugmentConfig, OutputPool, augment, cpu_path, epoch_generator, to_float
from cxr_fast.loaders.base import LoaderSpec
from cxr_fast.prepare import Store, ensure_store

NAME = "cache"


def available() -> tuple[bool, str]:
    where = "the GPU" if torch.cuda.is_available() else cpu_path()
    return True, f"memory-mapped uint8 store, augmentation by {where}"


def open_for(spec: LoaderSpec, fmt: str) -> Store:
    """The store holding ``fmt`` at ``spec.res`` for the spec's images, made now if missing.

    Opening runs the store's cheap check (sizes, ``.npy`` headers, the sha256 of files changed since they
    were written): a damaged user store is one error line naming the file and how to rebuild it."""
    return ensure_store(spec.dataset, spec.image_ids, spec.targets, fmt, spec.res if fmt != "jpeg" else None,
                        store=spec.store, workers=spec.num_workers)


def rows_for(spec: LoaderSpec, store: Store) -> tuple[np.ndarray, np.ndarray]:
    """Store rows and labels of the spec's images, without the ones prepare could not read (warned)."""
    rows, keep = store.positions(spec.image_ids)
    if not keep.all():
        names = [str(n) for n, k in zip(spec.image_ids, keep) if not k]
        warnings.warn(f"{len(names)} unreadable image(s) left out of the batches (first: {names[0]}); "
                      "see the store manifest", stacklevel=3)
    return rows[keep], np.asarray(spec.targets, dtype=np.float32)[keep]


def epoch_order(n: int, spec: LoaderSpec, epoch: int) -> np.ndarray:
    """Positions in epoch order: a seeded permutation per epoch in train mode, identity in eval."""
    if not spec.train:
        return np.arange(n)
    return np.random.default_rng((spec.seed, epoch)).permutation(n)


def batch_slices(n: int, batch_size: int, drop_last: bool) -> list[slice]:
    stop = (n // batch_size) * batch_size if drop_last else n
    return [slice(i, min(i + batch_size, stop)) for i in range(0, stop, batch_size)]


def finish(x: torch.Tensor, spec: LoaderSpec, generator: torch.Generator | None,
           cfg: AugmentConfig = AugmentConfig(), pool: OutputPool | None = None,
           rows: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 ``N x 1 x H x W`` on the device (or ``x[rows]``) -> float [0, 1], augmented in train mode,
    channels-last."""
    if generator is not None:
        x = augment(x, generator, cfg, pool, rows)
    else:
        x = to_float(x if rows is None else x.index_select(0, rows))
    return x.contiguous(memory_format=torch.channels_last if spec.channels_last else torch.contiguous_format)


def n_batches(n: int, spec: LoaderSpec) -> int:
    return n // spec.batch_size if spec.drop_last else -(-n // spec.batch_size)


def prefetch(make: Callable[[int], object], count: int, ahead: int = 2) -> Iterator[object]:
    """``make(0..count-1)`` in a background thread, ``ahead`` items in advance (numpy and torch copies
    release the GIL, so the gather overlaps the device work)."""
    q: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def worker() -> None:
        try:
            for i in range(count):
                if stop.is_set():
                    return
                q.put((True, make(i)))
        except BaseException as exc:  # handed to the consumer, raised there
            q.put((False, exc))

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        for _ in range(count):
            ok, item = q.get()
            if not ok:
                raise item  # type: ignore[misc]
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


class CacheLoader:
    def __init__(self, spec: LoaderSpec, cfg: AugmentConfig = AugmentConfig()) -> None:
        self.spec = spec
        self.cfg = cfg
        self.store = open_for(spec, "cache")
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
