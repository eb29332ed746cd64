"""A study folder as the report reads it: rows, the cells its config names, predictions and provenance.

Torch-free on purpose: a report is made wherever ``study.yaml``, ``results.jsonl`` and the runs'
``predictions.npz`` are copied. Rows written before a field existed still load; the field then reads
as ``unknown``. A cell of a grid whose own ``train:`` block changes results (the Hernia run on a 2,000-image
subsample) carries a ``variant_tag``: it never stands in for the ordinary cell of Tables 2 and 3. A row whose tag
holds nothing but ``seed=N`` is a seed copy of the ordinary cell (``replicates``): its spread is shown beside it.
A row tagged ``batch_size=N`` (a grid's ``batch_sizes:``) is never a seed copy: ``batch_view`` gives the study as
run at one batch size, so that every batch size gets its own rows, tests and spread (``batch_views``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from cxr_fast import paper_results
from cxr_fast.errors import CxrError
from cxr_fast.io import read_npz
from cxr_fast.schema.result import TIED, read_result_rows

UNKNOWN = "unknown"
Variant = tuple[str, int]  # (arch, epochs)
Predictions = tuple[np.ndarray, np.ndarray, np.ndarray]  # (image ids, labels, scores)


@dataclass
class Study:
    root: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]]  # one per cell, the first row per cell id
    expected: list[dict[str, Any]] = field(default_factory=list)  # ordinary cells the config names
    special_expected: list[dict[str, Any]] = field(default_factory=list)  # result-changing grids', seed copies' cells
    _index: dict[tuple[str, int, str, int], dict[str, Any]] | None = field(default=None, repr=False)
    _predictions: dict[Path, Predictions | None] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.root.name)

    @property
    def ordinary(self) -> list[dict[str, Any]]:
        """Rows of Tables 2 and 3: every row without a variant tag."""
        return [r for r in self.rows if not variant_tag(r)]

    def row(self, label: str, res: int, variant: Variant) -> dict[str, Any] | None:
        """The ordinary row of a (label, resolution, arch, epochs) cell, never a tagged variant."""
        if self._index is None:
            self._index = {}
            for r in self.ordinary:
                self._index.setdefault((r["label"], int(r["res"]), r["arch"], int(r["epochs"])), r)
        return self._index.get((label, int(res), variant[0], int(variant[1])))

    def predictions_path(self, row: dict[str, Any]) -> Path:
        return self.root / str(row.get("run_dir", "")) / "predictions.npz"

    def predictions(self, row: dict[str, Any]) -> Predictions | None:
        """A run's (image ids, labels, scores), None when its run folder holds none; scores may be logits,
        only their ranking is used."""
        path = self.predictions_path(row)
        if path not in self._predictions:
            self._predictions[path] = _read_predictions(path, n_val(row))
        return self._predictions[path]


PREDICTION_ARRAYS = ("image_ids", "labels", "scores")
_REDO = "rerun that cell or delete the file"


def _read_predictions(path: Path, expected: int | None) -> Predictions | None:
    """None when the run left no file; one line naming a damaged, truncated or inconsistent one, whose paired
    tests would otherwise vanish without a word. ``expected``: the images its results row counted."""
    if not path.is_file():
        return None
    try:
        z = read_npz(path, PREDICTION_ARRAYS)
    except CxrError as exc:
        raise CxrError(f"{exc}; {_REDO}") from None
    ids, y, s = z["image_ids"], z["labels"], z["scores"]
    if any(a.ndim != 1 for a in (ids, y, s)) or not len(ids) == len(y) == len(s):
        raise CxrError(f"{path}: image_ids, labels and scores are not one value per image "
                       f"(shapes {ids.shape}, {y.shape}, {s.shape}); {_REDO}")
    if y.dtype.kind not in "biuf" or s.dtype.kind not in "biuf" or not np.isfinite(s).all() \
            or not np.isin(y, (0, 1)).all():
        raise CxrError(f"{path}: labels must be 0 or 1 and scores finite numbers; {_REDO}")
    if expected is not None and len(ids) != expected:
        raise CxrError(f"{path}: holds {len(ids)} images but its results row counted {expected} (cut short, or "
                       f"from another run); {_REDO}")
    return ids.astype(str), y, s


def read_study(root: str | Path) -> Study:
    """Read a study folder; one line naming the folder when it is not one."""
    from cxr_fast.config import parse_yaml

    root = Path(root)
    results = root / "results.jsonl"
    if not results.is_file():
        raise CxrError(f"{root} is not a study folder (no results.jsonl); run `cxr-fast study CONFIG --out {root}`")
    numbered = read_result_rows(results)  # each row checked as the study's resume checks it
    seen: dict[str, dict[str, Any]] = {}
    for _, r in numbered:
        seen.setdefault(r["cell_id"], r)
    config: dict[str, Any] = {}
    if (root / "study.yaml").is_file():
        config = parse_yaml((root / "study.yaml").read_text(encoding="utf-8"), root / "study.yaml") or {}
    expected, special = _expected_cells(config)
    _check_labels(results, numbered, [*expected, *special])
    return Study(root, config, list(seen.values()), expected, special)


def _check_labels(results: Path, rows: list[tuple[int, dict[str, Any]]], expected: list[dict[str, Any]]) -> None:
    """A row whose label no grid of study.yaml names would become a table column of its own: refuse it,
    naming the row. Without a study.yaml (no expected cells) every row is the study."""
    known = ordered(c["label"] for c in expected)
    if not known:
        return
    for number, r in rows:
        if r["label"] not in known:
            raise CxrError(f"{results}:{number} ({r['cell_id']}): label {r['label']!r} is not in study.yaml's grids "
                           f"({', '.join(known)}); delete that line, or add the label to a grid")


def _expected_cells(config: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The config's cells, split into ordinary ones and those of grids whose `train:` changes results; a grid's
    seeds beyond its smallest (``study.grid.expand``'s replicates) are special cells with their ``seed``, and its
    batch sizes other than its own (``batch_sizes:``) special cells with their ``batch_size``."""
    ordinary, special = [], []
    train = config.get("train") or {}
    for g in config.get("grids") or []:
        target = special if grid_changes_results(g, train) else ordinary
        seeds = g.get("seeds", config.get("seeds"))
        copies = sorted(seeds)[1:] if isinstance(seeds, list) else []
        sizes, own = listed_batch_sizes(config, g), own_batch_size(config, g)
        batches = ([own] if own in sizes else []) + [b for b in sorted(sizes) if b != own] if sizes else [None]
        for label in g.get("labels", []):
            for arch in g.get("archs", ["resnet34"]):
                for batch in batches:
                    for seed in [None] + copies:
                        into = target if seed is None and batch in (None, own) else special
                        for res in g.get("resolutions", []):
                            into.append({"label": label, "res": int(res), "arch": arch,
                                         "epochs": int(g.get("epochs", 3)), "grid": g.get("name"),
                                         "train": dict(g.get("train") or {}), **({"seed": seed} if copies else {}),
                                         **({"batch_size": batch} if sizes else {})})
    return ordinary, special


