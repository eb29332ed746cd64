"""Predict training memory and the largest batch size for any GPU size, without a GPU.

Why this works: at the resolutions that matter, a training step's memory is dominated by the
activations autograd keeps for backward. Those can be counted exactly by running one forward pass on
the ``meta`` device (shapes and dtypes only, no data, no compute) inside
``torch.autograd.graph.saved_tensors_hooks``. The rest is bookkeeping:

``predicted = (model_state + activations) * (1 + WORKSPACE_FRACTION) + CUDA_CONTEXT_BYTES``

- ``model_state`` = fp32 parameters + fp32 gradients + optimizer state (SGD momentum: 1x params,
  Adam: 2x) + under AMP the half-precision weight copies autocast caches for the step (0.5x params)
  + saved tensors that do not scale with the batch (BatchNorm statistics).
- ``activations`` = batch x (bytes saved per sample + ``BACKWARD_TRANSIENT`` x the largest saved
  per-sample tensor). The transient term would stand for gradient buffers that exist beside the saved
  activations early in backward; measured on the CPU (peak RSS of a real fp32 step, glibc mmap for
  every large tensor, see ``tests/test_memory.py``) the per-image slope equals the saved bytes within
  2% for ResNet34 at 224 and 448 px and DenseNet121 at 128 px (the peak is at the turn from forward
  to backward, when the gradients are still small), so it is 0 until a GPU says otherwise.
- ``WORKSPACE_FRACTION`` covers cuDNN/cuBLAS workspaces, the caching allocator's rounding and
  fragmentation; ``CUDA_CONTEXT_BYTES`` is what the CUDA context and library handles take before
  PyTorch's allocator sees a byte. Both constants are starting points to be checked against a real
  card with ``cxr-fast gpu-check`` (which compares them with ``bench.batch_search``).

AMP on ``meta``: ``torch.autocast`` does not support the ``meta`` device (and ``cuda`` autocast
disables itself without CUDA), so by default the reduced-precision case is computed by casting the
model and input to float16 explicitly. That reproduces what CUDA autocast saves for a ResNet or
DenseNet (conv outputs, BatchNorm inputs, ReLU outputs, concatenations: all half precision); the
fp16 weight copies autocast makes are added explicitly (``amp_weight_bytes``). If a future torch runs
autocast on ``meta`` (probed by :func:`meta_autocast_device`), that path is used instead and the
weight copies are then counted as saved tensors that do not scale with the batch.
bf16 and fp16 are both two bytes, so "amp" covers both. Checked against a real CPU step under bf16
autocast (same peak-RSS method as above): the measured per-image slope is within 8% of the explicit
fp16 count for ResNet34 at 224 px (14.7 vs 15.9 MiB) and 1% for DenseNet121 at 128 px (20.7 vs 20.5).

Channels-last changes no tensor's size; it is recorded and passed through because a layout
conversion inside the model would show up as an extra saved copy.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import asdict, dataclass

from cxr_fast.errors import CxrError
from cxr_fast.units import GIB, MIB
from cxr_fast.vocabulary import check_number, check_res

# Common card sizes, GiB: 1080 Ti (the paper's), V100 16, 24 (3090/4090/A10), A100 40/80, H200 141.
DEFAULT_GPU_GB: tuple[float, ...] = (11, 16, 24, 40, 80, 141)
# A card size the model answers for: positive, finite and at most 1 TiB (the largest cards hold under 300 GiB).
# Beyond that float rounding makes the batch search count down from ~1e20 (``memory --gpu-gb 1e30`` hung).
GPU_GB_BOUNDS: dict[str, float] = {"gt": 0, "le": 1024}


def check_gpu_gb(value: object, what: str = "GPU memory (GiB)") -> float:
    """A card size in GiB held to ``GPU_GB_BOUNDS`` by the one number check; one line naming ``what``."""
    return float(check_number(value, what, **GPU_GB_BOUNDS))

WORKSPACE_FRACTION = 0.10
CUDA_CONTEXT_BYTES = 768 * MIB
BACKWARD_TRANSIENT = 0.0

PRECISION_BYTES = {"amp": 2, "fp16": 2, "bf16": 2, "tf32": 4, "fp32": 4}
OPTIMIZER_STATE = {"sgd": 1, "adam": 2}  # fp32 tensors of parameter size per parameter

# Two batch sizes for the per-sample slope (2 and 4, never 1: BatchNorm refuses one value per channel).
_B1, _B2 = 2, 4


def normalize_precision(precision: str) -> str:
    """``amp``/``fp16``/``bf16`` -> ``amp`` (two-byte activations); ``fp32`` and ``tf32`` (fp32 tensors,
    only the math differs) -> ``fp32``."""
    p = precision.lower()
    if p not in PRECISION_BYTES:
        raise CxrError(f"unknown precision {precision!r}; choose amp, fp16, bf16, tf32 or fp32")
    return "fp32" if PRECISION_BYTES[p] == 4 else "amp"


@dataclass(frozen=True)
class MemoryProfile:
    """Everything needed to predict memory at any batch size for one (arch, res, precision, layout)."""

    arch: str
    res: int
    precision: str  # "amp" | "fp32"
    channels_last: bool
    optimizer: str
    method: str  # "fp32" | "explicit-fp16" | "autocast-meta"
    n_params: int
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    amp_weight_bytes: int
    fixed_saved_bytes: int
    saved_bytes_per_sample: int
    largest_saved_bytes_per_sample: int

    @property
    def static_bytes(self) -> int:
        """Bytes that do not grow with the batch."""
        return self.param_bytes + self.grad_bytes + self.optimizer_bytes + self.amp_weight_bytes + self.fixed_saved_bytes

    @property
    def activation_bytes_per_sample(self) -> float:
        """Saved activations plus the backward transient, per image."""
        return self.saved_bytes_per_sample + BACKWARD_TRANSIENT * self.largest_saved_bytes_per_sample

    @property
    def bytes_per_sample(self) -> float:
        """What one more image in the batch costs, margin included."""
        return self.activation_bytes_per_sample * (1 + WORKSPACE_FRACTION)

    def allocator_bytes(self, batch_size: int) -> int:
        """Predicted peak of PyTorch's allocator (what ``max_memory_reserved`` would show), no context."""
        return int(math.ceil((self.static_bytes + batch_size * self.activation_bytes_per_sample) * (1 + WORKSPACE_FRACTION)))

    def predicted_bytes(self, batch_size: int) -> int:
        """Predicted card memory for a training step at ``batch_size``, CUDA context included."""
        return self.allocator_bytes(batch_size) + CUDA_CONTEXT_BYTES

    def max_batch_for_allocator(self, allocator_bytes: float) -> int:
        """Largest batch whose predicted allocator peak fits ``allocator_bytes`` (0 if none)."""
        room = allocator_bytes / (1 + WORKSPACE_FRACTION) - self.static_bytes
        if room <= 0:
            return 0
        bs = int(room // self.activation_bytes_per_sample)
        # Guard float rounding at the boundary so the answer always fits by allocator_bytes().
        while bs > 0 and self.allocator_bytes(bs) > allocator_bytes:
            bs -= 1
        return max(bs, 0)

    def max_batch_size(self, gpu_bytes: float) -> int:
        """Largest batch that fits a card with ``gpu_bytes`` of memory (context taken off first)."""
        return self.max_batch_for_allocator(gpu_bytes - CUDA_CONTEXT_BYTES)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(
            static_bytes=self.static_bytes,
            activation_bytes_per_sample=self.activation_bytes_per_sample,
            bytes_per_sample=self.bytes_per_sample,
        )
        return d


def meta_autocast_device() -> str | None:
    """The autocast device type that lowers a conv on ``meta`` tensors to fp16, or None (torch <= 2.14)."""
    import torch

    x = torch.empty(2, 1, 8, 8, device="meta")
    w = torch.empty(2, 1, 3, 3, device="meta")
    for device_type in ("meta", "cpu"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with torch.autocast(device_type, dtype=torch.float16):
                    y = torch.nn.functional.conv2d(x, w)
        except (RuntimeError, ValueError):
            continue
        if y.dtype == torch.float16:
            return device_type
    return None


def autocast_on_meta_works() -> bool:
    return meta_autocast_device() is not None


def _autocast_context(device_type: str | None):
    import contextlib

    import torch

    if device_type is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.float16)


def _saved_bytes(model, batch_size: int, res: int, dtype, memory_format, autocast_device: str | None,
                 exclude_storages: set[int]) -> tuple[int, int]:
    """(total bytes autograd saves for one forward at ``batch_size``, the largest single storage).

    Tensors sharing a storage (views, in-place ReLU outputs, the same input saved by two ops) are
    counted once; parameters' own storages are excluded (they are model state, counted separately).
    """
    import torch

    storages: dict[int, int] = {}
    keep: list = []  # hold the saved tensors so a freed storage's address is never reused mid-count

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage._cdata
        if key not in exclude_storages and key not in storages:
            storages[key] = storage.nbytes()
            keep.append(t)
        return t

    x = torch.empty(batch_size, 1, res, res, device="meta", dtype=dtype).contiguous(memory_format=memory_format)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with _autocast_context(autocast_device):
            out = model(x)
    del out
    keep.clear()
    return sum(storages.values()), max(storages.values(), default=0)


@functools.lru_cache(maxsize=256)
def profile(arch: str, res: int, precision: str = "amp", channels_last: bool = True,
            optimizer: str = "sgd") -> MemoryProfile:
    """Count the memory of one training step of ``arch`` at ``res`` px (meta device, well under a second)."""
    import torch

    from cxr_fast.models import build_model

    precision = normalize_precision(precision)
    if optimizer not in OPTIMIZER_STATE:
        raise CxrError(f"unknown optimizer {optimizer!r}; choose from {', '.join(OPTIMIZER_STATE)}")
    check_res(res, f"{arch} memory profile")
    with torch.device("meta"):
        model = build_model(arch)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    model.train()
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)

    autocast_device = meta_autocast_device() if precision == "amp" else None
    if precision == "fp32":
        method, dtype = "fp32", torch.float32
    elif autocast_device is not None:
        method, dtype = "autocast-meta", torch.float32
    else:
        method, dtype = "explicit-fp16", torch.float16
        model = model.to(dtype=torch.float16)
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    params |= {b.untyped_storage()._cdata for b in model.buffers()}

    total1, _ = _saved_bytes(model, _B1, res, dtype, memory_format, autocast_device, params)
    total2, largest2 = _saved_bytes(model, _B2, res, dtype, memory_format, autocast_device, params)
    per_sample = (total2 - total1) // (_B2 - _B1)
    fixed = max(total1 - _B1 * per_sample, 0)

    fp32 = 4
    return MemoryProfile(
        arch=arch,
        res=int(res),
        precision=precision,
        channels_last=bool(channels_last),
        optimizer=optimizer,
        method=method,
        n_params=int(n_params),
        param_bytes=n_params * fp32,
        grad_bytes=n_params * fp32,
        optimizer_bytes=n_params * fp32 * OPTIMIZER_STATE[optimizer],
        amp_weight_bytes=n_params * 2 if method == "explicit-fp16" else 0,
        fixed_saved_bytes=int(fixed),
        saved_bytes_per_sample=int(per_sample),
        largest_saved_bytes_per_sample=int(math.ceil(largest2 / _B2)),
    )


