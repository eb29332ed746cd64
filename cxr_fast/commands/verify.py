"""``cxr-fast verify [DATA] [--store DIR]``: is every image, and every store file, usable? Exit 0 if so, 1 otherwise."""

from __future__ import annotations

import argparse

from cxr_fast.schema.flags import add_run_flags, number_flag
from cxr_fast.schema.run import DATASET_FIELDS

HELP = "check that every image the metadata names decodes, and that a prepared store is intact"
DESCRIPTION = (
    "Decode every image named in DATA's metadata (any dataset cxr-fast reads: NIH's Data_Entry_2017*.csv, "
    "CheXpert's, MIMIC-CXR-JPG's, PadChest's, VinDr-CXR's or RSNA's CSVs, or a cxr-dataset.yaml) with the reader "
    "all stages use (PNG, JPEG, DICOM), under the rules "
    "prepare stores by. Colour, palette and gray-alpha images are converted to gray by luminance, 16-bit gray ones "
    "windowed to 8 bits (a PNG's sBIT, else the 0.5-99.5th percentile of the image), EXIF orientations applied "
    "(each counted by kind); missing or unreadable files (an image over 6000x6000 px is refused as a "
    "decompression bomb), names that lead outside DATA, repeated metadata rows and images of no chest X-ray's "
    "shape (a side under 32 px, the smallest resolution, or longer than 4:1) are listed by name. DATA may hold NIH's images_NNN.tar.gz archives instead of (or beside) "
    "the extracted images: their members are streamed, one archive per worker, under the same rules (only plain "
    "files named NAME or images/NAME; links, paths outside and names two members claim are refused), and an "
    "archive that is cut short or corrupt is named with the member where it broke. With --store DIR, every file of a prepared store is checked against "
    "the sha256 recorded when it was written, and every JPEG entry against the one image it is named for; each damaged "
    "file is one line saying how to rebuild it. "
    "Exit status 0 when everything is usable, 1 otherwise."
)
_SHOWN = 50  # lines per kind of problem before '... and N more (see --json)'


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="?", default=None,
                   help="dataset folder: any layout --dataset names (NIH: metadata CSV + images/, or + images_NNN.tar.gz)")
    add_run_flags(p.add_argument_group("which dataset DATA is, and how it is read"), DATASET_FIELDS)
    p.add_argument("--store", metavar="DIR", help="also (or only) check a store made by cxr-fast prepare, file by file")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    number_flag(p, "--workers", int, ge=1, le=4096, default=None, help="processes (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _print_some(lines: list[str]) -> None:
    for line in lines[:_SHOWN]:
        print(f"  {line}")
    if len(lines) > _SHOWN:
        print(f"  ... and {len(lines) - _SHOWN} more (see --json)")


def _what_was_done(report) -> str:
    """The reader's conversions, truthfully by kind: modes converted to gray, 16-bit images windowed (by the
    step of the high-bit rule that set the window), images turned upright by their EXIF orientation."""
    from cxr_fast.data.pixels import RULE

    converted = ", ".join(f"{n} {mode}" for mode, n in sorted(report.converted.items())) or "none"
    windowed = ", ".join(f"{n} by {how}" for how, n in sorted(report.windowed.items())) or "none"
    inverted = f"; DICOMs inverted (MONOCHROME1 or INVERSE): {report.inverted}" if report.inverted else ""
    return (f"converted to gray: {converted}; 16-bit windowed to 8-bit ({RULE['name']} rule)"
            f": {windowed}; turned upright by EXIF: {report.reoriented}{inverted}")


def _verify_data(args: argparse.Namespace) -> tuple[bool, dict]:
    import warnings

    from cxr_fast.data.reader import DataWarning
    from cxr_fast.data.verify import verify_dataset
    from cxr_fast.schema.flags import given
    from cxr_fast.schema.run import RunConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # the rows other commands skip are listed below instead
        dataset = RunConfig.parse(given(args, DATASET_FIELDS), "flags").read_dataset(args.data)
    print(f"{dataset.title} ({dataset.name}{', ' + dataset.version if dataset.version else ''}): "
          f"{len(dataset.metadata)} images; labels {', '.join(dataset.metadata.label_names)}"
          + "".join(f"; {n} left out ({why})" for why, n in dataset.left_out.items() if n)
          + (f"; read with {', '.join(f'{k} {v}' for k, v in dataset.policy.items())}" if dataset.policy else ""))
    report = verify_dataset(dataset, workers=args.workers, quiet=args.quiet)
    print(f"{report.n_ok}/{report.n_images} images usable in {report.root} ({_what_was_done(report)})")
    from cxr_fast.vocabulary import PAPER_RESOLUTIONS

    small = {r: n for r, n in report.smaller_than(PAPER_RESOLUTIONS).items() if n}
    if small:
        print("images with a side under a resolution, upsampled by a run at it: "
              + ", ".join(f"{n} under {r} px" for r, n in small.items()))
    _print_some([f"missing: {name}" for name in report.missing])
    _print_some([f"unreadable: {bad['image']}: {bad['reason']}" for bad in report.unreadable])
    _print_some([f"outside the data folder: {bad['image']}: {bad['reason']}" for bad in report.outside])
    _print_some([f"odd shape: {bad['image']}: {bad['reason']}" for bad in report.odd_shape])
    _print_some([f"refused in an archive: {bad['image']}: {bad['reason']}" for bad in report.refused])
    _print_some([f"broken archive: {bad['problem']}" for bad in report.archives])
    if report.duplicates:
        print(f"{len(report.duplicates)} repeated Image Index row(s) in {dataset.metadata.source} "
              "(other commands keep the first of each):")
        _print_some([f"repeated: {name}" for name in report.duplicates])
    return report.usable, report.to_json()


def _verify_store(path: str) -> tuple[bool, dict]:
    from cxr_fast.stores.manifest import open_store

    store = open_store(path, check=False)  # a manifest naming files outside the store is refused here
    files = sum(len(store.part_files(fmt, res)) for fmt, res in store.parts())
    damaged = store.damage(full=True)
    entries = store.entry_problems()  # every entry one image's, and no two images' one entry
    print(f"{files - len(damaged)}/{files} store files intact in {store.root} (sha256 checked)")
    for d in damaged:
        print(f"  {store.describe(d)}")
    _print_some([f"entry: {line}" for line in entries])
    intact = not damaged and not entries
    return intact, {"root": str(store.root), "files": files, "intact": intact,
                    "damaged": [{"file": str(d.path), "reason": d.reason,
                                 "rebuild": store.rebuild_hint(d.fmt, d.res)} for d in damaged],
                    "entries": entries}


def run(args: argparse.Namespace) -> int:
    from cxr_fast.errors import CxrError
    from cxr_fast.io import write_json

    if args.data is None and args.store is None:
        raise CxrError("give a data folder, --store DIR, or both")
    ok, out = True, {}
    if args.data is not None:
        ok, out = _verify_data(args)
    if args.store is not None:
        store_ok, out["store"] = _verify_store(args.store)
        ok = ok and store_ok
    if args.json:
        write_json(args.json, out)
        print(f"report written to {args.json}")
    return 0 if ok else 1
