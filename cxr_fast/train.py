"""Train and score one binary classifier (one label, one resolution, one architecture), as the paper did.

The paper's recipe is the default: weighted BCE with pos_weight = negatives/positives of the training
part, SGD with momentum 0.9 at a fixed 5e-4, batch size 8, 3 epochs, all layers trained. Speed comes
from the loader backends (pixels decoded once) and from ``TrainStep`` (channels-last, AMP).

A run folder holds everything needed to trust and resume it: ``config.yaml`` (resolved), ``log.jsonl``
(one line per epoch), ``checkpoint.pt`` (each epoch, atomic), and at the end ``predictions.npz`` and
``metrics.json``. ``resume=True`` continues a killed run from its last checkpoint; a finished run with
the same config returns its metrics without training again.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cxr_fast.config import from_dict, load_yaml, save_yaml, to_dict
from cxr_fast.errors import CxrError
from cxr_fast.io import append_jsonl, atomic_path, read_jsonl, write_json, write_text

CONFIG_NAME = "config.yaml"
LOG_NAME = "log.jsonl"
METRICS_NAME = "metrics.json"
PREDICTIONS_NAME = "predictions.npz"
CHECKPOINT_NAME = "checkpoint.pt"
# Settings that do not change what a run computes: a resumed run may differ in these.
_NOT_COMPARED = ("out", "epochs", "num_workers")


@dataclass
class TrainConfig:
    """One training run. ``precision='auto'``: bf16 on a GPU that has it, fp16 on older GPUs, fp32 on CPU."""

    label: str = "Nodule"
    res: int = 224
    arch: str = "resnet34"
    epochs: int = 3
    batch_size: int = 8
    lr: float = 5e-4
    optimizer: str = "sgd"
    momentum: float = 0.9
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    loader: str = "auto"
    data: str | None = None  # NIH-layout folder; None = the built-in phantom
    store: str | None = None  # a prepared store (cxr-fast prepare) for backends that read one
    out: str | None = None  # run folder; None = runs/<label>-<arch>-<res>
    subsample_size: int = 20_000
    val_fraction: float = 0.2
    split: str = "image"
    seed: int = 0
    weights: str | None = None  # local ImageNet checkpoint
    pretrained: bool = True  # use ImageNet weights from the torch cache when present
    augment: bool = True
    tta: int = 4  # augmented test-time views besides the plain one (0 = plain only)
    device: str = "auto"
    max_batches: int | None = None  # cap on training batches per epoch (smoke runs); evaluation is full
    num_workers: int | None = None  # loader workers; None = all cores


def load_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults, then the YAML file's settings, then every override that is not None (CLI flags)."""
    data = load_yaml(path) if path is not None else {}
    cfg = from_dict(TrainConfig, data, source=str(path or "config"))
    given = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(cfg, **given)


