"""Packing K built models into one (``PackedModel``) and back (``unpack``), states and optimizer states included.

One rule per module type that holds state or could mix channels (``PACKERS``); a module without a rule is refused,
since its forward might mix the K models. Every packed tensor is the K models' own tensors stacked model-major, so
model k's share of any tensor is ``t.reshape(K, *shape)[k]``.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models.densenet import DenseNet, _DenseBlock, _DenseLayer, _Transition
from torchvision.models.resnet import BasicBlock, ResNet

from cxr_fast.errors import CxrError
from cxr_fast.models import ConcatPool, Float32Head, Normalize, build_model
from cxr_fast.packed.layers import (PackedBatchNorm1d, PackedConcatPool, PackedDenseBlock, PackedDropout, PackedInput,
                                    PackedLinear)

# Modules whose forward acts per channel or per feature (never across models): packed as they are.
_PER_CHANNEL = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity)
# Containers whose own forward keeps channels in place (flatten included: it keeps model-major order).
_CONTAINERS = (nn.Sequential, Float32Head, BasicBlock, ResNet, DenseNet, _Transition, _DenseLayer)


def _stacked(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The K models' tensors one after another along dim 0 (``K*C x ...``)."""
    return torch.cat([t.detach() for t in tensors])


def _same(parts: Sequence[torch.Tensor]) -> bool:
    """All K equal (on ``meta`` there are no values to differ)."""
    return parts[0].is_meta or all(torch.equal(p, parts[0]) for p in parts)


def _copy_stacked(out: nn.Module, mods: Sequence[nn.Module]) -> nn.Module:
    """Fill ``out``'s parameters and buffers with the K modules' own, stacked model-major; a scalar buffer (a
    BatchNorm's step count) must agree across the K, which it does for models trained in lockstep."""
    with torch.no_grad():
        for name, t in itertools.chain(out.named_parameters(recurse=False), out.named_buffers(recurse=False)):
            parts = [getattr(m, name) for m in mods]
            if t.dim() == 0:
                if not _same(parts):
                    raise CxrError(f"cannot pack models whose {name} differ (trained for different numbers of steps)")
                t.copy_(parts[0])
            else:
                t.copy_(_stacked(parts))
    return out


def _pack_conv(convs: Sequence[nn.Conv2d], k: int, generators: Any) -> nn.Module:
    c = convs[0]
    if c.padding_mode != "zeros":
        raise CxrError(f"cannot pack a convolution with padding_mode={c.padding_mode!r}")
    out = nn.Conv2d(k * c.in_channels, k * c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation,
                    groups=k * c.groups, bias=c.bias is not None, device=c.weight.device, dtype=c.weight.dtype)
    return _copy_stacked(out, convs)


def _norm_options(b: nn.modules.batchnorm._BatchNorm) -> dict[str, Any]:
    return {"eps": b.eps, "momentum": b.momentum, "affine": b.affine, "track_running_stats": b.track_running_stats,
            "device": b.running_mean.device, "dtype": b.running_mean.dtype}


def _pack_norm2d(norms: Sequence[nn.BatchNorm2d], k: int, generators: Any) -> nn.Module:
    return _copy_stacked(nn.BatchNorm2d(k * norms[0].num_features, **_norm_options(norms[0])), norms)


def _pack_norm1d(norms: Sequence[nn.BatchNorm1d], k: int, generators: Any) -> nn.Module:
    return _copy_stacked(PackedBatchNorm1d(k, norms[0].num_features, **_norm_options(norms[0])), norms)


def _pack_dropout(drops: Sequence[nn.Dropout], k: int, generators: Any) -> nn.Module:
    if generators is None:
        raise CxrError("a packed model with dropout needs one generator per model (see build_packed)")
    return PackedDropout(drops[0].p, generators)


def _pack_log_softmax(mods: Sequence[nn.LogSoftmax], k: int, generators: Any) -> nn.Module:
    if mods[0].dim not in (1, -1):
        raise CxrError(f"cannot pack a LogSoftmax over dim {mods[0].dim}")
    return nn.LogSoftmax(dim=-1)  # over each model's classes of N x K x C


# One rule per module type that holds state or mixes channels (tests replace a rule to plant a bug).
PACKERS: dict[type, Callable[[Sequence[Any], int, Any], nn.Module]] = {
    nn.Conv2d: _pack_conv,
    nn.BatchNorm2d: _pack_norm2d,
    nn.BatchNorm1d: _pack_norm1d,
    nn.Linear: lambda mods, k, g: PackedLinear(mods),
    nn.Dropout: _pack_dropout,
    nn.LogSoftmax: _pack_log_softmax,
    ConcatPool: lambda mods, k, g: PackedConcatPool(k),
    Normalize: lambda mods, k, g: PackedInput(mods[0], k),
}


def _pack_module(mods: Sequence[nn.Module], k: int, generators: Any) -> nn.Module:
    """The packed counterpart of the K modules ``mods`` (the same type and shapes); refused for any module
    without a rule, since its forward might mix the models' channels."""
    m = mods[0]
    packer = PACKERS.get(type(m))
    if packer is not None:
        return packer(mods, k, generators)
    if type(m) in _PER_CHANNEL:  # exact types: a subclass may have a forward of its own
        return copy.deepcopy(m)
    if type(m) is _DenseBlock:
        return PackedDenseBlock({name: _pack_module([x[name] for x in mods], k, generators) for name in m}, k)
    if type(m) in _CONTAINERS and not m._parameters and not m._buffers:
        if type(m) is _DenseLayer and (m.drop_rate > 0 or m.memory_efficient):
            raise CxrError("cannot pack a DenseNet layer with dropout or memory-efficient checkpointing")
        shell = copy.copy(m)
        shell.__dict__["_modules"] = {name: _pack_module([x._modules[name] for x in mods], k, generators)
                                      for name in m._modules}
        return shell
    raise CxrError(f"cannot pack a {type(m).__name__}: no rule keeps the K models apart in it")


