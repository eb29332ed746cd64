"""Disk footprint of the NIH ChestX-ray14 stores for the paper's 8 labels: one store per label (before) against
one store per dataset (after, issue 20 part 1).

Why: a per-label store holds that label's 20,000-image subsample, so 8 labels cost the sum of the subsamples;
a dataset store decodes each image once, so it costs their union. The counts come from the real metadata (the
paper's sampling, seed 0); the ``cache`` bytes are exact (a ``.npy`` header plus N x res x res uint8 per
resolution, as ``stores/cache.py`` writes them). NIH's pixels are not here, so the JPEG store (source-size
JPEGs, 1024 px for NIH) is estimated from the mean bytes per image of a JPEG store made from the phantom.
GB = 10^9 bytes. Run: ``python -m cxr_fast.bench.footprint > results/stores/footprint.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import tempfile
from pathlib import Path

import numpy as np

from cxr_fast.data.labels import PAPER_LABELS
from cxr_fast.data.sampling import subsample
from cxr_fast.data.sets.nih import read_metadata
from cxr_fast.paths import BUNDLED_METADATA
from cxr_fast.vocabulary import PAPER_RESOLUTIONS

COMMAND = "python -m cxr_fast.bench.footprint > results/stores/footprint.md"
GB = 1e9


def subsample_sizes(metadata: Path, size: int = 20_000, seed: int = 0) -> tuple[dict[str, int], int]:
    """Each paper label's subsample size, and the size of their union (distinct images)."""
    meta = read_metadata(metadata)
    subs = {label: subsample(meta, label, size=size, seed=seed).image_ids for label in PAPER_LABELS}
    return {k: len(v) for k, v in subs.items()}, len(np.unique(np.concatenate(list(subs.values()))))


def npy_bytes(n: int, res: int) -> int:
    """Size of ``cache/<res>.npy`` for ``n`` images: the header ``open_memmap`` writes (version 1.0, padded to
    64 bytes) plus one byte per pixel."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (n, res, res)})
    return buf.tell() + n * res * res


def phantom_jpeg_bytes(n: int = 50, size: int = 1024) -> float:
    """Mean bytes per image of a phantom's JPEG store (the ``jpeg/`` folder, list included), default quality."""
    from cxr_fast.data.phantom import make_phantom
    from cxr_fast.data.sets.nih import read_nih_folder
    from cxr_fast.stores.prepare import PrepareConfig, prepare_store

    with tempfile.TemporaryDirectory() as tmp:
        src = make_phantom(Path(tmp) / "phantom", n=n, size=size, quiet=True)
        ds = read_nih_folder(src)
        ids = ds.metadata.image_ids
        prepare_store(ds, ids, None, Path(tmp) / "store", PrepareConfig(formats=("jpeg",), quiet=True))
        return sum(p.stat().st_size for p in (Path(tmp) / "store" / "jpeg").iterdir()) / len(ids)


def _gb(b: float) -> str:
    return f"{b / GB:,.2f}"


def table(sizes: dict[str, int], union: int, jpeg_per_image: float) -> list[str]:
    """The markdown rows: images, cache per resolution and total, JPEG, all; before, after, after/before."""
    summed = sum(sizes.values())
    rows = [("images (sum of subsamples / union)", f"{summed:,}", f"{union:,}", union / summed)]
    before_cache = after_cache = 0
    for res in PAPER_RESOLUTIONS:
        b = sum(npy_bytes(n, res) for n in sizes.values())  # one array per label store
        a = npy_bytes(union, res)
        before_cache, after_cache = before_cache + b, after_cache + a
        rows.append((f"cache {res} px, GB", _gb(b), _gb(a), a / b))
    rows.append(("**cache, all nine resolutions, GB**", _gb(before_cache), _gb(after_cache),
                 after_cache / before_cache))
    bj, aj = summed * jpeg_per_image, union * jpeg_per_image
    rows.append(("JPEG at source size (1024 px), GB, phantom-measured", _gb(bj), _gb(aj), aj / bj))
    rows.append(("**cache + JPEG, GB**", _gb(before_cache + bj), _gb(after_cache + aj),
                 (after_cache + aj) / (before_cache + bj)))
    out = ["| | before: 8 per-label stores | after: 1 NIH store | after / before |", "| --- | ---: | ---: | ---: |"]
    out += [f"| {name} | {b} | {a} | {r:.3f} |" for name, b, a, r in rows]
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--metadata", type=Path, default=BUNDLED_METADATA, help="Data_Entry_2017*.csv[.gz]")
    p.add_argument("--phantom-n", type=int, default=50, help="phantom images for the JPEG estimate")
    args = p.parse_args(argv)
    sizes, union = subsample_sizes(args.metadata)
    jpeg = phantom_jpeg_bytes(args.phantom_n)
    sha = hashlib.sha256(args.metadata.read_bytes()).hexdigest()[:12]
    lines = [f"Made by `{COMMAND}` (from the repository root).", "",
             "# NIH ChestX-ray14 store footprint, paper's 8 labels: per-label stores vs one dataset store", "",
             (f"Metadata: `{args.metadata.name}` (sha256 {sha}...), the real NIH file. Subsamples: "
             f"`data.sampling.subsample`, size 20,000, seed 0, one per label "
             f"({', '.join(f'{k} {v:,}' for k, v in sizes.items())})."), "",
             *table(sizes, union, jpeg), "",
             (f"GB = 10^9 bytes. Cache rows are exact file sizes (`.npy` header + N x res x res uint8). The JPEG row is "
             f"an estimate: {jpeg:,.0f} bytes per image, the mean of a JPEG store (quality 95) of "
             f"{args.phantom_n} phantom images at 1024 px (`make_phantom`), not measured on real NIH pixels; the real "
             f"set's lossless PNGs average about 375,000 bytes (42 GB / 112,120), so it probably overestimates. "
             f"Manifests and the lock file (kB to MB) are left out.")]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
