"""The training loop: epochs of ``TrainStep``, a plain-view score after each, a checkpoint after each, and
``predict`` (the plain view plus TTA views over a whole evaluation loader).

Time and image counts are carried across epochs and resumes (``Clock``, saved in each checkpoint), and so
is every random state, so a killed run resumed from its checkpoint trains the same batches it would have.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cxr_fast.errors import CxrError
from cxr_fast.io import append_jsonl, atomic_path, read_jsonl, write_text
from cxr_fast.runtime import LatestValue, fixed_shapes, sync
from cxr_fast.schema.run import RunConfig
from cxr_fast.train.folder import CHECKPOINT_NAME, LOG_NAME, RunPlan
from cxr_fast.train.parts import RunParts
from cxr_fast.units import MIB
from cxr_fast.vocabulary import AUC_TIED


def peak_memory_mb(device: Any) -> float:
    """Peak GPU memory allocated by tensors on CUDA; on the CPU the process's peak resident set size."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MIB
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB elsewhere
    return rss / MIB if sys.platform == "darwin" else rss * 1024 / MIB


def rng_state() -> dict[str, Any]:
    """The generators' states in tensors and plain numbers only, so a checkpoint loads with
    ``weights_only=True`` (numpy's own state tuple would need unpickling)."""
    import torch

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {"torch": torch.get_rng_state(),
                             "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)),
                                       "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def epoch_bar(enabled: bool) -> Any:
    """A bar per epoch with the running loss and images/s."""
    from cxr_fast.progress import Bar

    if not enabled:
        return Bar(False)
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    return Bar(True, TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}  {task.fields[ips]:.1f} img/s"), TimeElapsedColumn())


def predict(step: Any, loader: Any, tta: int, seed: int, augmentation: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, plain-view log-odds, TTA log-odds) over a whole evaluation loader.

    TTA follows fastai 0.7: the plain view plus ``tta`` views made with the training transforms, their
    probabilities averaged (``metrics.tta_mean_logit`` does it in log space, so nothing underflows).
    """
    import torch

    from cxr_fast.augment import tta_views
    from cxr_fast.metrics import tta_mean_logit

    batches = []
    step.model.eval()
    try:
        with torch.no_grad():
            for i, (images, y) in enumerate(loader):
                batch = tta_views(images, tta, seed * 100_003 + i, augmentation) if tta > 0 else [images]
                batches.append(collect_scores(y, [step.predict(v) for v in batch]))
    finally:
        step.model.train()
    rows = torch.cat(batches, dim=1).numpy().astype(np.float64)  # (1 + views) x images
    y, logits = rows[0], rows[1:]
    return y, logits[0], tta_mean_logit(logits)


def collect_scores(labels: Any, scores: list[Any]) -> Any:
    """One evaluation batch's labels and each view's log-odds as one ``(1 + views) x N`` float32 host tensor:
    one device-to-host read per batch (the one sync evaluation makes), not one for labels and one for scores."""
    import torch

    rows = [labels.to(scores[0].device, torch.float32).view(1, -1), torch.stack(scores).float()]
    return torch.cat(rows).cpu()


class EpochTotals:
    """An epoch's running loss and input spread, kept on the device and read once, at the epoch's end:
    reading them per batch would make the host wait for the GPU every step."""

    def __init__(self, device: Any) -> None:
        import torch

        self.loss_sum = torch.zeros((), device=device)
        self.spread = torch.zeros((), device=device)  # largest max - min of a batch: 0 means constant inputs
        self.seen = 0

    def add(self, images: Any, labels: Any, loss: Any) -> None:
        import torch

        self.spread = torch.maximum(self.spread, (images.amax() - images.amin()).float())
        self.loss_sum += loss * len(labels)
        self.seen += len(labels)


def restore(parts: RunParts, checkpoint: dict[str, Any], log_path: Path) -> None:
    """Put a checkpoint's model, optimizer, scaler and random states back; drop log lines it does not cover."""
    parts.model.load_state_dict(checkpoint["model"])
    parts.optimizer.load_state_dict(checkpoint["optimizer"])
    if parts.step.scaler is not None and checkpoint.get("scaler"):
        parts.step.scaler.load_state_dict(checkpoint["scaler"])
    set_rng_state(checkpoint["rng"])
    # Drop log lines of an epoch that was logged but not checkpointed before the kill.
    rows = [r for r in read_jsonl(log_path) if r.get("epoch", 0) <= checkpoint["epoch"]]
    write_text(log_path, "".join(json.dumps(r) + "\n" for r in rows))


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a checkpoint's state: what ``torch.save`` will need on disk, at least."""
    if hasattr(obj, "nbytes") and hasattr(obj, "dtype"):
        return int(obj.nbytes)
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def save_checkpoint(path: Path, state: dict[str, Any]) -> float:
    """Write a checkpoint atomically; the seconds it took. Into a Python file, so a full disk reaches
    ``atomic_path`` as the OSError behind torch's RuntimeError."""
    import torch

    t0 = time.perf_counter()
    with atomic_path(path, need=tensor_bytes(state)) as tmp, open(tmp, "wb") as fh:
        torch.save(state, fh)
    return time.perf_counter() - t0


def check_same_images(plan: RunPlan, parts: RunParts) -> None:
    """A resumed run must train on the images its checkpoint was trained on: the same ones left out as
    unusable. Images repaired, or newly broken, since then would mix two datasets in one model."""
    was = plan.checkpoint.get("dropped") if plan.checkpoint is not None else None
    if was is None:  # a checkpoint from before images were screened: nothing to compare
        return
    now = sorted(parts.dropped)
    if was != now:
        changed = sorted(set(was) ^ set(now))
        raise CxrError(f"{plan.out / CHECKPOINT_NAME} was trained without {len(was)} unusable image(s), but now "
                       f"{len(now)} are unusable ({len(changed)} changed, e.g. {changed[0]}); the images changed since "
                       "the run started: rerun with --overwrite to train on the images as they are now", exit_code=1)


def diverged(epoch: int, loss: float, spread: float) -> CxrError:
    """Say what was observed: constant inputs, or a loss that left the finite range."""
    if spread == 0.0:
        return CxrError(f"training loss became {loss} at epoch {epoch}, and every training image was constant "
                        "(all pixels one value): the data carries nothing to learn; check the images", exit_code=1)
    return CxrError(f"training loss became {loss} at epoch {epoch} although the inputs varied: the optimisation "
                    "diverged; try a lower --lr, or --precision fp32", exit_code=1)


@dataclass
class Clock:
    """Time and image counts carried across epochs and resumes (saved in each checkpoint)."""

    started: float
    wall_before: float = 0.0
    train_s: float = 0.0
    train_images: int = 0
    eval_s: float = 0.0
    checkpoint_s: float = 0.0

    def wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    def resume(self, checkpoint: dict[str, Any]) -> None:
        self.wall_before = checkpoint["wall_s"]
        self.train_s, self.train_images = checkpoint["train_time_s"], checkpoint["train_images"]


def train_epochs(cfg: RunConfig, plan: RunPlan, parts: RunParts, first_epoch: int, clock: Clock,
                 progress: bool, on_epoch: Callable[[dict[str, Any]], None] | None) -> None:
    """Epochs ``first_epoch .. cfg.epochs``: train, score the plain view, log, checkpoint."""
    import torch

    from cxr_fast.graphs import use_graphs
    from cxr_fast.metrics import score_auc

    parts.step = use_graphs(parts.step, cfg.graphs, cfg.compile, say=print if progress else None)
    device, step = parts.step.device, parts.step
    out = plan.out
    n_batches = len(parts.train_loader) if cfg.max_batches is None else min(len(parts.train_loader), cfg.max_batches)
    fixed_shapes(device)  # one input shape for the whole run: cuDNN may pick its fastest algorithms once
    with epoch_bar(progress) as bar:
        for epoch in range(first_epoch, cfg.epochs):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            parts.train_loader.set_epoch(epoch)
            task = bar.add(f"{parts.sub.label} {cfg.res}px epoch {epoch + 1}/{cfg.epochs}", n_batches,
                           loss=float("nan"), ips=0.0)
            sync(device)
            t0 = time.perf_counter()
            totals, shown_loss = EpochTotals(device), LatestValue(device)
            for i, (images, labels) in enumerate(parts.train_loader):
                if i >= n_batches:
                    break
                loss = step(images, labels)
                totals.add(images, labels, loss)
                if bar.enabled and (i % 10 == 0 or i == n_batches - 1):
                    shown_loss.post(loss)  # shown once it has reached the host: the bar never waits for the GPU
                    elapsed = time.perf_counter() - t0
                    bar.update(task, completed=i + 1, loss=shown_loss.read(), ips=totals.seen / max(elapsed, 1e-9))
            sync(device)
            epoch_time = time.perf_counter() - t0
            seen = totals.seen
            clock.train_s += epoch_time
            clock.train_images += seen
            mean_loss = float(totals.loss_sum) / max(seen, 1)
            if not np.isfinite(mean_loss):
                raise diverged(epoch + 1, mean_loss, float(totals.spread))
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
                "scaler": step.scaler.state_dict() if step.scaler is not None else None, "rng": rng_state(),
                "wall_s": clock.wall(), "train_time_s": clock.train_s, "train_images": clock.train_images,
                "config": plan.current, "dropped": sorted(parts.dropped),
            }
            clock.checkpoint_s += save_checkpoint(out / CHECKPOINT_NAME, state)
            shown = AUC_TIED if epoch_auc is None else f"{epoch_auc:.3f}"
            bar.print(f"epoch {epoch + 1}: loss {mean_loss:.4f}  val AUC {shown}  {row['images_per_s']:.1f} img/s")
            if on_epoch is not None:
                on_epoch(row)
