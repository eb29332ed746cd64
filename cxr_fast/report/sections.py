"""The paper's other results, each as its own section: the significance of each label's best resolution,
Table 3's ResNet34 against DenseNet121, Table 1 (64 against 320 px), the Hernia run on a 2,000-image
subsample, and the leakage the paper did not measure.

Each function takes a loaded study and returns a ``Section``; ``compare`` adds the published value beside
ours (``cxr-fast report --compare-paper``).
"""

from __future__ import annotations

from typing import Any

from cxr_fast import paper_results
from cxr_fast.report.data import (Study, Variant, auc_of, finite, labels, n_val, paper_variant, primary_variant,
                                   resolutions, sd_of, split_of, variant_name, variant_tag, variants)
from cxr_fast.report.format import (NOT_RUN, TIED, Section, auc_text, blank, fmt_auc, fmt_p, fmt_signed, fmt_z,
                                     markdown, res_list)
from cxr_fast.report.stats import (ALPHA, PAIRED, Z_TEST, Comparison, PairTest, compare_resolutions, pair_test,
                                    paper_comparison, paper_pair)
from cxr_fast.vocabulary import SPLIT_NAMES

PAPER_CLAIM = ("“A z-score-based statistical analysis showed that the optimal resolution had a significantly higher "
               "AUC compared against all other image resolutions for all diagnosis labels (P < .05).”")
HERNIA = "Hernia"
HERNIA_GRID = "hernia2000"


# --------------------------------------------------------------------------------------------------
# The best resolution per label, under each test


def _verdict(cmp: Comparison, test: str) -> str:
    """'yes (2 of 2)' or 'no (1 of 2; not 64 px p = 0.210)' for the best against every other resolution."""
    n = len(cmp.tests)
    if n == 0:
        return "no other resolution to test"
    untested = cmp.untested(test)
    if len(untested) == n:
        return "not tested (no shared predictions)" if test == PAIRED else "not tested (an SD is missing)"
    beaten = cmp.beaten(test)
    if len(beaten) == n:
        return f"yes ({n} of {n})"
    misses = [r for r in cmp.not_beaten(test) if r not in untested]
    pval = (lambda r: cmp.tests[r].p) if test == Z_TEST else (lambda r: cmp.tests[r].p_paired)
    shown = ", ".join(f"{r} px p = {fmt_p(pval(r))}" for r in misses)
    extra = f"; untested: {res_list(untested)}" if untested else ""
    if not misses:  # every tested one is beaten: the untested decide, and they cannot
        why = cmp.tests[untested[0]].paired_why if test == PAIRED else "an SD is missing"
        return f"cannot tell ({len(beaten)} of {n} beaten{extra}{', because ' + why if why else ''})"
    return f"no ({len(beaten)} of {n}; not {shown}{extra})"


