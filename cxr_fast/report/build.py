"""The paper's tables, figures and other results from a study folder, optionally beside the paper.

Reads only ``study.yaml``, ``results.jsonl`` and each run's ``predictions.npz``: no torch, so a report can
be made anywhere the study folder is copied. Tables 2 and 3 star each label's highest AUC, as the paper
did, and mark separately which other resolutions the best beats at p < .05, under the paper's unpaired
z-test (†) and under DeLong's paired test (‡). The parts live in their own modules of ``cxr_fast.report``:
``data`` (reading), ``stats`` (tests), ``sections`` (Table 1, Hernia 2,000, leakage, significance,
architectures), ``controls`` (the control study's two answers), ``noninferior`` (the smallest resolution
non-inferior to a reference), ``document`` (every cell for machines), ``provenance`` (init and recipe),
``against`` and ``figures``.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_fast import paper_results
from cxr_fast.io import write_text
from cxr_fast.report.against import against_section
from cxr_fast.report.controls import control_roles, controls_section
from cxr_fast.report.data import (BATCH, SeedSpread, Study, Variant, auc_of, batch_views, init_of, labels, ordered,
                                  paper_label, paper_variant, primary_variant, read_study, recipe_of, resolutions,
                                  sd_of, seed_spread, split_of, variant_name, variants)
from cxr_fast.report.figures import FIG3_REFERENCE, FIG4_LABELS, figure2, figure3, figure4, table3_variants
from cxr_fast.report.format import (DASH, Section, Table, auc_text, blank, fmt_auc, markdown, with_seeds,
                                    write_section)
from cxr_fast.report.noninferior import ALPHA as NI_ALPHA
from cxr_fast.report.noninferior import MARGIN, Settings, noninferiority, noninferiority_section
from cxr_fast.report.provenance import cell_mark, check_one_init, provenance_note
from cxr_fast.report.external import external_section
from cxr_fast.report.sections import (architecture_section, hernia_section, leakage_section, significance_section,
                                      table1_section)
from cxr_fast.report.spacing import spacing_section, spacing_summary
from cxr_fast.report.stats import ALPHA, PAIRED, Z_TEST, Comparison, compare_resolutions

__all__ = ["Comparison", "ReportResult", "Section", "Study", "Table", "compare_resolutions", "make_report",
           "primary_variant", "read_study", "table2", "table3", "variants"]

STAR, DAGGER, DOUBLE_DAGGER, SECTION_MARK = "*", "†", "‡", "§"

CSV_FIELDS = ["table", "label", "arch", "epochs", "res", "auc", "auc_sd", "auc_status", "best", "p_z_vs_best",
              "sig_z", "p_paired_vs_best", "sig_paired", "auc_sd_note", "n_pos", "n_neg", "init", "weights_sha256",
              "recipe", "split", "paper_auc", "paper_sd", "paper_best"]
SEED_FIELDS = ["seeds", "auc_seed_mean", "auc_seed_sd"]  # a table's CSV has them when a cell ran several seeds


# --------------------------------------------------------------------------------------------------
# Tables 2 and 3


def _cell(row: dict[str, Any] | None, res: int, cmp: Comparison, table_rows: list[dict[str, Any]],
          spread: SeedSpread | None = None) -> str:
    """'0.812 ± 0.010*†‡§ [init random]': the AUC with the star, both tests' marks, the SD note, provenance; a cell
    run with several seeds: '0.812 ± 0.010 (DeLong) ± 0.015 (3 seeds)*'."""
    text = with_seeds(auc_text(row), row, spread)
    if row is None or auc_of(row) is None:
        return text + (cell_mark(row, table_rows) if row is not None else "")
    test = cmp.tests.get(res)
    marks = (STAR if cmp.best_res == res else "") + (DAGGER if test and test.higher(Z_TEST) else "") \
        + (DOUBLE_DAGGER if test and test.higher(PAIRED) else "") + (SECTION_MARK if row.get("auc_sd_note") else "")
    return text + marks + cell_mark(row, table_rows)


def _row_columns(row: dict[str, Any] | None) -> dict[str, Any]:
    """The CSV columns copied from a row: counts, the SD caveat and provenance (empty for a missing cell)."""
    keys = ("auc_status", "auc_sd_note", "n_pos", "n_neg", "weights_sha256")
    out = {k: (row.get(k) if row.get(k) is not None else "") if row else "" for k in keys}
    out.update(init=init_of(row) if row else "", recipe=recipe_of(row) if row else "",
               split=split_of(row) if row else "")
    return out


def _record(table: str, label: str, v: Variant, res: int, row: dict[str, Any] | None, cmp: Comparison,
            compare: bool, spread: SeedSpread | None = None) -> dict[str, Any]:
    """One CSV row of Table 2 or 3: our numbers, both tests against the best, provenance, the paper's value, and
    for a cell run with several seeds their list ('0 1 2'), mean and SD of AUC."""
    test, auc = cmp.tests.get(res), auc_of(row)
    rec = {"table": table, "label": label, "arch": v[0], "epochs": v[1], "res": res, "auc": blank(auc),
           "auc_sd": blank(sd_of(row)), "best": int(cmp.best_res == res) if auc is not None else "",
           "p_z_vs_best": blank(test.p if test else None),
           "sig_z": int(test.higher(Z_TEST)) if test and test.p is not None else "",
           "p_paired_vs_best": blank(test.p_paired if test else None),
           "sig_paired": int(test.higher(PAIRED)) if test and test.p_paired is not None else "",
           **_row_columns(row), "paper_auc": "", "paper_sd": "", "paper_best": ""}
    if spread is not None:
        seeds = spread.record()
        rec.update(seeds=" ".join(str(s) for s in seeds["seeds"] if s is not None),
                   auc_seed_mean=blank(seeds["auc_seed_mean"]), auc_seed_sd=blank(seeds["auc_seed_sd"]))
    pv = paper_variant(v)
    p_auc = paper_results.paper_auc(label, res, *pv) if pv is not None else None
    if compare and p_auc is not None:
        rec.update(paper_auc=p_auc.auc, paper_sd=p_auc.sd, paper_best=int(p_auc.best))
    return rec


def _paper_cell(label: str, res: int, v: Variant) -> str:
    pv = paper_variant(v)
    p = paper_results.paper_auc(label, res, *pv) if pv is not None else None
    return fmt_auc(p.auc, p.sd) + (STAR if p.best else "") if p is not None else DASH


def table_rows(study: Study, columns: list[tuple[str, Variant]]) -> list[dict[str, Any]]:
    """Every finished ordinary row a table shows: what its init check and provenance line cover."""
    return [r for label, v in columns for res in resolutions(study, v) if (r := study.row(label, res, v)) is not None]


def _table(views: list[tuple[int | None, Study]], name: str, title: str, columns: list[tuple[str, Variant]],
           heading: dict[tuple[str, Variant], str], compare: bool, with_paper: Any) -> Table:
    """A resolution-by-column table of AUCs with marks, its CSV records and its notes. With a batch-size axis, one
    set of resolution rows per batch size ('64 × 64, batch 16'), each with its own star, tests and seed spread."""
    rows = [r for _, study in views for r in table_rows(study, columns)]
    header, body, records, untested, seeded = ["Resolution"], [], [], [], False
    for label, v in columns:
        pv = paper_variant(v)
        header += [heading[(label, v)]] + ([f"{label} ({paper_label(pv)})"] if compare and pv is not None
                                           and with_paper(label, pv) else [])
    for size, study in views:
        at = f", batch {size}" if size is not None else ""
        res_all = sorted({r for _, v in columns for r in resolutions(study, v)})
        cols = []
        for label, v in columns:
            cmp = compare_resolutions(study, label, v)  # within one batch size: its rows only
            untested += [f"{heading[(label, v)]}{at} {res} px ({t.paired_why})" for res, t in cmp.tests.items()
                         if t.p_paired is None]
            spreads = {res: seed_spread(study, label, res, v) for res in res_all}
            seeded = seeded or any(s is not None for s in spreads.values())
            cols.append({res: _cell(study.row(label, res, v), res, cmp, rows, spreads[res]) for res in res_all})
            records += [{**_record(name, label, v, res, study.row(label, res, v), cmp, compare, spreads[res]),
                         **({BATCH: size} if size is not None else {})} for res in res_all]
            pv = paper_variant(v)
            if compare and pv is not None and with_paper(label, pv):
                cols.append({res: _paper_cell(label, res, v) for res in res_all})
        body += [[f"{r} × {r}{at}"] + [c[r] for c in cols] for r in res_all]
    notes = _notes(rows, compare, name) + ([_untested_note(untested)] if untested else [])
    notes += [_seeds_note(name)] if seeded else []
    batched = views[0][0] is not None
    notes += [_batch_note(name)] if batched else []
    fields = CSV_FIELDS[:4] + [BATCH] + CSV_FIELDS[4:] if batched else CSV_FIELDS
    return Section(name, title, markdown(header, body), notes, records, fields + (SEED_FIELDS if seeded else []))


def _batch_note(name: str) -> str:
    """What a batch size's own set of rows means."""
    return ("Each batch size of the study (`batch_sizes:`) has its own set of rows ('600 × 600, batch 16'): its star, "
            f"its {Z_TEST} and {PAIRED} (between resolutions at that batch size) and its seed spread are its own; "
            f"runs at different batch sizes are never averaged or taken for seeds of one another ({name}.csv: "
            f"{BATCH}).")


