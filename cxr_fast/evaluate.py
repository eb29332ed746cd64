"""External validation: score a trained run on another dataset's images of the same finding, with DeLong SD.

The run's own model (its last checkpoint), its resolution, recipe and test-time augmentation, on images it never
saw: the other dataset's subsample of the run's label (all positives plus seeded negatives up to ``size``, the
run's sampling), every image of it scored. An external set that shares images with the run's training images is
refused, never scored: by what the datasets say (RSNA's images are NIH's: ``Dataset.derived_from``; the same
dataset), and otherwise by pixels: each image decoded by the one reader and squeezed to 32 px; images whose
average hash (8 x 8 block means above their median, 64 bits) agree are compared pixel by pixel, and a mean
difference under ``SAME_IMAGE_GRAY`` gray levels is the same image, re-encoded or not (a JPEG at quality 95
differs from its PNG by about 1). A label the other dataset does not map is one line naming the labels it has; a study records it
as unmapped. The result is written to ``RUN/external-<dataset>.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cxr_fast.errors import CxrError
from cxr_fast.schema.run import RunConfig

HASH_RES = 32  # the side of the thumbnails whose hashes find an image shared by two datasets
SAME_IMAGE_GRAY = 3.0  # mean absolute difference (gray levels, 32 px) under which two thumbnails are one image


def external_name(dataset: Any) -> str:
    return f"external-{dataset.name}.json"


def evaluate_external(run_dir: str | Path, data: str | Path, size: int | None = None, quiet: bool = True,
                      device: str | None = None, **reading: Any) -> dict[str, Any]:
    """Score the run in ``run_dir`` on ``data`` (``reading``: ``dataset`` and its policies, as run settings);
    returns the record also written to ``run_dir/external-<dataset>.json``."""
    import torch

    from cxr_fast.config import load_yaml
    from cxr_fast.io import write_json
    from cxr_fast.stores.manifest import data_of
    from cxr_fast.train.folder import CHECKPOINT_NAME, CONFIG_NAME

    run = Path(run_dir)
    for name in (CONFIG_NAME, CHECKPOINT_NAME):
        if not (run / name).is_file():
            raise CxrError(f"{run} is not a finished run folder: no {name}")
    cfg = RunConfig.parse(load_yaml(run / CONFIG_NAME), str(run / CONFIG_NAME))
    ext_cfg = RunConfig.parse({**cfg.record(), "data": str(data), "store": None, "out": None,
                               "subsample_size": size or cfg.subsample_size,
                               **({"device": device} if device else {}), **reading}, "evaluate")
    ext = ext_cfg.read_dataset(ext_cfg.data, quiet=quiet)
    own = cfg.read_dataset(data_of(cfg.data, cfg.store), quiet=quiet)
    check_independent(own, ext)
    ext.metadata.has(cfg.label)  # a label the other dataset does not map: one line naming the ones it has
    sub = ext_cfg.draw_subsample(ext)
    train_ids = cfg.draw_subsample(own).part("train")[0]
    shared = shared_images(own, train_ids, ext, sub.image_ids, quiet)
    if shared:
        raise CxrError(f"{ext.root} shares {len(shared)} image(s) with the run's training images (e.g. "
                       f"{shared[0][1]} is {shared[0][0]} by its pixels); it is no external test for this run")
    scored = _score(cfg, ext_cfg, ext, sub, torch.load(run / CHECKPOINT_NAME, map_location="cpu", weights_only=True),
                    quiet)
    record = {"run": str(run), "label": cfg.label, "res": cfg.res, "arch": cfg.arch, "trained_on": own.name,
              **{f"external_{k}": v for k, v in ext.provenance().items()}, "external_data": str(ext.root),
              "external_size": ext_cfg.subsample_size, "external_seed": ext_cfg.seed,
              "overlap_check": f"datasets' own word and {HASH_RES} px pixels (average hash, then mean difference under "
                               f"{SAME_IMAGE_GRAY:g} gray levels): none shared", **scored}
    write_json(run / external_name(ext), record)
    return record


def check_independent(own: Any, ext: Any) -> None:
    """Refuse an external set the datasets themselves say is (part of) the training data."""
    if own.name == ext.name and Path(own.root).resolve() == Path(ext.root).resolve():
        raise CxrError(f"{ext.root} is the run's own data folder; an external test needs another dataset")
    for a, b in ((own, ext), (ext, own)):
        if b.name in a.derived_from:
            raise CxrError(f"{a.title}'s images are {b.title}'s ({a.name} is derived from {b.name}); "
                           f"{ext.title} is never an external test for a model trained on {own.title}")


def shared_images(own: Any, own_ids: Any, ext: Any, ext_ids: Any, quiet: bool = True) -> list[tuple[str, str]]:
    """(own id, external id) pairs that are one image by their pixels (see the module's docstring)."""
    mine = _thumbnails(own, own_ids, quiet)
    buckets: dict[bytes, list[tuple[str, np.ndarray]]] = {}
    for name, thumb in mine.items():
        buckets.setdefault(_average_hash(thumb), []).append((name, thumb))
    shared = []
    for name, thumb in _thumbnails(ext, ext_ids, quiet).items():
        for own_name, own_thumb in buckets.get(_average_hash(thumb), []):
            if np.abs(thumb.astype(np.float32) - own_thumb).mean() < SAME_IMAGE_GRAY:
                shared.append((own_name, name))
                break
    return shared


def _average_hash(thumb: np.ndarray) -> bytes:
    blocks = thumb.reshape(8, HASH_RES // 8, 8, HASH_RES // 8).mean(axis=(1, 3))
    return np.packbits(blocks > np.median(blocks)).tobytes()


def _thumbnails(dataset: Any, ids: Any, quiet: bool) -> dict[str, np.ndarray]:
    """Image id -> its 32 px uint8 thumbnail, from a cache store (made once, in the cache folder)."""
    from cxr_fast.stores import cache
    from cxr_fast.stores.prepare import ensure_store

    names = [str(i) for i in ids]
    store = ensure_store(dataset, names, None, cache.FORMAT, HASH_RES, quiet=quiet)
    rows, keep = store.positions(names)
    pixels = np.load(cache.path(store.root, HASH_RES), mmap_mode="r")
    return {name: np.asarray(pixels[row]).reshape(HASH_RES, HASH_RES) for name, row, ok in zip(names, rows, keep)
            if ok}


def _score(cfg: RunConfig, ext_cfg: RunConfig, ext: Any, sub: Any, checkpoint: dict, quiet: bool) -> dict[str, Any]:
    """The run's model, as its last checkpoint left it, over every usable image of ``sub`` (TTA as the run's)."""
    from dataclasses import replace

    import torch

    from cxr_fast.metrics import score_auc
    from cxr_fast.models import build_model
    from cxr_fast.recipes import augmentation
    from cxr_fast.step import TrainStep, device_precision, make_optimizer, resolve_device
    from cxr_fast.train.loop import predict
    from cxr_fast.train.parts import loader_for, part_loader, run_store

    device = resolve_device(ext_cfg.device)
    precision = device_precision(ext_cfg.precision, device)
    sub = replace(sub, is_val=np.ones(len(sub.image_ids), dtype=bool))  # every image is a test image
    loader, _ = loader_for(ext_cfg, device, precision, len(sub.image_ids))
    store = run_store(ext_cfg, ext, sub, loader)
    if store is not None and store.bad:
        sub = sub.without(store.bad)
    model = build_model(cfg.arch, cfg.recipe)
    model.load_state_dict(checkpoint["model"])
    step = TrainStep(model, make_optimizer(model, cfg.optimizer, cfg.lr, cfg.momentum), 1.0, precision, device,
                     cfg.channels_last, recipe=cfg.recipe)
    aug = augmentation(cfg.recipe)
    val = part_loader(ext_cfg, ext, sub, "val", device, loader, aug, store=store.root if store is not None else None)
    with torch.no_grad():
        y, _, scores = predict(step, val, tta=cfg.tta, seed=cfg.seed, augmentation=aug)
    result = score_auc(y, scores)
    return {"auc": result.auc, "auc_sd": result.sd, "auc_status": result.status, "auc_sd_note": result.note,
            "n_pos": int(y.sum()), "n_neg": int(len(y) - y.sum()), "dropped_images": len(store.bad) if store else 0,
            "loader": loader, "precision": precision}