def significance_section(study: Study, compare: bool) -> Section | None:
    """Per label and model: the starred resolution and whether it beats all others, test by test."""
    header = ["Label", "Model", "Best (*)", f"Beats all others: {Z_TEST}", f"Beats all others: {PAIRED}"]
    if compare:
        header += ["Paper: best", f"Paper: beats all others ({Z_TEST} on its published AUC ± SD)"]
    body, records = [], []
    for v in variants(study):
        for label in labels(study, v):
            cmp = compare_resolutions(study, label, v)
            if cmp.best_res is None:
                continue
            best_auc = auc_of(study.row(label, cmp.best_res, v))
            tied = f"; tied, left out: {res_list(cmp.tied)}" if cmp.tied else ""
            row = [label, variant_name(v), f"{cmp.best_res} px ({best_auc:.3f}){tied}", _verdict(cmp, Z_TEST),
                   _verdict(cmp, PAIRED)]
            rec: dict[str, Any] = {"label": label, "arch": v[0], "epochs": v[1], "best_res": cmp.best_res,
                                   "best_auc": best_auc, "others": len(cmp.tests),
                                   "beaten_z": len(cmp.beaten(Z_TEST)), "beaten_paired": len(cmp.beaten(PAIRED)),
                                   "untested_paired": len(cmp.untested(PAIRED)), "tied": " ".join(map(str, cmp.tied))}
            pv = paper_variant(v)
            paper = paper_comparison(label, *pv) if compare and pv is not None else None
            if compare:
                row += [f"{paper.best_res} px" if paper else "—", _verdict(paper, Z_TEST) if paper else "—"]
                rec.update(paper_best_res=blank(paper.best_res if paper else None),
                           paper_beaten_z=blank(len(paper.beaten(Z_TEST)) if paper else None),
                           paper_others=blank(len(paper.tests) if paper else None))
            body.append(row)
            records.append(rec)
    if not body:
        return None
    notes = [f"`*` is the paper's star: the label's highest AUC (Table 2's footnote), whether or not it is "
             f"significant. A resolution counts as beaten when the best is ahead at two-sided p < {ALPHA:g}.",
             f"{Z_TEST}: the paper's test, on the two AUCs and their DeLong SDs as if independent. {PAIRED}: "
             "DeLong's test on the validation images both runs scored; it uses the covariance of the two AUCs, so "
             "it is usually the more powerful one here, where every resolution of a label shares its validation set.",
             f"The paper's text: {PAPER_CLAIM}",
             "Tied cells (the model gave every image one score) have no AUC to compare and are left out."]
    fields = ["label", "arch", "epochs", "best_res", "best_auc", "others", "beaten_z", "beaten_paired",
              "untested_paired", "tied"] + (["paper_best_res", "paper_others", "paper_beaten_z"] if compare else [])
    return Section("significance", "Best resolution per label, and whether it beats every other",
                   markdown(header, body), notes, records, fields)


# --------------------------------------------------------------------------------------------------
# Table 3's architectures against each other


def architecture_pairs(study: Study) -> list[tuple[Variant, Variant]]:
    """(ResNet, DenseNet)-style pairs: two architectures trained for the same epochs (the paper's B and C)."""
    found = variants(study)
    return [(a, b) for i, a in enumerate(found) for b in found[i + 1:] if a[1] == b[1] and a[0] != b[0]]


def _paper_letter(v: Variant) -> str:
    letters = {k: n for n, k in paper_results.TABLE3_VARIANTS.items()}
    return f" ({letters[v]})" if v in letters else ""


def _architecture_row(study: Study, label: str, res: int, a: Variant, b: Variant,
                      compare: bool) -> tuple[list[str], dict[str, Any]] | None:
    """One (Markdown cells, CSV record) of the comparison; None when neither model has the cell."""
    row_a, row_b = study.row(label, res, a), study.row(label, res, b)
    if row_a is None and row_b is None:
        return None
    t = (pair_test(study, row_a, study, row_b) if row_a is not None and row_b is not None else None) or PairTest(None)
    line = [label, f"{res} px", auc_text(row_a, NOT_RUN), auc_text(row_b, NOT_RUN), fmt_signed(t.diff), fmt_z(t.z),
            fmt_p(t.p), fmt_z(t.z_paired), fmt_p(t.p_paired)]
    rec = {"label": label, "res": res, "arch_a": a[0], "epochs_a": a[1], "arch_b": b[0], "epochs_b": b[1],
           "auc_a": blank(auc_of(row_a)), "sd_a": blank(sd_of(row_a)), "auc_b": blank(auc_of(row_b)),
           "sd_b": blank(sd_of(row_b)), "diff": blank(t.diff), "z": blank(t.z), "p_z": blank(t.p),
           "z_paired": blank(t.z_paired), "p_paired": blank(t.p_paired)}
    if compare:
        pt = paper_pair(label, res, a, b) or PairTest(None)
        line += [fmt_signed(pt.diff), fmt_p(pt.p)]
        rec.update(paper_diff=blank(pt.diff), paper_z=blank(pt.z), paper_p_z=blank(pt.p))
    return line, rec


