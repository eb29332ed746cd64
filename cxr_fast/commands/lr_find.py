"""``cxr-fast lr-find``: Smith's learning-rate range test, saved as a plot and JSON."""

from __future__ import annotations

import argparse

from cxr_fast.vocabulary import ARCHS, INITS, RECIPES

HELP = "learning-rate range test (loss vs exponentially growing lr), PNG plot + JSON"
DESCRIPTION = (
    "Smith's range test, the paper's way of choosing lr 5e-4: train with an exponentially growing learning "
    "rate, smooth the loss, stop when it diverges, and suggest a learning rate (a tenth of the lowest-loss "
    "one). Writes lr_find.json and lr_find.png to --out. Model and data flags mean what they mean for train."
)


def configure(parser: argparse.ArgumentParser) -> None:
    def add(*flags: str, **kw) -> None:
        kw.setdefault("default", argparse.SUPPRESS)
        parser.add_argument(*flags, **kw)

    add("--config", metavar="YAML", help="training settings file; flags override it")
    add("--label", help="finding (default Nodule)")
    add("--res", type=int, help="input resolution (default 224)")
    add("--arch", choices=ARCHS, help="architecture (default resnet34)")
    add("--recipe", choices=RECIPES, help="fastai07 (the paper's, default) or modern")
    add("--init", choices=INITS, help="imagenet (default: --weights FILE or torchvision's file) or random")
    add("--batch-size", type=int, help="batch size (default 8)")
    add("--optimizer", choices=("sgd", "adam"), help="optimizer (default sgd)")
    add("--precision", choices=("auto", "bf16", "fp16", "fp32"), help="autocast dtype (default auto)")
    add("--channels-last", action=argparse.BooleanOptionalAction, help="channels-last (default on)")
    add("--loader", help="loader backend (default auto)")
    add("--data", metavar="DIR", help="NIH-layout data folder (default: the built-in phantom)")
    add("--store", metavar="DIR", help="prepared store from `cxr-fast prepare`")
    add("--weights", metavar="PATH", help="a torchvision ImageNet state dict file")
    add("--subsample-size", type=int, metavar="N", help="images per label subsample (default 20000)")
    add("--seed", type=int, help="seed (default 0)")
    add("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    add("--workers", type=int, metavar="N", help="loader worker processes")
    parser.add_argument("--start-lr", type=float, default=1e-7, help="first learning rate")
    parser.add_argument("--end-lr", type=float, default=10.0, help="last learning rate")
    parser.add_argument("--num-iter", type=int, default=100, help="steps at most (stops early on divergence)")
    parser.add_argument("--out", metavar="DIR", default=None, help="output folder (default runs/lr-find-<label>-<arch>-<res>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from cxr_fast.lr_find import run_lr_find
    from cxr_fast.train import load_config

    names = ("label", "res", "arch", "recipe", "init", "batch_size", "optimizer", "precision", "channels_last", "loader", "data",
             "store", "weights", "subsample_size", "seed", "device", "workers")
    cfg = load_config(getattr(args, "config", None), **{n: getattr(args, n, None) for n in names})
    r = run_lr_find(cfg, out=args.out, start_lr=args.start_lr, end_lr=args.end_lr, num_iter=args.num_iter,
                    progress=not args.quiet)
    print(f"{r['label']} {r['arch']} {r['res']}px: suggested lr {r['suggested_lr']:.1e} (lowest loss at "
          f"{r['lr_min_loss']:.1e}, steepest fall at {r['lr_steepest']:.1e}; {len(r['lrs'])} steps"
          f"{', stopped on divergence' if r['stopped_on_divergence'] else ''}) -> {r['out']}/lr_find.png")
    return 0
