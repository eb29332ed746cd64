"""``cost.memory.profile`` kept on disk, so a plan of the paper's grid does not recount 36 profiles each time.

Why: a DenseNet121 memory profile takes most of a second on the ``meta`` device; the plan needs one per
(architecture, resolution, precision). Entries (``cost.diskcache``) are read back into
``cost.memory.MemoryProfile``.
"""

from __future__ import annotations

import dataclasses

from cxr_fast.cost.diskcache import DiskCache

_CACHE = DiskCache("plan-memory.json", version=1)


def memory_profile(arch: str, res: int, precision: str, optimizer: str = "sgd", channels_last: bool = True):
    """``cost.memory.profile(...)``, from the disk cache when it holds it."""
    from cxr_fast.cost import memory

    key = f"{arch}|{int(res)}|{memory.normalize_precision(precision)}|{optimizer}|cl={bool(channels_last)}"
    fields = {f.name for f in dataclasses.fields(memory.MemoryProfile)}
    stored = _CACHE.get(key)
    if isinstance(stored, dict) and fields <= set(stored):
        return memory.MemoryProfile(**{k: stored[k] for k in fields})
    prof = memory.profile(arch, int(res), precision, bool(channels_last), optimizer)
    _CACHE.put(key, dataclasses.asdict(prof))
    return prof
