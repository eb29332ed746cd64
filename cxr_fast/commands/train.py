"""``cxr-fast train``: one binary classifier for one label at one resolution, the paper's recipe."""

from __future__ import annotations

import argparse
import sys

from cxr_fast.vocabulary import ARCHS, INITS, RECIPES

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
    "--config, then the defaults."
)


def configure(parser: argparse.ArgumentParser) -> None:
    def add(*flags: str, **kw) -> None:
        # Unset flags stay absent (not None-with-a-default) so the config file's value shows through.
        kw.setdefault("default", argparse.SUPPRESS)
        parser.add_argument(*flags, **kw)

    add("--config", metavar="YAML", help="settings file (see configs/train.yaml); flags override it")
    add("--label", help="finding to detect, e.g. Nodule (default Nodule)")
    add("--res", type=int, help="input resolution in pixels (default 224)")
    add("--arch", choices=ARCHS, help="architecture (default resnet34)")
    add("--recipe", choices=RECIPES,
        help="fastai07: the paper's fastai 0.7 head, weighted cross-entropy and transforms (default); "
             "modern: one logit, weighted BCE, stronger lighting and zoom-out")
    add("--init", choices=INITS, help="imagenet: ImageNet weights (default); random: torch's random init")
    add("--epochs", type=int, help="epochs (default 3)")
    add("--batch-size", type=int, help="batch size (default 8, the paper's)")
    add("--lr", type=float, help="fixed learning rate (default 5e-4)")
    add("--optimizer", choices=("sgd", "adam"), help="sgd with momentum 0.9 (default) or adam")
    add("--precision", choices=("auto", "bf16", "fp16", "fp32"),
        help="autocast dtype (default auto: bf16 on a GPU that has it, fp16 on older GPUs, fp32 on CPU)")
    add("--channels-last", action=argparse.BooleanOptionalAction, help="channels-last memory format (default on)")
    add("--compile", action=argparse.BooleanOptionalAction, help="torch.compile the model (default off)")
    add("--augment", action=argparse.BooleanOptionalAction, help="training augmentation (default on)")
    add("--tta", type=int, metavar="N", help="augmented test-time views besides the plain one (default 4)")
    add("--loader", help="loader backend: auto, resident, dali, cache, ffcv, pil (default auto: resident, or on a "
        "GPU where its uint8 split would not fit beside the predicted training step, cache; the run records why)")
    add("--data", metavar="DIR", help="NIH-layout data folder (default: the built-in phantom)")
    add("--store", metavar="DIR", help="prepared store from `cxr-fast prepare`")
    add("--out", metavar="RUN", help="run folder (default runs/<label>-<arch>-<res>)")
    add("--resume", action="store_true", default=False, help="continue a killed run from its checkpoint; a finished run is reused")
    add("--overwrite", action="store_true", default=False, help="replace the run already in --out")
    add("--weights", metavar="PATH", help="a torchvision ImageNet state dict file (implies --init imagenet)")
    add("--subsample-size", type=int, metavar="N", help="images per label subsample (default 20000)")
    add("--split", choices=("image", "patient", "official"), help="validation split (default image)")
    add("--val-fraction", type=float, metavar="F", help="share of the subsample for validation (default 0.2)")
    add("--seed", type=int, help="seed for sampling, init and augmentation (default 0)")
    add("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    add("--max-batches", type=int, metavar="N", help="cap training batches per epoch (smoke runs)")
    add("--workers", type=int, metavar="N", help="loader worker processes (default: all cores)")
    add("--quiet", action="store_true", default=False, help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from cxr_fast.train import load_config, run_training

    names = ("label", "res", "arch", "recipe", "init", "epochs", "batch_size", "lr", "optimizer", "precision",
             "channels_last", "compile", "augment", "tta", "loader", "data", "store", "out", "weights",
             "subsample_size", "split", "val_fraction", "seed", "device", "max_batches", "workers")
    cfg = load_config(getattr(args, "config", None), **{n: getattr(args, n, None) for n in names})
    m = run_training(cfg, progress=not args.quiet, resume=args.resume, overwrite=args.overwrite)
    print(summary_line(m))
    if m.get("auc_status") == "tied":
        print(f"cxr-fast train: error: every validation score is the same value, so the model ranks nothing and "
              f"no AUC exists; predictions are in {m['out']}", file=sys.stderr)
        return 1
    return 0


def summary_line(m: dict) -> str:
    """One line per run: the score, what it started from and how fast it went."""
    ips = m.get("train_images_per_s") or 0.0
    score = "AUC tied (no ranking)" if m.get("auc") is None else f"AUC {m['auc']:.3f} ± {m['auc_sd']:.3f}"
    init = m.get("init", "?") + (f" {m['weights_sha256'][:12]}" if m.get("weights_sha256") else "")
    return (f"{m['label']} {m['arch']} {m['res']}px: {score} (DeLong SD, {m['n_pos']} pos / {m['n_neg']} neg), "
            f"accuracy {m['accuracy']:.3f}, recipe {m.get('recipe', '?')}, init {init}, {ips:.1f} train img/s, "
            f"{m['wall_s']:.1f} s, {m['precision']} on {m['device_name']} -> {m['out']}")