def default_out(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{cfg.label}-{cfg.arch}-{cfg.res}"


def validate(cfg: TrainConfig) -> None:
    """Catch bad numbers before any data is opened, each as a one-line error naming the value."""
    from cxr_fast.models import ARCHS

    if cfg.arch not in ARCHS:
        raise CxrError(f"unknown architecture {cfg.arch!r}; choose from {', '.join(ARCHS)}")
    for name in ("res", "epochs", "batch_size", "subsample_size"):
        if getattr(cfg, name) <= 0:
            raise CxrError(f"{name} must be positive, got {getattr(cfg, name)}")
    if cfg.tta < 0:
        raise CxrError(f"tta must be 0 or more augmented views, got {cfg.tta}")
    if cfg.max_batches is not None and cfg.max_batches <= 0:
        raise CxrError(f"max_batches must be positive, got {cfg.max_batches}")


def peak_memory_mb(device: Any) -> float:
    """Peak GPU memory allocated by tensors on CUDA; on the CPU the process's peak resident set size."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rng_state() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = sorted((set(saved) | set(current)) - set(_NOT_COMPARED))
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


def _predict(step: Any, loader: Any, tta: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, plain-view probabilities, TTA mean probabilities) over a whole evaluation loader."""
    import torch

    labels, plain, mean = [], [], []
    step.model.eval()
    try:
        with torch.no_grad():
            for i, (images, y) in enumerate(loader):
                if tta > 0:
                    from cxr_fast.augment import tta_views

                    # The plain view first, then ``tta`` augmented ones; one seed per batch keeps it repeatable.
                    probs = [step.predict(view) for view in tta_views(images, tta, seed * 100_003 + i)]
                else:
                    probs = [step.predict(images)]
                labels.append(y.float().cpu())
                plain.append(probs[0].cpu())
                mean.append(torch.stack(probs).mean(dim=0).cpu())
    finally:
        step.model.train()
    cat = lambda xs: torch.cat(xs).numpy().astype(np.float64)  # noqa: E731
    return cat(labels), cat(plain), cat(mean)


class _Progress:
    """A rich progress bar per epoch with loss and images/s; silent when ``enabled`` is False."""

    def __init__(self, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  {task.fields[ips]:.1f} img/s"), TimeElapsedColumn(),
                transient=False,
            )

    def __enter__(self) -> "_Progress":
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def add(self, description: str, total: int) -> Any:
        return None if self.bar is None else self.bar.add_task(description, total=total, loss=float("nan"), ips=0.0)

    def update(self, task: Any, **fields: Any) -> None:
        if self.bar is not None and task is not None:
            self.bar.update(task, **fields)

    def print(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text)


@dataclass
class RunParts:
    """Everything a run trains with, built the same way for ``train`` and ``lr-find``."""

    dataset: Any
    sub: Any  # cxr_fast.data.sampling.Subsample
    model: Any
    optimizer: Any
    step: Any  # cxr_fast.step.TrainStep
    train_loader: Any
    val_loader: Any
    loader_name: str
    pos_weight: float


def build_parts(cfg: TrainConfig, device: Any, precision: str, quiet: bool = False, need_val: bool = True) -> RunParts:
    """Dataset -> label subsample -> model, optimizer, step and loaders, seeded from ``cfg.seed``.

    ``need_val``: check now that validation holds both classes, so a doomed run fails before training.
    """
    import torch

    from cxr_fast.data.sampling import subsample
    from cxr_fast.data.source import resolve_dataset
    from cxr_fast.loaders import build_loader
    from cxr_fast.loaders.base import LoaderSpec
    from cxr_fast.metrics import _check
    from cxr_fast.models import build_model
    from cxr_fast.step import TrainStep, make_optimizer

    dataset = resolve_dataset(cfg.data, quiet=quiet)
    sub = subsample(dataset.metadata, cfg.label, size=cfg.subsample_size, seed=cfg.seed,
                    val_fraction=cfg.val_fraction, split=cfg.split,  # type: ignore[arg-type]
                    official_split=dataset.official_split)
    train_ids, train_targets = sub.part("train")
    val_ids, val_targets = sub.part("val")
    if need_val:
        _check(val_targets, np.zeros(len(val_targets)))  # one class in validation: an error now, not NaN later
    if train_targets.sum() == 0:
        raise CxrError(f"the training part has no {sub.label} images; use a larger subsample or another split")
    pos_weight = sub.train_pos_weight

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = build_model(cfg.arch, cfg.weights, pretrained=cfg.pretrained)
    optimizer = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.momentum)
    step = TrainStep(model, optimizer, pos_weight, precision, device, cfg.channels_last)

    def spec(ids: np.ndarray, targets: np.ndarray, train: bool) -> LoaderSpec:
        return LoaderSpec(dataset=dataset, image_ids=ids, targets=targets, res=cfg.res, batch_size=cfg.batch_size,
                          train=train, device=device, seed=cfg.seed, channels_last=cfg.channels_last,
                          augment=cfg.augment and train, store=Path(cfg.store) if cfg.store else None,
                          num_workers=cfg.num_workers)

    train_loader = build_loader(cfg.loader, spec(train_ids, train_targets, True))
    val_loader = build_loader(cfg.loader, spec(val_ids, val_targets, False)) if need_val else None
    loader_name = type(train_loader).__module__.rsplit(".", 1)[-1]
    return RunParts(dataset, sub, model, optimizer, step, train_loader, val_loader, loader_name, pos_weight)


