"""A study config and its cells: named grids of label x resolution x architecture, each cell one training run.

The study YAML holds ``name``, a ``train:`` block of run settings every cell shares, and ``grids``, each with
its labels, resolutions, archs, epochs and its own ``train:`` overrides. The run settings a block may hold,
their types, ranges and messages are ``RunConfig``'s (``cxr_fast.schema.run``): nothing here lists them.
Each cell is validated once, by ``checked_cells``, which ``study``, ``study --dry-run`` and ``plan`` call.
``seeds:`` (the study's, or a grid's own) makes replicates of each cell, one per seed (``expand``); ``batch_sizes:``
likewise one cell per batch size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from cxr_fast.config import load_yaml
from cxr_fast.errors import CxrError
from cxr_fast.schema.run import DATASET_FIELDS, GRID_FIELDS, SPEED_ONLY, RunConfig
from cxr_fast.vocabulary import SEED_BOUNDS, check_number, parse_pack, parse_resolutions

RUNS = "runs"  # each cell's run folder is runs/<cell id> inside the study folder
STUDIES = Path("studies")  # where a study goes without --out: studies/<name>
NAME_MAX = 200  # characters of a study's name (it is a folder name)
_DEFAULTS = RunConfig.model_fields


@dataclass
class GridSpec:
    """One named grid: every label x resolution x architecture, trained for ``epochs``."""

    name: str
    labels: list[str]
    resolutions: list[int]
    archs: list[str] = field(default_factory=lambda: [_DEFAULTS["arch"].default])
    epochs: int = _DEFAULTS["epochs"].default
    train: dict[str, Any] = field(default_factory=dict)  # overrides of the study's `train:` block
    seeds: list[int] | None = None  # replicates of each cell: this grid's own seeds, else the study's
    batch_sizes: list[int] | None = None  # one cell per batch size: this grid's own, else the study's


@dataclass
class StudyConfig:
    name: str
    grids: list[GridSpec]
    train: dict[str, Any] = field(default_factory=dict)  # run settings every cell shares (RunConfig fields)
    # Other datasets every finished cell is scored on (``cxr_fast.evaluate``): each ``{data: DIR, dataset: ...,
    # the dataset's policies, size: N}``.
    external: list[dict[str, Any]] = field(default_factory=list)
    seeds: list[int] | None = None  # replicates of every cell of a grid without its own ``seeds:``
    batch_sizes: list[int] | None = None  # a batch-size axis of every grid without its own ``batch_sizes:``
    # Packed training (``cxr_fast.packed``): auto, or K compatible runs per step; 1 trains each run alone.
    pack: str | int = 1

    def to_dict(self) -> dict[str, Any]:
        axes = ("seeds", "batch_sizes")  # a study or grid without them: as before
        grids = [{k: v for k, v in dataclasses.asdict(g).items() if k not in axes or v is not None} for g in self.grids]
        out = {"name": self.name, "train": dict(self.train), "grids": grids}
        out = {**out, "seeds": list(self.seeds)} if self.seeds is not None else out
        out = {**out, "batch_sizes": list(self.batch_sizes)} if self.batch_sizes is not None else out
        out = {**out, "pack": self.pack} if self.pack != 1 else out
        return {**out, "external": [dict(e) for e in self.external]} if self.external else out


def parse_study(data: dict[str, Any], source: str = "study config") -> StudyConfig:
    """Validate a study mapping (from YAML); every problem is one line naming ``source`` and the key."""
    if not isinstance(data, dict):
        raise CxrError(f"{source}: expected a mapping with name, train and grids")
    allowed = {"name", "train", "grids", "external", "seeds", "batch_sizes", "pack"}
    unknown = sorted(map(str, set(data) - allowed))
    if unknown:
        raise CxrError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")
    train = _check_train(data.get("train") or {}, f"{source}: train")
    grids_raw = data.get("grids")
    if not isinstance(grids_raw, list) or not grids_raw:
        raise CxrError(f"{source}: 'grids' must be a non-empty list of grids (name, labels, resolutions, ...)")
    grids = [_parse_grid(g, f"{source}: grids[{i}]") for i, g in enumerate(grids_raw)]
    names = [g.name for g in grids]
    if len(set(names)) != len(names):
        raise CxrError(f"{source}: grid names must be unique, got {names}")
    return _check_axes(StudyConfig(name=_study_name(data.get("name"), source), grids=grids, train=train,
                                   external=_external(data.get("external"), f"{source}: external"),
                                   seeds=_seeds(data.get("seeds"), f"{source}: seeds"),
                                   batch_sizes=_batch_sizes(data.get("batch_sizes"), f"{source}: batch_sizes"),
                                   pack=parse_pack(data.get("pack", 1), f"{source}: pack")), source)


def _seeds(value: Any, where: str) -> list[int] | None:
    """A ``seeds:`` list: a non-empty list of distinct whole numbers, each one a seed may be (``SEED_BOUNDS``)."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise CxrError(f"{where} must be a non-empty list of seeds such as [0, 1, 2], got {value!r}")
    for i, seed in enumerate(value):
        check_number(seed, f"{where}[{i}]", integer=True, **SEED_BOUNDS)
    if len(set(value)) != len(value):
        raise CxrError(f"{where} repeat a seed: {value}")
    return list(value)


