"""What a run trains with, built the same way for ``train`` and ``lr-find``: data, subsample, model, step, loaders.

Everything is seeded from the run's ``seed``. The subsample is the run's (``RunConfig.draw_subsample``) unless
the caller drew it already (a study draws each label's once, for its store and all its runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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


def build_parts(cfg: RunConfig, device: Any, precision: str, quiet: bool = False, need_val: bool = True,
                weights: str | None = None, sub: Any = None) -> RunParts:
    """Dataset -> label subsample -> model, optimizer, step and loaders, seeded from ``cfg.seed``.

    ``weights``: the resolved ImageNet file (``InitChoice.weights_file``), None for random init.
    ``need_val``: check now that validation holds both classes, so a doomed run fails before training.
    ``sub``: the subsample, when the caller drew it (it must be this config's).
    """
    import torch

    from cxr_fast.data.source import resolve_dataset
    from cxr_fast.metrics import _check
    from cxr_fast.models import build_model
    from cxr_fast.recipes import augmentation
    from cxr_fast.step import TrainStep, make_optimizer
    from cxr_fast.stores.manifest import data_of

    dataset = resolve_dataset(data_of(cfg.data, cfg.store), quiet=quiet)  # --store alone names its data
    if sub is None:
        sub = cfg.draw_subsample(dataset)
    else:
        cfg.check_subsample(sub)
    train_ids, train_targets = sub.part("train")
    val_ids, val_targets = sub.part("val")
    if need_val:
        _check(val_targets, np.zeros(len(val_targets)))  # one class in validation: an error now, not NaN later
    if train_targets.sum() == 0:
        raise CxrError(f"the training part has no {sub.label} images; use a larger subsample or another split")
    pos_weight = sub.pos_weight  # the whole subsample's, as the paper's Table 1

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = build_model(cfg.arch, cfg.recipe, weights=weights)
    optimizer = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.momentum)
    step = TrainStep(model, optimizer, pos_weight, precision, device, cfg.channels_last, recipe=cfg.recipe)
    aug = augmentation(cfg.recipe)

    loader, loader_why = loader_for(cfg, device, precision, len(train_ids) + (len(val_ids) if need_val else 0))
    if loader_why and loader != "resident" and not quiet:
        print(loader_why)
    train_loader = part_loader(cfg, dataset, sub, "train", device, loader, aug)
    val_loader = part_loader(cfg, dataset, sub, "val", device, loader, aug) if need_val else None
    loader_name = type(train_loader).__module__.rsplit(".", 1)[-1]
    return RunParts(dataset, sub, model, optimizer, step, train_loader, val_loader, loader_name, pos_weight, aug,
                    loader_why)


def loader_for(cfg: RunConfig, device: Any, precision: str, n_images: int) -> tuple[str, str]:
    """(backend, why) for this run on ``device``, by the one rule (``cost.fit.choose_loader``): the memory it
    weighs is the predicted step (``cost.memcache``) and the card's capacity."""
    import torch

    from cxr_fast.cost.fit import choose_loader as rule
    from cxr_fast.cost.memcache import memory_profile
    from cxr_fast.loaders import availability

    ready = availability() if cfg.loader == "auto" else {}

    def step_bytes() -> int:
        prof = memory_profile(cfg.arch, cfg.res, "fp32" if precision == "fp32" else "amp", cfg.optimizer,
                              cfg.channels_last)
        return prof.predicted_bytes(cfg.batch_size)

    return rule(cfg.loader, device.type == "cuda", lambda name: ready[name][0], n_images * cfg.res * cfg.res,
                step_bytes, lambda: torch.cuda.get_device_properties(device).total_memory)


def part_loader(cfg: RunConfig, dataset: Any, sub: Any, part: str, device: Any, loader: str, augmentation: Any) -> Any:
    """The ``train`` or ``val`` part of ``sub`` through backend ``loader`` (its store prepared first), as the run
    reads it: training batches shuffled and augmented by the recipe, validation in order and plain."""
    from cxr_fast.feed import make_loader
    from cxr_fast.loaders.base import LoaderSpec

    ids, targets = sub.part(part)
    train = part == "train"
    # A last training batch of one image cannot be batch-normalised in train mode: drop it.
    spec = LoaderSpec(dataset=dataset, image_ids=ids, targets=targets, res=cfg.res, batch_size=cfg.batch_size,
                      train=train, device=device, seed=cfg.seed, channels_last=cfg.channels_last,
                      drop_last=train and len(ids) % cfg.batch_size == 1, augment=cfg.augment and train,
                      store=Path(cfg.store) if cfg.store else None, num_workers=cfg.workers,
                      augmentation=augmentation)
    return make_loader(loader, spec)
