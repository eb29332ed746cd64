"""The study: a grid of label x resolution x architecture training runs, resumable at any moment.

A study folder holds ``study.yaml`` (the resolved config), ``results.jsonl`` (one row per finished run,
keyed by a stable cell id) and ``runs/<cell id>/`` (each run's own folder, written by ``cxr_fast.train``).
Rows are appended with fsync only after a run has finished, so a kill loses at most the run in flight;
its run folder resumes from its last epoch checkpoint on the next ``cxr-fast study``. Every resolution
of a label uses the same subsample and validation images (same seed), so the report can compare
resolutions with the paired DeLong test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from cxr_fast.config import load_yaml
from cxr_fast.errors import CxrError
from cxr_fast.io import append_jsonl, read_jsonl, write_text
from cxr_fast.vocabulary import ARCHS, check_choice, parse_resolutions

STUDY_CONFIG = "study.yaml"
RESULTS = "results.jsonl"
RUNS = "runs"
LOCK = ".study.lock"

# Set by the grid, never by the `train:` block.
GRID_FIELDS = ("label", "res", "arch", "epochs", "out")
# Settings that change speed, not results: excluded from a cell's fingerprint, so a study started on
# one machine can be finished on another (or with another loader) without being refused.
SPEED_ONLY = ("out", "device", "loader", "compile", "channels_last", "store", "workers")
STORES = "stores"
# The store format each loader reads (``cxr_fast.prepare``); auto picks resident first, which reads cache.
STORE_FORMATS = {"auto": "cache", "resident": "cache", "cache": "cache", "ffcv": "ffcv", "dali": "jpeg"}
# Metrics copied from a run into its result row.
METRIC_KEYS = ("auc", "auc_sd", "auc_status", "auc_sd_note", "accuracy", "n_pos", "n_neg", "n_val", "wall_s",
               "train_images_per_s", "pos_weight", "precision", "device", "loader", "recipe", "init",
               "weights_file", "weights_sha256", "split", "subsample_size", "seed", "val_leak_images",
               "val_leak_share")

RunFn = Callable[[Any], dict]


# --------------------------------------------------------------------------------------------------
# Config


@dataclass
class GridSpec:
    """One named grid: every label x resolution x architecture, trained for ``epochs``."""

    name: str
    labels: list[str]
    resolutions: list[int]
    archs: list[str] = field(default_factory=lambda: ["resnet34"])
    epochs: int = 3
    train: dict[str, Any] = field(default_factory=dict)  # overrides of the study's `train:` block


@dataclass
class StudyConfig:
    name: str
    grids: list[GridSpec]
    train: dict[str, Any] = field(default_factory=dict)  # settings every run shares (TrainConfig fields)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "train": dict(self.train),
                "grids": [dataclasses.asdict(g) for g in self.grids]}


def _train_fields() -> set[str]:
    from cxr_fast.train import TrainConfig

    return {f.name for f in dataclasses.fields(TrainConfig)}


def parse_study(data: dict[str, Any], source: str = "study config",
                train_fields: set[str] | None = None) -> StudyConfig:
    """Validate a study mapping (from YAML); every problem is one line naming ``source`` and the key."""
    allowed = {"name", "train", "grids"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise CxrError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")
    fields_ = train_fields if train_fields is not None else _train_fields()
    train = _check_train(data.get("train") or {}, f"{source}: train", fields_)
    grids_raw = data.get("grids")
    if not isinstance(grids_raw, list) or not grids_raw:
        raise CxrError(f"{source}: 'grids' must be a non-empty list of grids (name, labels, resolutions, ...)")
    grids: list[GridSpec] = []
    for i, g in enumerate(grids_raw):
        grids.append(_parse_grid(g, f"{source}: grids[{i}]", fields_))
    names = [g.name for g in grids]
    if len(set(names)) != len(names):
        raise CxrError(f"{source}: grid names must be unique, got {names}")
    return StudyConfig(name=str(data.get("name") or "study"), grids=grids, train=train)


def _check_train(train: Any, where: str, fields_: set[str]) -> dict[str, Any]:
    if not isinstance(train, dict):
        raise CxrError(f"{where}: expected a mapping of training settings")
    bad = sorted(set(train) & set(GRID_FIELDS))
    if bad:
        raise CxrError(f"{where}: {', '.join(bad)} are set by the grids, not the train block")
    unknown = sorted(set(train) - fields_)
    if unknown:
        raise CxrError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: "
                       f"{', '.join(sorted(fields_ - set(GRID_FIELDS)))}")
    return dict(train)


def _parse_grid(g: Any, where: str, fields_: set[str]) -> GridSpec:
    from cxr_fast.data.nih import canonical_label

    if not isinstance(g, dict):
        raise CxrError(f"{where}: expected a mapping with name, labels, resolutions, archs, epochs")
    allowed = {f.name for f in dataclasses.fields(GridSpec)}
    unknown = sorted(set(g) - allowed)
    if unknown:
        raise CxrError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")
    for key in ("name", "labels", "resolutions"):
        if key not in g:
            raise CxrError(f"{where}: missing '{key}'")
    labels, resolutions = _as_list(g["labels"], where, "labels"), _as_list(g["resolutions"], where, "resolutions")
    archs = _as_list(g.get("archs", ["resnet34"]), where, "archs")
    labels = [canonical_label(str(x)) for x in labels]
    resolutions = parse_resolutions(resolutions, f"{where}: resolutions")
    epochs = g.get("epochs", 3)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise CxrError(f"{where}: epochs must be a whole number of at least 1, got {epochs!r}")
    for a in archs:
        check_choice(a, ARCHS, "architecture", where)
    for key, values in (("labels", labels), ("archs", archs)):
        if len(set(values)) != len(values):
            raise CxrError(f"{where}: {key} repeat a value: {values}")
    train = _check_train(g.get("train") or {}, f"{where}.train", fields_)
    return GridSpec(str(g["name"]), labels, resolutions, [str(a) for a in archs], epochs, train)


def _as_list(value: Any, where: str, key: str) -> list[Any]:
    if isinstance(value, (str, int)):
        value = [value]
    if not isinstance(value, list) or not value:
        raise CxrError(f"{where}: '{key}' must be a non-empty list")
    return value


def load_study(path: str | Path, train_fields: set[str] | None = None) -> StudyConfig:
    return parse_study(load_yaml(path), str(path), train_fields)


def apply_overrides(cfg: StudyConfig, epochs: int | None = None, **train: Any) -> StudyConfig:
    """CLI flags beat the config: ``epochs`` replaces every grid's epochs, the rest the shared train block.

    A flag also beats a grid's own ``train:`` override of the same setting, since the user asked for it.
    """
    given = {k: v for k, v in train.items() if v is not None}
    grids = [dataclasses.replace(g, epochs=epochs if epochs is not None else g.epochs,
                                 train={k: v for k, v in g.train.items() if k not in given})
             for g in cfg.grids]
    return StudyConfig(cfg.name, grids, {**cfg.train, **given})


# --------------------------------------------------------------------------------------------------
# Cells


@dataclass
class Cell:
    """One training run of the grid."""

    label: str
    res: int
    arch: str
    epochs: int
    settings: dict[str, Any]  # the resolved train block for this cell (no grid fields)
    grids: list[str]
    tag: str = ""  # the grid's own result-changing overrides, e.g. "subsample_size=2000"; "" for none

    @property
    def cell_id(self) -> str:
        """Stable across reruns and config reorderings; also the run folder below ``runs/``.

        A grid that overrides result-changing settings (the paper's 2,000-image Hernia run) gets its own
        cells, so it never takes the place of the ordinary cell of the same label and resolution.
        """
        tag = f"-{self.tag}" if self.tag else ""
        return f"{self.label}/{self.arch}-e{self.epochs}{tag}/r{self.res}"

    @property
    def fingerprint(self) -> str:
        """Hash of everything that changes the result, so a rerun with other settings is refused."""
        keep = {k: v for k, v in sorted(self.settings.items()) if k not in SPEED_ONLY and k != "weights"}
        keep.update(label=self.label, res=self.res, arch=self.arch, epochs=self.epochs)
        blob = json.dumps(keep, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def describe(self) -> str:
        return f"{self.label} {self.res}px {self.arch} {self.epochs}ep" + (f" ({self.tag})" if self.tag else "")


def _variant_tag(overrides: dict[str, Any]) -> str:
    """A grid's result-changing overrides as a folder-safe tag (speed-only settings do not count)."""
    parts = []
    for key, value in sorted(overrides.items()):
        if key in SPEED_ONLY:
            continue
        text = "".join(c if c.isalnum() or c in ".-_" else "_" for c in str(value))
        parts.append(f"{key}={text}")
    return ",".join(parts)


def expand(cfg: StudyConfig, only: Sequence[str] | None = None) -> list[Cell]:
    """Every cell of the selected grids, in label-major order (a label's resolutions run together).

    A cell named by two grids with the same settings runs once; with different settings it is an error,
    because both would claim the same run folder.
    """
    names = [g.name for g in cfg.grids]
    if only:
        missing = [o for o in only if o not in names]
        if missing:
            raise CxrError(f"--only {', '.join(missing)}: no such grid; the config has {', '.join(names)}")
    cells: dict[str, Cell] = {}
    for g in cfg.grids:
        if only and g.name not in only:
            continue
        settings = {**cfg.train, **g.train}
        tag = _variant_tag({k: v for k, v in g.train.items() if cfg.train.get(k) != v})
        for label in g.labels:
            for arch in g.archs:
                for res in g.resolutions:
                    cell = Cell(label, res, arch, g.epochs, dict(settings), [g.name], tag)
                    prior = cells.get(cell.cell_id)
                    if prior is None:
                        cells[cell.cell_id] = cell
                    elif prior.fingerprint != cell.fingerprint:
                        raise CxrError(f"grids {prior.grids[0]} and {g.name} both define {cell.cell_id} "
                                       "with different train settings; give one of them other epochs")
                    elif g.name not in prior.grids:
                        prior.grids.append(g.name)
    return list(cells.values())


def checked_cells(cfg: StudyConfig, only: Sequence[str] | None = None, study_dir: Path = Path(".")) -> list[Cell]:
    """Every cell of the grid (``only``: these grids), each checked by ``cxr_fast.train.validate``, the rules
    of ``cxr-fast train``; nothing is written. What ``study``, its ``--dry-run`` and ``plan`` accept alike."""
    from cxr_fast.train import validate

    cells = expand(cfg, only)
    for cell in cells:
        validate(train_config(cell, study_dir), where=f"cell {cell.cell_id}")
    return cells


def train_config(cell: Cell, study_dir: Path) -> Any:
    """The ``cxr_fast.train.TrainConfig`` of a cell, its run folder inside the study folder."""
    from cxr_fast.config import from_dict
    from cxr_fast.train import TrainConfig

    data = {**cell.settings, "label": cell.label, "res": cell.res, "arch": cell.arch, "epochs": cell.epochs,
            "out": str(study_dir / RUNS / cell.cell_id)}
    return from_dict(TrainConfig, data, f"cell {cell.cell_id}")


# --------------------------------------------------------------------------------------------------
# Results store


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
            import warnings

            warnings.warn(f"{self.path}: dropped a torn last line (a run was killed while its row was written; "
                          "that run is redone)", stacklevel=2)
            with open(self.path, "r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)
                fh.flush()
                os.fsync(fh.fileno())

    def rows(self) -> list[dict[str, Any]]:
        return [r for r in read_jsonl(self.path) if isinstance(r, dict) and "cell_id" in r]

    def finished(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for row in self.rows():
            out.setdefault(row["cell_id"], row)
        return out

    def append(self, row: dict[str, Any]) -> None:
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


# --------------------------------------------------------------------------------------------------
# Prepared stores: decode a label's PNGs once for all its resolutions


def _store_key(cell: Cell) -> tuple[str, ...] | None:
    """Cells with the same key read the same subsample, so they can share one store."""
    s = cell.settings
    fmt = STORE_FORMATS.get(str(s.get("loader", "auto")))
    if fmt is None or s.get("store"):
        return None  # a loader that reads PNGs (pil), or a store the user gave
    return (cell.label, str(s.get("data")), str(s.get("subsample_size", 20_000)), str(s.get("seed", 0)),
            str(s.get("split", "image")), fmt)


def prepare_stores(cells: Sequence[Cell], study_dir: Path, quiet: bool = False) -> None:
    """Decode each label's subsample once, at every resolution its cells need, into ``stores/``.

    Without this each run would extend the loader's store with its own resolution, decoding every
    PNG again (10 ms per 1024 px image per core). The cells then name the store, so all resolutions
    of a label read one store, and a rerun finds it made.
    """
    from cxr_fast.data.source import resolve_dataset
    from cxr_fast.prepare import PrepareConfig, prepare_subsample

    groups: dict[tuple[str, ...], list[Cell]] = {}
    for cell in cells:
        key = _store_key(cell)
        if key is not None:
            groups.setdefault(key, []).append(cell)
    datasets: dict[str, Any] = {}
    for key, members in groups.items():
        label, data, size, seed, split, fmt = key
        digest = hashlib.sha1(json.dumps(key).encode()).hexdigest()[:8]
        root = (study_dir / STORES / f"{label}-{digest}").resolve()
        if data not in datasets:
            datasets[data] = resolve_dataset(None if data == "None" else data, quiet=True)
        resolutions = tuple(sorted({c.res for c in members})) if fmt != "jpeg" else ()
        if not quiet:
            print(f"preparing {label}: {fmt} at {', '.join(map(str, resolutions)) or 'source size'} px -> {root}")
        prepare_subsample(datasets[data], label, root, PrepareConfig(resolutions=resolutions, formats=(fmt,),
                                                                     quiet=quiet), size=int(size), seed=int(seed),
                          split=split)
        for cell in members:
            cell.settings["store"] = str(root)


# --------------------------------------------------------------------------------------------------
# Runner


def train_cell(cfg: Any) -> dict:
    """The default run function: the same code path as ``cxr-fast train --resume``, quiet.

    Module-level so Ray can ship it to workers by reference.
    """
    from cxr_fast.train import run_training

    return run_training(cfg, progress=False, resume=True)


@dataclass
class StudySummary:
    cells: int
    already_done: int
    ran: int
    rows: list[dict[str, Any]]


@contextlib.contextmanager
def study_lock(study_dir: Path) -> Iterator[None]:
    """One driver per study folder: a second one would run the same cells and duplicate rows."""
    import fcntl

    study_dir.mkdir(parents=True, exist_ok=True)
    fh = open(study_dir / LOCK, "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CxrError(f"{study_dir} is in use by another cxr-fast study; wait for it or use another --out") \
                from None
        yield
    finally:
        fh.close()


@dataclass
class StudyPlan:
    """Everything a study run decides before it writes: cells, their configs and status, the inits."""

    cells: list[Cell]
    status: dict[str, str]  # cell_id -> done | partial | todo
    inits: dict[str, Any]  # cell_id -> cxr_fast.weights.InitChoice
    notes: list[str] = field(default_factory=list)  # what a dry run could not check, said once

    @property
    def todo(self) -> list[Cell]:
        return [c for c in self.cells if self.status[c.cell_id] != "done"]


def decide(cfg: StudyConfig, study_dir: Path, only: Sequence[str] | None = None, download: bool = True,
           progress: bool = True) -> StudyPlan:
    """Validate every cell, resolve every init and compare with finished rows; write nothing.

    The same function serves ``--dry-run`` (``download=False``) and the real run, so a dry run refuses
    exactly what a run would refuse. Each cell's settings are checked by ``cxr_fast.train.validate``, the
    rules of ``cxr-fast train``; its init is resolved once per (arch, init, weights) and the weights'
    sha256 joins the cell's settings, so the fingerprint (and a rerun's check) covers the weights.
    A dry run never downloads: weights it cannot find are a note, and finished cells are then matched
    by id only (the note says so).
    """
    from cxr_fast.weights import resolve_for_runs

    cells = checked_cells(cfg, only, study_dir)
    keys = {c.cell_id: (c.arch, str(c.settings.get("init", "imagenet")), c.settings.get("weights")) for c in cells}
    try:
        choices = resolve_for_runs(list(keys.values()), download=download, progress=progress)
    except CxrError as exc:
        if download:
            raise
        return _undecided(cells, study_dir, f"{exc}; a run fetches them first, so finished cells were matched by "
                                            "id only, not by settings")
    inits = {cid: choices[key] for cid, key in keys.items()}
    for cell in cells:
        choice = inits[cell.cell_id]
        pinned = cell.settings.get("weights_sha256")
        if pinned and pinned != choice.weights_sha256:
            raise CxrError(f"cell {cell.cell_id}: weights {choice.weights_file} do not have the pinned sha256 "
                           f"{pinned[:12]}…")
        cell.settings.update(weights=choice.weights_file, weights_sha256=choice.weights_sha256)
    done = ResultsStore(study_dir / RESULTS).finished()
    status: dict[str, str] = {}
    for cell in cells:
        row = done.get(cell.cell_id)
        if row is not None and row.get("fingerprint") != cell.fingerprint:
            raise CxrError(f"{study_dir / RESULTS}: {cell.cell_id} was run with other settings "
                           f"(fingerprint {row.get('fingerprint')} vs {cell.fingerprint}); "
                           "use a new --out for a study with changed settings")
        if row is not None:
            status[cell.cell_id] = "done"
        elif (study_dir / RUNS / cell.cell_id).exists():
            status[cell.cell_id] = "partial"
        else:
            status[cell.cell_id] = "todo"
    return StudyPlan(cells, status, inits)


def _undecided(cells: list[Cell], study_dir: Path, note: str) -> StudyPlan:
    """A dry run's plan when the weights are not at hand: status by cell id, and the note that says so."""
    done = ResultsStore(study_dir / RESULTS).finished()
    status = {c.cell_id: "done" if c.cell_id in done else
              "partial" if (study_dir / RUNS / c.cell_id).exists() else "todo" for c in cells}
    return StudyPlan(cells, status, {}, [note])


def plan(cfg: StudyConfig, study_dir: Path, only: Sequence[str] | None = None) -> StudyPlan:
    """Every selected cell with its status (done, partial: a run folder exists, todo); nothing downloaded."""
    return decide(cfg, Path(study_dir).resolve(), only, download=False, progress=False)


def run_study(cfg: StudyConfig, study_dir: str | Path, executor: Any = None, only: Sequence[str] | None = None,
              run_fn: RunFn | None = None, progress: bool = True, prepare: bool | None = None) -> StudySummary:
    """Run every unfinished cell of ``cfg`` into ``study_dir`` and return what the store holds.

    Everything is decided first (``decide``): a refused study leaves the folder as it was.
    ``run_fn(TrainConfig) -> metrics`` defaults to the real training (``train_cell``); tests pass a fake.
    ``executor`` defaults to ``LocalExecutor()`` (one run after another in this process).
    ``prepare`` (default: when training for real) decodes each label's images once into a shared store.
    """
    from cxr_fast.executors import Job, LocalExecutor

    study_dir = Path(study_dir).resolve()  # Ray workers may run in another working directory
    executor = executor or LocalExecutor()
    prepare = (run_fn is None) if prepare is None else prepare
    run_fn = run_fn or train_cell
    decide(cfg, study_dir, only, progress=progress)  # refuse before the folder (or its lock) is made
    with study_lock(study_dir):
        ResultsStore(study_dir / RESULTS).repair()
        decided = decide(cfg, study_dir, only, progress=progress)  # again under the lock: the rows are final now
        cells, todo = decided.cells, decided.todo
        write_text(study_dir / STUDY_CONFIG, _yaml(cfg.to_dict()))
        store = ResultsStore(study_dir / RESULTS)
        if prepare and todo:
            prepare_stores(todo, study_dir, quiet=not progress)
        by_id = {c.cell_id: c for c in todo}
        jobs = [Job(c.cell_id, train_config(c, study_dir), c.describe()) for c in todo]

        with _Progress(len(cells), len(cells) - len(todo), enabled=progress) as bar:
            def on_done(job: Job, metrics: dict) -> None:
                cell = by_id[job.key]
                row = result_row(cell, metrics)
                store.append(row)
                bar.finished(cell, row)

            executor.run(jobs, run_fn, on_done, on_start=lambda job: bar.started(by_id[job.key]))
        ids = {c.cell_id for c in cells}
        rows = [r for cid, r in store.finished().items() if cid in ids]
    return StudySummary(len(cells), len(cells) - len(todo), len(todo), rows)


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


class _Progress:
    """The study's progress line over runs, plus one printed line per finished run (kept in logs)."""

    def __init__(self, total: int, completed: int, enabled: bool) -> None:
        from cxr_fast.progress import Bar

        self.total, self.completed = total, completed
        self.running: list[str] = []
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, TimeElapsedColumn

            self.bar = Bar(True, "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn())
        else:
            self.bar = Bar(False)

    def __enter__(self) -> "_Progress":
        self.bar.__enter__()
        self._task = self.bar.add("runs", self.total, completed=self.completed)
        if self.completed:
            self.bar.print(f"{self.completed} of {self.total} runs already finished; skipping them")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def _describe(self) -> str:
        shown = ", ".join(self.running[:2]) + (f" +{len(self.running) - 2} more" if len(self.running) > 2 else "")
        return "runs" + (f" · {shown}" if shown else "")

    def started(self, cell: Cell) -> None:
        self.running.append(cell.describe())
        self.bar.update(self._task, description=self._describe())

    def finished(self, cell: Cell, row: dict[str, Any]) -> None:
        if cell.describe() in self.running:
            self.running.remove(cell.describe())
        self.completed += 1
        self.bar.update(self._task, advance=1, description=self._describe())
        auc, sd = row.get("auc"), row.get("auc_sd")
        score = f"AUC {auc:.3f} ± {sd:.3f}" if isinstance(auc, float) and isinstance(sd, float) else ""
        if row.get("auc_status") == "tied":
            score = "AUC tied (every score equal: no ranking)"
        self.bar.print(f"[{self.completed}/{self.total}] {cell.describe()}: {score} ({row.get('wall_s', 0):.0f} s)")