def architecture_section(study: Study, compare: bool) -> Section | None:
    """Per label and resolution, the paper's z-test between two architectures, and DeLong's paired test."""
    pairs = architecture_pairs(study)
    if not pairs:
        return None
    blocks, records = [], []
    for a, b in pairs:
        header = ["Label", "Resolution", variant_name(a), variant_name(b), "Δ AUC", "z", f"p ({Z_TEST})",
                  "z paired", f"p ({PAIRED})"] + (["paper Δ AUC", f"paper p ({Z_TEST})"] if compare else [])
        found = [got for label in labels(study, a) if label in labels(study, b)
                 for res in sorted(set(resolutions(study, a)) | set(resolutions(study, b)))
                 if (got := _architecture_row(study, label, res, a, b, compare)) is not None]
        records += [rec for _, rec in found]
        title = f"**{variant_name(a)}{_paper_letter(a)} against {variant_name(b)}{_paper_letter(b)}**"
        blocks.append(f"{title}\n\n{markdown(header, [line for line, _ in found])}")
    notes = [f"Δ AUC = first model − second. {Z_TEST}: the paper's z-test from the two AUCs and their DeLong SDs; "
             f"{PAIRED}: on the validation images both models scored (same label, same subsample and split). "
             "— where a cell is missing or tied, or a test does not apply."]
    if compare:
        notes.append(f"'paper' columns apply the paper's {Z_TEST} to its published Table 3 cells of these models.")
    fields = ["label", "res", "arch_a", "epochs_a", "arch_b", "epochs_b", "auc_a", "sd_a", "auc_b", "sd_b", "diff",
              "z", "p_z", "z_paired", "p_paired"] + (["paper_diff", "paper_z", "paper_p_z"] if compare else [])
    return Section("table3_architectures", "Table 3: architectures compared at each resolution",
                   "\n".join(blocks), notes, records, fields)


# --------------------------------------------------------------------------------------------------
# Table 1: 64 against 320 px


def _accuracy_text(row: dict[str, Any] | None) -> str:
    if row is None:
        return NOT_RUN
    return f"{100 * row['accuracy']:.1f}" if finite(row.get("accuracy")) else "unknown"


def _loss_weight(study: Study, label: str, v: Variant) -> tuple[str, float | None]:
    """The label's positive-class weight, from its 320 px cell or any other: a label's cells share a subsample."""
    rows = [study.row(label, res, v) for res in [320] + resolutions(study, v)]
    rows = [r for r in rows if r is not None]
    weights = [float(r["pos_weight"]) for r in rows if finite(r.get("pos_weight"))]
    if not rows:
        return NOT_RUN, None
    return (f"{weights[0]:.3f}", weights[0]) if weights else ("unknown", None)


def table1_section(study: Study, compare: bool) -> Section | None:
    """Table 1's result columns: AUC at 64 and 320 px, accuracy, loss weight; 'not run' where absent."""
    v = primary_variant(study)
    if v is None:
        return None
    shown = labels(study, v) + ([l for l in paper_results.TABLE1 if l not in labels(study, v)] if compare else [])
    header = ["Label", "AUC 64 px", "AUC 320 px", "Accuracy 64 px (%)", "Accuracy 320 px (%)", "Loss weight"]
    if compare:
        header = ["Label", "AUC 64 px", "paper AUC 64 px", "AUC 320 px", "paper AUC 320 px", "Accuracy 64 px (%)",
                  "Accuracy 320 px (%)", "paper accuracy 320 px (%)", "Loss weight", "paper loss weight"]
    body, records = [], []
    for label in shown:
        r64, r320 = study.row(label, 64, v), study.row(label, 320, v)
        weight_text, weight = _loss_weight(study, label, v)
        ours = [auc_text(r64, NOT_RUN), auc_text(r320, NOT_RUN), _accuracy_text(r64), _accuracy_text(r320), weight_text]
        rec = {"label": label, "arch": v[0], "epochs": v[1], "auc64": blank(auc_of(r64)), "sd64": blank(sd_of(r64)),
               "auc320": blank(auc_of(r320)), "sd320": blank(sd_of(r320)),
               "status64": _status(r64), "status320": _status(r320),
               "accuracy64": blank(r64.get("accuracy") if r64 else None),
               "accuracy320": blank(r320.get("accuracy") if r320 else None), "loss_weight": blank(weight)}
        p = paper_results.TABLE1.get(label)
        if compare:
            pub = [fmt_auc(p.auc64.auc, p.auc64.sd), fmt_auc(p.auc320.auc, p.auc320.sd), f"{p.accuracy320:.1f}",
                   f"{p.loss_weight:.3f}"] if p else ["—"] * 4
            ours = [ours[0], pub[0], ours[1], pub[1], ours[2], ours[3], pub[2], ours[4], pub[3]]
            rec.update(paper_auc64=blank(p and p.auc64.auc), paper_auc320=blank(p and p.auc320.auc),
                       paper_accuracy320=blank(p and p.accuracy320), paper_loss_weight=blank(p and p.loss_weight))
        body.append([label] + ours)
        records.append(rec)
    if not body:
        return None
    notes = [f"Model: {variant_name(v)} (this study's Table 2 model; the paper's Table 1 is ResNet34, 3 epochs). "
             "'not run': the study has no finished cell at that resolution; 'tied': the model ranked nothing.",
             "Accuracy: validation images, threshold 0.5 on the TTA mean probability. The paper publishes "
             "accuracy at 320 px only.",
             "Loss weight: the positive class's weight, negatives/positives in the label's whole subsample "
             "(Table 1's 'loss function weight'), as each run recorded it."]
    fields = ["label", "arch", "epochs", "auc64", "sd64", "status64", "auc320", "sd320", "status320", "accuracy64",
              "accuracy320", "loss_weight"]
    fields += ["paper_auc64", "paper_auc320", "paper_accuracy320", "paper_loss_weight"] if compare else []
    return Section("table1", f"Table 1: 64 against 320 px, {variant_name(v)}", markdown(header, body), notes,
                   records, fields)


