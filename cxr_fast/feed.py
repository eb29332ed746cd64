"""Feed a run: the store a loader backend reads, made when missing (decode once), then the backend.

Above both ``cxr_fast.prepare`` (which writes stores) and ``cxr_fast.loaders`` (which only read them), so
neither depends on the other. ``train``, ``lr-find`` and ``bench`` build every loader through here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cxr_fast.errors import CxrError
from cxr_fast.loaders import availability, backend
from cxr_fast.loaders.base import LoaderSpec


def pick_backend(name: str) -> str:
    """``name``, checked available here; ``auto`` is the first available in preference order."""
    if name == "auto":
        for candidate, (ok, _) in availability().items():
            if ok:
                return candidate
        raise CxrError("no loader backend is available")
    ok, reason = backend(name).available()
    if not ok:
        raise CxrError(f"loader {name!r} cannot run here: {reason}")
    return name


GIB = 1024 ** 3


def auto_for_memory(resident_bytes: int, model_bytes: int, capacity_bytes: int) -> tuple[str, str]:
    """(backend, why) for ``auto`` on an accelerator: ``resident`` keeps the whole split on the card, so it is
    chosen only where the split fits beside the training step; otherwise ``cache`` (memory-mapped on the
    host, same pixels) instead of an out-of-memory error halfway into a study. The planner uses the same rule.
    """
    need = resident_bytes + model_bytes
    sizes = (f"split {resident_bytes / GIB:.2f} GiB + step {model_bytes / GIB:.2f} GiB predicted, "
             f"card {capacity_bytes / GIB:.1f} GiB")
    if need <= capacity_bytes:
        return "resident", f"auto: resident fits ({sizes})"
    return "cache", f"auto: cache, because the resident split does not fit beside the model ({sizes})"


def with_store(name: str, spec: LoaderSpec) -> LoaderSpec:
    """``spec`` naming a store that holds what backend ``name`` reads: ``spec.store`` extended if it lacks
    it, else one in the cache folder keyed by the images (``prepare.ensure_store``)."""
    from cxr_fast.prepare import ensure_store

    fmt = backend(name).STORE_FORMAT
    if fmt is None:
        return spec
    store = ensure_store(spec.dataset, spec.image_ids, spec.targets, fmt, spec.res if fmt != "jpeg" else None,
                         store=spec.store, workers=spec.num_workers)
    return dataclasses.replace(spec, store=store.root)


def make_loader(name: str, spec: LoaderSpec) -> Any:
    """Backend ``name`` (``auto``: the fastest available) for ``spec``, its store prepared first."""
    name = pick_backend(name)
    return backend(name).build(with_store(name, spec))
