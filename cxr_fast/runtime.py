"""Small device and loop helpers every layer shares: one copy each, so they behave alike everywhere.

- ``sync(device)``: wait for the GPU before reading a clock (a no-op on the CPU).
- ``free_memory(device)``: drop Python garbage and the CUDA allocator's cached blocks after a failed step.
- ``cycle(loader)``: endless batches, one shuffled epoch after another, for sweeps and benchmarks.
- ``keep_torch_threads()``: undo what FFCV does to torch's thread count behind the caller's back.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Any, Iterator

from cxr_fast.errors import CxrError


def sync(device: Any) -> None:
    """``torch.cuda.synchronize`` on a CUDA device, nothing elsewhere."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: Any = None) -> None:
    """Release what a failed or finished step left: Python references, then the allocator's cache."""
    import torch

    gc.collect()
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def cycle(loader: Any) -> Iterator[Any]:
    """Batches forever, advancing the loader's epoch (and so its shuffle) each time it runs out."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise CxrError("the loader yielded no batches; the dataset or batch size leaves none")
        epoch += 1


@contextlib.contextmanager
def keep_torch_threads() -> Iterator[None]:
    """FFCV 1.0.2 calls ``torch.set_num_threads(1)`` when imported (and its own count when loading):
    without this, merely asking whether FFCV is available would make the whole process single-threaded."""
    import torch

    n = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(n)
