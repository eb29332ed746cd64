"""``cxr-fast train``: one binary classifier for one label at one resolution, the paper's recipe."""

from __future__ import annotations

import argparse
import sys

from cxr_fast.schema.flags import add_run_flags

HELP = "train and score one binary classifier (label x resolution x architecture)"
DESCRIPTION = (
    "Train one binary classifier the paper's way (recipe fastai07: fastai 0.7's head, class-weighted "
    "cross-entropy, its transforms; ImageNet init; SGD momentum 0.9, lr 5e-4, batch 8, 3 epochs) with "
    "channels-last AMP, then score it: AUC with DeLong SD over the plain view and TTA views. --init imagenet "
    "(the default) uses --weights FILE, or torchvision's ImageNet file from the torch cache, downloading it "
    "there once through torchvision's weights API when online; offline with neither it stops before any work. "
    "Writes config.yaml, log.jsonl, checkpoint.pt, predictions.npz and metrics.json to the run folder, each "
    "recording the init, the weights' sha256 and the recipe. A folder that already holds a run is refused "
    "unless --resume or --overwrite. Without --data it trains on the built-in phantom. Unset flags come from "
    "--config, then the defaults. Every setting flag is declared once, in cxr_fast/schema/run.py."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="YAML", default=argparse.SUPPRESS,
                        help="settings file (see configs/train.yaml); flags override it")
    add_run_flags(parser)
    parser.add_argument("--resume", action="store_true", default=False,
                        help="continue a killed run from its checkpoint; a finished run is reused")
    parser.add_argument("--overwrite", action="store_true", default=False, help="replace the run already in --out")
    parser.add_argument("--quiet", action="store_true", default=False, help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from cxr_fast.schema.flags import given
    from cxr_fast.schema.run import load_run_config
    from cxr_fast.train import run_training
    from cxr_fast.train.record import summary_line

    cfg = load_run_config(getattr(args, "config", None), **given(args))
    m = run_training(cfg, progress=not args.quiet, resume=args.resume, overwrite=args.overwrite)
    print(summary_line(m))
    if m.get("auc_status") == "tied":
        print(f"cxr-fast train: error: every validation score is the same value, so the model ranks nothing and "
              f"no AUC exists; predictions are in {m['out']}", file=sys.stderr)
        return 1
    return 0
