"""``cxr-fast report A --against B``: two studies side by side, cell by cell, with the paper's z-test.

Made for the image-wise paper study against its patient-wise repeat (configs/paper-patients.yaml): the
difference per cell is how much of that AUC the split explains, and the per-label range across resolutions
is how much of the resolution effect survives. The two studies' validation images differ, so only the
unpaired z-test applies. Differing inits or splits are stated, never hidden.
"""

from __future__ import annotations

from typing import Any

from cxr_fast.errors import CxrError
from cxr_fast.report.data import (Study, auc_of, init_kind, ordered, recipe_of, sd_of, split_of, variant_name,
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


def _configured(study: Study) -> dict[str, Any]:
    """The study's result-changing run settings from its study.yaml, the schema's defaults filled in (empty
    without a study.yaml: then only its rows can speak)."""
    from cxr_fast.schema.run import GRID_FIELDS, SPEED_ONLY, RunConfig

    if not study.config:
        return {}
    train = study.config.get("train") or {}
    defaults = RunConfig.model_construct()
    return {n: train.get(n, getattr(defaults, n)) for n in RunConfig.names()
            if n not in GRID_FIELDS and n not in SPEED_ONLY}


# What each row records of its run, for studies compared by their rows (a row outlives a changed study.yaml).
_ROW_SETTINGS = {"recipe": recipe_of, "init": init_kind, "split": split_of,
                 "seed": lambda r: str(r.get("seed", "unknown")),
                 "subsample_size": lambda r: str(r.get("subsample_size", "unknown")),
                 "epochs": lambda r: str(r["epochs"])}


def setting_differences(a: Study, b: Study) -> list[str]:
    """'lr 0.0005 / 0.001' for every setting in which A and B differ: their study.yaml (result-changing
    settings, defaults filled in), then what their rows record (recipe, init, split, seed, epochs, ...)."""
    conf_a, conf_b = _configured(a), _configured(b)
    out: dict[str, str] = {}
    for name in conf_a.keys() & conf_b.keys():
        if conf_a[name] != conf_b[name]:
            out[name] = f"{name} {conf_a[name]} / {conf_b[name]}"
    for name, of in _ROW_SETTINGS.items():
        seen_a, seen_b = ordered(of(r) for r in a.rows), ordered(of(r) for r in b.rows)
        if name not in out and seen_a and seen_b and set(seen_a) != set(seen_b):
            out[name] = f"{name} {', '.join(seen_a)} / {', '.join(seen_b)}"
    return [out[k] for k in sorted(out)]


def check_same_init(a: Study, b: Study, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    """Refuse, as Table 2 does, to set cells of different inits beside each other (``--mixed-init`` allows it):
    the difference would mix the init's effect with the one the comparison is for."""
    differ = [(ra, rb) for ra, rb in pairs if init_kind(ra) != init_kind(rb)]
    if differ:
        ra, rb = differ[0]
        raise CxrError(f"{a.root} and {b.root} started {len(differ)} shared cell(s) from different inits (e.g. "
                       f"{ra['cell_id']}: {init_kind(ra)} in A, {init_kind(rb)} in B); --against compares same-init "
                       "runs, as Table 2 does: rerun one study with the other's init, or pass --mixed-init to "
                       "compare them anyway, each cell marked")


def against_section(a: Study, b: Study, mixed_init: bool = False) -> Section:
    """AUC_A, AUC_B, A − B and the z-test p per shared cell, and each label's resolution range in A and B;
    every setting that differs is stated, and different inits are refused unless ``mixed_init``."""
    pairs = shared_cells(a, b)
    if not mixed_init:
        check_same_init(a, b, pairs)
    inits_differ = any(init_kind(ra) != init_kind(rb) for ra, rb in pairs)
    differences = setting_differences(a, b)
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
    text += (f"Settings that differ (A / B): {'; '.join(differences)}.\n\n" if differences else
             "No setting that changes results differs between A and B.\n\n")
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
