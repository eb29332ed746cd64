"""``cxr-fast study``: run a grid of training runs (the paper's Tables 2 and 3), resumable, locally or on Ray."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxr_fast.vocabulary import INITS, PRECISIONS, RECIPES

HELP = "run a grid of label x resolution x architecture trainings (resumable; local or Ray)"
DESCRIPTION = (
    "Run every cell of a study config (configs/paper.yaml: the paper's Tables 2 and 3; configs/quick.yaml: a "
    "CPU-sized grid on the phantom) through the same code as `cxr-fast train`. Each finished run adds one "
    "row to OUT/results.jsonl; run the same command again after a kill and it skips finished runs and resumes "
    "the unfinished one. Flags override the config's train block. Every cell is validated and every init "
    "resolved (ImageNet weights: --weights, the torch cache, or one download) before anything is written; "
    "--dry-run does exactly that checking and runs nothing. Then: cxr-fast report OUT."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="study YAML (e.g. configs/quick.yaml)")
    parser.add_argument("--data", metavar="DIR", help="NIH-layout data folder (default: the built-in phantom)")
    parser.add_argument("--out", metavar="DIR", help="study folder (default studies/<config name>)")
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="local: one run after another here; ray: one Ray task per run")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help="join this Ray cluster (e.g. ray://head:10001 or auto); default: start a local Ray")
    parser.add_argument("--ray-cpus", type=int, default=2, metavar="N",
                        help="CPUs of the local Ray started without --ray-address")
    parser.add_argument("--only", action="append", metavar="GRID",
                        help="run only this grid (repeatable or comma-separated), e.g. --only table2")
    parser.add_argument("--dry-run", action="store_true", help="list the cells and their status, run nothing")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    g = parser.add_argument_group("overrides of the config's train block")
    g.add_argument("--epochs", type=int, help="epochs for every grid")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--subsample-size", type=int, metavar="N")
    g.add_argument("--val-fraction", type=float, metavar="F")
    g.add_argument("--seed", type=int)
    g.add_argument("--precision", choices=("auto", *PRECISIONS))
    g.add_argument("--loader", help="loader backend: auto, resident, dali, cache, ffcv, pil")
    g.add_argument("--store", metavar="DIR", help="prepared store from `cxr-fast prepare`")
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--workers", type=int, metavar="N", help="loader worker processes per run")
    g.add_argument("--tta", type=int, metavar="N", help="augmented test-time views besides the plain one")
    g.add_argument("--max-batches", type=int, metavar="N", help="cap training batches per epoch (smoke runs)")
    g.add_argument("--recipe", choices=RECIPES, help="fastai07 (the paper's) or modern, for every cell")
    g.add_argument("--init", choices=INITS, help="imagenet or random, for every cell")
    g.add_argument("--weights", metavar="PATH", help="a torchvision ImageNet state dict file for every cell")


def run(args: argparse.Namespace) -> int:
    from cxr_fast.executors import LocalExecutor, RayExecutor
    from cxr_fast.bench.plan import announce
    from cxr_fast.study import apply_overrides, decide, expand, load_study, plan, run_study

    cfg = load_study(args.config)
    data = str(Path(args.data).expanduser().resolve()) if args.data else None
    cfg = apply_overrides(
        cfg, epochs=args.epochs, data=data, batch_size=args.batch_size, lr=args.lr,
        subsample_size=args.subsample_size, val_fraction=args.val_fraction, seed=args.seed,
        precision=args.precision, loader=args.loader, store=args.store, device=args.device, tta=args.tta,
        max_batches=args.max_batches, weights=args.weights, recipe=args.recipe, init=args.init, workers=args.workers,
    )
    only = [name for item in (args.only or []) for name in item.split(",") if name]
    out = Path(args.out) if args.out else Path("studies") / cfg.name

    if args.dry_run:
        decided = plan(cfg, out, only)
        for cell in decided.cells:
            init = decided.inits.get(cell.cell_id)
            shown = init.describe() if init is not None else cell.settings.get("init", "imagenet")
            print(f"{decided.status[cell.cell_id]:8s} {cell.cell_id:40s} grids={','.join(cell.grids)}  init: {shown}")
        counts = {s: sum(1 for st in decided.status.values() if st == s) for s in ("done", "partial", "todo")}
        print(f"{len(decided.cells)} cells in {out}: {counts['done']} done, {counts['partial']} partial, "
              f"{counts['todo']} to run; every cell's settings are valid")
        for note in decided.notes:
            print(f"note: {note}")
        print(announce(decided.cells, out, cfg.train.get("device"), cfg.name, write=False))
        return 0

    if args.ray_address and args.executor != "ray":
        from cxr_fast.errors import CxrError

        raise CxrError("--ray-address needs --executor ray")
    from cxr_fast.data.source import data_root, is_phantom_spec

    decide(cfg, out.resolve(), only or None, progress=not args.quiet)  # refuse (or fetch weights) before any work
    if is_phantom_spec(cfg.train.get("data")):
        # Make the phantom once here, not in each run: parallel Ray tasks would race to create it. The
        # config keeps naming it by its spec, so study.yaml and the report hold no machine path.
        data_root(cfg.train.get("data"), quiet=args.quiet)
    print(announce(expand(cfg, only or None), out, cfg.train.get("device"), cfg.name))  # never raises
    executor = RayExecutor(args.ray_address, num_cpus=args.ray_cpus) if args.executor == "ray" else LocalExecutor()
    summary = run_study(cfg, out, executor=executor, only=only or None, progress=not args.quiet)
    print(f"{summary.cells} runs in {out}: {summary.already_done} were already finished, {summary.ran} ran now; "
          f"results in {out / 'results.jsonl'}. Next: cxr-fast report {out}")
    return 0
