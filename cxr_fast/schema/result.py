"""A study's result row (one line of ``results.jsonl``), checked by one rule wherever it is read back: by the
study when it resumes (``cxr_fast.study.results``) and by the report (``cxr_fast.report.data``).

A row is JSON a user can edit, copy or damage. A NaN, a null or a string AUC would otherwise read as the
not-finished mark under "4 of 4 runs finished", an AUC of 1.7 would get the star, and ``res: "abc"`` would be
a traceback. Here each is one line naming ``results.jsonl:LINE``, the cell, the field and the value. The run
settings a row repeats (label, res, arch, epochs, recipe, init, split, seed, subsample size) are checked by
the run schema itself (``RunConfig``), so a row and a run cannot disagree on what a valid value is; the
metrics are declared below, finite and within their ranges.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cxr_fast.errors import CxrError
from cxr_fast.io import read_jsonl_numbered
from cxr_fast.schema.fields import explain
from cxr_fast.schema.run import RunConfig
from cxr_fast.vocabulary import AUC_TIED as TIED  # the auc_status of a model that ranked nothing

# The run settings a row repeats, checked by RunConfig (the first four are every row's identity).
IDENTITY = ("label", "res", "arch", "epochs")
RUN_KEYS = IDENTITY + ("recipe", "init", "split", "seed", "subsample_size")


class ResultError(CxrError):
    """A results row that cannot be used: one line naming the file, line, cell, field and value."""


class ExternalScore(BaseModel):
    """A row's score on an external dataset (``cxr_fast.evaluate``); ``status`` says why there is no AUC."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    dataset: str = Field(min_length=1)
    auc: float | None = Field(None, ge=0, le=1)
    auc_sd: float | None = Field(None, ge=0)
    n_pos: int | None = Field(None, ge=0)
    n_neg: int | None = Field(None, ge=0)
    status: str | None = None  # "unmapped: ...", "tied"


class RowMetrics(BaseModel):
    """The numbers a row adds to its settings; other keys (provenance, timings) pass through unchecked."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    cell_id: str = Field(min_length=1)
    run_dir: str | None = None
    variant_tag: str | None = None
    auc: float | None = Field(None, ge=0, le=1)
    auc_sd: float | None = Field(None, ge=0)
    auc_status: Literal["tied"] | None = None
    accuracy: float | None = Field(None, ge=0, le=1)
    n_pos: int | None = Field(None, ge=0)
    n_neg: int | None = Field(None, ge=0)
    n_val: int | None = Field(None, ge=0)
    pos_weight: float | None = Field(None, ge=0)
    val_leak_images: int | None = Field(None, ge=0)
    val_leak_share: float | None = Field(None, ge=0, le=1)
    wall_s: float | None = Field(None, ge=0)
    train_images_per_s: float | None = Field(None, ge=0)
    external: list[ExternalScore] | None = None

    @model_validator(mode="after")
    def _auc_or_tied(self) -> RowMetrics:
        """A finished run has an AUC, unless its model tied every score; a tied one has none."""
        if self.auc is None and self.auc_status != TIED:
            raise ValueError(f"auc must be a number in [0, 1], got {self.auc!r} (and the run is not marked "
                             f"auc_status {TIED!r})")
        if self.auc is not None and self.auc_status == TIED:
            raise ValueError(f"auc_status is {TIED!r} but auc is {self.auc!r}")
        return self


def check_row(row: Any, source: str, advice: str | None = None) -> dict[str, Any]:
    """``row`` when it is a usable result row, else ``ResultError`` naming ``source`` (``file:line``) and ending
    in ``advice`` (default: fix or delete that line)."""
    redo = _REDO if advice is None else advice
    delete = "; delete that line to redo its run" if advice is None else advice
    if not isinstance(row, dict):
        raise ResultError(f"{source}: not a result row (a JSON object), got {type(row).__name__}{delete}")
    missing = [k for k in ("cell_id",) + IDENTITY if k not in row]
    if missing:
        raise ResultError(f"{source}: a result row without {', '.join(missing)}{delete}")
    where = f"{source} ({row['cell_id']})" if isinstance(row["cell_id"], str) else source
    try:
        RowMetrics.model_validate(row)
    except ValidationError as exc:
        raise ResultError(explain(exc, where, RowMetrics.model_fields) + redo) from None
    settings = {k: row[k] for k in RUN_KEYS if row.get(k) is not None}
    try:
        RunConfig.parse(settings, source=where)
    except CxrError as exc:
        raise ResultError(f"{exc}{redo}") from None
    return row


_REDO = "; fix or delete that line (its run is then redone)"


def read_result_rows(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """Every row of a ``results.jsonl`` with its line number, each checked; the first bad one is the error."""
    return [(number, check_row(row, f"{path}:{number}")) for number, row in read_jsonl_numbered(path)]
