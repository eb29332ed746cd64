"""``cxr-fast synth OUT [--layout L]``: make a phantom dataset in the NIH layout, or in any dataset's layout."""

from __future__ import annotations

import argparse

from cxr_fast.schema.flags import number_flag

HELP = "make a phantom dataset (NIH layout, real label rows, synthetic pixels), or the same in another dataset's layout"
DESCRIPTION = (
    "Write OUT/Data_Entry_2017_v2020.csv and OUT/images/*.png (8-bit gray). Label rows are drawn from the real "
    "ChestX-ray14 metadata; each finding is drawn at the size radiologists boxed it (nodules 46-97 px at 1024 px), "
    "so small findings need high resolution. Nodules and masses follow the control settings (--contrast, --edge, "
    "--noise: the same at every resolution, defined in the 1024 px frame); --null adds the negative control "
    "label Null_Control to that share of images, at random, with no pixels drawn. The settings are written into "
    "OUT/.phantom.json. Deterministic for a seed; an interrupted run resumes. With --layout chexpert, mimic, "
    "padchest, vindr, rsna or csv, the same phantom (made once in the cache folder) is written in that dataset's "
    "real layout instead: its metadata files under their documented names and headers, its label names and "
    "conventions (uncertain and blank labels, laterals, radiologists' votes), its image formats (JPEG, 16-bit PNG, "
    "DICOM in several transfer syntaxes, MONOCHROME1 and 2, 12 and 16 bits): a fixture to try a layout without "
    "the data."
)


def configure(p: argparse.ArgumentParser) -> None:
    from cxr_fast.data.conspicuity import CONSPICUITY_BOUNDS, Conspicuity
    from cxr_fast.data.phantom import PHANTOM_BOUNDS

    look = Conspicuity()
    from cxr_fast.vocabulary import DATASETS

    p.add_argument("out", help="folder to write (new, empty, or an earlier phantom with the same settings)")
    p.add_argument("--layout", choices=DATASETS, default="nih", help="the dataset layout to write (default: nih)")
    number_flag(p, "--n", **PHANTOM_BOUNDS["n"], default=600, help="number of images")
    number_flag(p, "--size", **PHANTOM_BOUNDS["size"], default=1024, help="image width and height in pixels")
    number_flag(p, "--seed", **PHANTOM_BOUNDS["seed"], default=0, help="random seed (rows and pixels)")
    p.add_argument("--enrich", default="", metavar="LABELS",
                   help="comma-separated labels to over-represent (rows stay real; like the paper's enriched subsample)")
    number_flag(p, "--enrich-fraction", **PHANTOM_BOUNDS["enrich_fraction"], default=0.3, help="share of images drawn from the enriched labels")
    p.add_argument("--only", default="", metavar="LABELS",
                   help="comma-separated labels: keep only rows whose findings are all among them (and No Finding)")
    number_flag(p, "--contrast", **CONSPICUITY_BOUNDS["contrast"], default=look.contrast, metavar="GRAY",
                   help="gray levels a nodule or mass adds over its local background")
    number_flag(p, "--edge", **CONSPICUITY_BOUNDS["edge"], default=look.edge, metavar="FRACTION",
                   help="edge width of a nodule or mass, a fraction of its radius (blurred: 0.5)")
    number_flag(p, "--noise", **CONSPICUITY_BOUNDS["noise"], default=look.noise, metavar="GRAY",
                   help="SD of the quantum noise, gray levels per pixel at 1024 px")
    number_flag(p, "--null", **CONSPICUITY_BOUNDS["null"], default=look.null, metavar="SHARE",
                   help="share of images given the null control label Null_Control, with no pixels (0: none)")
    number_flag(p, "--workers", int, ge=1, le=4096, default=None, help="processes (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from cxr_fast.data.conspicuity import conspicuity
    from cxr_fast.data.phantom import make_phantom

    look = conspicuity(contrast=args.contrast, edge=args.edge, noise=args.noise, null=args.null)
    enrich = tuple(x.strip() for x in args.enrich.split(",") if x.strip())
    only = tuple(x.strip() for x in args.only.split(",") if x.strip())
    if args.layout != "nih":
        from cxr_fast.data.layouts import write_layout

        made = write_layout(args.out, args.layout, n=args.n, size=args.size, seed=args.seed, quiet=args.quiet,
                            enrich=enrich, enrich_fraction=args.enrich_fraction, look=look, only=only)
        print(f"phantom in the {made.title} layout: {len(made.metadata)} images of {args.size} px in {made.root} "
              f"({look.tag()}); labels {', '.join(made.metadata.label_names)}")
        return 0
    out = make_phantom(args.out, n=args.n, size=args.size, seed=args.seed, workers=args.workers, quiet=args.quiet,
                       enrich=enrich, enrich_fraction=args.enrich_fraction, look=look, only=only)
    print(f"phantom: {args.n} images of {args.size} px in {out} ({look.tag()})")
    return 0