def run_training(
    cfg: TrainConfig,
    progress: bool = True,
    resume: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train, evaluate with TTA, write the run folder and return the metrics dict.

    ``resume=False`` starts the run folder afresh. ``resume=True`` returns a finished run's metrics when
    its config matches, continues from ``checkpoint.pt`` when one exists (a config that differs in
    anything but ``epochs`` is an error), and otherwise starts. ``on_epoch`` is called with each epoch's
    log row after its checkpoint is saved.
    """
    import torch

    from cxr_fast.metrics import accuracy, auc, delong_auc_variance
    from cxr_fast.step import resolve_device, resolve_precision

    validate(cfg)
    started = time.perf_counter()
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    device = resolve_device(cfg.device)
    resolved = dataclasses.replace(
        cfg, out=str(out), device=str(device), precision=resolve_precision(cfg.precision, device),
        data=str(Path(cfg.data).resolve()) if cfg.data else None,
    )
    current = to_dict(resolved)
    ckpt_path, log_path, metrics_path = out / CHECKPOINT_NAME, out / LOG_NAME, out / METRICS_NAME

    checkpoint = None
    if resume and (out / CONFIG_NAME).is_file():
        saved = load_yaml(out / CONFIG_NAME)
        diffs = _differences(saved, current)
        if metrics_path.is_file() and not diffs and saved.get("epochs") == current["epochs"]:
            finished = json.loads(metrics_path.read_text(encoding="utf-8"))
            if finished.get("epochs") == cfg.epochs:
                return finished
        if ckpt_path.is_file():
            if diffs:
                raise CxrError(f"{out} holds a run with another config ({'; '.join(diffs[:3])}); "
                               "use another --out or drop --resume")
            checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            if checkpoint["epoch"] > cfg.epochs:
                raise CxrError(f"{ckpt_path} has {checkpoint['epoch']} epochs done, more than epochs={cfg.epochs}")
    # Results of an earlier (shorter or different) run must not outlive the training that starts now.
    stale = (METRICS_NAME, PREDICTIONS_NAME) if checkpoint is not None else (
        LOG_NAME, METRICS_NAME, PREDICTIONS_NAME, CHECKPOINT_NAME)
    for name in stale:
        (out / name).unlink(missing_ok=True)

    parts = build_parts(cfg, device, resolved.precision, quiet=not progress)
    sub, step, model, optimizer = parts.sub, parts.step, parts.model, parts.optimizer
    train_loader, val_loader, loader_name = parts.train_loader, parts.val_loader, parts.loader_name
    train_ids, (val_ids, val_targets), pos_weight = sub.part("train")[0], sub.part("val"), parts.pos_weight

    first_epoch, wall_before, train_time, train_images = 0, 0.0, 0.0, 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if step.scaler is not None and checkpoint.get("scaler"):
            step.scaler.load_state_dict(checkpoint["scaler"])
        _set_rng_state(checkpoint["rng"])
        first_epoch = checkpoint["epoch"]
        wall_before = checkpoint["wall_s"]
        train_time, train_images = checkpoint["train_time_s"], checkpoint["train_images"]
        # Drop log lines of an epoch that was logged but not checkpointed before the kill.
        rows = [r for r in read_jsonl(log_path) if r.get("epoch", 0) <= first_epoch]
        write_text(log_path, "".join(json.dumps(r) + "\n" for r in rows))
    save_yaml(resolved, out / CONFIG_NAME)
    if cfg.compile:
        step.model = torch.compile(model)

    n_batches = len(train_loader) if cfg.max_batches is None else min(len(train_loader), cfg.max_batches)
    setup_s = time.perf_counter() - started  # data, store, model: what a study pays per run besides training
    eval_s = checkpoint_s = 0.0
    with _Progress(progress) as bar:
        for epoch in range(first_epoch, cfg.epochs):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            train_loader.set_epoch(epoch)
            task = bar.add(f"{sub.label} {cfg.res}px epoch {epoch + 1}/{cfg.epochs}", n_batches)
            _sync(device)
            t0 = time.perf_counter()
            loss_sum, seen = torch.zeros((), device=device), 0
            for i, (images, labels) in enumerate(train_loader):
                if i >= n_batches:
                    break
                loss = step(images, labels)
                loss_sum += loss * len(labels)
                seen += len(labels)
                if bar.bar is not None and (i % 10 == 0 or i == n_batches - 1):
                    elapsed = time.perf_counter() - t0
                    bar.update(task, completed=i + 1, loss=float(loss), ips=seen / max(elapsed, 1e-9))
            _sync(device)
            epoch_time = time.perf_counter() - t0
            train_time += epoch_time
            train_images += seen
            mean_loss = float(loss_sum) / max(seen, 1)
            if not np.isfinite(mean_loss):
                raise CxrError(f"training diverged at epoch {epoch + 1} (loss {mean_loss}); lower --lr", exit_code=1)
            t1 = time.perf_counter()
            y, plain, _ = _predict(step, val_loader, tta=0, seed=cfg.seed)
            eval_s += time.perf_counter() - t1
            epoch_auc = delong_auc_variance(y, plain)[0]
            row = {"epoch": epoch + 1, "loss": mean_loss, "auc": epoch_auc, "images_per_s": seen / epoch_time,
                   "peak_memory_mb": peak_memory_mb(device), "train_s": epoch_time}
            append_jsonl(log_path, row)
            state = {
                "epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": step.scaler.state_dict() if step.scaler is not None else None, "rng": _rng_state(),
                "wall_s": wall_before + time.perf_counter() - started, "train_time_s": train_time,
                "train_images": train_images, "config": current,
            }
            t1 = time.perf_counter()
            with atomic_path(ckpt_path) as tmp:
                torch.save(state, tmp)
            checkpoint_s += time.perf_counter() - t1
            bar.print(f"epoch {epoch + 1}: loss {mean_loss:.4f}  val AUC {epoch_auc:.3f}  "
                      f"{row['images_per_s']:.1f} img/s")
            if on_epoch is not None:
                on_epoch(row)

    t1 = time.perf_counter()
    y, plain, scores = _predict(step, val_loader, tta=cfg.tta, seed=cfg.seed)
    eval_s += time.perf_counter() - t1
    if not np.array_equal(y, val_targets.astype(np.float64)):
        raise CxrError("the validation loader returned labels out of order; it must not shuffle in eval mode",
                       exit_code=1)
    variance = delong_auc_variance(y, scores)[1]
    auc_value = auc(y, scores)  # scikit-learn's; DeLong's midrank AUC is the same number
    plain_auc, plain_var = delong_auc_variance(y, plain)
    with atomic_path(out / PREDICTIONS_NAME) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, image_ids=np.asarray(val_ids), labels=y.astype(np.float32),
                     scores=scores.astype(np.float32), scores_plain=plain.astype(np.float32))
    log = read_jsonl(log_path)
    metrics = {
        "label": sub.label, "res": cfg.res, "arch": cfg.arch, "auc": auc_value, "auc_sd": float(np.sqrt(variance)),
        "accuracy": accuracy(y, scores), "n_pos": int(y.sum()), "n_neg": int(len(y) - y.sum()),
        "auc_plain": plain_auc, "auc_plain_sd": float(np.sqrt(plain_var)), "tta": cfg.tta,
        "wall_s": wall_before + time.perf_counter() - started,
        "train_s": train_time, "setup_s": setup_s, "eval_s": eval_s, "checkpoint_s": checkpoint_s,
        "train_images_per_s": train_images / train_time if train_time > 0 else None,
        "epochs": cfg.epochs, "final_loss": log[-1]["loss"] if log else None,
        "peak_memory_mb": max((r["peak_memory_mb"] for r in log), default=None),
        "pos_weight": pos_weight, "n_train": len(train_ids), "precision": resolved.precision,
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "loader": loader_name, "channels_last": cfg.channels_last, "batch_size": cfg.batch_size, "out": str(out),
    }
    write_json(metrics_path, metrics)
    return metrics
