"""``cxr-fast report A --against B``: two studies side by side, cell by cell, with the paper's z-test.

Made for the image-wise paper study against its patient-wise repeat (configs/paper-patients.yaml): the
difference per cell is how much of that AUC the split explains, and the per-label range across resolutions
is how much of the resolution effect survives. The two studies' validation images differ, so only the
unpaired z-test applies. Differing inits or splits are stated, never hidden.
"""

from __future__ import annotations

from typing import Any

from cxr_fast.report.data import (Study, auc_of, init_kind, ordered, sd_of, split_of, variant_name,
                                   variant_tag)
from cxr_fast.report.format import Section, auc_text, blank, fmt_p, fmt_signed, fmt_z, markdown
from cxr_fast.report.provenance import init_summary
from cxr_fast.report.stats import Z_TEST, z_test
from cxr_fast.vocabulary import SPLIT_NAMES

Key = tuple[str, int, str, int, str]  # label, res, arch, epochs, variant tag


def _key(r: dict[str, Any]) -> Key:
    return (r["label"], int(r["res"]), r["arch"], int(r["epochs"]), variant_tag(r))


def shared_cells(a: Study, b: Study) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(row in A, row in B) for every cell both studies finished, in A's label order, then model, then res."""
    rows_b = {_key(r): r for r in b.rows}
    order = ordered(r["label"] for r in a.rows)
    pairs = [(r, rows_b[_key(r)]) for r in a.rows if _key(r) in rows_b]
    return sorted(pairs, key=lambda p: (order.index(p[0]["label"]), p[0]["arch"], int(p[0]["epochs"]),
                                        variant_tag(p[0]), int(p[0]["res"])))


def _splits(study: Study) -> str:
    found = ordered(split_of(r) for r in study.rows)
    return ", ".join(SPLIT_NAMES.get(s, f"split {s}") for s in found) or "no cells"


def _model(row: dict[str, Any]) -> str:
    """'resnet34 3 ep', with the variant tag of a special cell: 'resnet34 3 ep (subsample_size=2000)'."""
    return variant_name((row["arch"], int(row["epochs"]))) + (f" ({variant_tag(row)})" if variant_tag(row) else "")


def _range(values: list[float]) -> float | None:
    return max(values) - min(values) if len(values) > 1 else None


def against_section(a: Study, b: Study) -> Section:
    """AUC_A, AUC_B, A − B and the z-test p per shared cell, and each label's resolution range in A and B."""
    pairs = shared_cells(a, b)
    inits_differ = any(init_kind(ra) != init_kind(rb) for ra, rb in pairs)
    header = ["Label", "Model", "Resolution", "AUC A", "AUC B", "A − B", "z", f"p ({Z_TEST})"]
    header += ["Init A / B"] if inits_differ else []
    body, records = [], []
    for ra, rb in pairs:
        auc_a, auc_b = auc_of(ra), auc_of(rb)
        diff = auc_a - auc_b if auc_a is not None and auc_b is not None else None
        z, p = z_test(auc_a, sd_of(ra), auc_b, sd_of(rb)) if diff is not None else (None, None)
        line = [ra["label"], _model(ra), f"{ra['res']} px", auc_text(ra), auc_text(rb), fmt_signed(diff), fmt_z(z),
                fmt_p(p)]
        if inits_differ:
            line.append("same" if init_kind(ra) == init_kind(rb) else f"{init_kind(ra)} / {init_kind(rb)}")
        body.append(line)
        records.append({"label": ra["label"], "arch": ra["arch"], "epochs": ra["epochs"],
                        "variant_tag": variant_tag(ra), "res": ra["res"], "auc_a": blank(auc_a),
                        "sd_a": blank(sd_of(ra)), "auc_b": blank(auc_b), "sd_b": blank(sd_of(rb)),
                        "diff": blank(diff), "z": blank(z), "p_z": blank(p), "init_a": init_kind(ra),
                        "init_b": init_kind(rb), "split_a": split_of(ra), "split_b": split_of(rb)})
    text = (f"A: `{a.root}` ({a.name}; {_splits(a)}; init {init_summary(a.rows)}).  \n"
            f"B: `{b.root}` ({b.name}; {_splits(b)}; init {init_summary(b.rows)}).\n\n")
    text += markdown(header, body) if body else "The two studies share no finished cell.\n"
    text += _ranges(pairs)
    notes = [f"{Z_TEST}: the paper's test on the two AUCs and their DeLong SDs; the studies' validation images "
             "differ, so no paired test applies. 'tied' cells (the model ranked nothing) are not tested.",
             ("Inits differ between A and B (column 'Init A / B'): a difference then mixes the init's effect with "
              "the split's.") if inits_differ else "Both studies' cells share their init, cell by cell."]
    fields = ["label", "arch", "epochs", "variant_tag", "res", "auc_a", "sd_a", "auc_b", "sd_b", "diff", "z", "p_z",
              "init_a", "init_b", "split_a", "split_b"]
    return Section("against", f"{a.name} (A) against {b.name} (B)", text, notes, records, fields)


def _ranges(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    """Per label and model, best − worst AUC across the shared resolutions: the resolution effect in A and B."""
    groups: dict[tuple[str, str], list[tuple[float | None, float | None]]] = {}
    for ra, rb in pairs:
        groups.setdefault((ra["label"], _model(ra)), []).append((auc_of(ra), auc_of(rb)))
    body = []
    for (label, model), vals in groups.items():
        both = [(x, y) for x, y in vals if x is not None and y is not None]
        ra_, rb_ = _range([x for x, _ in both]), _range([y for _, y in both])
        if ra_ is not None and rb_ is not None:
            body.append([label, model, str(len(both)), f"{ra_:.3f}", f"{rb_:.3f}", fmt_signed(ra_ - rb_)])
    if not body:
        return ""
    header = ["Label", "Model", "Resolutions", "AUC range A", "AUC range B", "A − B"]
    intro = "\nResolution effect (best − worst AUC over the resolutions both studies scored):\n\n"
    return intro + markdown(header, body)