def _batch_sizes(value: Any, where: str) -> list[int] | None:
    """A ``batch_sizes:`` list: a non-empty list of distinct batch sizes, each checked by the run schema."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise CxrError(f"{where} must be a non-empty list of batch sizes such as [8, 16, 32], got {value!r}")
    for i, size in enumerate(value):
        RunConfig.parse({"batch_size": size}, f"{where}[{i}]")
    if len(set(value)) != len(value):
        raise CxrError(f"{where} repeat a batch size: {value}")
    return list(value)


def grid_batch_sizes(cfg: StudyConfig, grid: GridSpec) -> list[int] | None:
    """The batch sizes a grid's cells run at, one cell each: its own ``batch_sizes:``, else the study's; None: no
    batch-size axis."""
    return grid.batch_sizes if grid.batch_sizes is not None else cfg.batch_sizes


def _check_axes(cfg: StudyConfig, where: str) -> StudyConfig:
    """The seed axis's rule (``_check_seeds``), then the batch-size axis's: a grid with ``batch_sizes:`` takes a
    ``batch_size:`` (a train block's, or ``--batch-size``) only when it is one of them, the cell's own run; any
    other is refused in one line, since which of the two a cell ran with would be a guess."""
    for g in _check_seeds(cfg, where).grids:
        sizes, size = grid_batch_sizes(cfg, g), {**cfg.train, **g.train}.get("batch_size")
        if sizes is not None and size is not None and size not in sizes:
            raise CxrError(f"{where}: grid {g.name} has batch_sizes {sizes} and batch_size {size} in its train "
                           f"settings; the batch_size may only be one of the batch_sizes (the cell's own run): "
                           f"drop one")
    return cfg


def grid_seeds(cfg: StudyConfig, grid: GridSpec) -> list[int] | None:
    """The seeds a grid's cells are replicated over: its own ``seeds:``, else the study's; None: no seed axis."""
    return grid.seeds if grid.seeds is not None else cfg.seeds


def _check_seeds(cfg: StudyConfig, where: str) -> StudyConfig:
    """A grid with ``seeds:`` takes a ``seed:`` (a train block's, or ``--seed``) only when it is the smallest of
    them, the cell's own run (so a config that states ``seed: 0`` keeps it); any other is refused in one line,
    since which of the two a cell ran with would be a guess."""
    for g in cfg.grids:
        seeds, seed = grid_seeds(cfg, g), {**cfg.train, **g.train}.get("seed")
        if seeds is not None and seed is not None and seed != min(seeds):
            raise CxrError(f"{where}: grid {g.name} has seeds {seeds} and seed {seed} in its train settings; the seed "
                           f"may only be the smallest of the seeds ({min(seeds)}, the cell's own run): drop one")
    return cfg


def _external(value: Any, source: str) -> list[dict[str, Any]]:
    """``external:`` as a list of ``{data, dataset, policies..., size}``: a folder alone, or a list of folders or
    mappings; each reading checked by the run schema, so ``dataset: chexprt`` is refused before any work."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    out = []
    for i, item in enumerate(items):
        where = f"{source}[{i}]" if isinstance(value, list) else source
        entry = {"data": item} if isinstance(item, str) else item
        if not isinstance(entry, dict) or not isinstance(entry.get("data"), str):
            raise CxrError(f"{where}: expected a folder, or a mapping with data: FOLDER")
        unknown = sorted(map(str, set(entry) - {"data", "size", *DATASET_FIELDS}))
        if unknown:
            raise CxrError(f"{where}: unknown key(s) {', '.join(unknown)}; known: data, size, "
                           f"{', '.join(DATASET_FIELDS)}")
        size = entry.get("size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise CxrError(f"{where}: size must be a whole number of images, 1 or more, got {size!r}")
        RunConfig.parse({k: v for k, v in entry.items() if k in DATASET_FIELDS}, where)
        out.append(dict(entry))
    return out


def _study_name(value: Any, source: str) -> str:
    """The study's ``name:``: short text (a number reads as its text). A list or mapping, such as an alias
    bomb's, is refused before ``str()`` could expand it."""
    if value is None or value == "":
        return "study"
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise CxrError(f"{source}: name must be text, got a {type(value).__name__}")
    name = str(value)
    if len(name) > NAME_MAX:
        raise CxrError(f"{source}: name is {len(name)} characters long; keep it to {NAME_MAX}")
    return name


def default_study_dir(cfg: StudyConfig) -> Path:
    """``studies/<name>``, where a study goes without ``--out``; a name that would put it elsewhere (``/abs``,
    ``../..``, ``a/b``) is refused rather than followed."""
    name = cfg.name
    if name in (".", "..") or Path(name).is_absolute() or any(sep in name for sep in ("/", "\\")) \
            or name != name.strip() or "\0" in name:
        raise CxrError(f"study name {name!r} is not a plain folder name, so it cannot be the study folder "
                       f"{STUDIES}/<name>; rename the study or give --out")
    return STUDIES / name


def _check_train(train: Any, where: str) -> dict[str, Any]:
    """A ``train:`` block: run settings the grids do not set, each value checked by the run schema."""
    if not isinstance(train, dict):
        raise CxrError(f"{where}: expected a mapping of training settings")
    bad = sorted(set(train) & set(GRID_FIELDS))
    if bad:
        raise CxrError(f"{where}: {', '.join(bad)} are set by the grids, not the train block")
    known = set(RunConfig.names()) - set(GRID_FIELDS)
    unknown = sorted(map(str, set(train) - known))
    if unknown:
        raise CxrError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    RunConfig.parse(train, where)  # each value by the run schema, the settings not given left to defaults
    return dict(train)


def _parse_grid(g: Any, where: str) -> GridSpec:
    if not isinstance(g, dict):
        raise CxrError(f"{where}: expected a mapping with name, labels, resolutions, archs, epochs")
    allowed = {f.name for f in dataclasses.fields(GridSpec)}
    unknown = sorted(map(str, set(g) - allowed))
    if unknown:
        raise CxrError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")
    for key in ("name", "labels", "resolutions"):
        if key not in g:
            raise CxrError(f"{where}: missing '{key}'")
    labels = [str(x) for x in _as_list(g["labels"], where, "labels")]
    resolutions = parse_resolutions(_as_list(g["resolutions"], where, "resolutions"), f"{where}: resolutions")
    archs = _as_list(g.get("archs", [_DEFAULTS["arch"].default]), where, "archs")
    epochs = g.get("epochs", _DEFAULTS["epochs"].default)
    # Each grid value is a run setting: the run schema checks it (type, range, allowed values).
    for label in labels:
        RunConfig.parse({"label": label}, where)
    for arch in archs:
        RunConfig.parse({"arch": arch}, where)
    RunConfig.parse({"epochs": epochs}, where)
    for key, values in (("labels", labels), ("archs", archs)):
        if len(set(values)) != len(values):
            raise CxrError(f"{where}: {key} repeat a value: {values}")
    train = _check_train(g.get("train") or {}, f"{where}.train")
    return GridSpec(str(g["name"]), _canonical(labels), resolutions, [str(a) for a in archs], epochs, train,
                    seeds=_seeds(g.get("seeds"), f"{where}: seeds"),
                    batch_sizes=_batch_sizes(g.get("batch_sizes"), f"{where}: batch_sizes"))


def _canonical(labels: list[str]) -> list[str]:
    from cxr_fast.data.labels import canonical_label

    return [canonical_label(x) for x in labels]


def _as_list(value: Any, where: str, key: str) -> list[Any]:
    if isinstance(value, (str, int)):
        value = [value]
    if not isinstance(value, list) or not value:
        raise CxrError(f"{where}: '{key}' must be a non-empty list")
    return value


def load_study_config(path: str | Path) -> StudyConfig:
    """A study YAML file (``configs/paper.yaml``), validated; the file is named in every error."""
    return parse_study(load_yaml(path), str(path))


def apply_overrides(cfg: StudyConfig, epochs: int | None = None, pack: str | int | None = None,
                    **train: Any) -> StudyConfig:
    """Flags beat the config: ``epochs`` replaces every grid's epochs, ``pack`` the study's, the rest the shared
    train block.

    A flag also beats a grid's own ``train:`` override of the same setting, since the user asked for it.
    Each given value is checked by the run schema here, naming the flag's setting.
    """
    given = {k: v for k, v in train.items() if v is not None}
    _check_train(given, "overrides")
    if epochs is not None:
        RunConfig.parse({"epochs": epochs}, "overrides")
    grids = [dataclasses.replace(g, epochs=epochs if epochs is not None else g.epochs,
                                 train={k: v for k, v in g.train.items() if k not in given})
             for g in cfg.grids]
    return _check_axes(dataclasses.replace(cfg, grids=grids, train={**cfg.train, **given},
                                           external=[dict(e) for e in cfg.external],
                                           pack=cfg.pack if pack is None else parse_pack(pack)), "overrides")


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
    config: RunConfig | None = None  # the cell's run settings, once ``checked_cells`` validated them

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
        """Hash of everything that changes the result, so a rerun with other settings is refused. Speed-only
        settings and the weights file's path (its sha256 counts) are left out."""
        keep = {k: v for k, v in sorted(self.settings.items()) if k not in SPEED_ONLY and k != "weights"}
        keep.update(label=self.label, res=self.res, arch=self.arch, epochs=self.epochs)
        blob = json.dumps(keep, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def describe(self) -> str:
        return f"{self.label} {self.res}px {self.arch} {self.epochs}ep" + (f" ({self.tag})" if self.tag else "")

    def run_config(self, study_dir: Path) -> RunConfig:
        """The cell's run settings, its run folder inside the study folder: validated, one line naming the cell."""
        data = {**self.settings, "label": self.label, "res": self.res, "arch": self.arch, "epochs": self.epochs,
                "out": str(study_dir / RUNS / self.cell_id)}
        return RunConfig.parse(data, f"cell {self.cell_id}")


def overrides_tag(overrides: dict[str, Any]) -> str:
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
    because both would claim the same run folder. A grid with seeds runs each cell once per seed: its smallest
    seed is the cell's own run (its id and settings, so adding seeds to a study keeps its finished runs), each other
    seed a replicate tagged ``seed=N``, in its own run folder. A grid with batch sizes runs each cell (and each of
    its seeds) once per batch size: the batch size the cell runs at without the axis (its ``batch_size:``, else the
    default), when listed, is the cell's own run; every other one a cell tagged ``batch_size=N``, so an untagged id
    always means the batch size it meant before the axis.
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
        overrides = {k: v for k, v in g.train.items() if cfg.train.get(k) != v}
        runs = [(settings, overrides)]  # (settings, what its tag names) per run, the cell's own run first
        sizes = sorted(grid_batch_sizes(cfg, g) or [])
        runs = _replicate(runs, "batch_size", sizes, settings.get("batch_size", _DEFAULTS["batch_size"].default))
        seeds = sorted(grid_seeds(cfg, g) or [])
        runs = _replicate(runs, "seed", seeds, seeds[0] if seeds else None)
        for label in g.labels:
            for arch in g.archs:
                for (own, named), res in [(run, res) for run in runs for res in g.resolutions]:
                    cell = Cell(label, res, arch, g.epochs, dict(own), [g.name], overrides_tag(named))
                    prior = cells.get(cell.cell_id)
                    if prior is None:
                        cells[cell.cell_id] = cell
                    elif prior.fingerprint != cell.fingerprint:
                        raise CxrError(f"grids {prior.grids[0]} and {g.name} both define {cell.cell_id} "
                                       "with different train settings; give one of them other epochs")
                    elif g.name not in prior.grids:
                        prior.grids.append(g.name)
    return list(cells.values())


def _replicate(runs: list[tuple[dict[str, Any], dict[str, Any]]], key: str, values: list[Any],
               own: Any) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Each run once per value of a replicate axis (seeds, batch sizes), in ``values``' order. ``own``, when
    listed, is the run itself: its tag and id kept, its setting written only if it was not already that value;
    every other value a copy whose tag names ``key=value``. No values: the runs as they are."""
    if not values:
        return runs
    out = []
    for settings, named in runs:
        for value in ([own] if own in values else []) + [v for v in values if v != own]:
            same = value == own and settings.get(key, _DEFAULTS[key].default) == value
            out.append((settings if same else {**settings, key: value},
                        named if value == own else {**named, key: value}))
    return out


def checked_cells(cfg: StudyConfig, only: Sequence[str] | None = None, study_dir: Path = Path(".")) -> list[Cell]:
    """Every cell of the grid (``only``: these grids), each validated once by the run schema, its ``config``
    set; nothing is written. What ``study``, its ``--dry-run`` and ``plan`` accept alike."""
    cells = expand(cfg, only)
    for cell in cells:
        cell.config = cell.run_config(study_dir)
    return cells
