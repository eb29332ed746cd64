"""Feed a run: the store a loader backend reads, made when missing (decode once), then the backend.

Above both ``cxr_fast.stores.prepare`` (which writes stores) and ``cxr_fast.loaders`` (which only read them), so
neither depends on the other. ``train``, ``lr-find`` and ``bench`` build every loader through here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cxr_fast.errors import CxrError
from cxr_fast.loaders import BACKENDS, backend
from cxr_fast.loaders.base import LoaderSpec


def pick_backend(name: str) -> str:
    """``name``, checked available here. ``auto`` is decided before a loader is made, by the one rule that
    weighs memory too (``cost.fit.choose_loader``), so it never reaches here."""
    if name not in BACKENDS:
        raise CxrError(f"unknown loader {name!r}; choose from {', '.join(BACKENDS)}")
    ok, reason = backend(name).available()
    if not ok:
        raise CxrError(f"loader {name!r} cannot run here: {reason}")
    return name


def store_for(name: str, dataset: Any, image_ids: Any, targets: Any, res: int, store: Any = None,
              workers: int | None = None, info: dict | None = None) -> Any:
    """The store backend ``name`` reads, holding these images (made or extended now), or None for a backend
    that reads the source files: ``store`` when given, else one in the cache folder keyed by the images
    (``stores.prepare.ensure_store``). A run asks once for all its images, train and validation, so it
    never makes a store that one of its parts cannot use (``train.parts.run_store``)."""
    from cxr_fast.stores.prepare import ensure_store

    from cxr_fast.stores import jpeg

    fmt = backend(pick_backend(name)).STORE_FORMAT
    if fmt is None:
        return None
    return ensure_store(dataset, image_ids, targets, fmt, res if fmt != jpeg.FORMAT else None, store=store,
                        workers=workers, info=info)


def with_store(name: str, spec: LoaderSpec) -> LoaderSpec:
    """``spec`` naming a store that holds what backend ``name`` reads (``store_for`` of its images)."""
    store = store_for(name, spec.dataset, spec.image_ids, spec.targets, spec.res, spec.store, spec.num_workers)
    return spec if store is None else dataclasses.replace(spec, store=store.root)


def make_loader(name: str, spec: LoaderSpec) -> Any:
    """Backend ``name`` for ``spec``, its store prepared first."""
    name = pick_backend(name)
    return backend(name).build(with_store(name, spec))
