"""One training step, shared by ``train`` and the throughput benchmark so both measure the same thing.

The step owns the pieces that decide speed: device placement, channels-last memory format, the autocast
dtype, and a gradient scaler only where fp16 needs one (bf16 has fp32's exponent range, so it does not), and
whether fp32 matmuls and convolutions run as TF32 (only at precision tf32; fp32 is true fp32).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from cxr_fast.errors import CxrError
from cxr_fast.runtime import check_device_supported, set_fp32_math
from cxr_fast.vocabulary import OPTIMIZERS, is_autocast, resolve_precision


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> the GPU when there is one, else the CPU; a named GPU that is absent is a user error, and
    so is one this build of torch has no kernels for (``runtime.check_device_supported``)."""
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        check_device_supported(device)
        return device
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise CxrError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CxrError(f"device {name!r} requested but no CUDA GPU is available here")
    check_device_supported(device)
    return device


def bf16_supported(device: torch.device) -> bool:
    """Native bf16 (and TF32) on ``device``: compute capability 8.0+ for the run's own GPU. Not
    ``torch.cuda.is_bf16_supported()``: it counts emulation (a T4 says yes, and trains slowly) and asks
    about the current device, not the run's."""
    if device.type == "cuda":
        return tuple(torch.cuda.get_device_capability(device)) >= (8, 0)
    return device.type == "cpu"


def device_precision(precision: str, device: torch.device | str) -> str:
    """``precision`` resolved for a live ``device`` by the one rule, ``vocabulary.resolve_precision``."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else "the CPU"
    return resolve_precision(precision, cuda, bf16_supported(device), name)


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (None = no autocast: tf32 or true fp32, set by ``set_fp32_math``)."""
    device = torch.device(device)
    precision = device_precision(precision, device)
    if not is_autocast(precision):
        return None
    return torch.bfloat16 if precision == "bf16" else torch.float16


def make_optimizer(model: nn.Module, name: str = "sgd", lr: float = 5e-4, momentum: float = 0.9) -> torch.optim.Optimizer:
    """SGD with momentum (fastai 0.7's default, the paper's) or Adam (``momentum`` is its beta1)."""
    if lr <= 0:
        raise CxrError(f"learning rate must be positive, got {lr}")
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if name == "adam":
        # Fused: the whole update in one kernel per device instead of a loop over 100+ tensors, the same
        # arithmetic. Measured on the 2-core CPU, ResNet34 at 32 px: 1.4-1.8x a training step (Adam's
        # update was 40% of it); on a GPU it launches fewer kernels. Fused SGD gained nothing there, so SGD
        # (the paper's) keeps PyTorch's default. Params on a device without fused kernels (meta) keep it too.
        fused = all(p.device.type in ("cpu", "cuda") for p in params) or None
        return torch.optim.Adam(params, lr=lr, betas=(momentum, 0.999), fused=fused)
    raise CxrError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")


def optimizer_impl(optimizer: torch.optim.Optimizer) -> str:
    """How the optimizer steps, for the run's record: ``fused``, ``foreach`` or ``for-loop`` (PyTorch's
    default for tensors on the CPU; on CUDA its default is foreach)."""
    group = optimizer.param_groups[0]
    if group.get("fused"):
        return "fused"
    foreach = group.get("foreach")
    if foreach is None:
        foreach = any(p.is_cuda for g in optimizer.param_groups for p in g["params"])
    return "foreach" if foreach else "for-loop"


class TrainStep:
    """Forward under autocast, the recipe's weighted loss, backward (scaled for fp16 on CUDA), step, zero_grad.

    Calling it returns the detached loss tensor; it does not synchronise, so a caller timing many
    steps pays one sync at the end rather than one per step.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        pos_weight: float,
        precision: str,
        device: torch.device | str,
        channels_last: bool = True,
        recipe: str = "fastai07",
    ) -> None:
        from cxr_fast.recipes import loss_function

        self.device = torch.device(device)
        self.precision = device_precision(precision, self.device)
        self.dtype = autocast_dtype(self.precision, self.device)
        self.tf32 = set_fp32_math(self.precision == "tf32")  # "on"/"off", as torch reports it; the run records it
        self.channels_last = channels_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.model.train()
        self.optimizer = optimizer
        self.recipe = recipe
        self.pos_weight = float(pos_weight)  # the positive class's loss weight (recorded by the run)
        self.loss_fn = loss_function(recipe, pos_weight, self.device)
        use_scaler = self.precision == "fp16" and self.device.type == "cuda"
        self.scaler: torch.amp.GradScaler | None = torch.amp.GradScaler("cuda") if use_scaler else None
        self.graphs = "off"  # what CUDA graphs did for this step, for the run's record (cxr_fast.graphs sets it)

    def autocast(self) -> Any:
        """The autocast context for this step's precision; none at all for fp32 and tf32 (so a step also runs
        on devices torch has no autocast for, such as ``meta``, where the sync counter times it)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if images.dim() == 4:
            images = images.contiguous(memory_format=self.memory_format)
        return images

    def prepare_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return labels.to(self.device, non_blocking=True).float().view(-1)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = self.update(self.prepare(images), self.prepare_labels(labels))
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def update(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Forward, loss, backward and optimizer step on prepared tensors, leaving the gradients set: the part
        of a step that ``cxr_fast.graphs`` captures as one CUDA graph. Returns the detached loss."""
        with self.autocast():
            output = self.model(images)
        loss = self.loss_fn(output, labels)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Positive-class log-odds (float32, N) for a batch, under the same autocast as training.

        Logits, not probabilities: a float32 sigmoid of a logit below about -104 is exactly 0, and a
        vector of zeros ranks nothing. The caller puts the model in eval mode first, and back after.
        """
        return self.scores(self.prepare(images))

    @torch.no_grad()
    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """``predict`` on a prepared batch: the forward ``cxr_fast.graphs`` captures for evaluation."""
        from cxr_fast.models import positive_logit

        with self.autocast():
            output = self.model(images)
        return positive_logit(output)
