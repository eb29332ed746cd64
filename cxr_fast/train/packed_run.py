"""``run_packed``: K compatible runs trained as one packed model (``cxr_fast.packed``), each in its own run folder.

Each member is the run ``run_training`` would make of its config, with the same folder files and fields
(``config.yaml``, ``log.jsonl``, ``checkpoint.pt`` after every epoch, ``predictions.npz``, ``metrics.json``), plus
``pack`` in its metrics: K and the runs it trained beside. Its checkpoint holds its own model, optimizer state and
dropout stream (unpacked), so a member resumes packed or alone. What the members may differ in is declared once,
``RunConfig``'s ``per_model`` role (label, seed, init, subsample ...); every other setting must agree.

A finished member is returned as it is, so a job whose runs are partly finished trains only the missing ones.
Members at different epochs (a kill between two members' checkpoints) or with different numbers of training
images (images found unusable) train in separate packs: a packed step takes K batches of one size, never padded.
A member whose loss leaves the finite range stops the job, as a failed run stops a study; the others' checkpoints
of that epoch are written first.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from cxr_fast.config import save_yaml
from cxr_fast.errors import CxrError
from cxr_fast.io import append_jsonl
from cxr_fast.runtime import LatestValue, fixed_shapes, sync
from cxr_fast.schema.run import PER_MODEL, RunConfig
from cxr_fast.train.folder import CHECKPOINT_NAME, CONFIG_NAME, LOG_NAME, RunPlan, plan_run
from cxr_fast.train.loop import (Clock, EpochTotals, check_same_images, diverged, epoch_bar, peak_memory_mb, restore,
                                 rng_state, save_checkpoint)
from cxr_fast.train.parts import RunParts, build_parts
from cxr_fast.train.record import score_and_record
from cxr_fast.vocabulary import AUC_TIED

MECHANISM = "grouped (cxr_fast.packed: HFTA-style grouped convolutions)"


def pack_key(cfg: RunConfig) -> tuple[tuple[str, Any], ...]:
    """What runs of one packed step must share: every setting but the ``per_model`` ones."""
    return tuple((k, v) for k, v in cfg.record().items() if k not in PER_MODEL)


def member_names(outs: list[Path]) -> list[str]:
    """Each member's run folder relative to the members' common folder (a study's ``Nodule/r32``, ``Mass/r32``):
    short, and unique where the folders' own names repeat."""
    if len(outs) == 1:
        return [outs[0].name]
    root = Path(os.path.commonpath([str(o.resolve()) for o in outs]))
    return [str(o.resolve().relative_to(root)) or o.name for o in outs]


def check_packable(cfgs: Sequence[RunConfig]) -> None:
    """One line when ``cfgs`` cannot train as one packed step: a setting they differ in, or one packing refuses."""
    first = dict(pack_key(cfgs[0]))
    for cfg in cfgs[1:]:
        differ = [f"{k} ({first[k]!r} vs {v!r})" for k, v in pack_key(cfg) if first[k] != v]
        if differ:
            raise CxrError(f"runs packed into one step must agree in every setting but {', '.join(PER_MODEL)}; "
                           f"{cfgs[0].label} and {cfg.label} differ in {', '.join(differ[:3])}")
    if len(cfgs) > 1 and cfgs[0].compile:
        raise CxrError("packed runs are not compiled: use graphs (CUDA graphs capture the packed step), or pack: 1")
    outs = [str(c.out) for c in cfgs]
    if None in (c.out for c in cfgs) or len(set(outs)) != len(outs):
        raise CxrError(f"each packed run needs its own --out folder, got {outs}")


@dataclass
class Member:
    """One run of a packed job: its config, folder plan, parts, clock and dropout stream."""

    index: int
    cfg: RunConfig
    plan: RunPlan
    parts: RunParts | None = None
    clock: Clock | None = None
    first_epoch: int = 0
    setup_s: float = 0.0
    stream: Any = None  # its dropout stream's state when training starts (a CPU generator's state)


def run_packed(cfgs: Sequence[RunConfig], progress: bool = False, inits: Sequence[Any] | None = None,
               subsamples: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    """Train ``cfgs`` (K runs, each with its own ``out``) as packed jobs; return each run's metrics, in order.

    Like ``run_training(cfg, resume=True)`` for each: a finished run is reused, a checkpoint continued, a config
    that differs from its folder's refused. ``inits``/``subsamples``: what a study resolved and drew once."""
    cfgs = list(cfgs)
    if not cfgs:
        return []
    check_packable(cfgs)
    inits = list(inits) if inits is not None else [None] * len(cfgs)
    subsamples = list(subsamples) if subsamples is not None else [None] * len(cfgs)
    started = time.perf_counter()
    plans = [plan_run(c, resume=True, progress=progress, init=i) for c, i in zip(cfgs, inits)]
    results: list[dict[str, Any] | None] = [p.finished for p in plans]
    members = [Member(i, cfgs[i], p) for i, p in enumerate(plans) if p.finished is None]
    try:
        for m in members:
            _build(m, subsamples[m.index], progress, started)
        for group in _groups(members):
            for m, metrics in zip(group, _train_group(group, progress)):
                results[m.index] = metrics
    except BaseException:
        for m in members:  # a run that never reached its first checkpoint is nothing to resume
            out = m.plan.out
            if m.plan.fresh_folder and out.is_dir() and not (out / CHECKPOINT_NAME).exists():
                shutil.rmtree(out, ignore_errors=True)
        raise
    return [r for r in results if r is not None]


def _build(m: Member, sub: Any, progress: bool, started: float) -> None:
    """``run_training``'s set-up for one member: parts, folder, checkpoint; its dropout stream is the global CPU
    generator's state now, which is where its own run's dropout would start drawing (or its checkpoint's)."""
    import torch

    plan = m.plan
    m.parts = build_parts(m.cfg, torch.device(plan.resolved.device), plan.resolved.precision, quiet=not progress,
                          weights=plan.init.weights_file, sub=sub)
    for name in plan.clear:
        (plan.out / name).unlink(missing_ok=True)
    plan.out.mkdir(parents=True, exist_ok=True)
    m.clock = Clock(started)
    if plan.checkpoint is not None:
        check_same_images(plan, m.parts)
        restore(m.parts, plan.checkpoint, plan.out / LOG_NAME)
        m.first_epoch = plan.checkpoint["epoch"]
        m.clock.resume(plan.checkpoint)
    m.stream = plan.checkpoint["rng"].get("dropout") if plan.checkpoint is not None else None
    if m.stream is None:
        m.stream = torch.get_rng_state()
    save_yaml(plan.current, plan.out / CONFIG_NAME)
    m.setup_s = time.perf_counter() - started


def _groups(members: Sequence[Member]) -> list[list[Member]]:
    """Members that can share each step: at one epoch, with as many training images (in config order)."""
    groups: dict[tuple[int, int], list[Member]] = {}
    for m in members:
        groups.setdefault((m.first_epoch, len(m.parts.sub.part("train")[0])), []).append(m)
    return list(groups.values())


def _generator(m: Member, device: Any) -> Any:
    """The member's dropout generator: on the CPU its own run's stream; on CUDA a generator of its own, seeded
    from its seed (its own run would draw from the device's, in another order: not the same masks)."""
    import torch

    if device.type == "cuda":
        g = torch.Generator(device)
        if m.plan.checkpoint is not None and m.plan.checkpoint["rng"].get("dropout") is not None:
            g.set_state(m.plan.checkpoint["rng"]["dropout"])
        else:
            g.manual_seed(int(m.cfg.seed))
        return g
    g = torch.Generator()
    g.set_state(m.stream)
    return g


def _train_group(group: list[Member], progress: bool) -> list[dict[str, Any]]:
    """Pack the members' models, train the epochs left, write each member's record."""
    import torch

    from cxr_fast.graphs import use_graphs
    from cxr_fast.packed import PackedModel, PackedStep, pack_optimizer_state, predict_packed
    from cxr_fast.step import make_optimizer

    lead = group[0]
    cfg, device, precision = lead.cfg, lead.parts.step.device, lead.plan.resolved.precision
    generators = [_generator(m, device) for m in group]
    model = PackedModel([m.parts.model for m in group], generators)
    optimizer = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.momentum)
    if lead.first_epoch > 0:
        optimizer.load_state_dict(pack_optimizer_state([m.parts.optimizer.state_dict() for m in group], optimizer))
    step = PackedStep(model, optimizer, [m.parts.pos_weight for m in group], precision, device, cfg.channels_last,
                      recipe=cfg.recipe)
    ckpt = lead.plan.checkpoint
    if step.scaler is not None and ckpt is not None and ckpt.get("scaler"):
        step.scaler.load_state_dict(ckpt["scaler"])
    step = use_graphs(step, cfg.graphs, cfg.compile, say=print if progress else None)
    for m in group:  # the members' own models and optimizers are not needed again: free them
        m.parts.model, m.parts.optimizer, m.parts.step = model, optimizer, step
    seeds = [m.cfg.seed for m in group]
    runs = member_names([m.plan.out for m in group])
    aug = lead.parts.augmentation
    loaders = [m.parts.train_loader for m in group]
    n_batches = min(len(x) for x in loaders)
    if cfg.max_batches is not None:
        n_batches = min(n_batches, cfg.max_batches)
    if progress:
        print(f"packed: {len(group)} {cfg.arch} models at {cfg.res} px in one step ({', '.join(runs)})")
    fixed_shapes(device)
    job_s, job_images = 0.0, 0
    with epoch_bar(progress) as bar:
        for epoch in range(lead.first_epoch, cfg.epochs):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            for x in loaders:
                x.set_epoch(epoch)
            task = bar.add(f"{len(group)} packed {cfg.res}px epoch {epoch + 1}/{cfg.epochs}", n_batches,
                           loss=float("nan"), ips=0.0)
            sync(device)
            t0 = time.perf_counter()
            totals, shown_loss = [EpochTotals(device) for _ in group], LatestValue(device)
            for i, batches in enumerate(zip(*loaders)):
                if i >= n_batches:
                    break
                images, labels = torch.stack([b[0] for b in batches]), torch.stack([b[1] for b in batches])
                losses = step(images, labels)
                for k, (x, y) in enumerate(batches):
                    totals[k].add(x, y, losses[k])
                if bar.enabled and (i % 10 == 0 or i == n_batches - 1):
                    shown_loss.post(losses.mean())  # the K models' mean, shown once it reached the host
                    seen = sum(t.seen for t in totals)
                    bar.update(task, completed=i + 1, loss=shown_loss.read(),
                               ips=seen / max(time.perf_counter() - t0, 1e-9))
            sync(device)
            epoch_time = time.perf_counter() - t0
            job_s += epoch_time
            job_images += sum(t.seen for t in totals)
            t1 = time.perf_counter()
            scored = predict_packed(step, [m.parts.val_loader for m in group], 0, seeds, aug)
            eval_s = time.perf_counter() - t1
            _end_epoch(group, step, epoch, epoch_time, eval_s, totals, scored, bar)
    t1 = time.perf_counter()
    scored = predict_packed(step, [m.parts.val_loader for m in group], cfg.tta, seeds, aug)
    eval_s = time.perf_counter() - t1
    pack = {"k": len(group), "mechanism": MECHANISM, "runs": runs,
            "job_images_per_s": job_images / job_s if job_s > 0 else None}
    out = []
    for m, predicted, name in zip(group, scored, runs):
        m.clock.eval_s += eval_s
        out.append(score_and_record(m.cfg, m.plan, m.parts, m.clock, m.setup_s, predicted=predicted,
                                    pack={**pack, "position": name}))
    return out


def _end_epoch(group: list[Member], step: Any, epoch: int, epoch_time: float, eval_s: float,
               totals: list[Any], scored: list[Any], bar: Any) -> None:
    """Each member's log line and checkpoint (its own model, optimizer state and dropout stream, unpacked), as
    its own run writes them; a member whose loss diverged stops the job after the others' are written."""
    import numpy as np

    from cxr_fast.metrics import score_auc
    from cxr_fast.packed import unpack_optimizer_state

    model = step.model
    states = model.unpack()
    optimizer_states = unpack_optimizer_state(step.optimizer.state_dict(), model)
    failed = None
    for k, m in enumerate(group):
        seen = totals[k].seen
        m.clock.train_s += epoch_time
        m.clock.train_images += seen
        m.clock.eval_s += eval_s
        mean_loss = float(totals[k].loss_sum) / max(seen, 1)
        if not np.isfinite(mean_loss):
            failed = failed or CxrError(f"{m.plan.out.name}: {diverged(epoch + 1, mean_loss, float(totals[k].spread))}",
                                        exit_code=1)
            continue
        y, plain, _ = scored[k]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a one-positive caveat is reported once, with the final score
            epoch_auc = score_auc(y, plain).auc
        row = {"epoch": epoch + 1, "loss": mean_loss, "auc": epoch_auc, "images_per_s": seen / epoch_time,
               "peak_memory_mb": peak_memory_mb(step.device), "train_s": epoch_time, "pack_k": len(group)}
        append_jsonl(m.plan.out / LOG_NAME, row)
        generator = model.generators[k]
        rng = rng_state()
        if generator.device.type == "cpu":
            rng["torch"] = generator.get_state()  # the stream its own run would resume dropout from
        rng["dropout"] = generator.get_state()
        state = {
            "epoch": epoch + 1, "model": states[k], "optimizer": optimizer_states[k],
            "scaler": step.scaler.state_dict() if step.scaler is not None else None, "rng": rng,
            "wall_s": m.clock.wall(), "train_time_s": m.clock.train_s, "train_images": m.clock.train_images,
            "config": m.plan.current, "dropped": sorted(m.parts.dropped),
        }
        m.clock.checkpoint_s += save_checkpoint(m.plan.out / CHECKPOINT_NAME, state)
        shown = AUC_TIED if epoch_auc is None else f"{epoch_auc:.3f}"
        bar.print(f"{m.plan.out.name} epoch {epoch + 1}: loss {mean_loss:.4f}  val AUC {shown}")
    if failed is not None:
        raise failed