def _seeds_note(name: str) -> str:
    """Which AUC a seeded cell shows, and what its two SDs see."""
    return ("A cell run with several seeds (`seeds:`) shows the AUC ± DeLong SD of its own run, its smallest seed "
            "(seed 0 where listed): the one run every star and test uses, since a paired test needs one validation "
            "set. Then ± the SD (n − 1) of the AUC over its n seeds' runs, which DeLong's SD cannot see: another seed "
            "draws another subsample, validation set, init and augmentation. The mean over seeds is in "
            f"{name}.csv ({', '.join(SEED_FIELDS)}).")


def _untested_note(untested: list[str], shown: int = 6) -> str:
    """Which cells could not get a ‡, and why: a missing mark must not read as 'not significant'."""
    more = f", and {len(untested) - shown} more" if len(untested) > shown else ""
    return (f"No {PAIRED} (so no {DOUBLE_DAGGER} either way) for {len(untested)} cell(s): "
            f"{'; '.join(untested[:shown])}{more}.")


def _table2_variant(study: Study, views: list[tuple[int | None, Study]]) -> Variant | None:
    """Table 2's model: the study's, else (no cell at the study's own batch size) the first batch size's."""
    return primary_variant(study) or next((v for _, s in views if (v := primary_variant(s)) is not None), None)


