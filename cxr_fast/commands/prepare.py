"""``cxr-fast prepare``: decode a label's subsample once into a store the fast loaders read."""

from __future__ import annotations

import argparse

from cxr_fast.schema.flags import add_run_flags, number_flag
from cxr_fast.schema.run import DATASET_FIELDS
from cxr_fast.stores import cache, jpeg
from cxr_fast.stores.manifest import FORMATS

HELP = "decode a label's subsample once into a fast store (JPEG for DALI, uint8 arrays, FFCV)"
DESCRIPTION = (
    "Decode each image of the label's paper subsample (all positives plus negatives up to --size, split "
    "train/validation) once, with the shared reader, into STORE: 'jpeg' (8-bit gray JPEG for DALI's GPU "
    "decoder), 'cache' (one memory-mapped uint8 array per resolution, antialiased bilinear resize done "
    "once), 'ffcv' (a .beton per resolution, needs FFCV). A second run resumes; unreadable images are "
    "listed by name and skipped; a store made from other files or labels is refused. Every file's sha256 is "
    "recorded; a run that finds a store checks them all and rebuilds damaged parts. Without DATA, an existing "
    "STORE's own data folder is used. DATA may hold NIH's images_NNN.tar.gz archives instead of extracted images "
    "(as cxr-fast fetch leaves it): they are streamed, one worker per archive, and decoded straight into the store, "
    "byte for byte the store the extracted folder gives, with no PNG written to disk. An archive that is cut short "
    "or corrupt is named with the member where it broke; what was decoded is kept and a rerun finishes the rest."
)


def _words(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


SUBSAMPLE = ("label", "subsample_size", "seed", "split", "val_fraction")  # what draws the subsample


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", metavar="DATA", nargs="?", default=None,
                        help="NIH-layout dataset folder, extracted or as images_NNN.tar.gz archives (default: the one "
                        "an existing STORE was made from, else the built-in phantom)")
    parser.add_argument("--out", required=True, metavar="STORE", help="store folder to create or resume")
    parser.add_argument("--res", default="all",
                        help="resolutions for cache and ffcv, comma-separated, or 'all' (the paper's nine)")
    parser.add_argument("--format", type=_words, default=[jpeg.FORMAT, cache.FORMAT], dest="formats",
                        help=f"store formats, comma-separated: {', '.join(FORMATS)}")
    # The subsample's settings are a run's (the same declaration as train's flags, --size for --subsample-size).
    add_run_flags(parser, SUBSAMPLE, flags={"subsample_size": "--size"}, defaults=True, show_defaults=False,
                  required=("label",))
    add_run_flags(parser.add_argument_group("which dataset DATA is, and how it is read"), DATASET_FIELDS)
    number_flag(parser, "--quality", int, ge=1, le=100, default=95, help="JPEG quality")
    number_flag(parser, "--workers", int, ge=1, le=4096, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--quiet", action=argparse.BooleanOptionalAction, default=False, help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from cxr_fast.errors import CxrError
    from cxr_fast.schema.flags import given
    from cxr_fast.schema.run import RunConfig
    from cxr_fast.stores.manifest import data_of
    from cxr_fast.stores.prepare import PrepareConfig, prepare_subsample
    from cxr_fast.vocabulary import parse_resolutions

    if not 1 <= args.quality <= 100:
        raise CxrError(f"--quality must be 1 to 100, got {args.quality}")
    resolutions = parse_resolutions(args.res)
    settings = RunConfig.parse(given(args, SUBSAMPLE + DATASET_FIELDS), "flags")
    dataset = settings.read_dataset(data_of(args.data, args.out), quiet=args.quiet)
    cfg = PrepareConfig(resolutions=tuple(resolutions), formats=tuple(args.formats), jpeg_quality=args.quality,
                        workers=args.workers, quiet=args.quiet)
    sub = settings.draw_subsample(dataset)
    store = prepare_subsample(dataset, sub, args.out, cfg)
    m = store.manifest
    done = ", ".join(f"{k} {v if isinstance(v, list) else ''}".strip() for k, v in m["formats"].items())
    print(f"{store.root}: {len(m['image_ids'])} images of {m['label']} ({int(sum(m['targets']))} positive); {done}")
    if store.bad:
        print(f"{len(store.bad)} image(s) could not be read and were skipped:")
        for name, reason in sorted(store.bad.items()):
            print(f"  {name}: {reason}")
        return 1
    return 0
