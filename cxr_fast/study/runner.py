"""Run a study: decide everything first, then train each unfinished cell, appending a row as each finishes.

``decide`` validates every cell (``grid.checked_cells``), resolves each init once and matches finished rows,
writing nothing, so a refused study leaves its folder as it was and ``--dry-run`` refuses exactly what a run
would. ``run_cells`` then takes the folder's lock (one driver per study), decodes each dataset's images once
into one shared store per dataset and format (``draw_subsamples`` draws each label's subsample once; the store
holds their union, and each run of the label reads its subsample from it) and runs the cells through an
executor (here, or on Ray). With ``pack:`` (``study.packing``) compatible cells run as packed jobs, K models in
one step, each still its own run folder and results row. A kill loses at most the epoch in flight; each run
folder resumes from its last epoch checkpoint on the next ``cxr-fast study``. Every resolution of a label uses
the same subsample and validation images, so the report can compare resolutions with the paired DeLong test.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from cxr_fast.errors import CxrError
from cxr_fast.io import write_text
from cxr_fast.locks import exclusive
from cxr_fast.study.grid import RUNS, Cell, StudyConfig, checked_cells
from cxr_fast.study.progress import StudyProgress
from cxr_fast.study.results import RESULTS, STUDY_CONFIG, ResultsStore, result_row

LOCK = ".study.lock"
STORES = "stores"
RunFn = Callable[..., dict]


def train_cell(cfg: Any, init: Any = None, subsample: Any = None, external: Sequence[dict] = ()) -> dict:
    """The default run function: the same code path as ``cxr-fast train --resume``, quiet, given the init
    and subsample the study resolved and drew once; then scored on each ``external`` dataset (the study's
    ``external:``). Module-level so Ray can ship it to workers by reference."""
    from cxr_fast.train import run_training

    metrics = run_training(cfg, progress=False, resume=True, init=init, subsample=subsample)
    if external:
        metrics = {**metrics, "external": [score_external(cfg.out, entry) for entry in external]}
    return metrics


def train_pack(configs: Sequence[Any], inits: Sequence[Any], subsamples: Sequence[Any],
               external: Sequence[dict] = ()) -> dict:
    """A packed job's run function: K cells trained as one packed step (``train.packed_run``), each into its own
    run folder, then each scored on each ``external`` dataset; ``{"runs": [metrics, ...]}`` in the cells' order.
    Module-level so Ray can ship it to workers by reference."""
    from cxr_fast.train.packed_run import run_packed

    runs = run_packed(configs, progress=False, inits=inits, subsamples=subsamples)
    if external:
        runs = [{**m, "external": [score_external(c.out, e) for e in external]} for c, m in zip(configs, runs)]
    return {"runs": runs}


def score_external(run_dir: str, entry: dict) -> dict[str, Any]:
    """One external score of a finished cell; a label the other dataset does not map is recorded as unmapped
    (the report lists it), not an error: one study may ask for labels that only some datasets have."""
    from cxr_fast.data.sets import check_layout
    from cxr_fast.data.sets.base import LabelMissingError
    from cxr_fast.evaluate import evaluate_external

    reading = {k: v for k, v in entry.items() if k not in ("data", "size")}
    try:
        rec = evaluate_external(run_dir, entry["data"], size=entry.get("size"), **reading)
    except LabelMissingError as exc:
        name = check_layout(entry["data"], str(reading.get("dataset", "auto"))).name
        return {"dataset": name, "data": entry["data"], "auc": None, "status": f"unmapped: {exc}"}
    return {"dataset": rec["external_dataset"], "data": entry["data"], "auc": rec["auc"], "auc_sd": rec["auc_sd"],
            "n_pos": rec["n_pos"], "n_neg": rec["n_neg"], "status": rec["auc_status"]}


def study_lock(study_dir: Path) -> Any:
    """One driver per study folder: a second one would run the same cells and duplicate rows."""
    return exclusive(study_dir / LOCK, busy=f"{study_dir} is in use by another cxr-fast study; wait for it or use "
                                            "another --out")


@dataclass
class StudyPlan:
    """Everything a study run decides before it writes: cells (each with its validated config), their status,
    the inits."""

    config: StudyConfig
    cells: list[Cell]
    status: dict[str, str]  # cell_id -> done | partial | todo
    inits: dict[str, Any]  # cell_id -> cxr_fast.weights.InitChoice
    notes: list[str] = field(default_factory=list)  # what a dry run could not check, said once


def _status(cells: list[Cell], study_dir: Path, by_fingerprint: bool = True) -> dict[str, str]:
    """done (a row), partial (a run folder) or todo; a finished row with another fingerprint is refused."""
    done = ResultsStore(study_dir / RESULTS).finished()
    status: dict[str, str] = {}
    for cell in cells:
        row = done.get(cell.cell_id)
        if row is not None and by_fingerprint and row.get("fingerprint") != cell.fingerprint:
            raise CxrError(f"{study_dir / RESULTS}: {cell.cell_id} was run with other settings "
                           f"(fingerprint {row.get('fingerprint')} vs {cell.fingerprint}); "
                           "use a new --out for a study with changed settings")
        status[cell.cell_id] = "done" if row is not None else \
            "partial" if (study_dir / RUNS / cell.cell_id).exists() else "todo"
    return status


def check_study_dir(study_dir: Path, config: Path | None = None) -> None:
    """The study folder is new, empty or a study's (its lock or results file), as ``train`` and ``prepare``
    hold their folders; never the folder of the user's own config file ``study.yaml``, which a run rewrites."""
    target = study_dir / STUDY_CONFIG
    if config is not None and target.exists() and Path(config).exists() and target.samefile(config):
        raise CxrError(f"--out {study_dir} would overwrite your config {config} with the study's record; "
                       "choose another --out")
    if study_dir.exists() and not study_dir.is_dir():
        raise CxrError(f"{study_dir} is a file, not a study folder")
    held = sorted(p.name for p in study_dir.iterdir()) if study_dir.is_dir() else []
    if held and not (study_dir / LOCK).exists() and not (study_dir / RESULTS).exists():
        raise CxrError(f"{study_dir} is not empty and not a cxr-fast study folder (it holds {', '.join(held[:3])}"
                       f"{', ...' if len(held) > 3 else ''}); choose an empty or new --out")


