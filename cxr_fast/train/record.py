"""The run's record: the final TTA scoring, ``predictions.npz`` and ``metrics.json``.

Every record names what the run actually used, so nothing falls back silently: the init and the weights'
sha256, the recipe, the loader (and why ``auto`` chose it), the precision, the optimizer's implementation.
Scores are log-odds (``SCORE_SPACE``), so no probability underflows to a tie.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from cxr_fast.errors import CxrError
from cxr_fast.io import atomic_path, read_jsonl, write_json
from cxr_fast.schema.run import RunConfig
from cxr_fast.train.folder import LOG_NAME, METRICS_NAME, PREDICTIONS_NAME, RunPlan
from cxr_fast.train.loop import Clock, predict
from cxr_fast.train.parts import RunParts

# What the scores in predictions.npz are, and how the TTA views were averaged (recorded in metrics.json).
SCORE_SPACE = "log-odds"
TTA_AVERAGE = "mean probability, taken in log space (log-odds of the mean)"


def score_and_record(cfg: RunConfig, plan: RunPlan, parts: RunParts, clock: Clock, setup_s: float,
                     predicted: tuple[Any, Any, Any] | None = None,
                     pack: dict[str, Any] | None = None) -> dict[str, Any]:
    """Final TTA scoring, predictions.npz and metrics.json. ``predicted``: this run's (labels, plain, TTA) scores
    when a packed job scored its K models at once (``train.packed_run``); ``pack``: that job, for the record."""
    import torch

    from cxr_fast.metrics import accuracy, score_auc
    from cxr_fast.step import optimizer_impl

    out, sub, device = plan.out, parts.sub, parts.step.device
    val_ids, val_targets = sub.part("val")
    t1 = time.perf_counter()
    if predicted is None:
        predicted = predict(parts.step, parts.val_loader, tta=cfg.tta, seed=cfg.seed, augmentation=parts.augmentation)
        clock.eval_s += time.perf_counter() - t1
    y, plain, scores = predicted
    if not np.array_equal(y, val_targets.astype(np.float64)):
        raise CxrError("the validation loader returned labels out of order; it must not shuffle in eval mode",
                       exit_code=1)
    final, plain_score = score_auc(y, scores), score_auc(y, plain)
    with atomic_path(out / PREDICTIONS_NAME) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, image_ids=np.asarray(val_ids), labels=y.astype(np.float32),
                     scores=scores.astype(np.float32), scores_plain=plain.astype(np.float32))
    log = read_jsonl(out / LOG_NAME)
    leak_images, leak_share = sub.val_leak
    metrics = {
        "label": sub.label, "res": cfg.res, "arch": cfg.arch, "recipe": cfg.recipe, **plan.init.record(),
        "auc": final.auc, "auc_sd": final.sd, "auc_status": final.status, "auc_sd_note": final.note,
        "accuracy": accuracy(y, scores, threshold=0.0), "n_pos": int(y.sum()), "n_neg": int(len(y) - y.sum()),
        "auc_plain": plain_score.auc, "auc_plain_sd": plain_score.sd, "tta": cfg.tta,
        "score_space": SCORE_SPACE, "tta_average": TTA_AVERAGE,
        "split": cfg.split, "subsample_size": cfg.subsample_size, "seed": cfg.seed,
        "val_leak_images": leak_images, "val_leak_share": leak_share,
        "dropped_images": len(parts.dropped), "dropped": parts.dropped,  # unusable, left out before training
        "wall_s": clock.wall(), "train_s": clock.train_s, "setup_s": setup_s, "eval_s": clock.eval_s,
        "checkpoint_s": clock.checkpoint_s,
        "train_images_per_s": clock.train_images / clock.train_s if clock.train_s > 0 else None,
        "epochs": cfg.epochs, "final_loss": log[-1]["loss"] if log else None,
        "resumed_from_epoch": plan.checkpoint["epoch"] if plan.checkpoint is not None else 0,  # a kill or lost node
        "peak_memory_mb": max((r["peak_memory_mb"] for r in log), default=None),
        "pos_weight": parts.pos_weight, "n_train": len(sub.part("train")[0]), "precision": plan.resolved.precision,
        "tf32": parts.step.tf32,  # whether fp32 matmuls/convolutions ran as TF32 (only at precision tf32)
        "graphs": parts.step.graphs,  # off (and why), or what was captured, replayed and run eager (cxr_fast.graphs)
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "optimizer": cfg.optimizer, "optimizer_impl": optimizer_impl(parts.optimizer),
        "loader": parts.loader_name, "loader_why": parts.loader_why, "channels_last": cfg.channels_last,
        "batch_size": cfg.batch_size, "out": str(out), **val_spacing(parts.dataset, val_ids, cfg.res),
        "dataset": parts.dataset.name, "dataset_version": parts.dataset.version,
        "data": parts.dataset.provenance(),  # its label table and the policies it was read under
        "pack": pack or {"k": 1},  # trained alone, or as one of K models of a packed job (cxr_fast.packed)
    }
    write_json(out / METRICS_NAME, metrics)
    return metrics


def val_spacing(dataset: Any, val_ids: Any, res: int) -> dict[str, Any]:
    """``val_mm_per_px``: the median mm per pixel across the validation images at this run's resolution, over
    the ``val_mm_per_px_n`` images whose spacing the dataset knows (None and 0 where it knows none)."""
    mm = np.asarray(dataset.pixel_spacing_mm(val_ids, res=res), dtype=np.float64)
    known = mm[np.isfinite(mm)]
    return {"val_mm_per_px": float(np.median(known)) if known.size else None, "val_mm_per_px_n": int(known.size)}


def summary_line(m: dict) -> str:
    """One line per run: the score, what it started from and how fast it went."""
    ips = m.get("train_images_per_s") or 0.0
    score = "AUC tied (no ranking)" if m.get("auc") is None else f"AUC {m['auc']:.3f} ± {m['auc_sd']:.3f}"
    init = m.get("init", "?") + (f" {m['weights_sha256'][:12]}" if m.get("weights_sha256") else "")
    return (f"{m['label']} {m['arch']} {m['res']}px: {score} (DeLong SD, {m['n_pos']} pos / {m['n_neg']} neg), "
            f"accuracy {m['accuracy']:.3f}, recipe {m.get('recipe', '?')}, init {init}, {ips:.1f} train img/s, "
            f"{m['wall_s']:.1f} s, {m['precision']} on {m['device_name']} -> {m['out']}")
