"""``cxr-fast synth OUT``: make a phantom dataset in the NIH layout."""

from __future__ import annotations

import argparse

HELP = "make a phantom ChestX-ray14 dataset (NIH layout, real label rows, synthetic pixels)"
DESCRIPTION = (
    "Write OUT/Data_Entry_2017_v2020.csv and OUT/images/*.png (8-bit gray). Label rows are drawn from the real "
    "ChestX-ray14 metadata; each finding is drawn at the size radiologists boxed it (nodules 46-98 px at 1024 px), "
    "so small findings need high resolution. Deterministic for a seed; an interrupted run resumes."
)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="folder to write (new, empty, or an earlier phantom with the same settings)")
    p.add_argument("--n", type=int, default=600, help="number of images")
    p.add_argument("--size", type=int, default=1024, help="image width and height in pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed (rows and pixels)")
    p.add_argument("--enrich", default="", metavar="LABELS",
                   help="comma-separated labels to over-represent (rows stay real; like the paper's enriched subsample)")
    p.add_argument("--enrich-fraction", type=float, default=0.3, help="share of images drawn from the enriched labels")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from cxr_fast.data.phantom import make_phantom

    enrich = tuple(x.strip() for x in args.enrich.split(",") if x.strip())
    out = make_phantom(args.out, n=args.n, size=args.size, seed=args.seed, workers=args.workers, quiet=args.quiet,
                       enrich=enrich, enrich_fraction=args.enrich_fraction)
    print(f"phantom: {args.n} images of {args.size} px in {out}")
    return 0
