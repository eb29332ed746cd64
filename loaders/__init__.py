"""Loader backends, one module each, behind the contract in ``cxr_fast.loaders.base``.

Backends only read: ``cxr_fast.feed.make_loader`` prepares the store a backend reads (``STORE_FORMAT``)
and builds it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from cxr_fast.errors import CxrError
from cxr_fast.vocabulary import AUTO, LOADERS

# One module per backend, named as the vocabulary names it (fastest first: the order ``auto`` tries).
BACKENDS: dict[str, str] = {name: f"cxr_fast.loaders.{name}" for name in LOADERS}


def backend(name: str) -> ModuleType:
    if name not in BACKENDS:
        raise CxrError(f"unknown loader {name!r}; choose from {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[name])


def availability() -> dict[str, tuple[bool, str]]:
    """Each backend's ``available()``, so a user sees why one is skipped."""
    out: dict[str, tuple[bool, str]] = {}
    for name in BACKENDS:
        try:
            out[name] = backend(name).available()
        except ImportError as exc:
            out[name] = (False, f"not importable: {exc}")
    return out


def store_format(name: str) -> str | None:
    """The store format backend ``name`` reads (None: it reads the images). ``auto`` chooses between the
    fastest backend and ``cache`` (``cost.fit``), which read the same format."""
    return backend(LOADERS[0] if name == AUTO else name).STORE_FORMAT