def grid_changes_results(grid: dict[str, Any], train: dict[str, Any]) -> bool:
    """True when a grid's own `train:` block overrides a setting that changes results (not speed)."""
    from cxr_fast.schema.run import (
        SPEED_ONLY,  # the run schema imports no torch, so a report still needs none
    )

    own = grid.get("train") or {}
    return any(k not in SPEED_ONLY and own[k] != train.get(k) for k in own)


# --------------------------------------------------------------------------------------------------
# Row fields


def variant_tag(row: dict[str, Any]) -> str:
    return str(row.get("variant_tag") or "")


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def is_tied(row: dict[str, Any] | None) -> bool:
    """The model gave every validation image one score: it ranked nothing, so it has no AUC to compare."""
    return row is not None and row.get("auc_status") == TIED


def auc_of(row: dict[str, Any] | None) -> float | None:
    """The row's AUC when it is a number that may be compared (not tied, not missing)."""
    if row is None or is_tied(row) or not finite(row.get("auc")):
        return None
    return float(row["auc"])


def sd_of(row: dict[str, Any] | None) -> float | None:
    return float(row["auc_sd"]) if row is not None and finite(row.get("auc_sd")) else None


def n_val(row: dict[str, Any]) -> int | None:
    if finite(row.get("n_val")):
        return int(row["n_val"])
    if finite(row.get("n_pos")) and finite(row.get("n_neg")):
        return int(row["n_pos"]) + int(row["n_neg"])
    return None


