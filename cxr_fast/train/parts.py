"""What a run trains with, built the same way for ``train`` and ``lr-find``: data, subsample, model, step, loaders.

Everything is seeded from the run's ``seed``. The subsample is the run's (``RunConfig.draw_subsample``) unless
the caller drew it already (a study draws each label's once, for its store and all its runs).
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr_fast.data.reader import DataWarning
from cxr_fast.data.verify import screen_files
from cxr_fast.errors import CxrError
from cxr_fast.schema.run import RunConfig


@dataclass
class RunParts:
    """Everything a run trains with."""

    dataset: Any
    sub: Any  # cxr_fast.data.sampling.Subsample
    model: Any
    optimizer: Any
    step: Any  # cxr_fast.step.TrainStep
    train_loader: Any
    val_loader: Any
    loader_name: str
    pos_weight: float
    augmentation: Any  # cxr_fast.augment.AugmentConfig of the recipe (training and TTA)
    loader_why: str = ""  # how ``auto`` chose, where it weighed memory
    dropped: dict[str, str] = field(default_factory=dict)  # unusable images left out of ``sub``: name -> why


def build_parts(cfg: RunConfig, device: Any, precision: str, quiet: bool = False, need_val: bool = True,
                weights: str | None = None, sub: Any = None) -> RunParts:
    """Dataset -> label subsample -> model, optimizer, step and loaders, seeded from ``cfg.seed``.

    ``weights``: the resolved ImageNet file (``InitChoice.weights_file``), None for random init.
    ``need_val``: check now that validation holds both classes, so a doomed run fails before training.
    ``sub``: the subsample, when the caller drew it (it must be this config's).
    """
    import torch

    from cxr_fast.models import build_model
    from cxr_fast.recipes import augmentation
    from cxr_fast.step import TrainStep, make_optimizer
    from cxr_fast.stores.manifest import data_of

    dataset = cfg.read_dataset(data_of(cfg.data, cfg.store), quiet=quiet)  # --store alone names its data
    if sub is None:
        sub = cfg.draw_subsample(dataset)
    else:
        cfg.check_subsample(sub)
    _check_parts(sub, need_val)  # a doomed split fails before a store is made
    loader, loader_why = loader_for(cfg, device, precision, len(sub.part("train")[0]) + (len(sub.part("val")[0])
                                                                                       if need_val else 0))
    store = run_store(cfg, dataset, sub, loader)
    dropped = {str(n): why for n, why in store.bad.items()} if store is not None else \
        screen_files(dataset, sub.image_ids, workers=cfg.workers, quiet=quiet)
    dropped = {n: dropped[n] for n in map(str, sub.image_ids) if n in dropped}
    if dropped:
        warnings.warn(dropped_line(sub, dropped), DataWarning, stacklevel=2)
        sub = sub.without(dropped)
        _check_parts(sub, need_val)
    pos_weight = sub.pos_weight  # the whole (usable) subsample's, as the paper's Table 1

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = build_model(cfg.arch, cfg.recipe, weights=weights, head_bn_init=cfg.head_bn_init)
    optimizer = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.momentum)
    step = TrainStep(model, optimizer, pos_weight, precision, device, cfg.channels_last, recipe=cfg.recipe)
    aug = augmentation(cfg.recipe)

    if loader_why and loader != "resident" and not quiet:
        print(loader_why)
    root = store.root if store is not None else None
    train_loader = part_loader(cfg, dataset, sub, "train", device, loader, aug, store=root)
    val_loader = part_loader(cfg, dataset, sub, "val", device, loader, aug, store=root) if need_val else None
    loader_name = type(train_loader).__module__.rsplit(".", 1)[-1]
    return RunParts(dataset, sub, model, optimizer, step, train_loader, val_loader, loader_name, pos_weight, aug,
                    loader_why, dropped)


def _check_parts(sub: Any, need_val: bool) -> None:
    """Both classes in validation (else no AUC exists), positives in training: an error now, not NaN later."""
    from cxr_fast.metrics import _check

    val_targets = sub.part("val")[1]
    if need_val:
        _check(val_targets, np.zeros(len(val_targets)))
    if sub.part("train")[1].sum() == 0:
        raise CxrError(f"the training part has no {sub.label} images; use a larger subsample or another split")


def run_store(cfg: RunConfig, dataset: Any, sub: Any, loader: str) -> Any:
    """The store backend ``loader`` reads, made or extended now for the whole drawn subsample (train and
    validation, as ``prepare`` makes it), so neither part makes a store the other cannot use; None for a
    backend that reads the source files. Its manifest lists the images it could not read."""
    from cxr_fast.feed import store_for
    from cxr_fast.stores.prepare import subsample_info

    return store_for(loader, dataset, sub.image_ids, sub.targets, cfg.res, cfg.store, cfg.workers,
                     subsample_info(sub))


def dropped_line(sub: Any, dropped: dict[str, str]) -> str:
    """One line: how many images a run leaves out, from which part, and why (kinds counted, one example)."""
    val = set(map(str, sub.part("val")[0]))
    n_val = sum(name in val for name in dropped)
    kinds = Counter(why.split(" (")[0].split(":")[0] for why in dropped.values())
    first = next(iter(dropped))
    return (f"{len(dropped)} of {len(sub.image_ids)} images unusable, left out of this run "
            f"({len(dropped) - n_val} training, {n_val} validation): "
            f"{', '.join(f'{c} {k}' for k, c in kinds.most_common())}; first {first}: {dropped[first]}")


def loader_for(cfg: RunConfig, device: Any, precision: str, n_images: int) -> tuple[str, str]:
    """(backend, why) for this run on ``device``, by the one rule (``cost.fit.choose_loader``): the memory it
    weighs is the predicted step (``cost.memcache``) and the card's capacity."""
    import torch

    from cxr_fast.cost.fit import choose_loader as rule
    from cxr_fast.cost.memcache import memory_profile
    from cxr_fast.cost.memory import normalize_precision
    from cxr_fast.loaders import availability

    ready = availability() if cfg.loader == "auto" else {}

    def step_bytes() -> int:
        prof = memory_profile(cfg.arch, cfg.res, normalize_precision(precision), cfg.optimizer, cfg.channels_last)
        return prof.predicted_bytes(cfg.batch_size)

    return rule(cfg.loader, device.type == "cuda", lambda name: ready[name][0], n_images * cfg.res * cfg.res,
                step_bytes, lambda: torch.cuda.get_device_properties(device).total_memory)


def part_loader(cfg: RunConfig, dataset: Any, sub: Any, part: str, device: Any, loader: str, augmentation: Any,
                store: Path | None = None) -> Any:
    """The ``train`` or ``val`` part of ``sub`` through backend ``loader``, as the run reads it: training batches
    shuffled and augmented by the recipe, validation in order and plain. ``store``: the one the run prepared
    (``run_store``); without it the whole subsample's store is prepared first."""
    from cxr_fast.feed import make_loader
    from cxr_fast.loaders.base import LoaderSpec

    if store is None:
        made = run_store(cfg, dataset, sub, loader)
        store = made.root if made is not None else (Path(cfg.store) if cfg.store else None)
    ids, targets = sub.part(part)
    train = part == "train"
    # A last training batch of one image cannot be batch-normalised in train mode: drop it.
    spec = LoaderSpec(dataset=dataset, image_ids=ids, targets=targets, res=cfg.res, batch_size=cfg.batch_size,
                      train=train, device=device, seed=cfg.seed, channels_last=cfg.channels_last,
                      drop_last=train and len(ids) % cfg.batch_size == 1, augment=cfg.augment and train,
                      store=store, num_workers=cfg.workers,
                      augmentation=augmentation)
    return make_loader(loader, spec)
