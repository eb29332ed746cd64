"""Loader backends, one module each, behind the contract in ``cxr_fast.loaders.base``."""

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


def build_loader(name: str, spec: "object"):
    """Build backend ``name`` ('auto' = the first available in preference order) for ``spec``."""
    if name == "auto":
        for candidate, (ok, _) in availability().items():
            if ok:
                return backend(candidate).build(spec)
        raise CxrError("no loader backend is available")
    ok, reason = backend(name).available()
    if not ok:
        raise CxrError(f"loader {name!r} cannot run here: {reason}")
    return backend(name).build(spec)
