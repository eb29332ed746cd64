"""``cxr-fast memory``: the largest training batch per resolution and GPU size, predicted without a GPU."""

from __future__ import annotations

import argparse

from cxr_fast.cost.memory import DEFAULT_GPU_GB
from cxr_fast.vocabulary import ARCHS, OPTIMIZERS

HELP = "predict the largest training batch per resolution and GPU size (no GPU needed)"
DESCRIPTION = (
    "Counts the bytes autograd saves per image (saved-tensor hooks on the meta device, so nothing is "
    "computed), adds parameters, gradients, optimizer state, a workspace margin and the CUDA context, "
    "and prints the largest batch that fits each card. Answers the paper's case: what fit at 600 px on "
    "an 11 GB GTX 1080 Ti. GPU sizes are GiB. `cxr-fast gpu-check` compares this with measurement."
)


def _csv(kind, allowed=None):
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        try:
            values = [kind(t) for t in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a list of {kind.__name__}: {text!r}") from None
        if allowed is not None:
            bad = [v for v in values if v not in allowed]
            if bad:
                raise argparse.ArgumentTypeError(f"unknown {bad[0]!r}; choose from {', '.join(allowed)}")
        return values

    return parse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", type=_csv(str, ARCHS), default=list(ARCHS),
                        help="architectures, comma separated")
    parser.add_argument("--res", default="all", help="resolutions, comma separated, or 'all' (the paper's nine)")
    parser.add_argument("--gpu-gb", type=_csv(float), default=list(DEFAULT_GPU_GB),
                        help="card sizes in GiB, comma separated")
    parser.add_argument("--precision", type=_csv(str, ("amp", "fp32", "both")), default=["amp"],
                        help="amp (fp16/bf16 activations), fp32, or both")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default=OPTIMIZERS[0], help="optimizer state to count")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="channels-last memory format")
    parser.add_argument("--json", metavar="PATH", help="write the table and the assumptions as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG plot: batch size vs resolution, a line per GPU size")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from cxr_fast.cost.memory_report import memory_report, plot_memory, print_memory
    from cxr_fast.io import write_json
    from cxr_fast.vocabulary import parse_resolutions

    console = Console()
    res = parse_resolutions(args.res, "--res")
    with console.status("counting saved activations on the meta device..."):
        doc = memory_report(args.arch, res, args.gpu_gb, args.precision, args.channels_last, args.optimizer)
    print_memory(doc, console)
    if args.json:
        write_json(args.json, {k: doc[k] for k in ("assumptions", "paper_case", "rows", "profiles")})
        console.print(f"wrote {args.json}")
    if args.plot:
        plot_memory(doc["rows"], args.plot)
        console.print(f"wrote {args.plot}")
    return 0
