"""Train and score one binary classifier (one label, one resolution, one architecture), as the paper did.

The paper's recipe is the default (``recipe='fastai07'``, ``init='imagenet'``): fastai 0.7's head and
class-weighted cross-entropy with weight = negatives/positives of the whole subsample (Table 1's), SGD
with momentum 0.9 at a fixed 5e-4, batch size 8, 3 epochs, all layers trained, fastai 0.7's transforms
and TTA. Speed comes from the loader backends (pixels decoded once) and ``TrainStep`` (channels-last, AMP).

A run folder holds everything needed to trust and resume it: ``config.yaml`` (resolved, with the init's
weights file and sha256), ``log.jsonl`` (one line per epoch), ``checkpoint.pt`` (each epoch, atomic), and
at the end ``predictions.npz`` (log-odds scores) and ``metrics.json``. A folder that already holds a run
is refused unless ``resume`` (continue it, or reuse it when finished) or ``overwrite`` is asked for.
Everything is decided before the folder is touched, and a run that fails before its first checkpoint
leaves no folder behind.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cxr_fast.config import check_types, from_dict, load_yaml, save_yaml, to_dict
from cxr_fast.errors import CxrError
from cxr_fast.io import append_jsonl, atomic_path, read_jsonl, write_json, write_text
from cxr_fast.runtime import sync
from cxr_fast.vocabulary import ARCHS, DEFAULT_RECIPE, INITS, PRECISIONS, RECIPES, check_choice, check_res

CONFIG_NAME = "config.yaml"
LOG_NAME = "log.jsonl"
METRICS_NAME = "metrics.json"
PREDICTIONS_NAME = "predictions.npz"
CHECKPOINT_NAME = "checkpoint.pt"
RUN_FILES = (CONFIG_NAME, LOG_NAME, METRICS_NAME, PREDICTIONS_NAME, CHECKPOINT_NAME)
# Settings that do not change what a run computes: a resumed run may differ in these. The weights file's
# path may differ between machines; its sha256 (compared) says whether it is the same file.
_NOT_COMPARED = ("out", "epochs", "workers", "weights")
SPLITS = ("image", "patient", "official")
OPTIMIZER_NAMES = ("sgd", "adam")
# What the scores in predictions.npz are, and how the TTA views were averaged (recorded in metrics.json).
SCORE_SPACE = "log-odds"
TTA_AVERAGE = "mean probability, taken in log space (log-odds of the mean)"


@dataclass
class TrainConfig:
    """One training run. ``precision='auto'``: bf16 on a GPU that has it, fp16 on older GPUs, fp32 on CPU."""

    label: str = "Nodule"
    res: int = 224
    arch: str = "resnet34"
    recipe: str = DEFAULT_RECIPE  # fastai07 (the paper's head, loss and transforms) | modern (one logit, BCE)
    init: str = "imagenet"  # imagenet (torchvision's weights, or `weights`) | random
    weights: str | None = None  # a torchvision ImageNet state dict file; None = torchvision's own download
    weights_sha256: str | None = None  # when set, the weights file must have this sha256 (replays a run exactly)
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
    augment: bool = True
    tta: int = 4  # augmented test-time views besides the plain one (0 = plain only)
    device: str = "auto"
    max_batches: int | None = None  # cap on training batches per epoch (smoke runs); evaluation is full
    workers: int | None = None  # loader worker processes (--workers); None = all cores


def load_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults, then the YAML file's settings, then every override that is not None (CLI flags)."""
    data = load_yaml(path) if path is not None else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    return from_dict(TrainConfig, {**data, **given}, source=str(path or "config"))


