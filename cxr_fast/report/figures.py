"""The paper's Figures 2-4 as PNG, from the ordinary cells of a study (never a tagged variant, never a tie).

matplotlib's object API (no pyplot state), so figures can be drawn in a worker or a test without a display.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from cxr_fast import paper_results
from cxr_fast.io import atomic_path
from cxr_fast.report.data import (Study, Variant, auc_of, labels, paper_label, paper_variant, primary_variant,
                                  resolutions, sd_of, variant_name, variants)

FIG3_REFERENCE = 320
FIG4_LABELS = ("Mass", "Nodule")


def ratio(study: Study, label: str, variant: Variant, res: int, ref: int) -> tuple[float, float] | None:
    """AUC(res) / AUC(ref) in percent with a delta-method SD treating the two AUCs as independent."""
    a, b = study.row(label, res, variant), study.row(label, ref, variant)
    auc_a, auc_b = auc_of(a), auc_of(b)
    if auc_a is None or auc_b is None or auc_b <= 0:
        return None
    r = auc_a / auc_b
    rel = math.hypot((sd_of(a) or 0.0) / auc_a if auc_a else 0.0, (sd_of(b) or 0.0) / auc_b)
    return 100.0 * r, 100.0 * r * rel


def figure3_reference(study: Study, variant: Variant) -> int | None:
    """320 px, the paper's reference, or the highest resolution present at or below it."""
    present = sorted({int(r["res"]) for r in study.ordinary if (r["arch"], int(r["epochs"])) == variant})
    below = [r for r in present if r <= FIG3_REFERENCE]
    return below[-1] if below else None


def table3_variants(study: Study) -> list[Variant]:
    """Variants with Mass or Nodule cells: Table 3 and Figure 4's columns."""
    return [v for v in variants(study) if any(l in FIG4_LABELS for l in labels(study, v))]


