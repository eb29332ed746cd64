"""Pick the dataset a command works on: the user's ``--data DIR``, or the built-in phantom.

The phantom is made once per (size, count, seed) into the cache folder and reused, so the first
``cxr-fast bench`` pays for it and later ones do not.
"""

from __future__ import annotations

from pathlib import Path

from cxr_fast.data.nih import NihDataset, open_dataset
from cxr_fast.paths import cache_dir

# The default phantom: enough images for a meaningful AUC on the CPU, small enough to make in a minute.
PHANTOM_N = 600
PHANTOM_SIZE = 1024
PHANTOM_SEED = 0


def phantom_dir(n: int = PHANTOM_N, size: int = PHANTOM_SIZE, seed: int = PHANTOM_SEED) -> Path:
    from cxr_fast.data.phantom import PHANTOM_VERSION

    return cache_dir() / f"phantom-v{PHANTOM_VERSION}-n{n}-s{size}-seed{seed}"


def default_phantom(n: int = PHANTOM_N, size: int = PHANTOM_SIZE, seed: int = PHANTOM_SEED,
                    quiet: bool = False) -> Path:
    """The cached phantom folder, made now if absent or incomplete (``make_phantom`` resumes)."""
    from cxr_fast.data.phantom import make_phantom

    out = phantom_dir(n, size, seed)
    if not (out / ".complete").exists():
        if not quiet:
            print(f"making the built-in phantom ({n} images, {size} px) in {out} (once)")
        make_phantom(out, n=n, size=size, seed=seed, quiet=quiet)
    return out


def resolve_dataset(data: str | Path | None, quiet: bool = False) -> NihDataset:
    """Open ``data`` as an NIH-layout folder, or the built-in phantom when it is None."""
    root = Path(data) if data is not None else default_phantom(quiet=quiet)
    return open_dataset(root)