def default_out(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{cfg.label}-{cfg.arch}-{cfg.res}"


def validate(cfg: TrainConfig, where: str = "") -> None:
    """Every rule a run's settings must meet, checked before anything is opened or written.

    ``train`` flags, study cells and ``--dry-run`` all go through this one function; each problem is one
    line naming the setting (prefixed by ``where``, e.g. the study cell).
    """
    from cxr_fast.data.nih import canonical_label
    from cxr_fast.loaders import BACKENDS

    pre = f"{where}: " if where else ""
    check_types(TrainConfig, dataclasses.asdict(cfg), where or "config")
    canonical_label(cfg.label)
    check_res(cfg.res, f"{pre}res")
    check_choice(cfg.arch, ARCHS, "architecture", where)
    check_choice(cfg.recipe, RECIPES, "recipe", where)
    check_choice(cfg.init, INITS, "init", where)
    check_choice(cfg.optimizer, OPTIMIZER_NAMES, "optimizer", where)
    check_choice(cfg.precision, ("auto", *PRECISIONS), "precision", where)
    check_choice(cfg.split, SPLITS, "split", where)
    check_choice(cfg.loader, ("auto", *BACKENDS), "loader", where)
    for name in ("epochs", "batch_size", "subsample_size"):
        if getattr(cfg, name) < 1:
            raise CxrError(f"{pre}{name} must be at least 1, got {getattr(cfg, name)}")
    if not cfg.lr > 0:
        raise CxrError(f"{pre}lr must be positive, got {cfg.lr}")
    if not 0.0 <= cfg.momentum < 1.0:
        raise CxrError(f"{pre}momentum must be in [0, 1), got {cfg.momentum}")
    if not 0.0 < cfg.val_fraction < 1.0:
        raise CxrError(f"{pre}val_fraction must be between 0 and 1, got {cfg.val_fraction}")
    if cfg.seed < 0:
        raise CxrError(f"{pre}seed must be 0 or more, got {cfg.seed}")
    if cfg.tta < 0:
        raise CxrError(f"{pre}tta must be 0 or more augmented views, got {cfg.tta}")
    if cfg.max_batches is not None and cfg.max_batches < 1:
        raise CxrError(f"{pre}max_batches must be at least 1, got {cfg.max_batches}")
    if cfg.workers is not None and cfg.workers < 0:
        raise CxrError(f"{pre}workers must be 0 or more, got {cfg.workers}")
    if cfg.init == "random" and (cfg.weights or cfg.weights_sha256):
        raise CxrError(f"{pre}weights are given but init is random; drop one of them")


def resolve_init(cfg: TrainConfig, progress: bool = True) -> Any:
    """The run's ``InitChoice`` (downloads torchvision's file once if asked and online), checked against
    ``cfg.weights_sha256`` when the config pins one."""
    from cxr_fast.weights import resolve_init as _resolve

    choice = _resolve(cfg.arch, cfg.init, cfg.weights, progress=progress)
    if cfg.weights_sha256 and choice.weights_sha256 != cfg.weights_sha256:
        raise CxrError(f"weights {choice.weights_file} have sha256 {choice.weights_sha256[:12]}…, but the config "
                       f"pins {cfg.weights_sha256[:12]}…; give the pinned file with --weights")
    return choice


def peak_memory_mb(device: Any) -> float:
    """Peak GPU memory allocated by tensors on CUDA; on the CPU the process's peak resident set size."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


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


def _epoch_bar(enabled: bool) -> Any:
    """A bar per epoch with the running loss and images/s."""
    from cxr_fast.progress import Bar

    if not enabled:
        return Bar(False)
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    return Bar(True, TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}  {task.fields[ips]:.1f} img/s"), TimeElapsedColumn())


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = sorted((set(saved) | set(current)) - set(_NOT_COMPARED))
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


def _load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint, or one line naming the damaged file and how to start over."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: the user's to fix
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise CxrError(f"{path} is damaged ({reason}); delete it, or rerun with --overwrite to start the run over") \
            from None
    needed = {"epoch", "model", "optimizer", "rng", "wall_s", "train_time_s", "train_images"}
    if not isinstance(state, dict) or not needed <= set(state):
        raise CxrError(f"{path} is not a cxr-fast checkpoint; delete it, or rerun with --overwrite")
    return state


def _read_metrics(path: Path) -> dict[str, Any] | None:
    """A finished run's metrics, or None (with a warning) when the file is damaged and must be recomputed."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        warnings.warn(f"{path} is damaged ({type(exc).__name__}); the run's metrics are computed again", stacklevel=3)
        return None
    return data if isinstance(data, dict) else None


@dataclass
class RunPlan:
    """What ``run_training`` will do with the run folder, decided before anything is written."""

    out: Path
    resolved: TrainConfig
    current: dict[str, Any]
    init: Any  # cxr_fast.weights.InitChoice
    finished: dict[str, Any] | None = None  # a finished run to return as it is
    checkpoint: dict[str, Any] | None = None  # continue from here
    fresh_folder: bool = True  # the folder did not exist (or was empty): remove it again on failure
    clear: tuple[str, ...] = ()  # run files to delete before training starts


def plan_run(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> RunPlan:
    """Validate, resolve and choose: fresh, resume, reuse or refuse. Writes nothing.

    The init is resolved here, so an offline ``imagenet`` run stops before any data is read.
    """
    from cxr_fast.data.source import is_phantom_spec
    from cxr_fast.step import resolve_device, resolve_precision

    validate(cfg)
    if resume and overwrite:
        raise CxrError("--resume and --overwrite contradict each other; choose one")
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    device = resolve_device(cfg.device)
    init = resolve_init(cfg, progress=progress)
    resolved = dataclasses.replace(
        cfg, out=str(out), device=str(device), precision=resolve_precision(cfg.precision, device),
        data=str(Path(cfg.data).resolve()) if cfg.data and not is_phantom_spec(cfg.data) else cfg.data,
        weights=init.weights_file, weights_sha256=init.weights_sha256,
    )
    current = to_dict(resolved)
    plan = RunPlan(out, resolved, current, init)
    if out.exists() and not out.is_dir():
        raise CxrError(f"--out {out} is a file, not a run folder")
    contents = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not contents:
        return plan
    plan.fresh_folder = False
    if overwrite:
        plan.clear = RUN_FILES
        return plan
    held = "a finished run" if (out / METRICS_NAME).is_file() else (
        "an unfinished run" if (out / CONFIG_NAME).is_file() else f"other files ({', '.join(contents[:3])})")
    if not resume or not (out / CONFIG_NAME).is_file():
        raise CxrError(f"{out} already holds {held}; use --resume to continue or reuse it, --overwrite to "
                       "replace it, or another --out")
    saved = load_yaml(out / CONFIG_NAME)
    diffs = _differences(saved, current)
    ckpt_path = out / CHECKPOINT_NAME
    if diffs and ((out / METRICS_NAME).is_file() or ckpt_path.is_file()):
        raise CxrError(f"{out} holds a run with another config ({'; '.join(diffs[:3])}); "
                       "use another --out, or --overwrite to replace it")
    if (out / METRICS_NAME).is_file() and saved.get("epochs") == cfg.epochs:
        finished = _read_metrics(out / METRICS_NAME)
        if finished is not None and finished.get("epochs") == cfg.epochs:
            plan.finished = finished
            return plan
    if ckpt_path.is_file():
        plan.checkpoint = _load_checkpoint(ckpt_path)
        if plan.checkpoint["epoch"] > cfg.epochs:
            raise CxrError(f"{ckpt_path} has {plan.checkpoint['epoch']} epochs done, more than epochs={cfg.epochs}")
        # Results of the shorter run must not outlive the training that continues now.
        plan.clear = (METRICS_NAME, PREDICTIONS_NAME)
    else:
        plan.clear = (LOG_NAME, METRICS_NAME, PREDICTIONS_NAME)
    return plan


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
    augmentation: Any  # cxr_fast.augment.AugmentConfig of the recipe (training and TTA)
    loader_why: str = ""  # how ``auto`` chose, where it weighed memory


def build_parts(cfg: TrainConfig, device: Any, precision: str, quiet: bool = False, need_val: bool = True,
                weights: str | None = None) -> RunParts:
    """Dataset -> label subsample -> model, optimizer, step and loaders, seeded from ``cfg.seed``.

    ``weights``: the resolved ImageNet file (``InitChoice.weights_file``), None for random init.
    ``need_val``: check now that validation holds both classes, so a doomed run fails before training.
    """
    import torch

    from cxr_fast.data.sampling import subsample
    from cxr_fast.data.source import resolve_dataset
    from cxr_fast.store import data_of
    from cxr_fast.feed import make_loader
    from cxr_fast.loaders.base import LoaderSpec
    from cxr_fast.metrics import _check
    from cxr_fast.models import build_model
    from cxr_fast.recipes import augmentation
    from cxr_fast.step import TrainStep, make_optimizer

    dataset = resolve_dataset(data_of(cfg.data, cfg.store), quiet=quiet)  # --store alone names its data
    sub = subsample(dataset.metadata, cfg.label, size=cfg.subsample_size, seed=cfg.seed,
                    val_fraction=cfg.val_fraction, split=cfg.split,  # type: ignore[arg-type]
                    official_split=dataset.official_split)
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

    def spec(ids: np.ndarray, targets: np.ndarray, train: bool) -> LoaderSpec:
        # A last training batch of one image cannot be batch-normalised in train mode: drop it.
        return LoaderSpec(dataset=dataset, image_ids=ids, targets=targets, res=cfg.res, batch_size=cfg.batch_size,
                          train=train, device=device, seed=cfg.seed, channels_last=cfg.channels_last,
                          drop_last=train and len(ids) % cfg.batch_size == 1,
                          augment=cfg.augment and train, store=Path(cfg.store) if cfg.store else None,
                          num_workers=cfg.workers, augmentation=aug)

    loader, loader_why = choose_loader(cfg, device, precision, len(train_ids) + (len(val_ids) if need_val else 0))
    if loader_why and loader != "resident" and not quiet:
        print(loader_why)
    train_loader = make_loader(loader, spec(train_ids, train_targets, True))
    val_loader = make_loader(loader, spec(val_ids, val_targets, False)) if need_val else None
    loader_name = type(train_loader).__module__.rsplit(".", 1)[-1]
    return RunParts(dataset, sub, model, optimizer, step, train_loader, val_loader, loader_name, pos_weight, aug,
                    loader_why)


def choose_loader(cfg: TrainConfig, device: Any, precision: str, n_images: int) -> tuple[str, str]:
    """(backend, why): a named loader as asked; ``auto`` on a GPU is ``resident`` only where its split fits
    beside the predicted training step (``feed.auto_for_memory``), on the CPU the fastest available."""
    import torch

    from cxr_fast.feed import auto_for_memory, pick_backend

    if cfg.loader != "auto" or device.type != "cuda" or pick_backend("auto") != "resident":
        return pick_backend(cfg.loader), ""
    from cxr_fast.bench.memcache import memory_profile

    prof = memory_profile(cfg.arch, cfg.res, "fp32" if precision == "fp32" else "amp", cfg.optimizer,
                          cfg.channels_last)
    capacity = torch.cuda.get_device_properties(device).total_memory
    return auto_for_memory(n_images * cfg.res * cfg.res, prof.predicted_bytes(cfg.batch_size), capacity)


def predict(step: Any, loader: Any, tta: int, seed: int, augmentation: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, plain-view log-odds, TTA log-odds) over a whole evaluation loader.

    TTA follows fastai 0.7: the plain view plus ``tta`` views made with the training transforms, their
    probabilities averaged (``metrics.tta_mean_logit`` does it in log space, so nothing underflows).
    """
    import torch

    from cxr_fast.augment import tta_views
    from cxr_fast.metrics import tta_mean_logit

    labels, views = [], []
    step.model.eval()
    try:
        with torch.no_grad():
            for i, (images, y) in enumerate(loader):
                batch = tta_views(images, tta, seed * 100_003 + i, augmentation) if tta > 0 else [images]
                labels.append(y.float().cpu())
                views.append(torch.stack([step.predict(v) for v in batch]).cpu())
    finally:
        step.model.train()
    y = torch.cat(labels).numpy().astype(np.float64)
    logits = torch.cat(views, dim=1).numpy().astype(np.float64)  # views x images
    return y, logits[0], tta_mean_logit(logits)


def _restore(parts: RunParts, checkpoint: dict[str, Any], log_path: Path) -> None:
    parts.model.load_state_dict(checkpoint["model"])
    parts.optimizer.load_state_dict(checkpoint["optimizer"])
    if parts.step.scaler is not None and checkpoint.get("scaler"):
        parts.step.scaler.load_state_dict(checkpoint["scaler"])
    _set_rng_state(checkpoint["rng"])
    # Drop log lines of an epoch that was logged but not checkpointed before the kill.
    rows = [r for r in read_jsonl(log_path) if r.get("epoch", 0) <= checkpoint["epoch"]]
    write_text(log_path, "".join(json.dumps(r) + "\n" for r in rows))


def _diverged(epoch: int, loss: float, spread: float) -> CxrError:
    """Say what was observed: constant inputs, or a loss that left the finite range."""
    if spread == 0.0:
        return CxrError(f"training loss became {loss} at epoch {epoch}, and every training image was constant "
                        "(all pixels one value): the data carries nothing to learn; check the images", exit_code=1)
    return CxrError(f"training loss became {loss} at epoch {epoch} although the inputs varied: the optimisation "
                    "diverged; try a lower --lr, or --precision fp32", exit_code=1)


@dataclass
class _Clock:
    """Time and image counts carried across epochs and resumes (saved in each checkpoint)."""

    started: float
    wall_before: float = 0.0
    train_s: float = 0.0
    train_images: int = 0
    eval_s: float = 0.0
    checkpoint_s: float = 0.0

    def wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.started


def _train_epochs(cfg: TrainConfig, plan: RunPlan, parts: RunParts, first_epoch: int, clock: _Clock,
                  progress: bool, on_epoch: Callable[[dict[str, Any]], None] | None) -> None:
    """Epochs ``first_epoch .. cfg.epochs``: train, score the plain view, log, checkpoint."""
    import torch

    from cxr_fast.metrics import score_auc

    device, step = parts.step.device, parts.step
    out = plan.out
    n_batches = len(parts.train_loader) if cfg.max_batches is None else min(len(parts.train_loader), cfg.max_batches)
    with _epoch_bar(progress) as bar:
        for epoch in range(first_epoch, cfg.epochs):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            parts.train_loader.set_epoch(epoch)
            task = bar.add(f"{parts.sub.label} {cfg.res}px epoch {epoch + 1}/{cfg.epochs}", n_batches,
                           loss=float("nan"), ips=0.0)
            sync(device)
            t0 = time.perf_counter()
            loss_sum, seen = torch.zeros((), device=device), 0
            spread = torch.zeros((), device=device)  # largest max - min of a batch: 0 means constant inputs
            for i, (images, labels) in enumerate(parts.train_loader):
                if i >= n_batches:
                    break
                spread = torch.maximum(spread, (images.amax() - images.amin()).float())
                loss = step(images, labels)
                loss_sum += loss * len(labels)
                seen += len(labels)
                if bar.enabled and (i % 10 == 0 or i == n_batches - 1):
                    elapsed = time.perf_counter() - t0
                    bar.update(task, completed=i + 1, loss=float(loss), ips=seen / max(elapsed, 1e-9))
            sync(device)
            epoch_time = time.perf_counter() - t0
            clock.train_s += epoch_time
            clock.train_images += seen
            mean_loss = float(loss_sum) / max(seen, 1)
            if not np.isfinite(mean_loss):
                raise _diverged(epoch + 1, mean_loss, float(spread))
            t1 = time.perf_counter()
            y, plain, _ = predict(step, parts.val_loader, tta=0, seed=cfg.seed, augmentation=parts.augmentation)
            clock.eval_s += time.perf_counter() - t1
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a one-positive caveat is reported once, with the final score
                epoch_auc = score_auc(y, plain).auc
            row = {"epoch": epoch + 1, "loss": mean_loss, "auc": epoch_auc, "images_per_s": seen / epoch_time,
                   "peak_memory_mb": peak_memory_mb(device), "train_s": epoch_time}
            append_jsonl(out / LOG_NAME, row)
            state = {
                "epoch": epoch + 1, "model": parts.model.state_dict(), "optimizer": parts.optimizer.state_dict(),
                "scaler": step.scaler.state_dict() if step.scaler is not None else None, "rng": _rng_state(),
                "wall_s": clock.wall(), "train_time_s": clock.train_s, "train_images": clock.train_images,
                "config": plan.current,
            }
            t1 = time.perf_counter()
            with atomic_path(out / CHECKPOINT_NAME) as tmp:
                torch.save(state, tmp)
            clock.checkpoint_s += time.perf_counter() - t1
            shown = "tied" if epoch_auc is None else f"{epoch_auc:.3f}"
            bar.print(f"epoch {epoch + 1}: loss {mean_loss:.4f}  val AUC {shown}  {row['images_per_s']:.1f} img/s")
            if on_epoch is not None:
                on_epoch(row)


def _evaluate(cfg: TrainConfig, plan: RunPlan, parts: RunParts, clock: _Clock, setup_s: float) -> dict[str, Any]:
    """Final TTA scoring, predictions.npz and metrics.json."""
    import torch

    from cxr_fast.metrics import accuracy, score_auc
    from cxr_fast.step import optimizer_impl

    out, sub, device = plan.out, parts.sub, parts.step.device
    val_ids, val_targets = sub.part("val")
    t1 = time.perf_counter()
    y, plain, scores = predict(parts.step, parts.val_loader, tta=cfg.tta, seed=cfg.seed, augmentation=parts.augmentation)
    clock.eval_s += time.perf_counter() - t1
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
        "wall_s": clock.wall(), "train_s": clock.train_s, "setup_s": setup_s, "eval_s": clock.eval_s,
        "checkpoint_s": clock.checkpoint_s,
        "train_images_per_s": clock.train_images / clock.train_s if clock.train_s > 0 else None,
        "epochs": cfg.epochs, "final_loss": log[-1]["loss"] if log else None,
        "peak_memory_mb": max((r["peak_memory_mb"] for r in log), default=None),
        "pos_weight": parts.pos_weight, "n_train": len(sub.part("train")[0]), "precision": plan.resolved.precision,
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "optimizer": cfg.optimizer, "optimizer_impl": optimizer_impl(parts.optimizer),
        "loader": parts.loader_name, "loader_why": parts.loader_why, "channels_last": cfg.channels_last, "batch_size": cfg.batch_size,
        "out": str(out),
    }
    write_json(out / METRICS_NAME, metrics)
    return metrics


def run_training(
    cfg: TrainConfig,
    progress: bool = True,
    resume: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train, evaluate with TTA, write the run folder and return the metrics dict.

    A folder holding a run is refused unless ``resume`` (a finished run with the same config is
    returned as it is; a checkpoint is continued; a config that differs in anything but ``epochs`` is an
    error) or ``overwrite``. ``on_epoch`` is called with each epoch's log row after its checkpoint.
    """
    import torch

    started = time.perf_counter()
    plan = plan_run(cfg, resume=resume, overwrite=overwrite, progress=progress)
    if plan.finished is not None:
        return plan.finished
    try:
        parts = build_parts(cfg, torch.device(plan.resolved.device), plan.resolved.precision, quiet=not progress,
                            weights=plan.init.weights_file)
        for name in plan.clear:
            (plan.out / name).unlink(missing_ok=True)
        plan.out.mkdir(parents=True, exist_ok=True)
        clock = _Clock(started)
        first_epoch = 0
        if plan.checkpoint is not None:
            _restore(parts, plan.checkpoint, plan.out / LOG_NAME)
            first_epoch = plan.checkpoint["epoch"]
            clock.wall_before = plan.checkpoint["wall_s"]
            clock.train_s, clock.train_images = plan.checkpoint["train_time_s"], plan.checkpoint["train_images"]
        save_yaml(plan.current, plan.out / CONFIG_NAME)
        if cfg.compile:
            parts.step.model = torch.compile(parts.model)
        setup_s = time.perf_counter() - started  # data, store, model: what a study pays per run besides training
        _train_epochs(cfg, plan, parts, first_epoch, clock, progress, on_epoch)
        return _evaluate(cfg, plan, parts, clock, setup_s)
    except BaseException:
        # A run that never reached its first checkpoint is nothing to resume: leave no half-made folder.
        if plan.fresh_folder and plan.out.is_dir() and not (plan.out / CHECKPOINT_NAME).exists():
            shutil.rmtree(plan.out, ignore_errors=True)
        raise
