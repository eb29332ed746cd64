"""Each resolution in millimetres per pixel, which carries across detectors where pixel counts do not.

For every label, the validation images its runs scored (``predictions.npz``) are looked up in the metadata of
the data folder ``study.yaml`` names, and ``Dataset.pixel_spacing_mm`` (``data.sets.base``, the one formula) gives each one's mm per
pixel across the image at each resolution of the study: the median and the 10th-90th percentile are shown. The
report never fails for it: a data folder that is not here, or metadata without spacing, reads "unknown", said
once with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr_fast.errors import CxrError
from cxr_fast.report.data import UNKNOWN, Study, ordered, resolutions
from cxr_fast.report.format import DASH, Section, markdown

FIELDS = ["label", "res", "images", "images_known", "mm_per_px_median", "mm_per_px_p10", "mm_per_px_p90"]


@dataclass
class SpacingSummary:
    """Per (label, resolution): median and 10th/90th percentile mm per pixel; ``unknown``: why none is known
    for the whole study (None when some label has them), ``label_unknown``: why one label has none."""

    records: list[dict[str, Any]] = field(default_factory=list)
    unknown: str | None = None
    label_unknown: dict[str, str] = field(default_factory=dict)
    phantom: bool = False

    def document(self) -> dict[str, Any]:
        """The report JSON's ``mm_per_px``: the records, and the reasons where the spacing is unknown, their
        folders named but not located (the document holds no machine paths)."""
        return {"unknown": _unlocated(self.unknown), "phantom": self.phantom, "records": list(self.records),
                "labels_unknown": {k: _unlocated(v) for k, v in self.label_unknown.items()}}


def _unlocated(text: str | None) -> str | None:
    """``text`` with each absolute path cut to its last part."""
    return None if text is None else re.sub(r"(?:/[^\s/:;()',]+)+/([^\s/:;()',]+)", r"\1", text)


def _data_spec(study: Study, label: str) -> tuple[Any, Any, str, Any]:
    """(data, store, dataset, options) the label's cells were run on: its grid's own ``train:`` block first, then
    the study's."""
    from cxr_fast.data.sets.base import DatasetOptions

    train = study.config.get("train") or {}
    own = next((c.get("train") or {} for c in study.expected if c["label"] == label), {})
    pick = {**train, **own}
    options = DatasetOptions(**{k: str(pick[k]) for k in DatasetOptions.names() if k in pick})
    return pick.get("data"), pick.get("store"), str(pick.get("dataset", "auto")), options


def _data_folder(data: Any, store: Any) -> Path:
    """The folder the data setting names on this machine (a phantom spec: its cache folder); made or not."""
    from cxr_fast.data.source import data_folder, is_phantom_spec
    from cxr_fast.stores.manifest import recorded_data_root

    if data is None and store is not None:  # the runs read a store: its manifest names their data
        recorded = recorded_data_root(store)
        if recorded is None:
            raise CxrError(f"store {store} is not here to name its data folder")
        return recorded
    return data_folder(data) if is_phantom_spec(data) else Path(str(data)).expanduser()


def _validation_ids(study: Study, label: str) -> list[str]:
    """Every image a run of ``label`` was validated on (all its resolutions share one validation set)."""
    ids: list[str] = []
    for row in study.ordinary:
        if row["label"] == label:
            found = study.predictions(row)
            if found is not None:
                ids += found[0].tolist()
    return list(dict.fromkeys(ids))


class _Folder:
    """One data folder's metadata, read once for every label that names it."""

    def __init__(self, root: Path, dataset: str, options: Any) -> None:
        from cxr_fast.data.labels import PHANTOM_MARKER
        from cxr_fast.data.sets import read_dataset

        if not root.is_dir():
            raise CxrError(f"data folder {root} is not here")
        self.data = read_dataset(root, dataset, options)
        self.meta = self.data.metadata
        self.phantom = (root / PHANTOM_MARKER).is_file()
        if not self.data.says_spacing():
            raise CxrError(f"{self.meta.source} has no pixel spacing ({self.data.title}: no OriginalImagePixelSpacing "
                           "column, or no spacing in its metadata)")

    def mm_per_px(self, ids: list[str], resolutions: list[int]) -> list[np.ndarray]:
        """mm per pixel of each of ``ids`` at each resolution; the rows looked up once, not once per resolution."""
        return [self.data.pixel_spacing_mm(ids, res) for res in resolutions]


