"""``cxr-fast bench``: per resolution, loader images/s, training images/s and the batch-size limit.

A shim over ``cxr_fast.bench.pipeline.run_bench``: flags to a ``BenchConfig``, a progress display, the
result files and tables, and exit 1 when a section failed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cxr_fast.bench.config import RUN_SETTINGS
from cxr_fast.schema.flags import add_run_flags, number_flag

HELP = "throughput and batch-size limits per resolution: loaders, training step, memory"
DESCRIPTION = (
    "For each resolution: images/s of every available loader backend (and its ratio to the PIL "
    "baseline), training images/s from synthetic tensors on the device (the model's ceiling) and fed by "
    "the best loader (what you get), their ratio, the largest batch (measured on a GPU, predicted "
    "always), the memory per image, and packed training (K models in one step) against the same K models "
    "stepped in turn (off on a CPU by default: bench config packed_ks). Without --data it runs on the built-in "
    "phantom. Writes "
    "bench.json and bench.csv to --out (default bench-results/<timestamp>/); exits 1 if a section failed. "
    "Unset flags come from --config, then the built-in defaults (the same as configs/bench.yaml)."
)
_FLAGS = ("res", "archs", "loaders", "batch_size", "data", "label", "precision", "channels_last", "optimizer",
          "device", "predict_gpu_gb", "json", "out", "threads")


def configure(parser: argparse.ArgumentParser) -> None:
    from cxr_fast.cost.memory import GPU_GB_BOUNDS

    def add(*flags: str, number: tuple[type, dict] | None = None, **kw) -> None:
        kw.setdefault("default", argparse.SUPPRESS)
        if number is not None:
            number_flag(parser, *flags, number[0], **number[1], **kw)
        else:
            parser.add_argument(*flags, **kw)

    add("--config", metavar="YAML", help="settings file (see configs/bench.yaml); flags override it")
    add("--res", metavar="R", help="resolution(s), comma separated, or 'all' (32,64,128,224,256,320,448,512,600); default 224")
    add("--arch", dest="archs", metavar="A[,B]", help="resnet34,densenet121 (default: both on a GPU, resnet34 on the CPU)")
    add("--loaders", metavar="all|NAME,...", help="loader backends to measure (default all; pil is always the baseline)")
    add("--batch-size", number=(int, {"ge": 1, "le": 65536}), metavar="B", help="training batch (default: 2 on the CPU, ~80%% of the predicted max on a GPU, at most 256)")
    add_run_flags(parser, RUN_SETTINGS, help_for={"label": "label the loaders carry (speed does not depend on it)"})
    add("--threads", number=(int, {"ge": 1, "le": 4096}), metavar="N", help="CPU intra-op threads (default: torch's, or 1 when the machine is already busy)")
    add("--predict-gpu-gb", number=(float, GPU_GB_BOUNDS), metavar="GB", help="card size for the predicted max batch when not on a GPU (default 11)")
    add("--json", metavar="PATH", help="also write the JSON document here")
    add("--out", metavar="DIR", help="results folder (default bench-results/<timestamp>/)")
    add("--quiet", action="store_true", help="no progress display")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from cxr_fast.bench.config import load_bench_config
    from cxr_fast.bench.pipeline import failed_sections, run_bench
    from cxr_fast.bench.results_io import default_out_dir, write_results
    from cxr_fast.bench.tables import print_tables

    flags = {k: getattr(args, k, None) for k in _FLAGS}
    for key in ("archs", "loaders"):
        if flags[key] is not None:
            flags[key] = [s.strip() for s in flags[key].split(",") if s.strip()]
    cfg = load_bench_config(getattr(args, "config", None), **flags)
    if flags["archs"]:  # an explicit --arch wins over the per-device default
        cfg.cpu.archs = cfg.gpu.archs = None
    console, quiet = Console(), getattr(args, "quiet", False)
    t0 = time.perf_counter()
    dataset = cfg.run_settings().read_dataset(cfg.data, quiet=quiet)  # the phantom's own progress bar, before ours starts
    units = len(cfg.res) * (1 + len(cfg.archs if flags["archs"] else (cfg.cpu.archs or cfg.archs)))
    doc = _with_progress(console, units, quiet, lambda say, advance: run_bench(cfg, say, advance, dataset))
    doc["wall_s"] = round(time.perf_counter() - t0, 1)
    out = Path(cfg.out) if cfg.out else default_out_dir()
    paths = write_results(out, doc, stem="bench", json_path=cfg.json)
    print_tables(doc, console)
    console.print(f"wrote {paths['json']} and {paths['csv']}" + (f" and {cfg.json}" if cfg.json else "")
                  + f" in {doc['wall_s']:.0f} s", highlight=False)
    failed = failed_sections(doc)
    if failed:
        print(f"cxr-fast bench: error: {len(failed)} section(s) failed: {'; '.join(failed[:3])}"
              + (" ..." if len(failed) > 3 else "") + " (rows with status error/oom in the results)", file=sys.stderr)
        return 1
    return 0


def _with_progress(console, units: int, quiet: bool, work):
    """Run ``work(say, advance)`` under a rich progress line that logs each message (or silently)."""
    if quiet:
        return work(None, None)
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task("bench", total=units)

        def say(msg: str) -> None:
            progress.update(task, description=msg)
            progress.console.log(msg, highlight=False)

        def advance() -> None:
            total = progress.tasks[0].total or 0
            progress.update(task, advance=1, total=max(total, progress.tasks[0].completed + 1))

        return work(say, advance)
