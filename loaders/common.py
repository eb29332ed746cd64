"""What the store-backed backends share: which store rows a spec means, the epoch order, batch slicing,
the batch finishing step (to float, augmented on the device, channels-last), and a one-batch-ahead
prefetch thread. ``pil`` shares only ``n_batches``.
"""

from __future__ import annotations

import queue
import threading
import warnings
from typing import Callable, Iterator

import numpy as np
import torch

from cxr_fast.augment import AugmentConfig, OutputPool, augment, to_float
from cxr_fast.errors import CxrError
from cxr_fast.loaders.base import LoaderSpec
from cxr_fast.stores import jpeg
from cxr_fast.stores.manifest import Store, open_store


def open_for(spec: LoaderSpec, fmt: str) -> Store:
    """The prepared store ``spec.store``, which must hold ``fmt`` (at ``spec.res``) for the spec's images.

    Loaders only read stores; ``cxr_fast.feed.make_loader`` makes a missing one first (decode once).
    Opening runs the store's cheap check (sizes, ``.npy`` headers, the sha256 of files changed since they
    were written): a damaged store is one error line naming the file and how to rebuild it."""
    if spec.store is None:
        raise CxrError(f"the {fmt} store for these images is not prepared; build loaders with "
                       "cxr_fast.feed.make_loader, or give a store made by cxr-fast prepare (--store)")
    store = open_store(spec.store, spec.dataset)
    res = spec.res if fmt != jpeg.FORMAT else None
    if not store.has(fmt, res):
        at = f" at {res} px" if res is not None else ""
        raise CxrError(f"{spec.store} holds no {fmt}{at}; run cxr-fast prepare with --format {fmt}"
                       + (f" --res {res}" if res is not None else ""))
    store.positions(spec.image_ids)  # every asked image must be in it
    return store


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
