"""``cxr-fast evaluate RUN --data OTHER``: score a trained run on another dataset (external validation)."""

from __future__ import annotations

import argparse

from cxr_fast.schema.flags import add_run_flags, number_flag
from cxr_fast.schema.run import DATASET_FIELDS

HELP = "score a trained run on another dataset's images of the same finding (external validation)"
DESCRIPTION = (
    "Load RUN's model (its last checkpoint) and score it, at RUN's resolution and with its test-time augmentation, "
    "on OTHER's images of RUN's label: all positives plus seeded random negatives up to --size (the run's sampling), "
    "every one a test image. Prints the AUC with its DeLong SD and writes RUN/external-<dataset>.json. Refused in one "
    "line: a label OTHER does not map (its labels are named), and an external set that shares images with the run's "
    "training images: by the datasets' own word (RSNA Pneumonia's images are NIH ChestX-ray14's) or by pixels (32 px "
    "thumbnails of both sets hashed; RUN's own data must be here for that)."
)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="a finished run folder (from cxr-fast train or a study's runs/)")
    p.add_argument("--data", required=True, metavar="OTHER", help="the other dataset's folder")
    add_run_flags(p.add_argument_group("which dataset OTHER is, and how it is read"), DATASET_FIELDS)
    number_flag(p, "--size", int, ge=1, le=10_000_000, default=None,
                help="images to score: all positives plus random negatives up to this (default: the run's subsample size)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the run's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from cxr_fast.api import evaluate
    from cxr_fast.schema.flags import given

    rec = evaluate(args.run, args.data, size=args.size, device=args.device, quiet=args.quiet,
                   **given(args, DATASET_FIELDS))
    auc = "tied scores, no AUC" if rec["auc"] is None else f"AUC {rec['auc']:.3f} (DeLong SD {rec['auc_sd']:.3f})"
    print(f"{rec['label']} at {rec['res']} px, trained on {rec['trained_on']}, tested on {rec['external_dataset']}: "
          f"{auc} over {rec['n_pos']} positive and {rec['n_neg']} negative images; written to "
          f"{rec['run']}/external-{rec['external_dataset']}.json")
    return 0
