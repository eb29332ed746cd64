"""cxr-fast: the chest X-ray image-resolution study, made fast.

From Python (``cxr_fast.api``, loaded on first use so ``import cxr_fast`` stays light)::

    import cxr_fast
    metrics = cxr_fast.fit(label="Nodule", res=64, epochs=1, init="random")   # one run, on the phantom
    cxr_fast.run_study("configs/quick.yaml", out="studies/quick")               # a grid, resumable
    rows = cxr_fast.results("studies/quick")                                   # pandas.DataFrame(rows)

``open_dataset``, ``prepare``, ``loader``, ``fit``, ``run_study``, ``results`` and ``RunConfig`` (the settings
every call and command takes). The packages: ``schema`` (run settings), ``data``, ``stores``, ``loaders``,
``cost`` (what a run will cost), ``train``, ``study``, ``report``, ``bench`` (what a machine measures) and
``commands`` (the ``cxr-fast`` command); DESIGN.md draws their layers.
"""

from __future__ import annotations

from typing import Any

from cxr_fast.version import __version__

_FRONT_DOOR = ("open_dataset", "prepare", "loader", "fit", "evaluate", "run_study", "results")
__all__ = [*_FRONT_DOOR, "RunConfig", "__version__"]


def __getattr__(name: str) -> Any:
    """The front door's calls, imported when first asked for (PEP 562)."""
    if name in _FRONT_DOOR:
        from cxr_fast import api

        return getattr(api, name)
    if name == "RunConfig":
        from cxr_fast.schema.run import RunConfig

        return RunConfig
    raise AttributeError(f"module 'cxr_fast' has no attribute {name!r}")
