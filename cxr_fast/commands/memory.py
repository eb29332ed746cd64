"""``cxr-fast memory``: the largest training batch per resolution and GPU size, predicted without a GPU."""

from __future__ import annotations

import argparse

from cxr_fast.bench.memory import DEFAULT_GPU_GB
from cxr_fast.vocabulary import ARCHS

HELP = "predict the largest training batch per resolution and GPU size (no GPU needed)"
DESCRIPTION = (
    "Counts the bytes autograd saves per image (saved-tensor hooks on the meta device, so nothing is "
    "computed), adds parameters, gradients, optimizer state, a workspace margin and the CUDA context, "
    "and prints the largest batch that fits each card. Answers the paper's case: what fit at 600 px on "
    "an 11 GB GTX 1080 Ti. GPU sizes are GiB. `bench/gpu_check.py` compares this with measurement."
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
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="optimizer state to count")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="channels-last memory format")
    parser.add_argument("--json", metavar="PATH", help="write the table and the assumptions as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG plot: batch size vs resolution, a line per GPU size")


def _precisions(values: list[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        for p in (("amp", "fp32") if v == "both" else (v,)):
            if p not in out:
                out.append(p)
    return out


def paper_case(rows: list[dict]) -> list[str]:
    """One sentence per (arch, precision): the largest batch at 600 px on an 11 GiB card."""
    lines = []
    for r in rows:
        if r["res"] == 600 and r["gpu_gb"] == 11:
            bs = r["max_batch_size"]
            fits = "fits" if bs >= 8 else "does NOT fit"
            pow2 = 1 << (bs.bit_length() - 1) if bs else 0
            lines.append(f"Paper's case: {r['arch']} at 600 px on an 11 GB card ({r['precision']}, "
                         f"{'channels-last' if r['channels_last'] else 'NCHW'}, {r['optimizer']}): largest batch "
                         f"{bs} (largest power of two {pow2}); the paper's batch of 8 {fits}.")
    return lines


def plot(rows: list[dict], path: str) -> None:
    """Batch size against resolution, log scale, one line per GPU size; a panel per (arch, precision)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 - used via matplotlib.ticker below

    from cxr_fast.io import atomic_path

    panels = sorted({(r["arch"], r["precision"]) for r in rows})
    ncols = min(2, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.0 * ncols, 4.4 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (arch, precision) in zip(axes.flat, panels):
        sel = [r for r in rows if r["arch"] == arch and r["precision"] == precision]
        for gb in sorted({r["gpu_gb"] for r in sel}):
            line = sorted((r["res"], r["max_batch_size"]) for r in sel if r["gpu_gb"] == gb)
            xs = [x for x, y in line if y > 0]
            ys = [y for x, y in line if y > 0]
            ax.plot(xs, ys, marker="o", label=f"{gb:g} GB")
        ax.axhline(8, color="gray", linestyle=":", linewidth=1, label="paper: batch 8")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        res_ticks = sorted({r["res"] for r in sel})
        ax.set_xticks(res_ticks, [str(t) for t in res_ticks], rotation=45)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("resolution (px)")
        ax.set_ylabel("largest batch (predicted)")
        ax.set_title(f"{arch}, {precision}")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from cxr_fast.bench import memory
    from cxr_fast.io import write_json

    console = Console()
    from cxr_fast.vocabulary import parse_resolutions

    res = parse_resolutions(args.res, "--res")
    precisions = _precisions(args.precision)
    if any(g <= 0 for g in args.gpu_gb):
        from cxr_fast.errors import CxrError

        raise CxrError(f"--gpu-gb values must be positive, got {args.gpu_gb}")
    with console.status("counting saved activations on the meta device..."):
        rows = memory.memory_table(args.arch, res, args.gpu_gb, precisions, args.channels_last, args.optimizer)

    for arch in args.arch:
        for precision in precisions:
            sel = [r for r in rows if r["arch"] == arch and r["precision"] == precision]
            table = Table(title=f"{arch}, {precision}, {'channels-last' if args.channels_last else 'NCHW'}, "
                                f"{args.optimizer}: largest training batch (predicted)")
            table.add_column("res", justify="right")
            table.add_column("MiB/image", justify="right")
            for gb in args.gpu_gb:
                table.add_column(f"{gb:g} GB", justify="right")
            for r in res:
                cells = [r2 for r2 in sel if r2["res"] == r]
                table.add_row(str(r), f"{cells[0]['bytes_per_sample'] / memory.MIB:.1f}",
                              *[str(c["max_batch_size"]) for c in cells])
            console.print(table)
    lines = paper_case(rows)
    if not lines:
        lines = ["Paper's case (600 px, 11 GB): add 600 to --res and 11 to --gpu-gb to see it."]
    for line in lines:
        console.print(line, highlight=False)
    a = memory.assumptions()
    console.print(f"[dim]model: {a['formula']}; workspace {a['workspace_fraction']:.0%}, CUDA context "
                  f"{a['cuda_context_bytes'] / memory.MIB:.0f} MiB, GB = GiB[/dim]")
    if args.json:
        write_json(args.json, {"assumptions": a, "paper_case": lines, "rows": rows,
                               "profiles": [memory.profile(arch, r, p, args.channels_last, args.optimizer).to_dict()
                                            for arch in args.arch for p in precisions for r in res]})
        console.print(f"wrote {args.json}")
    if args.plot:
        plot(rows, args.plot)
        console.print(f"wrote {args.plot}")
    return 0
