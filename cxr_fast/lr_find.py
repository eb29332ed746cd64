"""Smith's learning-rate range test, the way the paper chose its fixed 5e-4.

The learning rate grows exponentially from ``start_lr`` to ``end_lr`` over at most ``num_iter`` training
steps; the loss is smoothed with an exponential moving average (bias-corrected) and the sweep stops once
the smoothed loss exceeds ``diverge`` times its best value. The suggestion is fastai 0.7's rule of
thumb, an order of magnitude below the learning rate of the lowest smoothed loss; the steepest-descent
point is recorded too. The model and optimizer are restored afterwards, so a caller can train next.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np

from cxr_fast.errors import CxrError
from cxr_fast.io import atomic_path, write_json
from cxr_fast.runtime import cycle, fixed_shapes


def _check_range(start_lr: float, end_lr: float, num_iter: int) -> None:
    from cxr_fast.vocabulary import check_number

    check_number(start_lr, "start_lr", gt=0)  # finite: an infinite end made every rate after the first inf
    check_number(end_lr, "end_lr", gt=0)
    if not start_lr < end_lr:
        raise CxrError(f"need 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    check_number(num_iter, "num_iter", integer=True, ge=2)


def lr_range_test(step: Any, loader: Any, start_lr: float = 1e-7, end_lr: float = 10.0, num_iter: int = 100,
                  beta: float = 0.98, diverge: float = 4.0, progress: Any = None) -> dict[str, Any]:
    """Sweep the learning rate of ``step.optimizer`` and record (lr, loss, smoothed loss) per step."""
    _check_range(start_lr, end_lr, num_iter)
    saved_model = copy.deepcopy(step.model.state_dict())
    saved_opt = copy.deepcopy(step.optimizer.state_dict())
    ratio = end_lr / start_lr
    lrs, losses, smoothed = [], [], []
    avg, best, stopped = 0.0, math.inf, False
    try:
        for i, (images, labels) in enumerate(cycle(loader)):
            if i >= num_iter:
                break
            lr = start_lr * ratio ** (i / (num_iter - 1))
            for group in step.optimizer.param_groups:
                group["lr"] = lr
            loss = float(step(images, labels))
            if not math.isfinite(loss):
                stopped = True
                break
            avg = beta * avg + (1 - beta) * loss
            value = avg / (1 - beta ** (i + 1))
            lrs.append(lr)
            losses.append(loss)
            smoothed.append(value)
            if progress is not None:
                progress(i + 1, lr, value)
            best = min(best, value)
            if i > 0 and value > diverge * best:
                stopped = True
                break
    finally:
        step.model.load_state_dict(saved_model)
        step.optimizer.load_state_dict(saved_opt)
    if len(lrs) < 2:
        raise CxrError("the range test diverged at once; lower --start-lr")
    return {"lrs": lrs, "losses": losses, "smoothed": smoothed, "stopped_on_divergence": stopped,
            **suggest(lrs, smoothed, losses=losses, beta=beta), "start_lr": start_lr, "end_lr": end_lr,
            "num_iter": num_iter, "beta": beta, "diverge": diverge}


# The smoothed loss must fall by more than this many standard deviations of its own noise before its lowest
# point says anything: the lowest of many noisy points lies below the truth, so one deviation is not enough.
NOISE_Z = 2.5  # a flat curve of seeded noise gets a suggestion about 2% of the time, 5% at 2.0


def loss_noise(losses: list[float]) -> float:
    """A robust standard deviation of one raw loss around the curve's trend: the median absolute deviation of
    second differences (a locally straight trend cancels in them; their SD is sqrt(6) losses'), scaled to a
    normal SD; a few wild batches cannot move it."""
    d = np.diff(np.asarray(losses, dtype=np.float64), n=2)
    if len(d) == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(6.0))


def smoothed_sd(sigma: float, i: int, beta: float) -> float:
    """SD of the bias-corrected moving average after ``i + 1`` losses of SD ``sigma`` (its weights' norm)."""
    b = beta ** (i + 1)
    return sigma * math.sqrt((1 - beta) / (1 + beta) * (1 + b) / (1 - b))


def suggest(lrs: list[float], smoothed: list[float], skip_start: int | None = None,
            losses: list[float] | None = None, beta: float = 0.98) -> dict[str, Any]:
    """``lr_min_loss`` (lowest smoothed loss), ``lr_steepest`` (fastest fall before it) and the suggestion.

    The first ``skip_start`` points (default a tenth, at least 1 when there are 10 or more) are left out:
    the bias-corrected average of the first few noisy losses is not yet a trend. The suggestion is
    never below the first learning rate tried. With the raw ``losses`` (smoothed with ``beta``), a fall
    from the first point kept to the lowest that is within ``NOISE_Z`` SDs of the smoothed curve's own
    noise suggests nothing (``suggested_lr`` None, ``no_suggestion`` says why): the curve cannot support
    one. ``edge`` says when the suggestion sits at the sweep's low or high end, where the sweep cannot show
    what lies beyond.
    """
    lr = np.asarray(lrs, dtype=np.float64)
    sm = np.asarray(smoothed, dtype=np.float64)
    if skip_start is None:
        skip_start = len(sm) // 10
    skip_start = min(skip_start, len(sm) - 1)
    i_min = skip_start + int(np.argmin(sm[skip_start:]))
    if i_min - skip_start >= 2:
        window = slice(skip_start, i_min + 1)
        slope = np.gradient(sm[window], np.log10(lr[window]))
        i_steep = skip_start + int(np.argmin(slope))
    else:
        i_steep = i_min
    drop = float(sm[skip_start] - sm[i_min])
    sigma = loss_noise(losses) if losses is not None else 0.0
    noise = NOISE_Z * math.hypot(smoothed_sd(sigma, skip_start, beta), smoothed_sd(sigma, i_min, beta))
    out: dict[str, Any] = {"lr_min_loss": float(lr[i_min]), "lr_steepest": float(lr[i_steep]),
                           "loss_drop": drop, "loss_noise": noise, "suggested_lr": None, "edge": None,
                           "no_suggestion": None}
    if drop <= noise:
        out["no_suggestion"] = (f"the smoothed loss fell by {drop:.3g} from {lr[skip_start]:.1e} to its lowest, "
                                f"at {lr[i_min]:.1e}, within {NOISE_Z:g} SD of its noise ({noise:.3g}): "
                                "the curve shows no learning rate at which the loss falls")
        return out
    out["suggested_lr"] = float(max(lr[i_min] / 10.0, lr[0]))
    if i_min == len(sm) - 1:
        out["edge"] = "high: the loss was still falling at the last learning rate tried; raise --end-lr"
    elif lr[i_min] / 10.0 <= lr[0]:
        out["edge"] = "low: a tenth of the lowest-loss rate is at or below the first rate tried; lower --start-lr"
    return out


def plot(result: dict[str, Any], path: str | Path, title: str = "") -> None:
    """Loss against learning rate (log axis), raw and smoothed, with the suggestion marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result["lrs"], result["losses"], color="0.75", lw=1, label="loss")
    ax.plot(result["lrs"], result["smoothed"], color="C0", lw=2, label="smoothed loss")
    if result.get("suggested_lr") is not None:
        ax.axvline(result["suggested_lr"], color="C3", ls="--", label=f"suggested {result['suggested_lr']:.1e}")
    else:
        title = f"{title}: no suggestion (loss falls within its noise)" if title else "no suggestion"
    ax.axvline(result["lr_min_loss"], color="C2", ls=":", label=f"lowest loss {result['lr_min_loss']:.1e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"training loss ({result.get('loss_name', 'weighted')})")
    # The smoothed curve sets the scale; raw losses of batches with a positive (pos_weight) go off it.
    low, high = min(result["smoothed"]), max(result["smoothed"])
    pad = 0.05 * max(high - low, 1e-3 * max(abs(high), 1.0))
    ax.set_ylim(low - pad, high + pad)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def run_lr_find(cfg: Any, out: str | Path | None = None, start_lr: float = 1e-7, end_lr: float = 10.0,
                num_iter: int = 100, progress: bool = True) -> dict[str, Any]:
    """Build the run ``cfg`` describes (data, model, loader), sweep, write ``lr_find.json`` and ``.png``."""
    from cxr_fast.step import device_precision, resolve_device
    from cxr_fast.train.parts import build_parts
    from cxr_fast.weights import resolve_init

    _check_range(start_lr, end_lr, num_iter)  # before any data is opened (cfg was validated when made)
    device = resolve_device(cfg.device)
    precision = device_precision(cfg.precision, device)
    # Offline with no weights: one line, before any data.
    init = resolve_init(cfg.arch, cfg.init, cfg.weights, progress=progress, pinned_sha256=cfg.weights_sha256)
    folder = Path(out) if out else Path("runs") / f"lr-find-{cfg.label}-{cfg.arch}-{cfg.res}"
    parts = build_parts(cfg, device, precision, quiet=not progress, need_val=False, weights=init.weights_file)
    fixed_shapes(device)  # one batch shape for the whole sweep, as in training
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        with Progress(TextColumn("lr-find"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("lr {task.fields[lr]:.1e}  loss {task.fields[loss]:.4f}")) as bar:
            task = bar.add_task("", total=num_iter, lr=start_lr, loss=float("nan"))
            result = lr_range_test(parts.step, parts.train_loader, start_lr, end_lr, num_iter,
                                   progress=lambda i, lr, loss: bar.update(task, completed=i, lr=lr, loss=loss))
    else:
        result = lr_range_test(parts.step, parts.train_loader, start_lr, end_lr, num_iter)
    result.update(label=parts.sub.label, res=cfg.res, arch=cfg.arch, batch_size=cfg.batch_size,
                  optimizer=cfg.optimizer, precision=precision, tf32=parts.step.tf32, loader=parts.loader_name,
                  recipe=cfg.recipe, pos_weight=parts.pos_weight, config=cfg.record(), **init.record())
    write_json(folder / "lr_find.json", result)
    result["loss_name"] = "weighted NLL, fastai 0.7" if cfg.recipe == "fastai07" else "weighted BCE"
    plot(result, folder / "lr_find.png", title=f"{parts.sub.label} {cfg.arch} {cfg.res}px, batch {cfg.batch_size}")
    result["out"] = str(folder)
    return result