def check_inputs(cells: Sequence[Cell], devices: bool = True) -> None:
    """What the cells to run read, checked before a study writes anything: each data folder (or phantom spec)
    and named store, and with ``devices`` (runs train in this process) each device. ``decide`` calls it for
    a run and a dry run alike, so a dry run approves nothing the run would then refuse."""
    from cxr_fast.data.sets import check_layout
    from cxr_fast.data.source import PHANTOM, is_phantom_spec, parse_phantom_spec
    from cxr_fast.step import resolve_device
    from cxr_fast.stores.manifest import data_of

    seen: set[tuple[Any, ...]] = set()
    datasets: dict[tuple[Any, ...], Any] = {}
    for cell in cells:
        c = cell.config
        data = data_of(c.data, c.store)
        if (c.data, c.store, c.device) not in seen:
            seen.add((c.data, c.store, c.device))
            if is_phantom_spec(data):
                parse_phantom_spec(str(data or PHANTOM))
            else:
                check_layout(data, c.dataset)  # the folder and its dataset's metadata files
            if devices:
                resolve_device(c.device)
        if not is_phantom_spec(data):  # the label is in the dataset, under its policies (a phantom is made later)
            key = (str(data), c.dataset, c.dataset_options())
            if key not in datasets:
                datasets[key] = c.read_dataset(data)
            datasets[key].metadata.has(c.label)


