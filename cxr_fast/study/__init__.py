"""The study: a grid of label x resolution x architecture training runs, resumable at any moment.

A study folder holds ``study.yaml`` (the resolved config), ``results.jsonl`` (one row per finished run,
keyed by a stable cell id) and ``runs/<cell id>/`` (each run's own folder, written by ``cxr_fast.train``).
One job per module: ``grid`` (the config, its cells, the one validation of each cell), ``results`` (the
results store and its rows), ``runner`` (decide, prepare the shared stores, run, resume) and ``progress``.
The names a caller needs are imported here.
"""

from cxr_fast.study.grid import (Cell, GridSpec, StudyConfig, apply_overrides, checked_cells, expand,
                                 load_study_config, parse_study)
from cxr_fast.study.results import RESULTS, STUDY_CONFIG, ResultsStore, result_row
from cxr_fast.study.runner import StudyPlan, StudySummary, decide, dry_run, run_cells, study_lock, train_cell

__all__ = ["Cell", "GridSpec", "StudyConfig", "apply_overrides", "checked_cells", "expand", "load_study_config",
           "parse_study", "RESULTS", "STUDY_CONFIG", "ResultsStore", "result_row", "StudyPlan", "StudySummary",
           "decide", "dry_run", "run_cells", "study_lock", "train_cell"]
