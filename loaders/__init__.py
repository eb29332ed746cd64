"""Loader backends, one module each, behind the contract in ``cxr_fast.loaders.base``.

Backends only read: ``cxr_fast.feed.make_loader`` prepares the store a backend reads (``STORE_FORMAT``)
and builds it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from cxr_fast.errors import CxrError

# Fastest-first preference order for ``auto``.
BACKENDS: dict[str, str] = {
    "resident": "cxr_fast.loaders.resident",
    "dali": "cxr_fast.loaders.dali",
    "cache": "cxr_fast.loaders.cache",
    "ffcv": "cxr_fast.loaders.ffcv",
    "pil": "cxr_fast.loaders.pil",
}


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