def _table3_columns(study: Study) -> list[tuple[str, Variant]]:
    return [(label, v) for v in table3_variants(study) for label in FIG4_LABELS if label in labels(study, v)]


def table2(study: Study, compare: bool = False) -> Table | None:
    views = batch_views(study)
    variant = _table2_variant(study, views)
    if variant is None:
        return None
    columns = ordered((label, variant) for _, s in views for label in labels(s, variant))
    title = f"Table 2: AUC ± DeLong SD by resolution and label, {variant_name(variant)}"
    return _table(views, "table2", title, columns, {c: c[0] for c in columns}, compare,
                  lambda label, pv: paper_results.paper_auc(label, 32, *pv) is not None)


def table3(study: Study, compare: bool = False) -> Table | None:
    views = batch_views(study)
    columns = ordered(c for _, s in views for c in _table3_columns(s))
    if not columns:
        return None
    title = "Table 3: Mass and Nodule AUC ± DeLong SD by architecture and epochs"
    return _table(views, "table3", title, columns, {c: f"{c[0]} {variant_name(c[1])}" for c in columns}, compare,
                  lambda label, pv: True)


def _notes(rows: list[dict[str, Any]], compare: bool, name: str) -> list[str]:
    notes = [
        "Values are validation AUC ± DeLong SD; — marks a cell the study has not finished; 'tied' a model that gave "
        "every validation image the same score (it ranked nothing), left out of the star and the tests.",
        f"`{STAR}` marks each label's highest AUC (the paper's star, Table 2's footnote), significant or not.",
        f"{DAGGER}: the best is significantly higher than this cell by the paper's {Z_TEST} (the two AUCs and their "
        f"DeLong SDs, as if independent), p < {ALPHA:g}. {DOUBLE_DAGGER}: by the {PAIRED} on the validation images "
        f"both runs scored, p < {ALPHA:g}. The p-values are in {name}.csv (p_z_vs_best, p_paired_vs_best).",
        "All resolutions of a label use one subsample and one validation set (same seed), so their AUCs are paired.",
    ]
    for note in ordered(str(r["auc_sd_note"]) for r in rows if r.get("auc_sd_note")):
        cells = [str(r.get("cell_id")) for r in rows if r.get("auc_sd_note") == note]
        notes.append(f"{SECTION_MARK} {note} ({', '.join(cells)}).")
    notes.append(provenance_note(rows))
    if compare:
        notes.append("'paper' columns are Sabottke & Spieler 2020 (A: Table 2, ResNet34 3 epochs; B, C: Table 3), "
                     "on real NIH data with ImageNet initialisation, for the paper's model closest to ours (same "
                     "architecture, nearest epochs); the paper's * marks its best resolution per label.")
    return notes


