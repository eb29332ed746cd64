"""``cxr-fast plan``: what a study will cost, on this machine or on any GPU, before a single run starts."""

from __future__ import annotations

import argparse

from cxr_fast.schema.flags import add_run_flags, number_flag, pack_flag

HELP = "estimate a study's time per run and in total, its bounds, memory fit and makespan (no GPU needed)"
DESCRIPTION = (
    "Counts the work of every run of a study config on the meta device (FLOPs, bytes moved, aten ops "
    "dispatched: nothing is computed) and times it on a device profile: cpu or cuda (measured here with "
    "--calibrate, or by `cxr-fast gpu-check` on a GPU host), a card from the datasheet table (1080ti, t4, "
    "v100, a100-40, a100-80, l4, l40s, 3090, 4090, h100, h200) or a profile .json. Prints each run's training "
    "and evaluation time, what bounds it (compute, bandwidth or kernel launches), eager and with CUDA graphs, "
    "whether the resident loader's uint8 split fits beside the model, and the makespan on --gpus GPUs."
)


OVERRIDES = ("precision", "batch_size", "epochs")  # run settings a plan may try other values of


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="study YAML (e.g. configs/paper.yaml)")
    parser.add_argument("--device", default="auto", metavar="DEVICE",
                        help="auto, cpu, cuda, a card name (h100, 1080ti, ...) or a device profile .json")
    number_flag(parser, "--gpus", int, ge=1, le=100_000, default=1, metavar="N", help="GPUs for the makespan (Ray, one run each)")
    parser.add_argument("--json", metavar="PATH", help="write the whole plan as JSON")
    parser.add_argument("--only", action="append", metavar="GRID", help="plan only this grid (repeatable)")
    add_run_flags(parser.add_argument_group("overrides of the config, for every cell (unset: the config's)"),
                  OVERRIDES, show_defaults=False)
    parser.add_argument("--no-cells", action="store_true", help="only the per-resolution table and the totals")
    pack_flag(parser, "also total the grid packed, with CUDA graphs, beside eager and graphs, on 1 and 8 GPUs "
                      "(default: the config's pack:, when it packs)")
    g = parser.add_argument_group("calibration (measure this machine's profile first)")
    g.add_argument("--calibrate", action="store_true",
                   help="time a few real steps per architecture and resolution here and save the profile")
    g.add_argument("--calibrate-device", default="auto", metavar="DEV", help="where to calibrate: auto, cpu, cuda")
    number_flag(g, "--calibrate-seconds", gt=0, le=3600, default=2.0, metavar="S", help="time per calibration point")
    g.add_argument("--profile-out", metavar="PATH", help="also write the measured profile here")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from cxr_fast.cost import devices
    from cxr_fast.cost.plan import plan_study
    from cxr_fast.cost.plan_report import print_plan
    from cxr_fast.io import write_json
    from cxr_fast.schema.flags import given
    from cxr_fast.study import apply_overrides, checked_cells, load_study_config

    console = Console()
    cfg = apply_overrides(load_study_config(args.config), pack=args.pack, **given(args, OVERRIDES))
    pack = cfg.pack if cfg.pack != 1 or args.pack is not None else None
    only = [name for item in (args.only or []) for name in item.split(",") if name]
    cells = checked_cells(cfg, only or None)
    device = args.device
    if args.calibrate:
        from cxr_fast.bench.calibrate import calibrate, calibration_points

        pairs, batch, precision, optimizer, recipe = calibration_points(cells)
        profile = calibrate(pairs, batch, precision, optimizer, recipe, args.calibrate_device,
                            args.calibrate_seconds, say=console.print)
        path = devices.save_profile(profile)
        console.print(f"wrote {path}")
        if args.profile_out:
            devices.save_profile(profile, args.profile_out)
            console.print(f"wrote {args.profile_out}")
        if device == "auto":
            device = str(path)
    dev = devices.resolve(device)
    with console.status(f"counting {len(cells)} runs on the meta device..."):
        doc = plan_study(cells, dev, args.gpus, cfg.name, pack=pack)
    print_plan(doc, console, cells=not args.no_cells)
    if args.json:
        write_json(args.json, doc)
        console.print(f"wrote {args.json}")
    return 0
