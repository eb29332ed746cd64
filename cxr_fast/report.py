"""The paper's tables and figures from a study folder: Table 2, Table 3, Figures 2-4, optionally beside the paper.

Reads only ``study.yaml``, ``results.jsonl`` and each run's ``predictions.npz``: no torch, so a report can
be made anywhere the study folder is copied. A best resolution is starred only where it beats every
other resolution of its label at p < .05: with DeLong's paired test when both runs scored the same
validation images (every resolution of a label shares its subsample and validation set), else with the
paper's unpaired z-test on the two AUCs and their DeLong SDs.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from cxr_fast import paper_results
from cxr_fast.errors import CxrError
from cxr_fast.io import atomic_path, read_jsonl, write_text

ALPHA = 0.05
DASH = "—"
FIG3_REFERENCE = 320
FIG4_LABELS = ("Mass", "Nodule")

Variant = tuple[str, int]  # (arch, epochs)


# --------------------------------------------------------------------------------------------------
# Loading


@dataclass
class Study:
    root: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]]  # one per cell, first row per cell id
    expected: list[dict[str, Any]] = field(default_factory=list)  # cells the config names (label, res, arch, epochs)

    def row(self, label: str, res: int, variant: Variant) -> dict[str, Any] | None:
        for r in self.rows:
            if (r["label"], int(r["res"]), r["arch"], int(r["epochs"])) == (label, res, variant[0], variant[1]):
                return r
        return None


def load_study(root: str | Path) -> Study:
    import yaml

    root = Path(root)
    results = root / "results.jsonl"
    if not results.is_file():
        raise CxrError(f"{root} is not a study folder (no results.jsonl); run `cxr-fast study CONFIG --out {root}`")
    seen: dict[str, dict[str, Any]] = {}
    for r in read_jsonl(results):
        if isinstance(r, dict) and {"cell_id", "label", "res", "arch", "epochs"} <= set(r):
            seen.setdefault(r["cell_id"], r)
    config: dict[str, Any] = {}
    if (root / "study.yaml").is_file():
        config = yaml.safe_load((root / "study.yaml").read_text(encoding="utf-8")) or {}
    expected = []
    for g in config.get("grids") or []:
        for label in g.get("labels", []):
            for arch in g.get("archs", ["resnet34"]):
                for res in g.get("resolutions", []):
                    expected.append({"label": label, "res": int(res), "arch": arch, "epochs": int(g.get("epochs", 3)),
                                     "grid": g.get("name")})
    return Study(root, config, list(seen.values()), expected)


def _cells(study: Study) -> list[dict[str, Any]]:
    """Every (label, res, arch, epochs) the study names or holds, config order first."""
    out, keys = [], set()
    for c in [*study.expected, *study.rows]:
        key = (c["label"], int(c["res"]), c["arch"], int(c["epochs"]))
        if key not in keys:
            keys.add(key)
            out.append({"label": key[0], "res": key[1], "arch": key[2], "epochs": key[3], "grid": c.get("grid")})
    return out


def _ordered(values: Iterable[Any]) -> list[Any]:
    seen: list[Any] = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


def variants(study: Study) -> list[Variant]:
    """(arch, epochs) pairs present, the paper's A, B, C order first."""
    found = _ordered((c["arch"], c["epochs"]) for c in _cells(study))
    paper = [v for v in paper_results.TABLE3_VARIANTS.values() if v in found]
    return paper + [v for v in found if v not in paper]


def primary_variant(study: Study) -> Variant | None:
    """Table 2's variant: the first architecture of the grid named ``table2``, else the most common variant."""
    for g in study.config.get("grids") or []:
        if g.get("name") == "table2":
            return (g.get("archs", ["resnet34"])[0], int(g.get("epochs", 3)))
    cells = _cells(study)
    if not cells:
        return None
    counts: dict[Variant, int] = {}
    for c in cells:
        counts[(c["arch"], c["epochs"])] = counts.get((c["arch"], c["epochs"]), 0) + 1
    return max(counts, key=lambda v: counts[v])  # ties: first seen (dicts keep order; max keeps the first)