# --------------------------------------------------------------------------------------------------
# The whole report


@dataclass
class ReportResult:
    out: Path
    files: list[Path]
    tables: list[Table]  # Tables 2 and 3
    figure3: list[dict[str, Any]]
    figure3_reference: int | None
    sections: list[Section]  # every section of report.md, the tables included
    json: Path | None = None  # the --json document, when asked for


def check_inits(study: Study) -> None:
    """Refuse Tables 2 and 3 whose cells started from different weights (``--mixed-init`` allows it)."""
    views = batch_views(study)  # every batch size's rows
    v = _table2_variant(study, views)
    if v is not None:
        check_one_init(study, "Table 2", [r for _, s in views for r in table_rows(s, [(label, v) for label in
                                                                                     labels(s, v)])])
    check_one_init(study, "Table 3", [r for _, s in views for r in table_rows(s, _table3_columns(s))])


def make_report(study_dir: str | Path, out: str | Path | None = None, compare: bool = False,
                mixed_init: bool = False, against: str | Path | None = None,
                json_path: str | Path | None = None, margin: float = MARGIN, alpha: float = NI_ALPHA,
                reference: int | None = None) -> ReportResult:
    """Write every table, section and figure of a study folder (and, with ``against``, the two side by side);
    ``json_path``: also every cell and the controls' answers as JSON (``cxr_fast.report.document``);
    ``margin``, ``alpha``, ``reference``: the non-inferiority procedure's settings (``report.noninferior``)."""
    from cxr_fast.cost.plan_report import planned_vs_actual
    from cxr_fast.report.document import write_report_json

    settings = Settings(margin, alpha, reference).checked()  # stated before any study is read
    study = read_study(study_dir)
    other = read_study(against) if against is not None else None
    if not mixed_init:
        check_inits(study)
    out_dir = Path(out) if out is not None else study.root / "report"
    tables = [t for t in (table2(study, compare), table3(study, compare)) if t is not None]
    spacing = spacing_summary(study)  # each resolution in mm per pixel, beside the table of resolutions
    sections = tables[:1] + [spacing_section(study, spacing)] + [s for s in (controls_section(study),) if s is not None]
    sections += tables[1:] + [s for s in (external_section(study),) if s is not None]
    needed = noninferiority(study, settings)  # a reference in no grid is refused here, before anything is written
    sections += [s for s in (significance_section(study, compare), noninferiority_section(needed),
                             architecture_section(study, compare),
                             table1_section(study, compare), hernia_section(study, compare),
                             leakage_section(study, compare)) if s is not None]
    planned = planned_vs_actual(study.root)
    if planned is not None and planned["rows"]:
        sections.append(Section("plan", planned["title"], planned["markdown"], records=planned["rows"],
                                fields=planned["fields"]))
    if other is not None:
        sections.append(against_section(study, other, mixed_init))
    files: list[Path] = []
    for s in sections:
        files += write_section(s, out_dir)
    files += [f for f in (figure2(study, out_dir, compare, control_roles(study)), figure4(study, out_dir, compare))
              if f is not None]
    fig3, fig3_records, ref = figure3(study, out_dir, compare)
    if fig3 is not None:
        files.append(fig3)
    files.append(_write_all_results(study, out_dir))
    figures = sorted(f.name for f in files if f.suffix == ".png")
    files.append(_write_summary(study, out_dir, sections, fig3_records, ref, compare, figures))
    written = write_report_json(study, json_path, spacing, needed) if json_path is not None else None
    return ReportResult(out_dir, sorted(set(files + ([written] if written else []))), tables, fig3_records, ref,
                        sections, written)