def init_of(row: dict[str, Any]) -> str:
    return str(row.get("init") or UNKNOWN)


def recipe_of(row: dict[str, Any]) -> str:
    return str(row.get("recipe") or UNKNOWN)


def split_of(row: dict[str, Any]) -> str:
    return str(row.get("split") or UNKNOWN)


def init_kind(row: dict[str, Any]) -> str:
    """The init as one comparable name: cells started from different weight files are different inits."""
    init, sha = init_of(row), row.get("weights_sha256")
    return f"{init} (sha256 {str(sha)[:12]}…)" if sha else init


def describe_init(row: dict[str, Any]) -> str:
    """The init with its provenance, for a reader: name, weights file, the start of its hash."""
    init, sha, path = init_of(row), row.get("weights_sha256"), row.get("weights_file")
    parts = ([f"weights {Path(str(path)).name}"] if path else []) + ([f"sha256 {str(sha)[:12]}…"] if sha else [])
    return f"{init} ({', '.join(parts)})" if parts else init


# --------------------------------------------------------------------------------------------------
# Cells, variants, labels


def ordered(values: Iterable[Any]) -> list[Any]:
    seen: list[Any] = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


def cells(study: Study) -> list[dict[str, Any]]:
    """Every ordinary (label, res, arch, epochs) the study names or holds, config order first."""
    out, keys = [], set()
    for c in [*study.expected, *study.ordinary]:
        key = (c["label"], int(c["res"]), c["arch"], int(c["epochs"]))
        if key not in keys:
            keys.add(key)
            out.append({"label": key[0], "res": key[1], "arch": key[2], "epochs": key[3], "grid": c.get("grid")})
    return out


def variants(study: Study) -> list[Variant]:
    """(arch, epochs) pairs present, the paper's A, B, C order first."""
    found = ordered((c["arch"], c["epochs"]) for c in cells(study))
    paper = [v for v in paper_results.TABLE3_VARIANTS.values() if v in found]
    return paper + [v for v in found if v not in paper]


def primary_variant(study: Study) -> Variant | None:
    """Table 2's variant: the first architecture of the grid named ``table2``, else the most common variant."""
    for g in study.config.get("grids") or []:
        if g.get("name") == "table2":
            return (g.get("archs", ["resnet34"])[0], int(g.get("epochs", 3)))
    found = cells(study)
    if not found:
        return None
    counts: dict[Variant, int] = {}
    for c in found:
        counts[(c["arch"], c["epochs"])] = counts.get((c["arch"], c["epochs"]), 0) + 1
    return max(counts, key=lambda v: counts[v])  # ties: first seen (dicts keep order; max keeps the first)


def labels(study: Study, variant: Variant) -> list[str]:
    return ordered(c["label"] for c in cells(study) if (c["arch"], c["epochs"]) == variant)


def resolutions(study: Study, variant: Variant | None = None) -> list[int]:
    return sorted({c["res"] for c in cells(study) if variant is None or (c["arch"], c["epochs"]) == variant})


def variant_name(v: Variant) -> str:
    return f"{v[0]} {v[1]} ep"


