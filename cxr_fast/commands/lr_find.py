"""``cxr-fast lr-find``: Smith's learning-rate range test, saved as a plot and JSON."""

from __future__ import annotations

import argparse
import sys

from cxr_fast.schema.flags import add_run_flags, number_flag
from cxr_fast.schema.run import DATASET_FIELDS

HELP = "learning-rate range test (loss vs exponentially growing lr), PNG plot + JSON"
DESCRIPTION = (
    "Smith's range test, the paper's way of choosing lr 5e-4: train with an exponentially growing learning "
    "rate, smooth the loss, stop when it diverges, and suggest a learning rate (a tenth of the lowest-loss "
    "one), or none, exiting 1, where the smoothed loss falls no more than its own noise; a suggestion "
    "at the sweep's edge says so. Writes lr_find.json and lr_find.png to --out. Model and data flags mean what "
    "they mean for train."
)


# The run settings a range test uses (the rest of RunConfig does not change what it measures).
SETTINGS = ("label", "res", "arch", "recipe", "init", "weights", "weights_sha256", "batch_size", "optimizer",
            "momentum", "precision", "channels_last", "loader", "data", "store", "subsample_size", "val_fraction",
            "split", "seed", "device", "workers", *DATASET_FIELDS)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="YAML", default=argparse.SUPPRESS, help="training settings file; flags override it")
    add_run_flags(parser, SETTINGS)
    number_flag(parser, "--start-lr", gt=0, le=1e3, default=1e-7, help="first learning rate")
    number_flag(parser, "--end-lr", gt=0, le=1e3, default=10.0, help="last learning rate (above --start-lr)")
    number_flag(parser, "--num-iter", int, ge=2, le=100_000, default=100,
                help="steps at most (stops early on divergence)")
    parser.add_argument("--out", metavar="DIR", default=None, help="output folder (default runs/lr-find-<label>-<arch>-<res>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from cxr_fast.lr_find import run_lr_find
    from cxr_fast.schema.flags import given
    from cxr_fast.schema.run import load_run_config

    cfg = load_run_config(getattr(args, "config", None), **given(args, SETTINGS))
    r = run_lr_find(cfg, out=args.out, start_lr=args.start_lr, end_lr=args.end_lr, num_iter=args.num_iter,
                    progress=not args.quiet)
    steps = f"{len(r['lrs'])} steps{', stopped on divergence' if r['stopped_on_divergence'] else ''}"
    if r["suggested_lr"] is None:
        print(f"cxr-fast lr-find: error: no learning rate suggested for {r['label']} {r['arch']} {r['res']}px: "
              f"{r['no_suggestion']} ({steps}); see {r['out']}/lr_find.png", file=sys.stderr)
        return 1
    edge = f"; at the {r['edge']}" if r["edge"] else ""
    print(f"{r['label']} {r['arch']} {r['res']}px: suggested lr {r['suggested_lr']:.1e} (lowest loss at "
          f"{r['lr_min_loss']:.1e}, steepest fall at {r['lr_steepest']:.1e}; {steps}{edge}) -> {r['out']}/lr_find.png")
    return 0
