"""The packed training step, its per-model loss, and packed evaluation with each model's own TTA views.

The step minimises the sum of the K models' losses: model k's loss depends on its own parameters only, so its
gradient is exactly the one its own run computes, and the optimizer (elementwise) steps it as that run would.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cxr_fast.errors import CxrError
from cxr_fast.models import positive_logit
from cxr_fast.packed.model import PackedModel
from cxr_fast.recipes import loss_function
from cxr_fast.step import TrainStep


def _sum_over_models(per_model: torch.Tensor) -> torch.Tensor:
    """The packed objective: the sum of the K losses, so model k's gradient is its own loss's gradient (a mean
    would scale every gradient by 1/K)."""
    return per_model.sum()


def packed_loss(recipe: str, pos_weights: Sequence[float], device: torch.device | str) -> Callable[..., torch.Tensor]:
    """``loss(output N x K x C, labels K*N) -> K`` losses, model k's as ``recipes.loss_function`` with its own
    weight: fastai07's weighted NLL (divided by the batch's summed weights) or modern's weighted BCE."""
    for w in pos_weights:
        loss_function(recipe, w, device)  # the same refusals
    pw = torch.tensor([float(w) for w in pos_weights], device=device)
    k = len(pos_weights)

    def weighted_nll(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        y = labels.view(k, -1).t().long()  # N x K
        log_p = output.float().gather(2, y.unsqueeze(2)).squeeze(2)
        w = torch.where(y == 1, pw, 1.0)
        return -(w * log_p).sum(0) / w.sum(0)

    def weighted_bce(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        y = labels.view(k, -1).t().float()
        x = output.float().reshape(y.shape)
        return F.binary_cross_entropy_with_logits(x, y, pos_weight=pw, reduction="none").mean(0)

    return weighted_nll if recipe == "fastai07" else weighted_bce


class PackedStep(TrainStep):
    """``TrainStep`` for a ``PackedModel``: images ``K x N x 1 x H x W`` and labels ``K x N`` in, the K losses
    out; precision, channels-last, TF32 and the fp16 scaler as ``TrainStep`` sets them."""

    def __init__(self, model: PackedModel, optimizer: torch.optim.Optimizer, pos_weights: Sequence[float],
                 precision: str, device: torch.device | str, channels_last: bool = True,
                 recipe: str = "fastai07") -> None:
        if not isinstance(model, PackedModel) or len(pos_weights) != model.k:
            raise CxrError(f"a packed step needs a PackedModel and one loss weight per model, got {len(pos_weights)}")
        super().__init__(model, optimizer, 1.0, precision, device, channels_last, recipe)
        # On ``meta`` (where ``cost.work`` counts ops) a CPU generator serves: nothing is drawn there.
        if self.device.type != "meta" and any(g.device.type != self.device.type for g in model.generators):
            raise CxrError(f"the packed model's dropout generators are not on {self.device}")
        model[0].memory_format = self.memory_format
        self.pos_weight = None  # one per model: pos_weights
        self.pos_weights = tuple(float(w) for w in pos_weights)
        self.per_model_loss = packed_loss(recipe, self.pos_weights, self.device)
        self.loss_fn = self._loss
        self.losses: torch.Tensor | None = None

    def _loss(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        per_model = self.per_model_loss(output, labels)
        self.losses = per_model.detach()
        return _sum_over_models(per_model)

    def update(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``TrainStep.update`` for all K models; returns their K losses (detached, on the device, no sync), so
        calling the step, or a captured graph of it, gives each model's loss."""
        super().update(images, labels)
        return self.losses

    @torch.no_grad()
    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """Positive-class log-odds of a prepared packed batch, ``K x N`` float32 (``models.positive_logit`` per
        model); ``predict`` prepares a batch and calls this, as ``TrainStep``'s does."""
        with self.autocast():
            output = self.model(images)
        n, k, c = output.shape
        return positive_logit(output.transpose(0, 1).reshape(k * n, c)).view(k, n)


def stack_batches(batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """K loaders' ``(images, labels)`` as one packed batch; every model's batch must hold as many images."""
    sizes = [len(y) for _, y in batches]
    if len(set(sizes)) != 1:
        raise CxrError(f"packed models train on batches of one size, got {sizes}")
    return torch.stack([x for x, _ in batches]), torch.stack([y for _, y in batches])


def _padded(x: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    """``x`` with zero images appended up to ``n`` (eval mode scores each image alone, so padding is inert)."""
    if x is None:
        return like.new_zeros((n, *like.shape[1:]))
    return x if len(x) == n else torch.cat([x, x.new_zeros((n - len(x), *x.shape[1:]))])


def predict_packed(step: PackedStep, loaders: Sequence[Any], tta: int, seeds: Sequence[int],
                   augmentation: Any) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``train.loop.predict`` for K models at once: model k reads its own loader, its TTA views are drawn with
    its own seed, and it gets its own (labels, plain-view log-odds, TTA log-odds)."""
    from cxr_fast.augment import tta_views
    from cxr_fast.metrics import tta_mean_logit

    k = step.model.k
    if len(loaders) != k or len(seeds) != k:
        raise CxrError(f"{k} packed models need {k} loaders and seeds, got {len(loaders)} and {len(seeds)}")
    rows: list[list[torch.Tensor]] = [[] for _ in range(k)]
    step.model.eval()
    try:
        with torch.no_grad():
            for i, batches in enumerate(itertools.zip_longest(*loaders)):
                views = [None if b is None else tta_views(b[0], tta, seeds[j] * 100_003 + i, augmentation)
                         if tta > 0 else [b[0]] for j, b in enumerate(batches)]
                n = max(len(b[1]) for b in batches if b is not None)
                like = next(v[0] for v in views if v is not None)
                scores = torch.stack([step.predict(torch.stack([_padded(v and v[t], n, like) for v in views]))
                                      for t in range(1 + tta if tta > 0 else 1)]).float().cpu()  # V x K x n
                for j, b in enumerate(batches):
                    if b is not None:
                        labels = b[1].to("cpu", torch.float32).view(1, -1)
                        rows[j].append(torch.cat([labels, scores[:, j, :labels.shape[1]]]))
    finally:
        step.model.train()
    out = []
    for r in rows:
        arr = torch.cat(r, dim=1).numpy().astype(np.float64)  # (1 + views) x images
        out.append((arr[0], arr[1], tta_mean_logit(arr[1:])))
    return out
