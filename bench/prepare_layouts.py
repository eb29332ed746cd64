"""``prepare`` throughput per dataset layout: the same phantom images decoded once into a uint8 store, from each
layout's own files (NIH's 8-bit PNGs, PadChest's 16-bit PNGs, CheXpert's JPEGs, VinDr-CXR's DICOMs in three
transfer syntaxes, 12 and 16 bits, MONOCHROME1 and 2). Says what decoding a format costs before a study pays it
for 100,000 images. ``python -m cxr_fast.bench.prepare_layouts --res 64 --n 200 --size 1024``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

from cxr_fast.data.layouts import write_layout
from cxr_fast.stores.prepare import PrepareConfig, prepare_store


def prepare_rate(layout: str, root: Path, res: int, n: int, size: int, workers: int) -> dict:
    """Images per second of one ``prepare`` (cache format at ``res``) over every image of the layout's fixture."""
    data = write_layout(root / layout, layout, quiet=True, n=n, size=size, seed=0)
    ids = data.metadata.image_ids.tolist()
    started = time.perf_counter()
    store = prepare_store(data, ids, None, root / f"store-{layout}",
                          PrepareConfig(resolutions=(res,), formats=("cache",), workers=workers, quiet=True))
    seconds = time.perf_counter() - started
    return {"layout": layout, "images": len(ids), "bad": len(store.bad), "seconds": seconds,
            "images_per_s": len(ids) / seconds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--layouts", default="nih,padchest,chexpert,vindr")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    root = Path(tempfile.mkdtemp())
    print(f"| layout | images | seconds | images/s (prepare, cache at {args.res} px, {args.workers} workers) |")
    print("| --- | --- | --- | --- |")
    for layout in (x.strip() for x in args.layouts.split(",") if x.strip()):
        r = prepare_rate(layout, root, args.res, args.n, args.size, args.workers)
        bad = f" ({r['bad']} unreadable)" if r["bad"] else ""
        print(f"| {r['layout']} | {r['images']}{bad} | {r['seconds']:.1f} | {r['images_per_s']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