def align(a: Predictions, b: Predictions) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(labels, scores_a, scores_b) on the same images in the same order, or None if the images differ."""
    ids_a, y_a, s_a = a
    ids_b, y_b, s_b = b
    if len(ids_a) != len(ids_b) or set(ids_a.tolist()) != set(ids_b.tolist()) or len(set(ids_a.tolist())) != len(ids_a):
        return None
    order = {k: i for i, k in enumerate(ids_b.tolist())}
    idx = np.array([order[k] for k in ids_a.tolist()])
    if not np.array_equal(y_a, y_b[idx]):
        return None
    return y_a, s_a, s_b[idx]


def paper_variant(v: Variant) -> Variant | None:
    """The paper's model closest to ours: the same architecture and epochs, else the same architecture with the
    nearest epochs (a 1-epoch ResNet34 is compared with the paper's 3-epoch Table 2), else None."""
    known = list(paper_results.TABLE3_VARIANTS.values())
    if v in known:
        return v
    same = [k for k in known if k[0] == v[0]]
    return min(same, key=lambda k: (abs(k[1] - v[1]), k[1])) if same else None


def paper_label(v: Variant) -> str:
    """'paper B: resnet34 10 ep' for one of the paper's three models."""
    letter = {k: n for n, k in paper_results.TABLE3_VARIANTS.items()}[v]
    return f"paper {letter}: {variant_name(v)}"


# --------------------------------------------------------------------------------------------------
# Seeds: the rows of one cell that differ only in seed (``seeds:`` in a study, or grids setting only a seed)


def seed_of(row: dict[str, Any], default: int | None = None) -> int | None:
    """The row's seed: its own field, else its variant tag's ``seed=N``, else the study's."""
    if finite(row.get("seed")):
        return int(row["seed"])
    for part in variant_tag(row).split(","):
        key, _, value = part.partition("=")
        if key == "seed" and value.isdigit():
            return int(value)
    return default


def _seedless_tag(row: dict[str, Any]) -> str:
    return ",".join(p for p in variant_tag(row).split(",") if p and not p.startswith("seed="))


def replicates(study: Study, label: str, res: int, v: Variant) -> dict[int | None, dict[str, Any]]:
    """The cell's rows that differ only in seed (the ordinary row and rows whose tag holds nothing but
    ``seed=N``), by seed; the first row per seed. The one place a seed copy of a cell is recognised."""
    train_seed = (study.config.get("train") or {}).get("seed", 0)  # what a row without a seed was run with
    default = int(train_seed) if finite(train_seed) else None
    out: dict[int | None, dict[str, Any]] = {}
    for r in study.rows:
        if (r["label"], int(r["res"]), r["arch"], int(r["epochs"])) == (label, int(res), v[0], int(v[1])) \
                and not _seedless_tag(r):
            out.setdefault(seed_of(r, default), r)
    return out


def chosen_seed(found: Iterable[int | None]) -> int | None:
    """Seed 0 where it ran, else the first seed; None when the rows name none."""
    known = sorted(s for s in found if s is not None)
    return 0 if 0 in known else (known[0] if known else None)


def across_seed_sd(rows: Mapping[int | None, dict[str, Any]]) -> float | None:
    """SD (n − 1) of the AUC over seeds; None with fewer than two comparable AUCs."""
    aucs = [a for r in rows.values() if (a := auc_of(r)) is not None]
    return float(np.std(aucs, ddof=1)) if len(aucs) >= 2 else None


@dataclass(frozen=True)
class SeedSpread:
    """A cell's AUC over the seeds it ran with: the spread DeLong's SD cannot see, which covers only the validation
    images, where another seed also draws another subsample, init and augmentation."""

    seeds: list[int | None]  # every seed with a row, smallest first
    mean: float | None  # over the comparable AUCs (tied and missing ones left out)
    sd: float | None  # SD (n − 1) of those AUCs; None with fewer than two
    n: int  # how many AUCs the mean and SD are over

    def record(self) -> dict[str, Any]:
        """The columns a table's CSV and the JSON carry for the cell."""
        return {"seeds": self.seeds, "auc_seed_mean": self.mean, "auc_seed_sd": self.sd}


def seed_spread(study: Study, label: str, res: int, v: Variant) -> SeedSpread | None:
    """The cell's spread over seeds, or None when it ran with one seed (every cell of a study without seeds)."""
    rows = replicates(study, label, res, v)
    if len(rows) < 2:
        return None
    aucs = [a for r in rows.values() if (a := auc_of(r)) is not None]
    mean = float(np.mean(aucs)) if aucs else None
    return SeedSpread(sorted(rows, key=lambda s: (s is None, s or 0)), mean, across_seed_sd(rows), len(aucs))


# --------------------------------------------------------------------------------------------------
# Batch sizes: a grid's ``batch_sizes:`` (``study.grid.expand``), each batch size its own cells, never averaged with
# another's or taken for a seed copy


BATCH = "batch_size"  # the run setting, and the key of its part of a variant tag ("batch_size=16")


def own_batch_size(config: dict[str, Any], grid: dict[str, Any]) -> int:
    """The batch size a grid's cells run at without a batch-size axis: its train block's, the study's, else the
    run schema's default."""
    from cxr_fast.schema.run import RunConfig  # no torch

    size = {**(config.get("train") or {}), **(grid.get("train") or {})}.get(BATCH)
    return int(size) if finite(size) else int(RunConfig.model_fields[BATCH].default)


def listed_batch_sizes(config: dict[str, Any], grid: dict[str, Any]) -> list[int]:
    """The batch sizes a grid lists (its own ``batch_sizes:``, else the study's); [] without a batch-size axis."""
    sizes = grid.get("batch_sizes", config.get("batch_sizes"))
    return [int(b) for b in sizes if finite(b)] if isinstance(sizes, list) else []


def batch_axis(config: dict[str, Any]) -> list[int]:
    """Every batch size the study's cells run at, smallest first, when a grid lists ``batch_sizes:``; [] without
    (a study without the axis is reported as before, in one set of rows)."""
    grids = config.get("grids") or []
    if not any(listed_batch_sizes(config, g) for g in grids):
        return []
    return sorted({b for g in grids for b in (listed_batch_sizes(config, g) or [own_batch_size(config, g)])})


def _tag_without(tag: str, key: str) -> str:
    return ",".join(p for p in tag.split(",") if p and not p.startswith(f"{key}="))


def batch_of(row: dict[str, Any], default: int) -> int:
    """The row's batch size: its own field, else its variant tag's ``batch_size=N``, else ``default`` (what an
    untagged row ran at: the study's batch size)."""
    if finite(row.get(BATCH)):
        return int(row[BATCH])
    for part in variant_tag(row).split(","):
        key, _, value = part.partition("=")
        if key == BATCH and value.isdigit():
            return int(value)
    return default


def batch_view(study: Study, size: int) -> Study:
    """The study as if it had run at ``size`` only: the grids that run at it, their batch settings taken out, and
    the rows at it with ``batch_size=N`` taken out of their tags. Tables, tests and seed spreads made from it
    compare and average cells of this batch size and no other."""
    config = study.config
    runs_at = [g for g in config.get("grids") or [] if size in (listed_batch_sizes(config, g)
                                                                or [own_batch_size(config, g)])]
    grids = [{**{k: v for k, v in g.items() if k != "batch_sizes"},
              "train": {k: v for k, v in (g.get("train") or {}).items() if k != BATCH}} for g in runs_at]
    view = {**{k: v for k, v in config.items() if k != "batch_sizes"},
            "train": {k: v for k, v in (config.get("train") or {}).items() if k != BATCH}, "grids": grids}
    default = own_batch_size(config, {})
    rows = [{**r, "variant_tag": _tag_without(variant_tag(r), BATCH)} for r in study.rows
            if batch_of(r, default) == size]
    expected, special = _expected_cells(view)
    return Study(study.root, view, rows, expected, special)


def batch_views(study: Study) -> list[tuple[int | None, Study]]:
    """(batch size, the study at it) for each batch size of the axis; [(None, the study)] without one."""
    axis = batch_axis(study.config)
    return [(size, batch_view(study, size)) for size in axis] if axis else [(None, study)]