def check_external(external: Sequence[dict], cells: Sequence[Cell]) -> None:
    """Each ``external:`` dataset is there, in its layout, and not (by the datasets' own word) the training data
    of any cell; the pixels are compared when each cell is scored (``evaluate``)."""
    from cxr_fast.data.source import is_phantom_spec
    from cxr_fast.evaluate import check_independent
    from cxr_fast.schema.run import DATASET_FIELDS, RunConfig
    from cxr_fast.stores.manifest import data_of

    for i, entry in enumerate(external):
        reading = RunConfig.parse({k: v for k, v in entry.items() if k in DATASET_FIELDS}, f"external[{i}]")
        ext = reading.read_dataset(entry["data"])
        owns: dict[tuple[Any, ...], Any] = {}
        for cell in cells:
            c = cell.config
            data = data_of(c.data, c.store)
            key = (str(data), c.dataset, c.dataset_options())
            if not is_phantom_spec(data) and key not in owns:
                owns[key] = c.read_dataset(data)
                check_independent(owns[key], ext)


def decide(cfg: StudyConfig, study_dir: Path, only: Sequence[str] | None = None, download: bool = True,
           progress: bool = True, inputs: bool = True, devices: bool = True, config: Path | None = None) -> StudyPlan:
    """Validate every cell, resolve every init and compare with finished rows; write nothing.

    Each init is resolved once per (arch, init, weights, pinned sha256), and the weights' sha256 joins the
    cell's settings, so the fingerprint (and a rerun's check) covers the weights. A dry run
    (``download=False``) never downloads: weights it cannot find are a note, and finished cells are then
    matched by id only (the note says so). ``inputs``/``devices``: check what the cells to run read, and
    their devices here (``check_inputs``). ``config``: the user's study file, which the folder must not hold
    (``check_study_dir``).
    """
    from cxr_fast.weights import resolve_for_runs

    study_dir = Path(study_dir)
    check_study_dir(study_dir, config)
    cells = checked_cells(cfg, only, study_dir)
    keys = {c.cell_id: (c.arch, c.config.init, c.config.weights, c.config.weights_sha256) for c in cells}
    try:
        choices = resolve_for_runs(list(keys.values()), download=download, progress=progress)
    except CxrError as exc:
        if download:
            raise
        note = f"{exc}; a run fetches them first, so finished cells were matched by id only, not by settings"
        status = _status(cells, study_dir, by_fingerprint=False)
        if inputs:
            check_inputs([c for c in cells if status[c.cell_id] != "done"], devices)
        return StudyPlan(cfg, cells, status, {}, [note])
    inits = {cid: choices[key] for cid, key in keys.items()}
    for cell in cells:
        choice = inits[cell.cell_id]
        cell.settings.update(weights=choice.weights_file, weights_sha256=choice.weights_sha256)
        cell.config = cell.config.replace(weights=choice.weights_file, weights_sha256=choice.weights_sha256)
    status = _status(cells, study_dir)
    if inputs:
        check_inputs([c for c in cells if status[c.cell_id] != "done"], devices)
        check_external(cfg.external, [c for c in cells if status[c.cell_id] != "done"])
    return StudyPlan(cfg, cells, status, inits)


def dry_run(cfg: StudyConfig, study_dir: Path, only: Sequence[str] | None = None, inputs: bool = True,
            devices: bool = True, config: Path | None = None) -> StudyPlan:
    """Every selected cell with its status (done, partial: a run folder exists, todo); nothing downloaded.
    ``inputs``/``devices`` as ``decide``: devices only when the runs would train here (not on Ray workers)."""
    return decide(cfg, Path(study_dir).resolve(), only, download=False, progress=False, inputs=inputs,
                  devices=devices, config=config)


def _store_key(cell: Cell) -> tuple[str, ...] | None:
    """Cells with the same key read one dataset, read the same way, in the same store format: they share one store,
    whatever their label (one store per dataset and format, each resolution in it once)."""
    from cxr_fast.data.sets.base import DatasetOptions
    from cxr_fast.loaders import store_format

    c = cell.config
    fmt = store_format(c.loader)
    if fmt is None or c.store:
        return None  # a loader that reads PNGs (pil), or a store the user gave
    return (str(c.data), c.dataset, *(str(getattr(c, n)) for n in DatasetOptions.names()), fmt)


