"""``run_training``: one run from its config to its record, as an outline of the steps the other modules do."""

from __future__ import annotations

import shutil
import time
from typing import Any, Callable

from cxr_fast.config import save_yaml
from cxr_fast.schema.run import RunConfig
from cxr_fast.train.folder import CHECKPOINT_NAME, CONFIG_NAME, LOG_NAME, plan_run
from cxr_fast.train.loop import Clock, check_same_images, restore, train_epochs
from cxr_fast.train.parts import build_parts
from cxr_fast.train.record import score_and_record


def run_training(
    cfg: RunConfig,
    progress: bool = True,
    resume: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    overwrite: bool = False,
    init: Any = None,
    subsample: Any = None,
) -> dict[str, Any]:
    """Train, evaluate with TTA, write the run folder and return the metrics dict.

    A folder holding a run is refused unless ``resume`` (a finished run with the same config is
    returned as it is; a checkpoint is continued; a config that differs in anything but the settings a
    resumed run may change is an error) or ``overwrite``. ``on_epoch`` is called with each epoch's log row
    after its checkpoint. ``init`` (an ``InitChoice``) and ``subsample``: what a study resolved and drew once
    for many runs; by default the run resolves and draws its own.
    """
    import torch

    started = time.perf_counter()
    plan = plan_run(cfg, resume=resume, overwrite=overwrite, progress=progress, init=init)
    if plan.finished is not None:
        return plan.finished
    try:
        parts = build_parts(cfg, torch.device(plan.resolved.device), plan.resolved.precision, quiet=not progress,
                            weights=plan.init.weights_file, sub=subsample)
        for name in plan.clear:
            (plan.out / name).unlink(missing_ok=True)
        plan.out.mkdir(parents=True, exist_ok=True)
        clock = Clock(started)
        first_epoch = 0
        if plan.checkpoint is not None:
            check_same_images(plan, parts)
            restore(parts, plan.checkpoint, plan.out / LOG_NAME)
            first_epoch = plan.checkpoint["epoch"]
            clock.resume(plan.checkpoint)
        save_yaml(plan.current, plan.out / CONFIG_NAME)
        if cfg.compile:
            parts.step.model = torch.compile(parts.model)
        setup_s = time.perf_counter() - started  # data, store, model: what a study pays per run besides training
        train_epochs(cfg, plan, parts, first_epoch, clock, progress, on_epoch)
        return score_and_record(cfg, plan, parts, clock, setup_s)
    except BaseException:
        # A run that never reached its first checkpoint is nothing to resume: leave no half-made folder.
        if plan.fresh_folder and plan.out.is_dir() and not (plan.out / CHECKPOINT_NAME).exists():
            shutil.rmtree(plan.out, ignore_errors=True)
        raise
