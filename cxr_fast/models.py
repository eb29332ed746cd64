"""The paper's models: torchvision ResNet34 and DenseNet121 with one gray input channel, in two recipes.

``fastai07`` is what the paper trained (fastai 0.7's ``ConvLearner.pretrained``; sources cited below):
the torchvision body cut before its pooling, then fastai 0.7's head
``AdaptiveConcatPool2d -> Flatten -> [BatchNorm1d, Dropout(0.25), Linear(2*nf, 512), ReLU] ->
[BatchNorm1d, Dropout(0.5), Linear(512, 2), LogSoftmax]``, its Linear layers Kaiming-normal with zero
bias. ``modern`` is torchvision's own pooling and one linear logit.

fastai 0.7 sources (repository fastai/fastai, folder old/fastai):
- conv_learner.py (commit 24faf22): ``model_meta`` cuts resnet34 after 8 children and DenseNet at 0
  (the whole ``features`` block, ending in ``norm5`` with no ReLU) (lines 12-18); DenseNet121's
  ``nf`` is 2048 (line 19); ``xtra_fc=[512]`` and ``ps=[0.25, 0.5]`` (lines 39-40); concat pooling
  and flatten (line 48); Kaiming-normal init of the head (line 58); each head block is
  BatchNorm1d, Dropout, Linear, activation (lines 64-69); ReLU between, LogSoftmax last (lines 71-79).
- torch_imports.py (commit a455d3e): ``dn121`` is ``densenet121(pre).features`` (line 84);
  ``kaiming_normal`` is ``torch.nn.init.kaiming_normal_`` (line 29).
- layers.py (commit e6b56de): concat pooling is ``cat([max, avg])`` (lines 4-10).
- initializers.py: ``cond_init`` skips batch norms, fills biases with 0 (lines 4-7).

Every model maps float [0, 1] images ``N x 1 x H x W`` to scores whose positive-class log-odds
``positive_logit`` extracts. The head runs in float32 even under autocast: it is tiny, and bf16 logits
(8 bits of mantissa) would tie many validation scores and blur the AUC.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from cxr_fast.errors import CxrError
from cxr_fast.vocabulary import ARCHS, HEAD_BN_INITS, RECIPES, check_choice

__all__ = ["ARCHS", "GRAY_MEAN", "GRAY_STD", "HEAD_BN_INITS", "Normalize", "build_model", "positive_logit",
           "load_imagenet_state"]

# ImageNet statistics averaged over RGB: the right normalisation once the stem is summed to gray.
GRAY_MEAN = (0.485 + 0.456 + 0.406) / 3
GRAY_STD = (0.229 + 0.224 + 0.225) / 3
# fastai 0.7's head: one hidden layer of 512, dropout 0.25 before it and 0.5 before the output.
FASTAI07_HIDDEN = 512
FASTAI07_DROPOUT = (0.25, 0.5)
# The fastai07 head's BatchNorm1d weights (``vocabulary.HEAD_BN_INITS``): "ones" is today's PyTorch default; "uniform"
# is U(0, 1), what
# ``_BatchNorm.reset_parameters`` drew (``self.weight.data.uniform_()``) in the PyTorch 0.3/0.4 that fastai 0.7
# ran on, until pytorch/pytorch#13774 (Nov 2018). fastai's ``cond_init`` leaves batch norms alone, so the paper's
# head started from U(0, 1). DESIGN.md, "What the paper leaves open".


class Normalize(nn.Module):
    """Maps loader output (float in [0, 1]) to the statistics the ImageNet stem expects."""

    def __init__(self, mean: float = GRAY_MEAN, std: float = GRAY_STD) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ConcatPool(nn.Module):
    """fastai 0.7's AdaptiveConcatPool2d plus Flatten: global max and global mean, concatenated."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.amax(dim=(2, 3)), x.mean(dim=(2, 3))], dim=1)


class Float32Head(nn.Module):
    """Runs the wrapped head with autocast off, in its weights' dtype (float32 unless the whole model
    was cast), whatever precision the body ran in."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = next(self.head.parameters()).dtype
        with contextlib.ExitStack() as stack:
            # Whichever autocast is on (a meta-device memory count may run under the CPU's or CUDA's).
            for device_type in ("cuda", "cpu"):
                if torch.is_autocast_enabled(device_type):
                    stack.enter_context(torch.autocast(device_type, enabled=False))
            return self.head(x.to(dtype))


def _backbone(arch: str) -> nn.Module:
    """torchvision's network with a one-channel stem, no weights yet."""
    from torchvision import models

    check_choice(arch, ARCHS, "architecture")
    stem = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if arch == "resnet34":
        net = models.resnet34(weights=None)
        net.conv1 = stem
    else:
        net = models.densenet121(weights=None)
        net.features.conv0 = stem
    return net


def _stem_name(arch: str) -> str:
    return "conv1.weight" if arch == "resnet34" else "features.conv0.weight"


def _classifier_names(arch: str) -> tuple[str, str]:
    return ("fc.weight", "fc.bias") if arch == "resnet34" else ("classifier.weight", "classifier.bias")


