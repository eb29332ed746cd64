"""``cxr-fast report DIR --json PATH``: every cell of a study for machines to read, and the controls' answers.

One record per finished ordinary cell: label, resolution, architecture, epochs, AUC, DeLong SD, and the paired
DeLong p against the label's highest resolution (null at the highest itself; ``controls.against_highest``,
the same test the controls section states). ``controls`` is the section's two answers as data, or null for a
study without them. With a batch-size axis (``batch_sizes:``) each cell record names its ``batch_size``, its test
made within that batch size (``report.data.batch_views``). ``mm_per_px``: each label's resolutions in millimetres
per pixel (``report.spacing``).
``noninferiority``: the margin, α and reference of the stated procedure and each label's smallest non-inferior
resolution, with its tests, seeds and costs (``report.noninferior``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxr_fast.io import write_json
from cxr_fast.report.controls import cell_records, controls_summary
from cxr_fast.report.data import BATCH, Study, batch_views
from cxr_fast.report.noninferior import NonInferiority, noninferiority
from cxr_fast.report.spacing import SpacingSummary, spacing_summary

SCHEMA = "cxr-fast.report/1"


def report_document(study: Study, spacing: SpacingSummary | None = None,
                    needed: NonInferiority | None = None) -> dict[str, Any]:
    """The whole JSON document (no machine paths: the study is named, not located); ``spacing``, ``needed``: the
    summaries already made for report.md, else made here (``needed`` by the procedure's defaults)."""
    spacing = spacing if spacing is not None else spacing_summary(study)
    needed = needed if needed is not None else noninferiority(study)
    cells = [{**rec, **({BATCH: size} if size is not None else {})} for size, view in batch_views(study)
             for rec in cell_records(view)]
    return {"schema": SCHEMA, "study": study.name, "runs_finished": len(study.rows), "cells": cells,
            "controls": controls_summary(study), "mm_per_px": spacing.document(),
            "noninferiority": needed.document()}


def write_report_json(study: Study, path: str | Path, spacing: SpacingSummary | None = None,
                      needed: NonInferiority | None = None) -> Path:
    write_json(path, report_document(study, spacing, needed))
    return Path(path)
