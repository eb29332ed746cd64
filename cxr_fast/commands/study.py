"""``cxr-fast study``: run a grid of training runs (the paper's Tables 2 and 3), resumable, locally or on Ray."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxr_fast.schema.flags import add_run_flags, number_flag, pack_flag
from cxr_fast.schema.run import GRID_FIELDS, RunConfig

HELP = "run a grid of label x resolution x architecture trainings (resumable; local or Ray)"
DESCRIPTION = (
    "Run every cell of a study config (configs/paper.yaml: the paper's Tables 2 and 3; configs/quick.yaml: a "
    "CPU-sized grid on the phantom) through the same code as `cxr-fast train`. Each finished run adds one "
    "row to OUT/results.jsonl; run the same command again after a kill and it skips finished runs and resumes "
    "the unfinished one. Flags override the config's train block. Every cell is validated and every init "
    "resolved (ImageNet weights: --weights, the torch cache, or one download) before anything is written; "
    "--dry-run does exactly that checking and runs nothing. Then: cxr-fast report OUT."
)
# Every run setting the grids do not set, plus epochs (for every grid): declared once in RunConfig.
OVERRIDES = tuple(n for n in RunConfig.names() if n not in GRID_FIELDS or n == "epochs")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="study YAML (e.g. configs/quick.yaml)")
    parser.add_argument("--out", metavar="DIR", help="study folder (default studies/<config name>)")
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="local: one run after another here; ray: one Ray task per run")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help="join this Ray cluster (e.g. ray://head:10001 or auto); default: start a local Ray")
    number_flag(parser, "--ray-cpus", int, ge=1, le=100_000, default=2, metavar="N",
                        help="CPUs of the local Ray started without --ray-address")
    number_flag(parser, "--runs-per-gpu", int, ge=1, le=64, default=1, metavar="N",
                help="with --executor ray: N runs share each GPU (each task asks Ray for 1/N GPU); they time-slice "
                     "it unless CUDA MPS runs on the node (start it yourself: nvidia-cuda-mps-control -d)")
    parser.add_argument("--only", action="append", metavar="GRID",
                        help="run only this grid (repeatable or comma-separated), e.g. --only table2")
    parser.add_argument("--dry-run", action="store_true", help="list the cells and their status, run nothing")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    pack_flag(parser, "override the config's pack: (default 1)")
    group = parser.add_argument_group("overrides of the config's train block, for every cell (and every grid's "
                                      "own train: block); unset: the config's")
    add_run_flags(group, OVERRIDES, show_defaults=False)


def run(args: argparse.Namespace) -> int:
    from cxr_fast.cost.plan import announce
    from cxr_fast.data.source import data_root, is_phantom_spec
    from cxr_fast.errors import CxrError
    from cxr_fast.executors import LocalExecutor, RayExecutor
    from cxr_fast.schema.flags import given
    from cxr_fast.study import apply_overrides, decide, dry_run, load_study_config, run_cells
    from cxr_fast.study.grid import default_study_dir

    if args.runs_per_gpu != 1 and args.executor != "ray":
        raise CxrError(f"--runs-per-gpu {args.runs_per_gpu} needs --executor ray (the local executor runs one run "
                       "at a time)")
    cfg = load_study_config(args.config)
    overrides = given(args, OVERRIDES)
    if overrides.get("data") and not is_phantom_spec(overrides["data"]):
        overrides["data"] = str(Path(overrides["data"]).expanduser().resolve())  # the cells' fingerprints keep it
    cfg = apply_overrides(cfg, pack=args.pack, **overrides)
    only = [name for item in (args.only or []) for name in item.split(",") if name]
    out = Path(args.out) if args.out else default_study_dir(cfg)
    here = args.executor == "local"  # Ray workers train on their own devices

    if args.dry_run:
        decided = dry_run(cfg, out, only or None, devices=here, config=Path(args.config))
        for cell in decided.cells:
            init = decided.inits.get(cell.cell_id)
            shown = init.describe() if init is not None else cell.config.init
            print(f"{decided.status[cell.cell_id]:8s} {cell.cell_id:40s} grids={','.join(cell.grids)}  init: {shown}")
        counts = {s: sum(1 for st in decided.status.values() if st == s) for s in ("done", "partial", "todo")}
        print(f"{len(decided.cells)} cells in {out}: {counts['done']} done, {counts['partial']} partial, "
              f"{counts['todo']} to run; every cell's settings are valid; pack {cfg.pack}")
        for note in decided.notes:
            print(f"note: {note}")
        print(announce(decided.cells, out, cfg.train.get("device"), cfg.name, write=False))
        return 0

    if args.ray_address and args.executor != "ray":
        raise CxrError("--ray-address needs --executor ray")
    decided = decide(cfg, out.resolve(), only or None, progress=not args.quiet, devices=here,
                     config=Path(args.config))  # refuse (or fetch weights) first
    if is_phantom_spec(cfg.train.get("data")):
        # Make the phantom once here, not in each run: parallel Ray tasks would race to create it. The
        # config keeps naming it by its spec, so study.yaml and the report hold no machine path.
        data_root(cfg.train.get("data"), quiet=args.quiet)
    print(announce(decided.cells, out, cfg.train.get("device"), cfg.name))  # never raises
    executor = RayExecutor(args.ray_address, num_cpus=args.ray_cpus, runs_per_gpu=args.runs_per_gpu) \
        if args.executor == "ray" else LocalExecutor()
    summary = run_cells(decided, out, executor=executor, progress=not args.quiet)
    print(f"{summary.cells} runs in {out}: {summary.already_done} were already finished, {summary.ran} ran now; "
          f"results in {out / 'results.jsonl'}. Next: cxr-fast report {out}")
    return 0
