"""Pick the dataset a command works on: the user's ``--data DIR``, or the built-in phantom.

The phantom is made once per setting (count, size, seed, enrichment and its control settings: contrast,
edge, noise, null) into the cache folder and reused, so the first ``cxr-fast bench`` pays for it and later
ones do not.
"""

from __future__ import annotations

from pathlib import Path

from cxr_fast.data.conspicuity import Conspicuity, conspicuity
from cxr_fast.data.sets import read_dataset
from cxr_fast.data.sets.base import Dataset, DatasetOptions
from cxr_fast.data.phantom import check_phantom_numbers
from cxr_fast.errors import CxrError
from cxr_fast.paths import cache_dir
from cxr_fast.vocabulary import AUTO

# The default phantom: enough images for a meaningful AUC on the CPU, small enough to make in a minute.
PHANTOM_N = 600
PHANTOM_SIZE = 1024
PHANTOM_SEED = 0
PHANTOM = "phantom"


def phantom_dir(n: int = PHANTOM_N, size: int = PHANTOM_SIZE, seed: int = PHANTOM_SEED,
                enrich: tuple[str, ...] = (), enrich_fraction: float = 0.3, look: Conspicuity | None = None,
                only: tuple[str, ...] = ()) -> Path:
    """The cache folder of one phantom: every setting that changes its pixels or labels is in the name."""
    from cxr_fast.data.labels import canonical_label
    from cxr_fast.data.phantom import PHANTOM_VERSION

    enrich = tuple(canonical_label(label) for label in enrich)  # as default_phantom makes it: one name per phantom
    only = tuple(canonical_label(label) for label in only)
    tag = f"-enrich-{'+'.join(enrich)}-{enrich_fraction:g}" if enrich else ""
    tag += f"-only-{'+'.join(only)}" if only else ""
    return cache_dir() / f"phantom-v{PHANTOM_VERSION}-n{n}-s{size}-seed{seed}{tag}-{(look or Conspicuity()).tag()}"


def default_phantom(n: int = PHANTOM_N, size: int = PHANTOM_SIZE, seed: int = PHANTOM_SEED,
                    quiet: bool = False, enrich: tuple[str, ...] = (), enrich_fraction: float = 0.3,
                    look: Conspicuity | None = None, only: tuple[str, ...] = ()) -> Path:
    """The cached phantom folder, made now if absent or incomplete (``make_phantom`` resumes)."""
    from cxr_fast.data.labels import canonical_label
    from cxr_fast.data.phantom import make_phantom

    enrich = tuple(canonical_label(label) for label in enrich)
    only = tuple(canonical_label(label) for label in only)
    out = phantom_dir(n, size, seed, enrich, enrich_fraction, look, only)
    if not (out / ".complete").exists():
        if not quiet:
            print(f"making the built-in phantom ({n} images, {size} px) in {out} (once)")
        make_phantom(out, n=n, size=size, seed=seed, quiet=quiet, enrich=enrich, enrich_fraction=enrich_fraction,
                     look=look, only=only)
    return out


def is_phantom_spec(data: str | Path | None) -> bool:
    return data is None or str(data) == PHANTOM or str(data).startswith(PHANTOM + ":")


LOOK_KEYS = ("contrast", "edge", "noise", "null")  # the control settings (cxr_fast.data.conspicuity)
SPEC_KEYS = ("n", "size", "seed", "enrich", "fraction", "only") + LOOK_KEYS


def parse_phantom_spec(text: str) -> dict:
    """``phantom:n=1000,size=512,enrich=Nodule+Mass,fraction=0.5,only=Nodule+Mass,contrast=40,null=0.3`` ->
    ``default_phantom`` keywords (the control settings as one ``look``).

    Lets a config or ``--data`` ask for a particular built-in phantom (made once into the cache) by name.
    """
    kwargs: dict = {}
    look: dict[str, float] = {}
    body = text[len(PHANTOM) + 1:] if text.startswith(PHANTOM + ":") else ""
    for item in filter(None, (x.strip() for x in body.split(","))):
        key, _, value = item.partition("=")
        try:
            if key in ("n", "size", "seed"):
                kwargs[key] = int(value)
            elif key in ("enrich", "only"):
                kwargs[key] = tuple(x for x in value.split("+") if x)
            elif key == "fraction":
                kwargs["enrich_fraction"] = float(value)
            elif key in LOOK_KEYS:
                look[key] = float(value)
            else:
                raise CxrError(f"unknown phantom setting {key!r} in {text!r}; known: {', '.join(SPEC_KEYS)}")
        except ValueError:
            raise CxrError(f"bad value {value!r} for {key} in {text!r}") from None
    numbers = {k: kwargs[k] for k in ("n", "size", "seed", "enrich_fraction") if k in kwargs}
    check_phantom_numbers(f"{text}: ", **numbers)  # before a folder is named after them
    if look:
        kwargs["look"] = conspicuity(**look)
    return kwargs


def data_root(data: str | Path | None, quiet: bool = False) -> Path:
    """The folder ``data`` names: itself, or a built-in phantom (None, ``phantom`` or ``phantom:...``).

    (``--store`` with no ``--data`` names the folder the store was made from: ``store.data_of`` finds it
    before this is called, so no phantom is made for a store that could never match it.)
    """
    if is_phantom_spec(data):
        return default_phantom(quiet=quiet, **parse_phantom_spec(str(data or PHANTOM)))
    return Path(data)


def data_folder(data: str | Path | None) -> Path:
    """The folder ``data`` names on this machine, made or not: where a run here would read it (a phantom spec
    names a folder in this machine's cache). Lets a cluster check that every node sees the same folder."""
    if is_phantom_spec(data):
        return phantom_dir(**parse_phantom_spec(str(data or PHANTOM)))
    return Path(data)


def resolve_dataset(data: str | Path | None, quiet: bool = False, dataset: str = AUTO,
                    options: DatasetOptions = DatasetOptions()) -> Dataset:
    """Open ``data`` as ``dataset`` (``auto``: its layout detected) under ``options``, or a built-in phantom (None,
    ``phantom`` or ``phantom:n=...``, written in the NIH layout)."""
    return read_dataset(data_root(data, quiet=quiet), dataset, options)
