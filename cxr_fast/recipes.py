"""The two training recipes: what the head outputs, which loss weighs it, which augmentation feeds it.

``fastai07`` (the paper's): fastai 0.7's two-way log-softmax head trained with the class-weighted
negative log-likelihood the paper describes ("weighted cross-entropy"). torch's weighted NLL with
``reduction='mean'`` divides by the sum of the weights of the batch's targets, not by the batch size:
``sum_i w[y_i] * -log p_i[y_i] / sum_i w[y_i]``, with ``w = [1, negatives/positives]``.
``modern``: one logit and ``BCEWithLogitsLoss(pos_weight=w)``, averaged over the batch size, so
positives weigh ``w`` times more per image and the effective step grows with ``w``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from cxr_fast.vocabulary import RECIPES, check_choice

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def loss_function(recipe: str, pos_weight: float, device: torch.device | str) -> LossFn:
    """``loss(model_output, labels01)`` for ``recipe``; the output is float32 (the head runs in fp32)."""
    check_choice(recipe, RECIPES, "recipe")
    if pos_weight <= 0:
        raise ValueError(f"pos_weight must be positive, got {pos_weight}")
    if recipe == "fastai07":
        weight = torch.tensor([1.0, float(pos_weight)], device=device)

        def weighted_nll(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return F.nll_loss(output.float(), labels.long().view(-1), weight=weight)

        return weighted_nll
    pw = torch.tensor([float(pos_weight)], device=device)

    def weighted_bce(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(output.float().view(-1), labels.float().view(-1), pos_weight=pw)

    return weighted_bce


def augmentation(recipe: str):
    """The recipe's training (and TTA) augmentation strengths."""
    from cxr_fast.augment import augment_config

    return augment_config(check_choice(recipe, RECIPES, "recipe"))