def _figure(width: float = 7.0, height: float = 4.5) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=120, layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _res_axis(ax: Any, res: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(res)
    ax.set_xticklabels([str(r) for r in res], rotation=45 if len(res) > 5 else 0)
    ax.minorticks_off()
    ax.set_xlabel("input resolution (px)")
    ax.grid(True, alpha=0.3)


def _points(study: Study, label: str, v: Variant, res: list[int]) -> list[tuple[int, float, float]]:
    return [(r, auc, sd_of(row) or 0.0) for r in res
            if (auc := auc_of(row := study.row(label, r, v))) is not None]


def _paper_line(ax: Any, label: str, v: Variant, color: str, alpha: float) -> list[int]:
    """Dashed line of the paper's AUCs for the closest published model; returns its resolutions."""
    pv = paper_variant(v)
    if pv is None:
        return []
    pts = [(r, p.auc) for r in paper_results.RESOLUTIONS if (p := paper_results.paper_auc(label, r, *pv)) is not None]
    if not pts:
        return []
    px, py = zip(*pts)
    ax.plot(px, py, linestyle="--", color=color, alpha=alpha, label=f"{label} ({paper_label(pv)})")
    return list(px)


def figure2(study: Study, out: Path, compare: bool = False, roles: dict[str, str] | None = None) -> Path | None:
    """AUC against resolution, one line per label, DeLong SD error bars (the paper's Figure 2).

    ``roles`` (label -> control role, ``controls.control_roles``) names each control curve in the
    legend and draws chance (0.5), which the null label must stay near.
    """
    variant = primary_variant(study)
    if variant is None:
        return None
    roles = roles or {}
    fig = _figure()
    ax = fig.add_subplot()
    res = resolutions(study, variant)
    for i, label in enumerate(labels(study, variant)):
        color = f"C{i % 10}"
        pts = _points(study, label, variant, res)
        if pts:
            x, y, e = zip(*pts)
            name = f"{label} ({roles[label]})" if label in roles else label
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, color=color, label=name)
        if compare:
            res = sorted(set(res) | set(_paper_line(ax, label, variant, color, 0.5)))
    if roles:
        ax.axhline(0.5, color="gray", linestyle=":", linewidth=1.0, label="chance (0.5)")
    _res_axis(ax, res)
    ax.set_ylabel("validation AUC")
    ax.set_title(f"Figure 2: AUC vs resolution ({variant_name(variant)}); bars = DeLong SD")
    if roles:  # below the axes: the control curves span the whole height, and chance is drawn across it
        ax.legend(fontsize=8, ncols=2, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    else:
        ax.legend(fontsize=8, ncols=2)
    return _save(fig, out / "figure2.png")


def figure3_records(study: Study, variant: Variant, ref: int) -> list[dict[str, Any]]:
    """32 and 64 px AUC as % of the reference's, per label, with the paper's % of 320 px beside it."""
    records = []
    pv = paper_variant(variant)
    for label in labels(study, variant):
        for low in (r for r in (32, 64) if r < ref):
            got = ratio(study, label, variant, low, ref)
            p_low = paper_results.paper_auc(label, low, *pv) if pv is not None else None
            p_ref = paper_results.paper_auc(label, FIG3_REFERENCE, *pv) if pv is not None else None
            paper = 100.0 * p_low.auc / p_ref.auc if p_low is not None and p_ref is not None else None
            records.append({"label": label, "res": low, "reference": ref, "percent": got[0] if got else None,
                            "percent_sd": got[1] if got else None, "paper_percent_of_320": paper})
    return records


def figure3(study: Study, out: Path, compare: bool = False) -> tuple[Path | None, list[dict[str, Any]], int | None]:
    """32 and 64 px AUC as a percentage of the reference resolution's AUC, per label (the paper's Figure 3)."""
    variant = primary_variant(study)
    ref = figure3_reference(study, variant) if variant is not None else None
    if variant is None or ref is None:
        return None, [], None
    records = figure3_records(study, variant, ref)
    lows = [r for r in (32, 64) if r < ref]
    if not lows:
        return None, records, ref
    names = labels(study, variant)
    fig = _figure()
    ax = fig.add_subplot()
    width, x = 0.8 / len(lows), np.arange(len(names))
    for j, low in enumerate(lows):
        vals = [next((r for r in records if r["label"] == lab and r["res"] == low), None) for lab in names]
        heights = [v["percent"] if v and v["percent"] is not None else np.nan for v in vals]
        errs = [v["percent_sd"] if v and v["percent_sd"] is not None else 0.0 for v in vals]
        pos = x - 0.4 + width * (j + 0.5)
        ax.bar(pos, heights, width, yerr=errs, capsize=3, color=f"C{j}", label=f"{low} px")
        if compare:
            paper = [v["paper_percent_of_320"] if v and v["paper_percent_of_320"] is not None else np.nan for v in vals]
            ax.scatter(pos, paper, marker="D", s=40, facecolor="white", edgecolor="black", zorder=3,
                       label="paper (% of 320 px)" if j == 0 else None)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.axhline(100, color="gray", linewidth=0.8)
    ax.set_ylabel(f"AUC as % of the {ref} px AUC")
    source = "320 px, as in the paper" if ref == FIG3_REFERENCE else \
        f"{ref} px: the highest resolution ≤ 320 in this study"
    ax.set_title(f"Figure 3: low-resolution AUC as % of {source}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, out / "figure3.png"), records, ref


def figure4(study: Study, out: Path, compare: bool = False) -> Path | None:
    """Mass and Nodule AUC against resolution for each architecture/epochs variant (the paper's Figure 4)."""
    present = table3_variants(study)
    if not present:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    res = sorted({r for v in present for r in resolutions(study, v)})
    styles = ["-", "-.", ":", (0, (5, 1))]
    colors = {"Mass": "tab:green", "Nodule": "tab:blue"}
    for k, v in enumerate(present):
        for label in FIG4_LABELS:
            pts = _points(study, label, v, res)
            if pts:
                x, y, e = zip(*pts)
                ax.errorbar(x, y, yerr=e, marker="o", capsize=3, color=colors[label], linestyle=styles[k % len(styles)],
                            label=f"{label} {variant_name(v)}")
            if compare:
                res = sorted(set(res) | set(_paper_line(ax, label, v, colors[label], 0.4)))
    _res_axis(ax, res)
    ax.set_ylabel("validation AUC")
    ax.set_title("Figure 4: Mass and Nodule by architecture; bars = DeLong SD")
    ax.legend(fontsize=8)
    return _save(fig, out / "figure4.png")