def _status(row: dict[str, Any] | None) -> str:
    if row is None:
        return "not run"
    return TIED if row.get("auc_status") == TIED else ("ok" if auc_of(row) is not None else "no auc")


# --------------------------------------------------------------------------------------------------
# Hernia on a 2,000-image subsample


def _is_hernia2000(cell: dict[str, Any]) -> bool:
    sub = cell.get("subsample_size", (cell.get("train") or {}).get("subsample_size"))
    grids = cell.get("grids") or ([cell["grid"]] if cell.get("grid") else [])
    return cell.get("label") == HERNIA and (sub == 2000 or HERNIA_GRID in grids)


def hernia_section(study: Study, compare: bool) -> Section:
    """The paper's Hernia run on 2,000 images (AUC 0.943 at 256 px), beside the ordinary Hernia cell."""
    runs = sorted((r for r in study.rows if _is_hernia2000(r)), key=lambda r: (int(r["res"]), r["cell_id"]))
    planned = any(_is_hernia2000(c) for c in study.special_expected + study.expected)
    paper = paper_results.HERNIA_SUBSAMPLE
    header = ["Run", "Model", "Subsample", "Resolution", "AUC ± SD", "Validation images (positives)"]
    header += ["paper AUC"] if compare else []
    body, records = [], []
    for r in runs:
        published = f"{paper.auc:.3f}" if int(r["res"]) == paper.res else "—"
        body.append(_hernia_line(r, "2,000-image subsample", published if compare else None))
        records.append(_hernia_record(r, "subsample2000"))
    if not runs:
        why = NOT_RUN + (" (in the config, not finished)" if planned else "")
        body.append(["2,000-image subsample", "—", f"{paper.subsample_size:,}", f"{paper.res} px", why, "—"]
                    + ([f"{paper.auc:.3f}"] if compare else []))
        records.append({"run": "subsample2000", "res": paper.res, "status": "not run"})
    v = primary_variant(study)
    ordinary = study.row(HERNIA, paper.res, v) if v is not None else None
    if ordinary is None or ordinary not in runs:
        t2 = paper_results.paper_auc(HERNIA, paper.res)
        published = fmt_auc(t2.auc, t2.sd) if t2 is not None else "—"
        if ordinary is not None:
            body.append(_hernia_line(ordinary, "ordinary cell (Table 2)", published if compare else None))
            records.append(_hernia_record(ordinary, "table2"))
        else:
            body.append(["ordinary cell (Table 2)", "—", "—", f"{paper.res} px", NOT_RUN, "—"]
                        + ([published] if compare else []))
            records.append({"run": "table2", "res": paper.res, "status": "not run"})
    notes = [f"The paper: Hernia “improves to {paper.auc:.3f} AUC at a {paper.res} × {paper.res}-pixel resolution "
             f"when the positive sample enrichment is enhanced by further subsampling down to "
             f"{paper.subsample_size:,} training and testing images” (no SD published; "
             f"configs/paper.yaml's grid `{HERNIA_GRID}`).",
             "Its cell never replaces the ordinary Hernia cell of Table 2; both are shown here."]
    fields = ["run", "cell_id", "arch", "epochs", "res", "subsample_size", "auc", "auc_sd", "status", "n_val", "n_pos"]
    return Section("hernia2000", "Hernia on a 2,000-image subsample", markdown(header, body), notes, records, fields)


