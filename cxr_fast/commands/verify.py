"""``cxr-fast verify DATA``: is every image usable? Exit 0 if so, 1 otherwise."""

from __future__ import annotations

import argparse

HELP = "check that every image the metadata names decodes (missing, truncated, RGBA, 16-bit)"
DESCRIPTION = (
    "Decode every image named in DATA's Data_Entry_2017*.csv with the reader all stages use. RGBA images are "
    "converted to gray by luminance and 16-bit ones scaled to 8 bits (both counted); missing or unreadable files "
    "are listed by name. Exit status 0 when every image is usable, 1 otherwise."
)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="dataset folder in the NIH layout (metadata CSV + images/)")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from cxr_fast.data.nih import open_dataset
    from cxr_fast.data.verify import verify_dataset
    from cxr_fast.io import write_json

    report = verify_dataset(open_dataset(args.data), workers=args.workers, quiet=args.quiet)
    console = Console()
    console.print(
        f"{report.n_ok}/{report.n_images} images usable in {report.root} "
        f"({report.rgba_converted} RGBA converted to gray, {report.scaled_16bit} 16-bit scaled to 8-bit)"
    )
    for name in report.missing[:50]:
        console.print(f"  missing: {name}")
    for bad in report.unreadable[:50]:
        console.print(f"  unreadable: {bad['image']}: {bad['reason']}")
    hidden = len(report.missing) + len(report.unreadable) - min(50, len(report.missing)) - min(50, len(report.unreadable))
    if hidden > 0:
        console.print(f"  ... and {hidden} more (see --json)")
    if args.json:
        write_json(args.json, report.to_json())
        console.print(f"report written to {args.json}")
    return 0 if report.usable else 1
