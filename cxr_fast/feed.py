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


def with_store(name: str, spec: LoaderSpec) -> LoaderSpec:
    """``spec`` naming a store that holds what backend ``name`` reads: ``spec.store`` extended if it lacks
    it, else one in the cache folder keyed by the images (``stores.prepare.ensure_store``)."""
    from cxr_fast.stores.prepare import ensure_store

    from cxr_fast.stores import jpeg

    fmt = backend(name).STORE_FORMAT
    if fmt is None:
        return spec
    store = ensure_store(spec.dataset, spec.image_ids, spec.targets, fmt, spec.res if fmt != jpeg.FORMAT else None,
                         store=spec.store, workers=spec.num_workers)
    return dataclasses.replace(spec, store=store.root)


def make_loader(name: str, spec: LoaderSpec) -> Any:
    """Backend ``name`` for ``spec``, its store prepared first."""
    name = pick_backend(name)
    return backend(name).build(with_store(name, spec))