def spacing_summary(study: Study) -> SpacingSummary:
    """mm per pixel at each resolution, per label, over its validation images; reasons where unknown."""
    out = SpacingSummary()
    folders: dict[tuple[Any, ...], _Folder | str] = {}
    labels = ordered(r["label"] for r in study.ordinary)
    res_all = resolutions(study)
    for label in labels:
        try:
            data, store, dataset, options = _data_spec(study, label)
            root = _data_folder(data, store)
        except CxrError as exc:
            out.label_unknown[label] = str(exc)
            continue
        key = (root, dataset, options)
        if key not in folders:
            try:
                folders[key] = _Folder(root, dataset, options)
            except (CxrError, OSError) as exc:
                folders[key] = str(exc)
        folder = folders[key]
        if isinstance(folder, str):
            out.label_unknown[label] = folder
            continue
        out.phantom = out.phantom or folder.phantom
        _label_records(out, folder, label, _validation_ids(study, label), res_all)
    if labels and len(out.label_unknown) == len(labels):
        out.unknown = "; ".join(ordered(out.label_unknown.values()))
    elif not labels:
        out.unknown = "no finished runs"
    return out


def _label_records(out: SpacingSummary, folder: _Folder, label: str, ids: list[str], res_all: list[int]) -> None:
    """One record per resolution for ``label``, or the reason it has none."""
    if not ids:
        out.label_unknown[label] = "no predictions.npz to name its validation images"
        return
    try:
        per_res = folder.mm_per_px(ids, res_all)
    except CxrError as exc:
        out.label_unknown[label] = f"{exc} (its runs were validated on other data)"
        return
    if not per_res or not np.isfinite(per_res[0]).any():
        out.label_unknown[label] = f"the metadata gives no spacing for its {len(ids)} validation images"
        return
    for res, mm in zip(res_all, per_res):
        known = mm[np.isfinite(mm)]
        p10, median, p90 = (float(x) for x in np.percentile(known, [10, 50, 90]))
        out.records.append({"label": label, "res": res, "images": len(ids), "images_known": int(known.size),
                            "mm_per_px_median": median, "mm_per_px_p10": p10, "mm_per_px_p90": p90})


def spacing_section(study: Study, summary: SpacingSummary) -> Section:
    """The table (resolution by label) with its notes, or one line saying why the spacing is unknown."""
    title = "Resolution in millimetres"
    if summary.unknown is not None:
        return Section("spacing", title, f"Millimetres per pixel: {UNKNOWN} ({summary.unknown}).\n")
    labels = ordered(r["label"] for r in summary.records) + list(summary.label_unknown)
    res_all = sorted({r["res"] for r in summary.records})
    cell = {(r["label"], r["res"]): f"{r['mm_per_px_median']:.3f} ({r['mm_per_px_p10']:.3f}–{r['mm_per_px_p90']:.3f})"
            for r in summary.records}
    body = [[f"{res} × {res}"] + [cell.get((label, res), UNKNOWN if label in summary.label_unknown else DASH)
                                  for label in labels] for res in res_all]
    counts = ordered(f"{r['label']}: {r['images_known']} of {r['images']}" for r in summary.records)
    notes = [("mm per pixel across the image (x) at each training resolution r: the original's pixel spacing times "
              "its width in pixels (NIH's OriginalImagePixelSpacing and OriginalImage width), over r, since the whole "
              "image is squeezed to r × r. Median (10th–90th percentile) over each label's validation images whose "
              f"spacing is known ({'; '.join(counts)}).")]
    notes += [f"{label}: {UNKNOWN} ({why})." for label, why in summary.label_unknown.items()]
    if summary.phantom:
        notes.append("The data is the built-in phantom: its spacing is the one it writes into its metadata, "
                     "not a real detector's.")
    return Section("spacing", title, markdown(["Resolution"] + labels, body), notes, summary.records, FIELDS)
