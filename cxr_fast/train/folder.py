"""The run folder: what it holds, and what a new run does with one that exists (refuse, resume, reuse, replace).

A run folder holds everything needed to trust and resume a run: ``config.yaml`` (resolved, with the init's
weights file and sha256), ``log.jsonl`` (one line per epoch), ``checkpoint.pt`` (each epoch, atomic), and at
the end ``predictions.npz`` (log-odds scores) and ``metrics.json``. A folder that already holds a run is
refused unless ``resume`` (continue it, or reuse it when finished) or ``overwrite`` is asked for. Everything
is decided here, before the folder is touched (``plan_run`` writes nothing).
"""

from __future__ import annotations

import json
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_fast.config import load_yaml
from cxr_fast.errors import CxrError
from cxr_fast.schema.run import RESUME_FREE, RunConfig

CONFIG_NAME = "config.yaml"
LOG_NAME = "log.jsonl"
METRICS_NAME = "metrics.json"
PREDICTIONS_NAME = "predictions.npz"
CHECKPOINT_NAME = "checkpoint.pt"
RUN_FILES = (CONFIG_NAME, LOG_NAME, METRICS_NAME, PREDICTIONS_NAME, CHECKPOINT_NAME)


def default_out(cfg: RunConfig) -> Path:
    return Path("runs") / f"{cfg.label}-{cfg.arch}-{cfg.res}"


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Settings that differ between a saved run and this one, except those a resumed run may change
    (``RunConfig``'s ``resume_free`` role: the weights file's path may differ between machines, its sha256 is
    compared). A setting the saved config lacks (added to cxr-fast since) counts as its default."""
    keys = sorted((set(saved) | set(current)) - set(RESUME_FREE))
    fields = RunConfig.model_fields
    # A setting added since the run was saved is absent from its config.yaml: the run used its default.
    was = {k: saved[k] if k in saved else fields[k].default if k in fields else None for k in keys}
    return [f"{k}: {was[k]!r} -> {current.get(k)!r}" for k in keys if was[k] != current.get(k)]


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint, or one line naming the damaged file and how to start over."""
    import torch

    try:  # tensors and plain values only: a checkpoint from elsewhere never runs code when it is read
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: the user's to fix
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc):
            reason = "it holds objects that only unpickling would make, which is never done"
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
    resolved: RunConfig
    current: dict[str, Any]  # what config.yaml records
    init: Any  # cxr_fast.weights.InitChoice
    finished: dict[str, Any] | None = None  # a finished run to return as it is
    checkpoint: dict[str, Any] | None = None  # continue from here
    fresh_folder: bool = True  # the folder did not exist (or was empty): remove it again on failure
    clear: tuple[str, ...] = ()  # run files to delete before training starts


def plan_run(cfg: RunConfig, resume: bool = False, overwrite: bool = False, progress: bool = True,
             init: Any = None) -> RunPlan:
    """Resolve and choose: fresh, resume, reuse or refuse. Writes nothing.

    ``cfg`` was validated when it was made (``RunConfig``). The init is resolved here unless the caller
    resolved it already (a study resolves each file once, ``init``), so an offline ``imagenet`` run stops
    before any data is read.
    """
    from cxr_fast.data.source import is_phantom_spec
    from cxr_fast.step import device_precision, resolve_device
    from cxr_fast.weights import resolve_init

    if resume and overwrite:
        raise CxrError("--resume and --overwrite contradict each other; choose one")
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    device = resolve_device(cfg.device)
    if init is None:
        init = resolve_init(cfg.arch, cfg.init, cfg.weights, progress=progress, pinned_sha256=cfg.weights_sha256)
    resolved = cfg.replace(
        out=str(out), device=str(device), precision=device_precision(cfg.precision, device),
        data=str(Path(cfg.data).resolve()) if cfg.data and not is_phantom_spec(cfg.data) else cfg.data,
        weights=init.weights_file, weights_sha256=init.weights_sha256,
    )
    current = resolved.record()
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
        plan.checkpoint = load_checkpoint(ckpt_path)
        if plan.checkpoint["epoch"] > cfg.epochs:
            raise CxrError(f"{ckpt_path} has {plan.checkpoint['epoch']} epochs done, more than epochs={cfg.epochs}")
        # Results of the shorter run must not outlive the training that continues now.
        plan.clear = (METRICS_NAME, PREDICTIONS_NAME)
    else:
        plan.clear = (LOG_NAME, METRICS_NAME, PREDICTIONS_NAME)
    return plan
