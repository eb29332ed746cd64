"""The packed layers: each does the work of K models' layers in one op, keeping the models apart.

Layout (``cxr_fast.packed``): activations ``N x (K*C) x H x W`` with model k's channels at ``k*C .. (k+1)*C``;
after pooling, ``N x K x F``. Convolutions and 2-D BatchNorms need no class of their own (a grouped convolution,
a BatchNorm over K*C channels: ``cxr_fast.packed.model`` builds them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cxr_fast.errors import CxrError
from cxr_fast.models import Normalize


class PackedInput(nn.Module):
    """K batches ``K x N x 1 x H x W`` -> one ``N x K x H x W`` batch (model k in channel k), then ``Normalize``."""

    def __init__(self, norm: Normalize, k: int) -> None:
        super().__init__()
        self.mean, self.std, self.k = norm.mean, norm.std, k
        self.memory_format = torch.channels_last  # the step sets its own

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() == 5:
            if images.shape[0] != self.k or images.shape[2] != 1:
                raise CxrError(f"a packed batch is K x N x 1 x H x W with K = {self.k}, got {tuple(images.shape)}")
            images = images.squeeze(2).transpose(0, 1)
        x = images.contiguous(memory_format=self.memory_format)
        return (x - self.mean) / self.std


class PackedConcatPool(nn.Module):
    """``ConcatPool`` per model: ``N x K*C x H x W`` -> ``N x K x 2C`` ([max, mean] of each model's channels)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        return torch.cat([x.amax(dim=(2, 3)).view(n, self.k, -1), x.mean(dim=(2, 3)).view(n, self.k, -1)], dim=2)


class PackedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over K*F features of ``N x K x F``: each model's own statistics."""

    def __init__(self, k: int, features: int, **kw: Any) -> None:
        super().__init__(k * features, **kw)
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        return super().forward(x.reshape(n, -1)).view(n, self.k, -1)


class PackedLinear(nn.Module):
    """K Linear layers as one batched matmul: ``N x K x in`` (or ``N x K*in``) -> ``N x K x out``."""

    def __init__(self, linears: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in linears]))  # K x out x in
        has_bias = linears[0].bias is not None
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in linears])) if has_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.weight.shape[0]
        x = x.reshape(x.shape[0], k, -1).transpose(0, 1)  # K x N x in
        w = self.weight.transpose(1, 2)
        out = torch.bmm(x, w) if self.bias is None else torch.baddbmm(self.bias.unsqueeze(1), x, w)
        return out.transpose(0, 1)


class PackedDropout(nn.Module):
    """Dropout on ``N x K x F`` with one generator per model: model k's mask is drawn from its generator exactly
    as ``F.dropout`` draws it on the CPU (``empty_like(x).bernoulli_(1 - p)``, then ``/ (1 - p)``)."""

    def __init__(self, p: float, generators: Sequence[torch.Generator]) -> None:
        super().__init__()
        self.p, self.generators = p, list(generators)

    def noise(self, x: torch.Tensor) -> torch.Tensor:
        """``K x N x F`` masks, already scaled by ``1 / (1 - p)``."""
        n, k, f = x.shape
        out = x.new_empty((k, n, f))
        for i, g in enumerate(self.generators):
            out[i].bernoulli_(1 - self.p, generator=g)
        return out.div_(1 - self.p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return x * self.noise(x).transpose(0, 1)


def _split(x: torch.Tensor, k: int, last: bool) -> torch.Tensor:
    """``N x K*C x H x W`` -> a 5-D view with the model and channel axes apart: ``N x H x W x K x C`` when
    channels-last (``last``: concatenation then keeps that layout), else ``N x K x C x H x W``."""
    n, kc, h, w = x.shape
    if last:
        return x.permute(0, 2, 3, 1).reshape(n, h, w, k, kc // k)
    return x.reshape(n, k, kc // k, h, w)


def _join(x5: torch.Tensor, last: bool) -> torch.Tensor:
    """``_split``'s inverse."""
    if last:
        n, h, w = x5.shape[:3]
        return x5.reshape(n, h, w, -1).permute(0, 3, 1, 2)
    n, _, _, h, w = x5.shape
    return x5.reshape(n, -1, h, w)


class PackedDenseBlock(nn.ModuleDict):
    """A DenseNet block over K models: each layer reads its own model's features only.

    torchvision concatenates all earlier features on the channel axis, which in the packed layout would
    interleave models; here the features grow per model, on the channel axis of the 5-D view, one
    concatenation per layer (the same bytes as torchvision's path, which is not the memory-efficient one).
    """

    def __init__(self, layers: dict[str, nn.Module], k: int) -> None:
        super().__init__(layers)
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = x.is_contiguous(memory_format=torch.channels_last)
        acc = _split(x, self.k, last)
        for layer in self.values():
            new = layer.conv1(layer.relu1(layer.norm1(_join(acc, last))))
            new = layer.conv2(layer.relu2(layer.norm2(new)))
            acc = torch.cat([acc, _split(new, self.k, last)], dim=4 if last else 2)
        return _join(acc, last)
