"""The datasets cxr-fast reads, one module each on one base (``base.Dataset``), like torchvision's datasets.

``read_dataset(root, name)`` opens a folder as the named dataset, or, with ``auto``, as the one whose layout it
holds (``detect``): a folder that matches none or several is one line saying what each expects.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

from cxr_fast.data.sets.base import Dataset, DatasetOptions
from cxr_fast.errors import CxrError
from cxr_fast.vocabulary import AUTO, DATASETS

# name -> module (in this package) holding its ``Dataset`` subclass, as ``DATASET_CLASS``.
_MODULES: dict[str, str] = {
    "nih": "nih", "chexpert": "chexpert", "mimic": "mimic", "padchest": "padchest", "vindr": "vindr",
    "rsna": "rsna", "csv": "table",
}
assert tuple(_MODULES) == DATASETS


def dataset_class(name: str) -> type[Dataset]:
    """The class of a dataset by its name (``vocabulary.DATASETS``)."""
    if name not in _MODULES:
        raise CxrError(f"unknown dataset {name!r}; choose one of {', '.join((AUTO, *DATASETS))}")
    return import_module(f"{__name__}.{_MODULES[name]}").DATASET_CLASS


def detect(root: str | Path) -> str:
    """The one dataset whose layout ``root`` holds; none or several is an error that says what each expects."""
    r = Path(root)
    if not r.is_dir():
        raise CxrError(f"data folder not found: {r}")
    found = [name for name in DATASETS if dataset_class(name).detect(r)]
    if len(found) == 1:
        return found[0]
    if not found:
        expected = "; ".join(f"{n}: {dataset_class(n).layout()}" for n in DATASETS)
        raise CxrError(f"{r}: no dataset layout found (expected one of: {expected})")
    raise CxrError(f"{r} holds the layouts of {' and '.join(found)}; say which with --dataset")


def check_layout(root: str | Path, name: str = AUTO) -> type[Dataset]:
    """The class of the dataset ``root`` holds: ``name``'s, once its layout is found there, or the detected one."""
    r = Path(root)
    if not r.is_dir():
        raise CxrError(f"data folder not found: {r}")
    cls = dataset_class(detect(r) if name == AUTO else name)
    if name != AUTO and not cls.detect(r):
        raise CxrError(f"{r} is not in the {cls.title} layout (expected {cls.layout()})")
    return cls


def read_dataset(root: str | Path, name: str = AUTO, options: DatasetOptions = DatasetOptions()) -> Dataset:
    """Open ``root`` as dataset ``name`` (``auto``: detected), read under ``options``."""
    return check_layout(root, name).read(Path(root), options)