def _hernia_line(row: dict[str, Any], name: str, published: str | None) -> list[str]:
    """One Markdown row of the Hernia section; ``published`` is the paper column's text (None: no column)."""
    sub = row.get("subsample_size")
    line = [name, f"{row['arch']} {row['epochs']} ep", f"{sub:,}" if finite(sub) else "unknown", f"{row['res']} px",
            auc_text(row, NOT_RUN), f"{n_val(row) or '?'} ({row.get('n_pos', '?')})"]
    return line + ([published] if published is not None else [])


def _hernia_record(row: dict[str, Any], run: str) -> dict[str, Any]:
    return {"run": run, "cell_id": row["cell_id"], "arch": row["arch"], "epochs": row["epochs"], "res": row["res"],
            "subsample_size": blank(row.get("subsample_size")), "auc": blank(auc_of(row)), "auc_sd": blank(sd_of(row)),
            "status": _status(row), "n_val": blank(n_val(row)), "n_pos": blank(row.get("n_pos"))}


# --------------------------------------------------------------------------------------------------
# Leakage


def _share(share: float) -> str:
    pct = 100.0 * share
    return f"{pct:.0f}%" if pct >= 10 or pct == 0 else f"{pct:.1f}%"


def _leak_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["label"], variant_tag(r), split_of(r), r.get("val_leak_share"), r.get("val_leak_images"), n_val(r))


def leakage_section(study: Study, compare: bool) -> Section | None:
    """Per label, the share of validation images whose patient also has an image in training."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in sorted(study.rows, key=lambda r: bool(variant_tag(r))):
        groups.setdefault(_leak_key(r), []).append(r)
    if not groups:
        return None
    per_label: dict[tuple[str, str], int] = {}
    for key in groups:
        per_label[key[:2]] = per_label.get(key[:2], 0) + 1
    lines, records = [], []
    for (label, tag, split, share, leaked, total), members in groups.items():
        name = f"{label} ({tag})" if tag else label
        where = SPLIT_NAMES.get(split, f"split {split}")
        if finite(share):
            counts = f" ({int(leaked):,} of {total:,})" if finite(leaked) and total else ""
            text = f"{name}: {_share(share)} of validation images{counts} have a patient in training ({where})"
        else:
            text = f"{name}: unknown, these runs predate leakage recording ({where})"
        if per_label[(label, tag)] > 1:
            text += f"; {len(members)} of the label's cells"
        lines.append(f"- {text}.")
        records.append({"label": label, "variant_tag": tag, "split": split, "val_leak_share": blank(share),
                        "val_leak_images": blank(leaked), "n_val": blank(total), "cells": len(members),
                        "seed": blank(members[0].get("seed")),
                        "subsample_size": blank(members[0].get("subsample_size"))})
    notes = ["The paper split images, not patients, and did not measure this: a validation image whose patient has "
             "other images in training can be recognised rather than diagnosed, which flatters its AUC. "
             "configs/paper-patients.yaml repeats Table 2 with a patient-wise split; compare the two with "
             "`cxr-fast report A --against B`."]
    if compare:
        notes.append("Paper: not measured (image-wise split, seed and patient overlap not reported).")
    fields = ["label", "variant_tag", "split", "seed", "subsample_size", "val_leak_share", "val_leak_images", "n_val",
              "cells"]
    return Section("leakage", "Leakage: validation images whose patient is also in training", "\n".join(lines) + "\n",
                   notes, records, fields)