class PackedModel(nn.Sequential):
    """K models from ``build_model`` (same architecture and recipe, each its own init) as one model.

    Its ``state_dict`` has the K models' keys, each tensor their K tensors stacked; ``unpack`` gives them back
    as K ordinary state dicts. ``generators``: one per model, for dropout (``build_packed`` makes them)."""

    def __init__(self, models: Sequence[nn.Module], generators: Sequence[torch.Generator] | None = None) -> None:
        models = list(models)
        shapes = {name: tuple(t.shape) for name, t in models[0].state_dict().items()} if models else {}
        for m in models:
            if {name: tuple(t.shape) for name, t in m.state_dict().items()} != shapes:
                raise CxrError("packed models must have the same architecture, recipe and shapes")
        if not models or (generators is not None and len(generators) != len(models)):
            raise CxrError(f"packing needs at least one model and one generator per model, got {len(models)} "
                           f"models and {len(generators or [])} generators")
        packed = _pack_module(models, len(models), generators)
        super().__init__(OrderedDict(packed._modules))
        self.k, self.shapes = len(models), shapes
        self.generators = list(generators or [])
        self.param_shapes = [tuple(p.shape) for p in models[0].parameters()]  # optimizer states index these
        if [n for n, _ in self.named_parameters()] != [n for n, _ in models[0].named_parameters()]:
            raise CxrError("packing changed the parameters' order; optimizer states would not map")

    def unpack(self) -> list[dict[str, torch.Tensor]]:
        """K state dicts, each loadable into ``build_model(arch, recipe)`` as the separate run's would be."""
        state = self.state_dict()
        return [{name: _part(t, i, self.k, self.shapes[name]) for name, t in state.items()} for i in range(self.k)]

    def load_unpacked(self, states: Sequence[dict[str, torch.Tensor]]) -> None:
        """Load K ordinary state dicts (K checkpoints, to resume a packed job)."""
        if len(states) != self.k:
            raise CxrError(f"{len(states)} state dicts for {self.k} packed models")
        self.load_state_dict({name: _whole([s[name] for s in states], t) for name, t in self.state_dict().items()})


def _part(t: Any, i: int, k: int, shape: tuple[int, ...]) -> Any:
    """Model ``i``'s share of a packed tensor (a scalar is shared: every model has the same)."""
    if not torch.is_tensor(t):
        return copy.deepcopy(t)
    if t.dim() == 0:
        return t.detach().clone()
    return t.detach().reshape(k, *shape)[i].clone()


def _whole(parts: Sequence[Any], like: Any) -> Any:
    """K models' tensors as one packed tensor shaped ``like`` (``_part``'s inverse)."""
    if not torch.is_tensor(parts[0]):
        return copy.deepcopy(parts[0])
    if parts[0].dim() == 0 or like.dim() == 0:
        if not _same(parts):
            raise CxrError("cannot pack states whose step counts differ")
        return parts[0].clone()
    return torch.stack([p.detach() for p in parts]).reshape(like.shape)


def unpack_optimizer_state(state: dict[str, Any], model: PackedModel) -> list[dict[str, Any]]:
    """A packed optimizer's ``state_dict`` as K optimizers' (SGD momentum, Adam moments), one per model."""
    return [{"state": {idx: {key: _part(v, i, model.k, model.param_shapes[idx]) for key, v in s.items()}
                       for idx, s in state["state"].items()},
             "param_groups": copy.deepcopy(state["param_groups"])} for i in range(model.k)]


def pack_optimizer_state(states: Sequence[dict[str, Any]], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """K optimizers' state dicts as one for ``optimizer`` over the packed parameters (to resume)."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    merged = {idx: {key: _whole([st["state"][idx][key] for st in states], params[idx]) for key in s}
              for idx, s in states[0]["state"].items()}
    return {"state": merged, "param_groups": copy.deepcopy(states[0]["param_groups"])}


def run_generator(seed: int, device: torch.device) -> torch.Generator:
    """The generator a run's dropout draws from, as it stands once ``train.parts`` has built the model: on the
    CPU the global generator after the init drew from it; on CUDA the device's, which the init never touches.
    (``meta``, where ops are counted and nothing is drawn, gets the CPU's.)"""
    if device.type in ("cpu", "meta"):
        g = torch.Generator()
        g.set_state(torch.get_rng_state())
        return g
    return torch.Generator(device).manual_seed(int(seed))


def build_packed(arch: str, recipe: str, seeds: Sequence[int], weights: Any = None,
                 device: torch.device | str = "cpu", head_bn_init: str = "ones") -> PackedModel:
    """K models initialised as K runs with ``seeds`` initialise theirs (``train.parts``: seed torch and numpy,
    build), each with its dropout generator; the global generators are left as they were."""
    device = torch.device(device)
    models, generators = [], []
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):  # seeding touches every device
        for seed in seeds:
            torch.manual_seed(seed)
            np.random.seed(seed)
            # On ``meta`` (op counts) nothing is initialised, as ``cost.work`` builds its models.
            with torch.device("meta") if device.type == "meta" else contextlib.nullcontext():
                models.append(build_model(arch, recipe, weights=weights, head_bn_init=head_bn_init))
            generators.append(run_generator(seed, device))
    np.random.set_state(np_state)
    return PackedModel(models, generators)
