"""External validation beside the internal AUC: each finished cell's score on another dataset's images of its
finding (``cxr_fast.evaluate``, run by a study's ``external:`` after each cell), with DeLong SDs, and the labels
an external dataset could not map, named with the reason.
"""

from __future__ import annotations

from typing import Any

from cxr_fast.report.data import Study, ordered
from cxr_fast.report.format import DASH, Section, fmt_auc, markdown

FIELDS = ["label", "arch", "res", "auc", "auc_sd", "external_dataset", "external_auc", "external_auc_sd",
          "external_n_pos", "external_n_neg", "external_status"]


def external_records(study: Study) -> list[dict[str, Any]]:
    """One record per (cell, external dataset), in the rows' order."""
    out = []
    for row in study.ordinary:
        for ext in row.get("external") or []:
            out.append({"label": row["label"], "arch": row["arch"], "res": row["res"], "auc": row.get("auc"),
                        "auc_sd": row.get("auc_sd"), "external_dataset": ext.get("dataset"),
                        "external_auc": ext.get("auc"), "external_auc_sd": ext.get("auc_sd"),
                        "external_n_pos": ext.get("n_pos"), "external_n_neg": ext.get("n_neg"),
                        "external_status": ext.get("status")})
    return out


def external_section(study: Study) -> Section | None:
    """The internal and external AUC at each resolution, per label and architecture; None without external scores."""
    records = external_records(study)
    if not records:
        return None
    datasets = ordered(r["external_dataset"] for r in records)
    scored = [r for r in records if not str(r["external_status"] or "").startswith("unmapped")]
    body = []
    for label in ordered(r["label"] for r in scored):
        for arch in ordered(r["arch"] for r in scored if r["label"] == label):
            for res in sorted({r["res"] for r in scored if r["label"] == label and r["arch"] == arch}):
                mine = [r for r in scored if (r["label"], r["arch"], r["res"]) == (label, arch, res)]
                cells = [next((_ext(r) for r in mine if r["external_dataset"] == d), DASH) for d in datasets]
                body.append([label, arch, f"{res} px", fmt_auc(mine[0]["auc"], mine[0]["auc_sd"]), *cells])
    unmapped = {(r["label"], r["external_dataset"]): r["external_status"] for r in records if r not in scored}
    notes = ["Internal: the run's own validation images (its dataset's split). External: all positives plus seeded "
             "negatives of the same finding in the other dataset, every one a test image, scored by the same model "
             "with the same test-time augmentation (AUC ± DeLong SD; positives+/negatives- scored). Sets that share images with the training "
             "images (by the datasets' own word, or by 32 px pixel hashes) are refused, never scored."]
    notes += [f"{label} not mapped by {dataset}: {why.removeprefix('unmapped: ')}"
              for (label, dataset), why in unmapped.items()]
    header = ["label", "architecture", "resolution", "internal AUC (SD)", *[f"external: {d} AUC (SD)" for d in datasets]]
    text = markdown(header, body) if body else "No label could be scored on the external datasets."
    return Section("external", "External validation", text, notes, records, FIELDS)


def _ext(r: dict[str, Any]) -> str:
    if r["external_auc"] is None:
        return str(r["external_status"] or DASH)
    return f"{fmt_auc(r['external_auc'], r['external_auc_sd'])} ({r['external_n_pos']}+/{r['external_n_neg']}-)"
