"""A study's results store: ``results.jsonl``, one JSON row per finished run, keyed by a stable cell id.

Rows are appended with fsync only after a run has finished, so a kill loses at most the run in flight.
The report (``cxr_fast.report``) reads the same file; paths in a row are relative to the study folder, so
a study can be moved or copied and still be reported.
"""

from __future__ import annotations

import datetime as _dt
import os
import warnings
from pathlib import Path
from typing import Any

from cxr_fast.io import append_jsonl
from cxr_fast.schema.result import check_row, read_result_rows
from cxr_fast.study.grid import RUNS, Cell

STUDY_CONFIG = "study.yaml"
RESULTS = "results.jsonl"
# Metrics copied from a run into its result row.
METRIC_KEYS = ("auc", "auc_sd", "auc_status", "auc_sd_note", "accuracy", "n_pos", "n_neg", "n_val", "wall_s",
               "train_images_per_s", "pos_weight", "precision", "tf32", "graphs", "device", "loader", "recipe", "init",
               "weights_file", "weights_sha256", "split", "subsample_size", "seed", "val_leak_images",
               "val_leak_share", "val_mm_per_px", "dataset", "dataset_version", "external", "pack",
               "gpu_share", "batch_size")


class ResultsStore:
    """``results.jsonl``: one JSON row per finished run, appended with fsync, first row per cell wins.

    A kill during an append can leave a torn last line; opening the store cuts it off, so the next
    append starts on a fresh line and the half-written row is simply redone.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def repair(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            warnings.warn(f"{self.path}: dropped a torn last line (a run was killed while its row was written; "
                          "that run is redone)", stacklevel=2)
            with open(self.path, "r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)
                fh.flush()
                os.fsync(fh.fileno())

    def rows(self) -> list[dict[str, Any]]:
        """Every row, each checked by the one rule the report also reads them by (``schema.result``): a bad
        row is one line naming its line, never a finished cell with an impossible number."""
        return [r for _, r in read_result_rows(self.path)]

    def finished(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for row in self.rows():
            out.setdefault(row["cell_id"], row)
        return out

    def append(self, row: dict[str, Any]) -> None:
        """Write a finished run's row, checked first by the rule it is read back by: an impossible number
        stops the study here, with nothing written, rather than when the report reads it."""
        check_row(row, f"{self.path}: the row of {row.get('cell_id', 'a run')}",
                  advice="; not written, so a rerun redoes that run")
        append_jsonl(self.path, row)


def result_row(cell: Cell, metrics: dict[str, Any]) -> dict[str, Any]:
    """The store row of a finished cell; paths are relative to the study folder, so it can be moved."""
    row: dict[str, Any] = {
        "cell_id": cell.cell_id, "fingerprint": cell.fingerprint, "grids": list(cell.grids),
        "label": cell.label, "res": cell.res, "arch": cell.arch, "epochs": cell.epochs, "variant_tag": cell.tag,
        "run_dir": f"{RUNS}/{cell.cell_id}",
    }
    for key in METRIC_KEYS:
        if key in metrics:
            row[key] = metrics[key]
    row["finished_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return row