def draw_subsamples(cells: Sequence[Cell]) -> dict[str, tuple[Any, Any]]:
    """Each cell's (dataset, subsample), drawn once per distinct label, data, size, seed, split and validation
    share: every resolution of a label trains and is scored on the same images, and its store holds them."""
    from cxr_fast.stores.manifest import data_of

    datasets: dict[tuple[Any, ...], Any] = {}
    drawn: dict[tuple[Any, ...], Any] = {}
    out: dict[str, tuple[Any, Any]] = {}
    for cell in cells:
        c = cell.config
        data = str(data_of(c.data, c.store))
        reading = (data, c.dataset, c.dataset_options())
        if reading not in datasets:
            datasets[reading] = c.read_dataset(None if data == "None" else data, quiet=True)
        key = (cell.label, reading, c.subsample_size, c.seed, c.split, c.val_fraction)
        if key not in drawn:
            drawn[key] = c.draw_subsample(datasets[reading])
        out[cell.cell_id] = (datasets[reading], drawn[key])
    return out


def prepare_stores(cells: Sequence[Cell], todo: Sequence[Cell], study_dir: Path, drawn: dict[str, tuple[Any, Any]],
                   quiet: bool = False) -> None:
    """Decode each dataset's images once, at every resolution the cells to run (``todo``) need, into one store
    under ``stores/`` per dataset and format; ``drawn`` holds every cell's (dataset, subsample).

    A label's subsample is a list of images in that store, so the stores cost the union of the subsamples, not
    their sum (the paper's 8 labels on NIH: see results/stores/footprint.md). The union is taken over every
    cell of the study, done or not, so a resumed study finds its store made. Without this each run would extend
    the loader's store with its own resolution, decoding every image again (10 ms per 1024 px image per core).
    """
    from cxr_fast.stores import jpeg
    from cxr_fast.stores.prepare import PrepareConfig, prepare_store

    members: dict[tuple[str, ...], list[Cell]] = {}
    for cell in cells:
        key = _store_key(cell)
        if key is not None:
            members.setdefault(key, []).append(cell)
    to_run = {c.cell_id for c in todo}
    for key, group in members.items():
        running = [c for c in group if c.cell_id in to_run]
        if not running:
            continue
        fmt = key[-1]
        dataset = drawn[group[0].cell_id][0]
        ids = sorted({str(i) for c in group for i in drawn[c.cell_id][1].image_ids})
        digest = hashlib.sha1(json.dumps([key, ids]).encode()).hexdigest()[:8]
        root = (study_dir / STORES / f"{dataset.name}-{fmt}-{digest}").resolve()
        resolutions = tuple(sorted({c.res for c in running})) if fmt != jpeg.FORMAT else ()
        if not quiet:
            labels = ", ".join(dict.fromkeys(c.label for c in group))
            print(f"preparing {dataset.title} ({len(ids)} images: the union of {labels}): {fmt} at "
                  f"{', '.join(map(str, resolutions)) or 'source size'} px -> {root}")
        prepare_store(dataset, ids, None, root, PrepareConfig(resolutions=resolutions, formats=(fmt,), quiet=quiet),
                      {"dataset": dataset.name})
        for cell in running:
            cell.settings["store"] = str(root)
            cell.config = cell.config.replace(store=str(root))


@dataclass
class StudySummary:
    cells: int
    already_done: int
    ran: int
    rows: list[dict[str, Any]]