def _labels(study: Study, variant: Variant) -> list[str]:
    return _ordered(c["label"] for c in _cells(study) if (c["arch"], c["epochs"]) == variant)


def _resolutions(study: Study, variant: Variant | None = None) -> list[int]:
    return sorted({c["res"] for c in _cells(study) if variant is None or (c["arch"], c["epochs"]) == variant})


# --------------------------------------------------------------------------------------------------
# Statistics


@dataclass
class Comparison:
    best_res: int | None
    starred: bool
    p_vs_best: dict[int, float]  # res -> p of (best vs res)
    tests: dict[int, str]  # res -> "paired DeLong" | "z-test"


def _predictions(study: Study, row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    path = study.root / str(row.get("run_dir", "")) / "predictions.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        return np.asarray(z["image_ids"]).astype(str), np.asarray(z["labels"]), np.asarray(z["scores"])


def compare_resolutions(study: Study, label: str, variant: Variant) -> Comparison:
    """Best resolution of a label and whether it beats each other resolution at p < ALPHA."""
    from cxr_fast.metrics import auc_z_test, paired_delong_test

    rows = {int(r["res"]): r for r in study.rows
            if r["label"] == label and (r["arch"], int(r["epochs"])) == variant and _finite(r.get("auc"))}
    if not rows:
        return Comparison(None, False, {}, {})
    best = max(rows, key=lambda res: (rows[res]["auc"], -res))
    p_values: dict[int, float] = {}
    tests: dict[int, str] = {}
    best_pred = _predictions(study, rows[best])
    for res, row in rows.items():
        if res == best:
            continue
        other = _predictions(study, row)
        p = None
        if best_pred is not None and other is not None:
            aligned = _align(best_pred, other)
            if aligned is not None:
                try:
                    _, p = paired_delong_test(*aligned)
                    tests[res] = "paired DeLong"
                except CxrError:
                    p = None
        if p is None:
            _, p = auc_z_test(rows[best]["auc"], rows[best].get("auc_sd") or 0.0, row["auc"], row.get("auc_sd") or 0.0)
            tests[res] = "z-test"
        p_values[res] = float(p)
    starred = bool(p_values) and all(p < ALPHA for p in p_values.values()) and all(
        rows[best]["auc"] > rows[r]["auc"] for r in p_values)
    return Comparison(best, starred, p_values, tests)


def _align(a: tuple[np.ndarray, np.ndarray, np.ndarray],
           b: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(labels, scores_a, scores_b) on the same images in the same order, or None if the images differ."""
    ids_a, y_a, s_a = a
    ids_b, y_b, s_b = b
    if len(ids_a) != len(ids_b) or set(ids_a.tolist()) != set(ids_b.tolist()) or len(set(ids_a.tolist())) != len(ids_a):
        return None
    order = {k: i for i, k in enumerate(ids_b.tolist())}
    idx = np.array([order[k] for k in ids_a.tolist()])
    if not np.array_equal(y_a, y_b[idx]):
        return None
    return y_a, s_a, s_b[idx]


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def ratio(study: Study, label: str, variant: Variant, res: int, ref: int) -> tuple[float, float] | None:
    """AUC(res) / AUC(ref) in percent with a delta-method SD treating the two AUCs as independent."""
    a, b = study.row(label, res, variant), study.row(label, ref, variant)
    if a is None or b is None or not _finite(a.get("auc")) or not _finite(b.get("auc")) or b["auc"] <= 0:
        return None
    r = a["auc"] / b["auc"]
    rel = math.hypot((a.get("auc_sd") or 0.0) / a["auc"] if a["auc"] else 0.0, (b.get("auc_sd") or 0.0) / b["auc"])
    return 100.0 * r, 100.0 * r * rel


def figure3_reference(study: Study, variant: Variant) -> int | None:
    """320 px, the paper's reference, or the highest resolution present at or below it."""
    present = sorted({int(r["res"]) for r in study.rows if (r["arch"], int(r["epochs"])) == variant})
    below = [r for r in present if r <= FIG3_REFERENCE]
    return below[-1] if below else None


# --------------------------------------------------------------------------------------------------
# Tables


def _fmt(auc: float | None, sd: float | None, star: bool = False) -> str:
    if not _finite(auc):
        return DASH
    sd_s = f" ± {sd:.3f}" if _finite(sd) else ""
    return f"{auc:.3f}{sd_s}{'*' if star else ''}"


def _markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


@dataclass
class Table:
    name: str
    title: str
    markdown: str
    records: list[dict[str, Any]]  # the CSV rows
    notes: list[str]


CSV_FIELDS = ["table", "label", "arch", "epochs", "res", "auc", "auc_sd", "best", "starred", "p_vs_best", "test",
              "n_pos", "n_neg", "paper_auc", "paper_sd", "paper_best"]


def _column_records(study: Study, table: str, label: str, variant: Variant, resolutions: list[int],
                    compare: bool) -> tuple[list[dict[str, Any]], dict[int, str], dict[int, str]]:
    """CSV records plus the Markdown cells (ours, paper's) of one label/variant column."""
    cmp = compare_resolutions(study, label, variant)
    records, ours, paper = [], {}, {}
    for res in resolutions:
        row = study.row(label, res, variant)
        auc = row.get("auc") if row else None
        sd = row.get("auc_sd") if row else None
        is_best = cmp.best_res == res
        pv = paper_variant(variant)
        p_auc = paper_results.paper_auc(label, res, *pv) if pv is not None else None
        rec = {"table": table, "label": label, "arch": variant[0], "epochs": variant[1], "res": res,
               "auc": auc if _finite(auc) else "", "auc_sd": sd if _finite(sd) else "",
               "best": int(is_best) if _finite(auc) else "", "starred": int(is_best and cmp.starred) if _finite(auc) else "",
               "p_vs_best": cmp.p_vs_best.get(res, ""), "test": cmp.tests.get(res, ""),
               "n_pos": row.get("n_pos", "") if row else "", "n_neg": row.get("n_neg", "") if row else "",
               "paper_auc": "", "paper_sd": "", "paper_best": ""}
        if compare and p_auc is not None:
            rec.update(paper_auc=p_auc.auc, paper_sd=p_auc.sd, paper_best=int(p_auc.best))
        records.append(rec)
        ours[res] = _fmt(auc, sd, is_best and cmp.starred)
        paper[res] = _fmt(p_auc.auc, p_auc.sd, p_auc.best) if p_auc is not None else DASH
    return records, ours, paper


def _variant_name(v: Variant) -> str:
    return f"{v[0]} {v[1]} ep"


def paper_variant(v: Variant) -> Variant | None:
    """The paper's model closest to ours: the same architecture and epochs, else the same architecture with the
    nearest epochs (a 1-epoch ResNet34 is compared with the paper's 3-epoch Table 2), else None."""
    known = list(paper_results.TABLE3_VARIANTS.values())
    if v in known:
        return v
    same = [k for k in known if k[0] == v[0]]
    return min(same, key=lambda k: (abs(k[1] - v[1]), k[1])) if same else None


def _paper_label(v: Variant) -> str:
    letter = {k: n for n, k in paper_results.TABLE3_VARIANTS.items()}[v]
    return f"paper {letter}: {_variant_name(v)}"


def table2(study: Study, compare: bool = False) -> Table | None:
    variant = primary_variant(study)
    if variant is None:
        return None
    labels, resolutions = _labels(study, variant), _resolutions(study, variant)
    header = ["Resolution"]
    columns: list[dict[int, str]] = []
    records: list[dict[str, Any]] = []
    for label in labels:
        recs, ours, paper = _column_records(study, "table2", label, variant, resolutions, compare)
        records += recs
        header.append(label)
        columns.append(ours)
        pv = paper_variant(variant)
        if compare and pv is not None and paper_results.paper_auc(label, 32, *pv) is not None:
            header.append(f"{label} ({_paper_label(pv)})")
            columns.append(paper)
    body = [[f"{r} × {r}"] + [col[r] for col in columns] for r in resolutions]
    title = f"Table 2: AUC ± DeLong SD by resolution and label, {_variant_name(variant)}"
    return Table("table2", title, _markdown(header, body), records, _notes(study, compare))


def table3(study: Study, compare: bool = False) -> Table | None:
    present = [v for v in variants(study) if any(l in FIG4_LABELS for l in _labels(study, v))]
    if not present:
        return None
    resolutions = sorted({r for v in present for r in _resolutions(study, v)})
    header = ["Resolution"]
    columns: list[dict[int, str]] = []
    records: list[dict[str, Any]] = []
    for v in present:
        for label in FIG4_LABELS:
            if label not in _labels(study, v):
                continue
            recs, ours, paper = _column_records(study, "table3", label, v, resolutions, compare)
            records += recs
            header.append(f"{label} {_variant_name(v)}")
            columns.append(ours)
            pv = paper_variant(v)
            if compare and pv is not None:
                header.append(f"{label} ({_paper_label(pv)})")
                columns.append(paper)
    body = [[f"{r} × {r}"] + [col[r] for col in columns] for r in resolutions]
    title = "Table 3: Mass and Nodule AUC ± DeLong SD by architecture and epochs"
    return Table("table3", title, _markdown(header, body), records, _notes(study, compare))


def _notes(study: Study, compare: bool) -> list[str]:
    notes = [
        "Values are validation AUC ± DeLong SD; — marks a cell the study has not finished.",
        f"* marks a label's best resolution only where it beats every other resolution at p < {ALPHA:g} "
        "(paired DeLong test on the shared validation images; the unpaired z-test where predictions are missing).",
        "All resolutions of a label use one subsample and one validation set (same seed), so their AUCs are paired.",
    ]
    if compare:
        notes.append("'paper' columns are Sabottke & Spieler 2020 (A: Table 2, ResNet34 3 epochs; B, C: Table 3), "
                     "on real NIH data with ImageNet initialisation, for the paper's model closest to ours (same "
                     "architecture, nearest epochs); the paper's * marks its best resolution per label.")
    return notes


def write_table(table: Table, out: Path) -> list[Path]:
    md = f"## {table.title}\n\n{table.markdown}\n" + "".join(f"- {n}\n" for n in table.notes)
    write_text(out / f"{table.name}.md", md)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table.records)
    write_text(out / f"{table.name}.csv", buf.getvalue())
    return [out / f"{table.name}.md", out / f"{table.name}.csv"]


# --------------------------------------------------------------------------------------------------
# Figures


def _figure(width: float = 7.0, height: float = 4.5) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=120, layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _res_axis(ax: Any, resolutions: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(resolutions)
    ax.set_xticklabels([str(r) for r in resolutions], rotation=45 if len(resolutions) > 5 else 0)
    ax.minorticks_off()
    ax.set_xlabel("input resolution (px)")
    ax.grid(True, alpha=0.3)


def figure2(study: Study, out: Path, compare: bool = False) -> Path | None:
    """AUC against resolution, one line per label, DeLong SD error bars (the paper's Figure 2)."""
    variant = primary_variant(study)
    if variant is None:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    resolutions = _resolutions(study, variant)
    colors = _colors()
    for i, label in enumerate(_labels(study, variant)):
        pts = [(res, r["auc"], r.get("auc_sd") or 0.0) for res in resolutions
               if (r := study.row(label, res, variant)) is not None and _finite(r.get("auc"))]
        color = colors[i % len(colors)]
        if pts:
            x, y, e = zip(*pts)
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, color=color, label=label)
        pv = paper_variant(variant)
        if compare and pv is not None:
            paper = [(res, p.auc) for res in paper_results.RESOLUTIONS
                     if (p := paper_results.paper_auc(label, res, *pv)) is not None]
            if paper:
                px, py = zip(*paper)
                ax.plot(px, py, linestyle="--", color=color, alpha=0.5, label=f"{label} ({_paper_label(pv)})")
                resolutions = sorted(set(resolutions) | set(px))
    _res_axis(ax, resolutions)
    ax.set_ylabel("validation AUC")
    ax.set_title(f"Figure 2: AUC vs resolution ({_variant_name(variant)}); bars = DeLong SD")
    ax.legend(fontsize=8, ncols=2)
    return _save(fig, out / "figure2.png")


def figure3(study: Study, out: Path, compare: bool = False) -> tuple[Path | None, list[dict[str, Any]], int | None]:
    """32 and 64 px AUC as a percentage of the reference resolution's AUC, per label (the paper's Figure 3)."""
    variant = primary_variant(study)
    if variant is None:
        return None, [], None
    ref = figure3_reference(study, variant)
    if ref is None:
        return None, [], None
    labels = _labels(study, variant)
    lows = [r for r in (32, 64) if r < ref]
    records = []
    for label in labels:
        for low in lows:
            got = ratio(study, label, variant, low, ref)
            paper = None
            pv = paper_variant(variant)
            p_low = paper_results.paper_auc(label, low, *pv) if pv is not None else None
            p_ref = paper_results.paper_auc(label, FIG3_REFERENCE, *pv) if pv is not None else None
            if p_low is not None and p_ref is not None:
                paper = 100.0 * p_low.auc / p_ref.auc
            records.append({"label": label, "res": low, "reference": ref,
                            "percent": got[0] if got else None, "percent_sd": got[1] if got else None,
                            "paper_percent_of_320": paper})
    if not lows:
        return None, records, ref
    fig = _figure()
    ax = fig.add_subplot()
    width = 0.8 / len(lows)
    colors = _colors()
    x = np.arange(len(labels))
    for j, low in enumerate(lows):
        vals = [next((r for r in records if r["label"] == lab and r["res"] == low), None) for lab in labels]
        heights = [v["percent"] if v and v["percent"] is not None else np.nan for v in vals]
        errs = [v["percent_sd"] if v and v["percent_sd"] is not None else 0.0 for v in vals]
        pos = x - 0.4 + width * (j + 0.5)
        ax.bar(pos, heights, width, yerr=errs, capsize=3, color=colors[j], label=f"{low} px")
        if compare:
            paper = [v["paper_percent_of_320"] if v and v["paper_percent_of_320"] is not None else np.nan for v in vals]
            ax.scatter(pos, paper, marker="D", s=40, facecolor="white", edgecolor="black", zorder=3,
                       label="paper (% of 320 px)" if j == 0 else None)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30, ha="right")
    ax.axhline(100, color="gray", linewidth=0.8)
    ax.set_ylabel(f"AUC as % of the {ref} px AUC")
    source = "320 px, as in the paper" if ref == FIG3_REFERENCE else f"{ref} px: the highest resolution ≤ 320 in this study"
    ax.set_title(f"Figure 3: low-resolution AUC as % of {source}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, out / "figure3.png"), records, ref


def figure4(study: Study, out: Path, compare: bool = False) -> Path | None:
    """Mass and Nodule AUC against resolution for each architecture/epochs variant (the paper's Figure 4)."""
    present = [v for v in variants(study) if any(l in FIG4_LABELS for l in _labels(study, v))]
    if not present:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    resolutions = sorted({r for v in present for r in _resolutions(study, v)})
    styles = ["-", "-.", ":", (0, (5, 1))]
    colors = {"Mass": "tab:green", "Nodule": "tab:blue"}
    for k, v in enumerate(present):
        for label in FIG4_LABELS:
            pts = [(res, r["auc"], r.get("auc_sd") or 0.0) for res in resolutions
                   if (r := study.row(label, res, v)) is not None and _finite(r.get("auc"))]
            if pts:
                x, y, e = zip(*pts)
                ax.errorbar(x, y, yerr=e, marker="o", capsize=3, color=colors[label], linestyle=styles[k % len(styles)],
                            label=f"{label} {_variant_name(v)}")
            pv = paper_variant(v)
            if compare and pv is not None:
                paper = [(res, p.auc) for res in paper_results.RESOLUTIONS
                         if (p := paper_results.paper_auc(label, res, *pv)) is not None]
                if paper:
                    px, py = zip(*paper)
                    ax.plot(px, py, linestyle="--", color=colors[label], alpha=0.4, label=f"{label} ({_paper_label(pv)})")
                    resolutions = sorted(set(resolutions) | set(px))
    _res_axis(ax, resolutions)
    ax.set_ylabel("validation AUC")
    ax.set_title("Figure 4: Mass and Nodule by architecture; bars = DeLong SD")
    ax.legend(fontsize=8)
    return _save(fig, out / "figure4.png")


def _colors() -> list[str]:
    return [f"C{i}" for i in range(10)]


# --------------------------------------------------------------------------------------------------
# The whole report


@dataclass
class ReportResult:
    out: Path
    files: list[Path]
    tables: list[Table]
    figure3: list[dict[str, Any]]
    figure3_reference: int | None


def make_report(study_dir: str | Path, out: str | Path | None = None, compare: bool = False) -> ReportResult:
    study = load_study(study_dir)
    out_dir = Path(out) if out is not None else study.root / "report"
    files: list[Path] = []
    tables = [t for t in (table2(study, compare), table3(study, compare)) if t is not None]
    for t in tables:
        files += write_table(t, out_dir)
    for fig in (figure2(study, out_dir, compare), figure4(study, out_dir, compare)):
        if fig is not None:
            files.append(fig)
    fig3, fig3_records, ref = figure3(study, out_dir, compare)
    if fig3 is not None:
        files.append(fig3)
    files.append(_write_all_results(study, out_dir))
    figures = [f.name for f in files if f.suffix == ".png"]
    files.append(_write_summary(study, out_dir, tables, fig3_records, ref, compare, figures))
    return ReportResult(out_dir, sorted(set(files)), tables, fig3_records, ref)


def _write_all_results(study: Study, out: Path) -> Path:
    """Every row of the store, flat: the numbers behind the tables, nothing filtered."""
    keys = _ordered(k for r in study.rows for k in r if k != "grids")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for r in sorted(study.rows, key=lambda r: (r["label"], r["arch"], int(r["epochs"]), int(r["res"]))):
        writer.writerow(r)
    write_text(out / "results.csv", buf.getvalue())
    return out / "results.csv"


def _write_summary(study: Study, out: Path, tables: list[Table], fig3: list[dict[str, Any]], ref: int | None,
                   compare: bool, figures: list[str]) -> Path:
    n_expected = len({(c["label"], c["res"], c["arch"], c["epochs"]) for c in study.expected}) or len(study.rows)
    lines = [f"# Study report: {study.config.get('name', study.root.name)}", "",
             f"{len(study.rows)} of {n_expected} runs finished (study folder `{study.root}`).", ""]
    train = study.config.get("train") or {}
    if train:
        shown = ", ".join(f"{k}={train[k]}" for k in ("data", "subsample_size", "val_fraction", "split", "seed",
                                                      "batch_size", "lr", "tta") if k in train)
        lines += [f"Settings: {shown}.", ""]
    for t in tables:
        lines += [f"## {t.title}", "", t.markdown] + [f"- {n}" for n in t.notes] + [""]
    if fig3:
        source = "320 px (the paper's reference)" if ref == FIG3_REFERENCE else \
            f"{ref} px, the highest resolution ≤ 320 px in this study (320 px was not run)"
        lines += ["## Figure 3: low-resolution AUC as a percentage of the reference", "",
                  f"Reference: {source}. SD by the delta method, treating the two AUCs as independent.", ""]
        header = ["Label", "Resolution", f"% of {ref} px"] + (["paper: % of 320 px"] if compare else [])
        body = []
        for r in fig3:
            pct = f"{r['percent']:.1f} ± {r['percent_sd']:.1f}" if r["percent"] is not None else DASH
            row = [r["label"], f"{r['res']} px", pct]
            if compare:
                row.append(f"{r['paper_percent_of_320']:.1f}" if r["paper_percent_of_320"] is not None else DASH)
            body.append(row)
        lines += [_markdown(header, body)]
    about = {"figure2.png": "AUC vs resolution", "figure3.png": "low resolution as % of the reference",
             "figure4.png": "Mass and Nodule by architecture"}
    if figures:
        lines += ["Figures: " + ", ".join(f"{f} ({about.get(f, '')})" for f in sorted(figures)) + ".", ""]
    write_text(out / "report.md", "\n".join(lines))
    return out / "report.md"