def _write_all_results(study: Study, out: Path) -> Path:
    """Every row of the store, flat: the numbers behind the tables, nothing filtered."""
    keys = ordered(k for r in study.rows for k in r if k != "grids")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for r in sorted(study.rows, key=lambda r: (r["label"], r["arch"], int(r["epochs"]), int(r["res"]),
                                               str(r.get("variant_tag") or ""))):
        writer.writerow(r)
    write_text(out / "results.csv", buf.getvalue())
    return out / "results.csv"


def _figure3_text(fig3: list[dict[str, Any]], ref: int | None, compare: bool) -> list[str]:
    source = "320 px (the paper's reference)" if ref == FIG3_REFERENCE else \
        f"{ref} px, the highest resolution ≤ 320 px in this study (320 px was not run)"
    lines = ["## Figure 3: low-resolution AUC as a percentage of the reference", "",
             f"Reference: {source}. SD by the delta method, treating the two AUCs as independent.", ""]
    header = ["Label", "Resolution", f"% of {ref} px"] + (["paper: % of 320 px"] if compare else [])
    body = []
    for r in fig3:
        pct = f"{r['percent']:.1f} ± {r['percent_sd']:.1f}" if r["percent"] is not None else DASH
        row = [r["label"], f"{r['res']} px", pct]
        if compare:
            row.append(f"{r['paper_percent_of_320']:.1f}" if r["paper_percent_of_320"] is not None else DASH)
        body.append(row)
    return lines + [markdown(header, body)]


def _counts(study: Study) -> tuple[int, int, int]:
    """(finished cells the config names, finished rows it no longer names, cells it names): a rerun with
    other epochs keeps the old rows, which must not count as runs of this config."""
    ordinary = {(c["label"], c["res"], c["arch"], c["epochs"]) for c in study.expected}
    seeded = {(c["label"], c["res"], c["arch"], c["epochs"], c.get("grid"), c.get("seed"), c.get(BATCH))
              for c in study.special_expected}
    special = {key[:5] for key in seeded}  # a grid's seed and batch-size copies are one cell each
    finished = 0
    for r in study.rows:
        key = (r["label"], int(r["res"]), r["arch"], int(r["epochs"]))
        if (key in ordinary and not r.get("variant_tag")) or \
                (r.get("variant_tag") and any((*key, g) in special for g in r.get("grids") or [])):
            finished += 1
    n_expected = len(ordinary) + len(seeded)
    if not n_expected:  # no study.yaml: every row is the study
        return len(study.rows), 0, len(study.rows)
    return finished, len(study.rows) - finished, n_expected


def _write_summary(study: Study, out: Path, sections: list[Section], fig3: list[dict[str, Any]], ref: int | None,
                   compare: bool, figures: list[str]) -> Path:
    finished, extra, n_expected = _counts(study)
    more = f"; {extra} more finished run(s) belong to cells no longer in study.yaml" if extra else ""
    lines = [f"# Study report: {study.name}", "",
             f"{finished} of {n_expected} runs finished (study folder `{study.root}`){more}.", ""]
    train = study.config.get("train") or {}
    if train:
        shown = ", ".join(f"{k}={train[k]}" for k in ("data", "subsample_size", "val_fraction", "split", "seed", "init",
                                                      "recipe", "batch_size", "lr", "tta") if k in train)
        lines += [f"Settings: {shown}.", ""]
    lines += [provenance_note(study.rows), ""]
    for s in sections:
        lines.append(s.text())
        if s.name == "table3" and fig3:  # Figure 3 after the tables it is drawn from
            lines += _figure3_text(fig3, ref, compare)
    if fig3 and not any(s.name == "table3" for s in sections):
        lines += _figure3_text(fig3, ref, compare)
    about = {"figure2.png": "AUC vs resolution", "figure3.png": "low resolution as % of the reference",
             "figure4.png": "Mass and Nodule by architecture"}
    if figures:
        lines += ["Figures: " + ", ".join(f"{f} ({about.get(f, '')})" for f in figures) + ".", ""]
    write_text(out / "report.md", "\n".join(lines))
    return out / "report.md"