def predicted_bytes(arch: str, res: int, batch_size: int, precision: str = "amp", channels_last: bool = True,
                    optimizer: str = "sgd") -> int:
    """Predicted card memory (bytes, CUDA context included) for one training step."""
    return profile(arch, int(res), precision, bool(channels_last), optimizer).predicted_bytes(int(batch_size))


def max_batch_size(arch: str, res: int, gpu_gb: float, precision: str = "amp", channels_last: bool = True,
                   optimizer: str = "sgd") -> int:
    """Largest training batch predicted to fit a ``gpu_gb`` GiB card (0 when not even one image fits)."""
    gpu_gb = check_gpu_gb(gpu_gb)
    return profile(arch, int(res), precision, bool(channels_last), optimizer).max_batch_size(gpu_gb * GIB)


def memory_table(archs, resolutions, gpu_gbs, precisions=("amp",), channels_last: bool = True,
                 optimizer: str = "sgd") -> list[dict]:
    """One row per (arch, precision, res, gpu_gb): the predicted largest batch and the memory behind it."""
    rows: list[dict] = []
    gpu_gbs = [check_gpu_gb(gb) for gb in gpu_gbs]
    for arch in archs:
        for precision in precisions:
            for res in resolutions:
                prof = profile(arch, int(res), precision, bool(channels_last), optimizer)
                for gb in gpu_gbs:
                    bs = prof.max_batch_size(gb * GIB)
                    rows.append({
                        "arch": arch,
                        "precision": prof.precision,
                        "channels_last": prof.channels_last,
                        "optimizer": optimizer,
                        "res": int(res),
                        "gpu_gb": float(gb),
                        "max_batch_size": bs,
                        "predicted_bytes_at_max": prof.predicted_bytes(bs) if bs else None,
                        "static_bytes": prof.static_bytes,
                        "bytes_per_sample": round(prof.bytes_per_sample),
                        "method": prof.method,
                    })
    return rows


def assumptions() -> dict:
    """The model's constants, recorded beside every prediction so a result can be re-derived."""
    return {
        "workspace_fraction": WORKSPACE_FRACTION,
        "cuda_context_bytes": CUDA_CONTEXT_BYTES,
        "backward_transient": BACKWARD_TRANSIENT,
        "gpu_gb_unit": "GiB (2**30 bytes)",
        "formula": "(params+grads+optimizer+amp_weights+fixed_saved + batch*(saved_per_sample + "
                   "backward_transient*largest_saved_per_sample)) * (1+workspace_fraction) + cuda_context",
    }
