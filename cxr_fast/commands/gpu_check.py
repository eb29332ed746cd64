"""``cxr-fast gpu-check``: on a GPU host, measure once what a CPU cannot, within a time budget."""

from __future__ import annotations

import argparse

from cxr_fast.schema.flags import number_flag

HELP = "on a GPU: CUDA context, measured vs predicted batch limits, and the bench at every resolution"
DESCRIPTION = (
    "Run once on a GPU host. In order, each step timed and the JSON rewritten after each (a kill keeps what "
    "was done): the CUDA context's memory, the built-in phantom, the decode-once stores, measured against "
    "predicted batch-size limits (an emulated 11 GiB card and the whole card), and `cxr-fast bench` at every "
    "resolution. --budget-s is hard: each step, batch search and bench resolution starts only when its "
    "predicted time fits, and each step records its time and whether the budget cut it. Writes gpu-check.json "
    "plus bench.json/csv under --out and prints a short summary; DALI's import error (one line) and the JPEG "
    "decoder that really ran are recorded, and one training section's host syncs (sync-debug mode). Without a GPU it "
    "stops in one line (exit 2); --cpu-smoke runs the check itself on the CPU with tiny settings. On a bare "
    "host without internet, install the checkout first: pip install --no-deps -e ."
)


def configure(parser: argparse.ArgumentParser) -> None:
    from cxr_fast.bench.gpu_check import GpuCheckOptions

    d = GpuCheckOptions()
    parser.add_argument("--out", metavar="DIR", help="results folder (default: $OUT, else ./bench-results/)")
    number_flag(parser, "--budget-s", gt=0, le=86_400, default=d.budget_s,
                        help="the whole check's time; work that would not end within it is not started")
    parser.add_argument("--res", default=d.res, help="bench resolutions, comma separated, or all")
    parser.add_argument("--limit-res", default=d.limit_res, help="resolutions of the batch-limit check")
    parser.add_argument("--archs", default=d.archs, help="architectures, comma separated")
    parser.add_argument("--skip-limits", action="store_true", help="do not measure batch-size limits")
    parser.add_argument("--skip-bench", action="store_true", help="do not run the bench")
    parser.add_argument("--skip-profile", action="store_true", help="do not measure the device profile for `cxr-fast plan`")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny CPU run of the check itself (no GPU needed)")


def run(args: argparse.Namespace) -> int:
    from cxr_fast.bench.gpu_check import GpuCheckOptions, run_gpu_check

    return run_gpu_check(GpuCheckOptions(
        out=args.out, budget_s=args.budget_s, res=args.res, limit_res=args.limit_res, archs=args.archs,
        skip_limits=args.skip_limits, skip_bench=args.skip_bench, skip_profile=args.skip_profile,
        cpu_smoke=args.cpu_smoke))
