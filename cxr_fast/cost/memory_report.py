"""``cxr-fast memory``'s work: the prediction for every (arch, resolution, card, precision), the paper's
case in words, the rich tables and the plot."""

from __future__ import annotations

from typing import Any

from cxr_fast.cost import memory
from cxr_fast.units import MIB


def memory_report(archs: list[str], resolutions: list[int], gpu_gbs: list[float], precisions: list[str],
                  channels_last: bool = True, optimizer: str = "sgd") -> dict[str, Any]:
    """Rows of the largest batch per card, the paper's case, the model's assumptions and the profiles."""
    gpu_gbs = [memory.check_gpu_gb(g, "--gpu-gb") for g in gpu_gbs]
    precisions = expand_precisions(precisions)
    rows = memory.memory_table(archs, resolutions, gpu_gbs, precisions, channels_last, optimizer)
    lines = paper_case(rows) or ["Paper's case (600 px, 11 GB): add 600 to --res and 11 to --gpu-gb to see it."]
    return {"assumptions": memory.assumptions(), "paper_case": lines, "rows": rows,
            "profiles": [memory.profile(arch, r, p, channels_last, optimizer).to_dict()
                         for arch in archs for p in precisions for r in resolutions],
            "settings": {"archs": archs, "res": resolutions, "gpu_gb": gpu_gbs, "precisions": precisions,
                         "channels_last": channels_last, "optimizer": optimizer}}


def print_memory(doc: dict[str, Any], console: Any) -> None:
    """One table per (arch, precision): MiB per image and the largest batch on each card; then the paper's case."""
    from rich.table import Table

    st, rows = doc["settings"], doc["rows"]
    for arch in st["archs"]:
        for precision in st["precisions"]:
            sel = [r for r in rows if r["arch"] == arch and r["precision"] == precision]
            table = Table(title=f"{arch}, {precision}, {'channels-last' if st['channels_last'] else 'NCHW'}, "
                                f"{st['optimizer']}: largest training batch (predicted)")
            table.add_column("res", justify="right")
            table.add_column("MiB/image", justify="right")
            for gb in st["gpu_gb"]:
                table.add_column(f"{gb:g} GB", justify="right")
            for r in st["res"]:
                cells = [r2 for r2 in sel if r2["res"] == r]
                table.add_row(str(r), f"{cells[0]['bytes_per_sample'] / MIB:.1f}",
                              *[str(c["max_batch_size"]) for c in cells])
            console.print(table)
    for line in doc["paper_case"]:
        console.print(line, highlight=False)
    a = doc["assumptions"]
    console.print(f"[dim]model: {a['formula']}; workspace {a['workspace_fraction']:.0%}, CUDA context "
                  f"{a['cuda_context_bytes'] / MIB:.0f} MiB, GB = GiB[/dim]")


def expand_precisions(values: list[str]) -> list[str]:
    """``both`` -> amp and fp32; repeats dropped, order kept."""
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


def plot_memory(rows: list[dict], path: str) -> None:
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