def _load_problem(exc: Exception) -> str:
    """What ``torch.load(weights_only=True)`` found wrong, in one line. For a file that is not a safe tensor
    pickle, torch's own first line is generic (and suggests ``weights_only=False``, which would run code from
    the file): keep only the unpickler's reason."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        after = [ln for i, ln in enumerate(lines) if i and "Unpickler error" in lines[i - 1]]
        return f"not a tensor file torch.load reads safely ({after[0][:120] if after else type(exc).__name__})"
    return lines[0][:200] if lines else type(exc).__name__


def load_imagenet_state(arch: str, path: Path) -> dict[str, torch.Tensor]:
    """Read an ImageNet state dict and adapt it: RGB stem summed to one channel, 1000-way head dropped."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input problem
        raise CxrError(f"cannot read weights {path}: {_load_problem(exc)}; give a torchvision ImageNet state "
                       "dict (.pth), such as resnet34-b627a593.pth") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CxrError(f"{path}: not a state dict")
    if arch == "densenet121":
        # torchvision's old DenseNet keys ('norm.1') -> current ('norm1').
        import re

        pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
        state = {(pattern.sub(lambda m: m.group(1) + m.group(2), k)): v for k, v in state.items()}
    stem = _stem_name(arch)
    if stem not in state:
        raise CxrError(f"{path}: not a torchvision {arch} checkpoint (no {stem})")
    if state[stem].shape[1] == 3:
        state[stem] = state[stem].sum(dim=1, keepdim=True)
    for key in _classifier_names(arch):
        state.pop(key, None)
    return state


def _load_weights(net: nn.Module, arch: str, path: Path) -> None:
    missing, unexpected = net.load_state_dict(load_imagenet_state(arch, path), strict=False)
    if unexpected or set(missing) - set(_classifier_names(arch)):
        raise CxrError(f"{path}: does not match {arch} (missing {missing[:3]}, unexpected {unexpected[:3]})")


def _fastai07_head(n_features: int, bn_init: str = "ones") -> nn.Sequential:
    """fastai 0.7's default ConvLearner head for a single-label, two-class problem; ``bn_init`` (``HEAD_BN_INITS``)
    sets its BatchNorm1d weights."""
    p_hidden, p_out = FASTAI07_DROPOUT
    head = nn.Sequential(
        ConcatPool(),
        nn.BatchNorm1d(2 * n_features), nn.Dropout(p_hidden), nn.Linear(2 * n_features, FASTAI07_HIDDEN), nn.ReLU(),
        nn.BatchNorm1d(FASTAI07_HIDDEN), nn.Dropout(p_out), nn.Linear(FASTAI07_HIDDEN, 2), nn.LogSoftmax(dim=1),
    )
    for layer in head:
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight)
            nn.init.zeros_(layer.bias)
    if bn_init == "uniform":  # drawn last, so the default ("ones") draws exactly what it always drew
        for layer in head:
            if isinstance(layer, nn.BatchNorm1d):
                nn.init.uniform_(layer.weight, 0.0, 1.0)
    return head


def _split(net: nn.Module, arch: str, recipe: str, head_bn_init: str = "ones") -> tuple[nn.Module, nn.Module]:
    """(body, head) of ``net`` for ``recipe``."""
    if recipe == "fastai07":
        if arch == "resnet34":
            body = nn.Sequential(*list(net.children())[:8])  # conv1 .. layer4, as fastai's cut of 8
            return body, _fastai07_head(net.fc.in_features, head_bn_init)
        # ends in norm5: no ReLU, as fastai
        return net.features, _fastai07_head(net.classifier.in_features, head_bn_init)
    # modern: torchvision's forward up to its pooled features, then one logit.
    if arch == "resnet34":
        n = net.fc.in_features
        net.fc = nn.Identity()
    else:
        n = net.classifier.in_features
        net.classifier = nn.Identity()
    return net, nn.Linear(n, 1)


def build_model(arch: str = "resnet34", recipe: str = "fastai07", weights: str | Path | None = None,
                head_bn_init: str = "ones") -> nn.Module:
    """``Normalize -> body -> float32 head`` for ``recipe``; ``weights``: an ImageNet state dict file.

    Without ``weights`` the model has torch's default random init; choosing and recording the init is
    ``cxr_fast.weights``'s job, so nothing here looks in a cache or downloads. ``head_bn_init``
    (``HEAD_BN_INITS``, fastai07 only: modern's head has no batch norm, so it is refused there, not ignored):
    ``uniform`` draws the head's BatchNorm1d weights from U(0, 1) as the paper's PyTorch did.
    """
    check_choice(recipe, RECIPES, "recipe")
    check_choice(head_bn_init, HEAD_BN_INITS, "head BatchNorm init")
    if head_bn_init != "ones" and recipe != "fastai07":
        raise CxrError(f"head BatchNorm init {head_bn_init!r} is fastai07's; recipe {recipe} has no head batch norm")
    net = _backbone(arch)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise CxrError(f"weights file not found: {path}")
        _load_weights(net, arch, path)
    body, head = _split(net, arch, recipe, head_bn_init)
    return nn.Sequential(Normalize(), body, Float32Head(head))


def positive_logit(output: torch.Tensor) -> torch.Tensor:
    """The positive class's log-odds (N, float32) from a model's output, for either recipe.

    Two-way log-softmax (fastai07): log p1 - log p0, the logit itself, with no exp that could underflow.
    One logit (modern): the value. Ranking metrics are computed on this, never on a rounded probability.
    """
    output = output.float()
    if output.dim() == 2 and output.shape[1] == 2:
        return output[:, 1] - output[:, 0]
    return output.reshape(-1)
