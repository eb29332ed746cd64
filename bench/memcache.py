"""``bench.memory.profile`` kept on disk, so a plan of the paper's grid does not recount 36 profiles each time.

Why: a DenseNet121 memory profile takes most of a second on the ``meta`` device; the plan needs one per
(architecture, resolution, precision). Entries are keyed by torch's version and read back into
``bench.memory.MemoryProfile``; a damaged or foreign cache file is ignored and rewritten.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

CACHE_NAME = "plan-memory.json"
_lock = threading.Lock()
_seen: dict[str, Any] = {}


def _path() -> Path:
    from cxr_fast.paths import cache_dir

    return cache_dir() / CACHE_NAME


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def memory_profile(arch: str, res: int, precision: str, optimizer: str = "sgd", channels_last: bool = True):
    """``bench.memory.profile(...)``, from the disk cache when it holds it."""
    import torch
    from cxr_fast.bench import memory

    key = f"torch {torch.__version__}|{arch}|{int(res)}|{memory.normalize_precision(precision)}|{optimizer}|" \
          f"cl={bool(channels_last)}"
    path = _path()
    with _lock:
        hit = _seen.get(f"{path}|{key}")
    if hit is not None:
        return hit
    fields = {f.name for f in dataclasses.fields(memory.MemoryProfile)}
    stored = _read(path).get(key)
    prof = None
    if isinstance(stored, dict) and fields <= set(stored):
        prof = memory.MemoryProfile(**{k: stored[k] for k in fields})
    if prof is None:
        prof = memory.profile(arch, int(res), precision, bool(channels_last), optimizer)
        try:
            from cxr_fast.io import write_json

            with _lock:
                write_json(path, {**_read(path), key: dataclasses.asdict(prof)})
        except OSError:
            pass  # a read-only cache only costs a recount next time
    with _lock:
        _seen[f"{path}|{key}"] = prof
    return prof