def run_cells(cfg: StudyConfig | StudyPlan, study_dir: str | Path, executor: Any = None,
              only: Sequence[str] | None = None, run_fn: RunFn | None = None, progress: bool = True,
              prepare: bool | None = None) -> StudySummary:
    """Run every unfinished cell into ``study_dir`` and return what the store holds.

    ``cfg``: a study config (decided here first) or what ``decide`` already made of it; a refused study leaves
    the folder as it was. ``run_fn(config) -> metrics`` defaults to the real training (``train_cell``, which
    is also given each cell's resolved init and drawn subsample); tests pass a fake. ``executor`` defaults to
    ``LocalExecutor()``. ``prepare`` (default: when training for real) decodes each label's images once into a
    shared store.
    """
    from cxr_fast.executors import Job, LocalExecutor
    from cxr_fast.study.packing import job_label, pack_jobs
    from cxr_fast.study.shared import shared_folders

    study_dir = Path(study_dir).resolve()  # Ray workers may run in another working directory
    executor = executor or LocalExecutor()
    real = run_fn is None
    prepare = real if prepare is None else prepare
    run_fn = run_fn or train_cell
    decided = cfg if isinstance(cfg, StudyPlan) else decide(
        cfg, study_dir, only, progress=progress, inputs=real, devices=isinstance(executor, LocalExecutor))
    with study_lock(study_dir):
        ResultsStore(study_dir / RESULTS).repair()
        status = _status(decided.cells, study_dir)  # again under the lock: the rows are final now
        cells = decided.cells
        todo = [c for c in cells if status[c.cell_id] != "done"]
        write_text(study_dir / STUDY_CONFIG, yaml.safe_dump(decided.config.to_dict(), sort_keys=False))
        store = ResultsStore(study_dir / RESULTS)
        drawn = draw_subsamples(cells) if (real or prepare) and todo else {}  # all: a store holds their union
        if prepare and todo:
            prepare_stores(cells, todo, study_dir, drawn, quiet=not progress)
        groups, notes = pack_jobs(todo, decided.config.pack if real else 1,
                                  {c.cell_id: len(drawn[c.cell_id][1].part("train")[0]) for c in todo} if real else {})

        def inputs(cell: Cell) -> dict[str, Any]:
            if not real:
                return {}
            return {"init": decided.inits.get(cell.cell_id), "subsample": drawn[cell.cell_id][1],
                    "external": decided.config.external}

        def job(group: list[Cell]) -> Job:
            if len(group) == 1:
                return Job(group[0].cell_id, group[0].config, group[0].describe(), inputs(group[0]))
            return Job(job_label(group), [c.config for c in group], "; ".join(c.describe() for c in group),
                       {"inits": [decided.inits.get(c.cell_id) for c in group],
                        "subsamples": [drawn[c.cell_id][1] for c in group], "external": decided.config.external},
                       fn=train_pack)

        jobs = [job(g) for g in groups]
        members = {j.key: g for j, g in zip(jobs, groups)}
        with StudyProgress(len(cells), len(cells) - len(todo), enabled=progress) as bar:
            for note in notes:
                bar.bar.print(f"note: {note}")
            if any(len(g) > 1 for g in groups):
                bar.bar.print(f"packed: {len(todo)} runs as {len(groups)} jobs (pack {decided.config.pack}: "
                          f"{', '.join(str(len(g)) for g in groups)} runs each)")

            def on_done(job: Job, metrics: dict) -> None:
                group = members[job.key]
                share = {"gpu_share": metrics["gpu_share"]} if "gpu_share" in metrics else {}  # the executor's
                for cell, m in zip(group, [{**m, **share} for m in metrics["runs"]] if len(group) > 1 else [metrics]):
                    row = result_row(cell, m)
                    store.append(row)
                    bar.finished(cell, row)

            def on_start(job: Job) -> None:
                for cell in members[job.key]:
                    bar.started(cell)

            executor.run(jobs, run_fn, on_done, on_start=on_start,
                         shared=shared_folders(todo, study_dir))  # a cluster checks its nodes see them
        ids = {c.cell_id for c in cells}
        rows = [r for cid, r in store.finished().items() if cid in ids]
    return StudySummary(len(cells), len(cells) - len(todo), len(todo), rows)
