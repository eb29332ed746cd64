"""The paper's models: torchvision ResNet34 and DenseNet121 with one input channel and one logit.

ImageNet weights come only from a local file (``weights=PATH``) or the torch hub cache when the file
is already there; the RGB stem is summed into one gray channel. Nothing is ever downloaded.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from cxr_fast.errors import CxrError

ARCHS: tuple[str, ...] = ("resnet34", "densenet121")
# torchvision's ImageNet checkpoint file names, as the hub cache stores them.
_CACHE_FILES = {"resnet34": "resnet34-b627a593.pth", "densenet121": "densenet121-a639ec97.pth"}
# ImageNet statistics averaged over RGB: the right normalisation once the stem is summed to gray.
GRAY_MEAN = (0.485 + 0.456 + 0.406) / 3
GRAY_STD = (0.229 + 0.224 + 0.225) / 3


class Normalize(nn.Module):
    """Maps loader output (float in [0, 1]) to the statistics the ImageNet stem expects."""

    def __init__(self, mean: float = GRAY_MEAN, std: float = GRAY_STD) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _backbone(arch: str) -> nn.Module:
    from torchvision import models

    if arch == "resnet34":
        return models.resnet34(weights=None)
    if arch == "densenet121":
        return models.densenet121(weights=None)
    raise CxrError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")


def _stem_name(arch: str) -> str:
    return "conv1.weight" if arch == "resnet34" else "features.conv0.weight"


def _head_names(arch: str) -> tuple[str, str]:
    return ("fc.weight", "fc.bias") if arch == "resnet34" else ("classifier.weight", "classifier.bias")


def find_cached_weights(arch: str) -> Path | None:
    """torchvision's ImageNet file in the torch hub cache, if a previous download left it there."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / _CACHE_FILES[arch]
    return path if path.is_file() else None


def load_imagenet_state(arch: str, path: Path) -> dict[str, torch.Tensor]:
    """Read an ImageNet state dict and adapt it: RGB stem summed to one channel, 1000-way head dropped."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input problem
        raise CxrError(f"cannot read weights {path}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
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
    for key in _head_names(arch):
        state.pop(key, None)
    return state


def build_model(arch: str = "resnet34", weights: str | Path | None = None, pretrained: bool = True) -> nn.Module:
    """A one-channel, one-logit classifier; input float in [0, 1], N x 1 x H x W.

    ``weights``: a local ImageNet checkpoint. Otherwise the torch cache is used when it holds one;
    otherwise the model starts from random init with a one-line warning (``pretrained=False`` skips that).
    """
    net = _backbone(arch)
    if arch == "resnet34":
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        net.fc = nn.Linear(net.fc.in_features, 1)
    else:
        net.features.conv0 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        net.classifier = nn.Linear(net.classifier.in_features, 1)
    source = Path(weights) if weights else (find_cached_weights(arch) if pretrained else None)
    if weights and not Path(weights).is_file():
        raise CxrError(f"weights file not found: {weights}")
    if source is not None:
        missing, unexpected = net.load_state_dict(load_imagenet_state(arch, source), strict=False)
        if unexpected or set(missing) - set(_head_names(arch)):
            raise CxrError(f"{source}: does not match {arch} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    elif pretrained:
        warnings.warn(
            f"no ImageNet weights for {arch} (give --weights PATH or put {_CACHE_FILES[arch]} in the torch "
            "cache); starting from random init",
            stacklevel=2,
        )
    return nn.Sequential(Normalize(), net)
