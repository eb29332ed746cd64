"""Which of a study's runs train together as one packed step (``pack: auto|1|K``, ``--pack``).

Cells pack when every setting but the ``per_model`` ones agrees (``train.packed_run.pack_key``: one architecture,
resolution, recipe, schedule and device) and their subsamples hold as many training images, so each step takes
K batches of one size. Within such a group, in config order (a label's seeds next to each other, then the next
label), ``pack: K`` makes jobs of at most K cells, and ``auto`` of as many as fit the device's memory, at most
``PACK_AUTO_MAX`` (the fewest jobs, as even as possible: ``vocabulary.pack_chunks``); ``1`` trains every cell alone, as a study did before packing. A compiled run is never
packed (``compile`` and packing are refused together); the study says so, once.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from cxr_fast.errors import CxrError
from cxr_fast.study.grid import Cell
from cxr_fast.units import GIB
from cxr_fast.vocabulary import AUTO, PACK_AUTO_MAX, pack_chunks


def packed_bytes(cell: Cell, k: int) -> int:
    """Device memory of ``k`` of this cell's models in one step: k predicted training steps (weights, optimizer
    state, activations at the cell's batch: ``cost.memcache``) and k resident splits when the loader is resident."""
    from cxr_fast.cost.memcache import memory_profile
    from cxr_fast.cost.memory import normalize_precision
    from cxr_fast.step import device_precision, resolve_device

    c = cell.config
    precision = normalize_precision(device_precision(c.precision, resolve_device(c.device)))
    step = memory_profile(c.arch, c.res, precision, c.optimizer, c.channels_last).predicted_bytes(c.batch_size)
    split = int(c.subsample_size) * c.res * c.res if c.loader == "resident" else 0
    return k * (step + split)


def device_capacity(cell: Cell) -> int | None:
    """Bytes of the cell's CUDA device when this process trains on one; None on a CPU (no limit is checked)."""
    import torch

    from cxr_fast.step import resolve_device

    device = resolve_device(cell.config.device)
    return torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None


def pack_jobs(cells: Sequence[Cell], pack: str | int, train_sizes: dict[str, int],
              capacity: Callable[[Cell], int | None] = device_capacity) -> tuple[list[list[Cell]], list[str]]:
    """The cells to run as jobs (each a list of cells trained as one packed step; a list of one is a run alone),
    and what a user should know about them (a line each). ``train_sizes``: each cell's training images."""
    from cxr_fast.train.packed_run import pack_key

    if pack == 1:
        return [[c] for c in cells], []
    groups: dict[tuple[Any, ...], list[Cell]] = {}
    notes: list[str] = []
    for cell in cells:
        groups.setdefault((pack_key(cell.config), train_sizes[cell.cell_id]), []).append(cell)
    jobs: list[list[Cell]] = []
    for group in groups.values():
        first = group[0]
        if first.config.compile:
            jobs += [[c] for c in group]
            notes.append(f"{len(group)} compiled run(s) of {first.arch} at {first.res} px train alone: packing and "
                         "compile are not combined (use graphs)")
            continue
        k = _choose(first, len(group), pack, capacity(first))
        jobs += pack_chunks(group, k)
    return jobs, notes


def _choose(cell: Cell, n: int, pack: str | int, capacity: int | None) -> int:
    """K for a group of ``n`` packable cells: a number as given (at most ``n``), refused when it would not fit;
    auto the most that fit, at most ``PACK_AUTO_MAX``."""
    fits = n if capacity is None else next((k for k in range(n, 0, -1) if packed_bytes(cell, k) <= capacity), 1)
    if pack == AUTO:
        return max(1, min(fits, PACK_AUTO_MAX))
    k = min(int(pack), n)
    if k > fits:
        raise CxrError(f"pack {pack}: {k} {cell.arch} models at {cell.res} px, batch {cell.config.batch_size}, need "
                       f"about {packed_bytes(cell, k) / GIB:.1f} GiB of the device's {capacity / GIB:.1f} GiB; at "
                       f"most {fits} fit: use pack auto or {fits}")
    return k


def job_label(cells: Sequence[Cell]) -> str:
    """A packed job's name in messages: its first cell and how many more."""
    return cells[0].cell_id + (f" (+{len(cells) - 1} packed)" if len(cells) > 1 else "")
