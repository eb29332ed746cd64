"""The front door for Python: the few calls a notebook needs, each taking the same settings as the commands.

Every call takes run settings as keywords (``label="Nodule", res=64, data=...``), validated by the one run
schema (``cxr_fast.schema.run.RunConfig``) exactly as ``cxr-fast train``'s flags and a study's ``train:``
block are, with the same one-line errors. Each is a thin shim over one library call, like the commands:

    open_dataset(data)             any dataset folder or phantom     (RunConfig.read_dataset)
    prepare(out, **settings)       decode a label's subsample once   (stores.prepare.prepare_subsample)
    loader(part, **settings)       the batches a run reads           (train.parts.part_loader)
    fit(**settings)                train and score one run           (train.run_training)
    evaluate(run, data)            score a run on another dataset    (evaluate.evaluate_external)
    run_study(config, **overrides) run or resume a study             (study.run_cells)
    results(study_dir)             a study's rows, for pandas        (study.results.ResultsStore)

``import cxr_fast`` stays light: ``cxr_fast.fit`` and the rest are loaded on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from cxr_fast.schema.run import RunConfig


def open_dataset(data: str | Path | None = None, quiet: bool = True, **settings: Any) -> Any:
    """A data folder of any dataset cxr-fast reads (``dataset="auto"`` detects it; ``uncertain``, ``views``, ...
    as the run settings name them), a phantom spec (``"phantom:n=200,size=256"``), or None for the built-in
    phantom (made once into the cache folder)."""
    return RunConfig.parse(settings, "open_dataset").read_dataset(data, quiet)


def prepare(out: str | Path, resolutions: Iterable[int] = (224,), formats: Iterable[str] = ("cache",),
            workers: int | None = None, quiet: bool = True, **settings: Any) -> Any:
    """Decode the subsample these settings train on (``label``, ``subsample_size``, ``seed``, ``split``, ``data``)
    once into the store ``out``, at each resolution; returns the opened store. Reruns resume."""
    from cxr_fast.stores.prepare import PrepareConfig, prepare_subsample

    cfg = RunConfig.parse(settings, "prepare")
    dataset = cfg.read_dataset(cfg.data, quiet)
    return prepare_subsample(dataset, cfg.draw_subsample(dataset), out,
                             PrepareConfig(resolutions=tuple(resolutions), formats=tuple(formats), workers=workers,
                                           quiet=quiet))


def loader(part: str = "train", **settings: Any) -> Any:
    """The batches a run with these settings reads: ``part="train"`` (shuffled, the recipe's augmentation) or
    ``"val"`` (in order, plain); each batch is ``(images N x 1 x res x res float32 on the run's device,
    channels-last; labels N)``. ``loader="auto"`` is decided by the run's rule, and the loader's store is made
    when missing."""
    from cxr_fast.errors import CxrError
    from cxr_fast.recipes import augmentation
    from cxr_fast.step import device_precision, resolve_device
    from cxr_fast.stores.manifest import data_of
    from cxr_fast.train.parts import loader_for, part_loader

    if part not in ("train", "val"):
        raise CxrError(f"part must be 'train' or 'val', got {part!r}")
    cfg = RunConfig.parse(settings, "loader")
    device = resolve_device(cfg.device)
    dataset = cfg.read_dataset(data_of(cfg.data, cfg.store))
    sub = cfg.draw_subsample(dataset)
    name, _ = loader_for(cfg, device, device_precision(cfg.precision, device), len(sub.part(part)[0]))
    return part_loader(cfg, dataset, sub, part, device, name, augmentation(cfg.recipe))


def evaluate(run: str | Path, data: str | Path, size: int | None = None, quiet: bool = True, device: str | None = None,
             **reading: Any) -> dict[str, Any]:
    """Score a finished run on another dataset's images of its label (``dataset``, ``uncertain``, ... as run
    settings say how ``data`` is read); refused when the sets share images. ``cxr-fast evaluate``."""
    from cxr_fast.evaluate import evaluate_external

    return evaluate_external(run, data, size=size, quiet=quiet, device=device, **reading)


def fit(progress: bool = False, resume: bool = False, overwrite: bool = False, **settings: Any) -> dict[str, Any]:
    """Train and score one run, as ``cxr-fast train`` does; returns its metrics (also in ``out/metrics.json``)."""
    from cxr_fast.train import run_training

    return run_training(RunConfig.parse(settings, "fit"), progress=progress, resume=resume, overwrite=overwrite)


def run_study(config: str | Path | Mapping[str, Any], out: str | Path | None = None, only: Iterable[str] = (),
              progress: bool = False, **overrides: Any) -> Any:
    """Run or resume a study: ``config`` is a study YAML file or the same mapping; ``overrides`` are run settings
    for every cell (and ``epochs`` for every grid), as ``cxr-fast study``'s flags. Returns the summary, whose
    ``rows`` are the finished runs; a rerun skips what is done and resumes the rest."""
    from cxr_fast.study import apply_overrides, load_study_config, parse_study, run_cells
    from cxr_fast.study.grid import default_study_dir

    cfg = parse_study(dict(config), "config") if isinstance(config, Mapping) else load_study_config(config)
    cfg = apply_overrides(cfg, **overrides)
    folder = Path(out) if out is not None else default_study_dir(cfg)
    return run_cells(cfg, folder, only=list(only) or None, progress=progress)


def results(study_dir: str | Path) -> list[dict[str, Any]]:
    """A study's finished runs, one dict per run (label, res, arch, auc, auc_sd, ...): ``pandas.DataFrame(rows)``."""
    from cxr_fast.errors import CxrError
    from cxr_fast.study.results import RESULTS, ResultsStore

    path = Path(study_dir) / RESULTS
    if not path.is_file():
        raise CxrError(f"{study_dir} holds no {RESULTS}: not a study folder, or no run has finished yet")
    return list(ResultsStore(path).finished().values())
