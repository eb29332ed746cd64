"""The paper's augmentation, batch-wise in torch on whatever device the batch is on.

Sabottke & Spieler used fastai v1's defaults with a 20 degree rotation and black padding: random
rotation up to 20 degrees, brightness and contrast jitter, black pixel padding and a flip about the
vertical axis; test-time augmentation averaged the plain view and 4 augmented views. Here:

- brightness and contrast: ``y = b * (c * (x - m) + m)`` with ``b, c`` uniform in ``1 +- max_lighting``
  and ``m`` the image's mean, applied with probability ``p_lighting``; done *before* the geometry, so
  the fill stays exactly black;
- rotation, black padding and flip: one affine per image, sampled with ``grid_sample`` (bilinear,
  zero fill). Padding shrinks the picture by up to ``max_pad`` and places it at random in the frame,
  leaving black borders (fastai's zoom-out with ``padding_mode='zeros'``). Rotation and padding apply
  with probability ``p_affine``, the flip with ``p_flip``. Images that only flip are flipped exactly.

Random numbers are drawn on the CPU from a ``torch.Generator``, so a seed gives the same
augmentation on a CPU and on a GPU, and the device never waits on a host sync for them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths and probabilities; the defaults are the paper's (fastai v1 defaults, 20 degree rotation)."""

    max_rotate: float = 20.0  # degrees
    p_affine: float = 0.75
    max_pad: float = 0.1  # fraction the picture shrinks by at most, leaving black borders
    max_lighting: float = 0.2  # brightness and contrast factors in [1 - x, 1 + x]
    p_lighting: float = 0.75
    p_flip: float = 0.5


@dataclass
class AugmentParams:
    """Per-image parameters of one batch (CPU tensors of length N)."""

    angle: torch.Tensor  # degrees; 0 where no affine
    scale: torch.Tensor  # >= 1: how much the picture shrinks (1 = no padding)
    shift_x: torch.Tensor  # normalised [-1, 1] units
    shift_y: torch.Tensor
    flip: torch.Tensor  # bool
    affine: torch.Tensor  # bool: rotation/padding applied
    brightness: torch.Tensor  # 1 = unchanged
    contrast: torch.Tensor  # 1 = unchanged


def draw_params(n: int, generator: torch.Generator, cfg: AugmentConfig = AugmentConfig()) -> AugmentParams:
    """Sample one batch's parameters; the same generator state always gives the same parameters."""
    u = torch.rand(n, 8, generator=generator, dtype=torch.float64)
    affine = u[:, 0] < cfg.p_affine
    angle = torch.where(affine, (u[:, 1] * 2 - 1) * cfg.max_rotate, torch.zeros(n, dtype=torch.float64))
    scale = torch.where(affine, 1.0 / (1.0 - cfg.max_pad * u[:, 2]), torch.ones(n, dtype=torch.float64))
    room = scale - 1.0  # how far the shrunk picture can move and stay inside the frame
    shift_x = (u[:, 3] * 2 - 1) * room
    shift_y = (u[:, 4] * 2 - 1) * room
    flip = u[:, 5] < cfg.p_flip
    lighting = u[:, 6] < cfg.p_lighting
    # Two more draws from the same row keep the layout fixed: brightness and contrast.
    v = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    brightness = torch.where(lighting, 1 + (v[:, 0] * 2 - 1) * cfg.max_lighting, torch.ones(n, dtype=torch.float64))
    contrast = torch.where(lighting, 1 + (v[:, 1] * 2 - 1) * cfg.max_lighting, torch.ones(n, dtype=torch.float64))
    return AugmentParams(angle, scale, shift_x, shift_y, flip, affine, brightness, contrast)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] -> float32 [0, 1]."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).mul_(1.0 / 255.0)
    return images.to(torch.float32)


def _gain_bias(images: torch.Tensor, p: AugmentParams,
               mean: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-image ``x * gain + bias`` (on the input's scale) for brightness/contrast; None when all are 1."""
    if bool((p.brightness == 1).all() and (p.contrast == 1).all()):
        return None
    scale_in = 1.0 / 255.0 if images.dtype == torch.uint8 else 1.0
    dev = images.device
    if mean is None:
        mean = _sampled_mean(images)
    mean = mean * scale_in
    b = p.brightness.to(dev, torch.float32)
    c = p.contrast.to(dev, torch.float32)
    return b * c * scale_in, b * (1 - c) * mean


def _mean_step(h: int, w: int) -> int:
    """Stride of the grid the image mean is taken on: at least 128 x 128 pixels, ~1/255 accurate."""
    return max(1, min(h, w) // 128)


def _sampled_mean(images: torch.Tensor) -> torch.Tensor:
    step = _mean_step(*images.shape[-2:])
    return images[..., ::step, ::step].to(torch.float32).mean(dim=(1, 2, 3))


def _lighting(images: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """Float32 [0, 1] output with brightness/contrast applied as one per-image ``x * s + o``."""
    gb = _gain_bias(images, p)
    if gb is None:
        return to_float(images)
    n = images.shape[0]
    s, o = gb[0].view(n, 1, 1, 1), gb[1].view(n, 1, 1, 1)
    return torch.addcmul(o, images.to(torch.float32) if images.dtype != torch.float32 else images, s).clamp_(0.0, 1.0)


def _theta(p: AugmentParams, h: int, w: int) -> torch.Tensor:
    """N x 2 x 3 maps from output to input normalised coordinates (``grid_sample``'s convention)."""
    rad = p.angle * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    sign = torch.where(p.flip, -1.0, 1.0).to(torch.float64)
    ar = w / h  # rotate in pixel space, not in the stretched normalised square
    a00 = p.scale * cos * sign
    a01 = -p.scale * sin / ar
    a10 = p.scale * sin * ar * sign
    a11 = p.scale * cos
    return torch.stack([
        torch.stack([a00, a01, p.shift_x.to(torch.float64)], dim=1),
        torch.stack([a10, a11, p.shift_y.to(torch.float64)], dim=1),
    ], dim=1)


def _pixel_coef(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``_theta`` rewritten for pixel indices: source (x, y) = (a00 x + a01 y + cx, a10 x + a11 y + cy).

    Same mapping as ``grid_sample`` with ``align_corners=False`` (pixel centres at (2i + 1) / size - 1).
    """
    a00, a01, tx = theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2]
    a10, a11, ty = theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2]
    cx = (w / 2) * (a00 * (1 / w - 1) + a01 * (1 / h - 1) + tx + 1) - 0.5
    cy = (h / 2) * (a10 * (1 / w - 1) + a11 * (1 / h - 1) + ty + 1) - 0.5
    return torch.stack([a00, a01 * w / h, cx, a10 * h / w, a11, cy], dim=1)


def _grid(theta: torch.Tensor, h: int, w: int, device: torch.device) -> torch.Tensor:
    """``affine_grid`` by broadcasting: several times faster on a CPU than the batched matmul."""
    xs = (torch.arange(w, device=device, dtype=torch.float32) * 2 + 1) / w - 1
    ys = (torch.arange(h, device=device, dtype=torch.float32) * 2 + 1) / h - 1
    th = theta.to(device, torch.float32)
    n = th.shape[0]
    col_x = th[:, :, 0].reshape(n, 1, 1, 2)
    col_y = th[:, :, 1].reshape(n, 1, 1, 2)
    shift = th[:, :, 2].reshape(n, 1, 1, 2)
    return torch.addcmul(torch.addcmul(shift, col_x, xs.view(1, 1, w, 1)), col_y, ys.view(1, h, 1, 1))


@functools.lru_cache(maxsize=1)
def _cpu_kernel():
    """The fused CPU kernel module, or None without numba (compiled once per process, cached on disk)."""
    try:
        from cxr_fast import augment_cpu
    except Exception:  # numba missing or broken: the torch path still works
        return None
    return augment_cpu


def cpu_path() -> str:
    """How uint8 batches are augmented on this machine's CPU, for ``available()`` reasons and reports."""
    return "fused CPU kernel (numba)" if _cpu_kernel() is not None else "torch grid_sample (install numba for 3-5x)"


class OutputPool:
    """Recycles the fused kernel's float32 output arrays once nobody holds a batch made from them.

    A fresh 600 px batch of 64 is 92 MB of new pages each time, and in a virtual machine the page
    faults alone cost about a tenth of the kernel's time. An array is reused only when its reference
    count shows no tensor (or view of one) still points at it, so a consumer that keeps batches is safe.
    """

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self.arrays: list = []

    def get(self, shape: tuple[int, ...]):
        import sys

        import numpy as np

        for i in range(len(self.arrays)):
            # References: the list and getrefcount's argument; anything more is a live batch.
            if self.arrays[i].shape == shape and sys.getrefcount(self.arrays[i]) <= 2:
                return self.arrays[i]
        arr = np.empty(shape, dtype=np.float32)
        if len(self.arrays) < self.size:
            self.arrays.append(arr)
        return arr


def _apply_cpu(images: torch.Tensor, p: AugmentParams, kernel, pool: OutputPool | None = None,
               rows: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 CPU images -> augmented float32 in one fused pass (``cxr_fast.augment_cpu``).

    With ``rows`` the batch is ``images[rows]``, gathered inside the kernel: no torch op runs here,
    so torch's OpenMP threads never spin against the kernel's on a small CPU.
    """
    import numpy as np

    m, c, h, w = images.shape
    src4 = images.numpy()
    idx = np.arange(m) if rows is None else rows.numpy().astype(np.int64)
    n = len(idx)
    step = _mean_step(h, w)
    mean = torch.from_numpy(src4[:, :, ::step, ::step][idx].reshape(n, -1).mean(axis=1, dtype=np.float64)
                            .astype(np.float32))
    gb = _gain_bias(images, p, mean)
    levels = torch.arange(256, dtype=torch.float32).mul_(1.0 / 255.0)  # exactly to_float's values
    if gb is None:
        lut = levels.expand(n, 256)
    else:
        lut = (torch.arange(256, dtype=torch.float32)[None] * gb[0][:, None] + gb[1][:, None]).clamp_(0.0, 1.0)
    coef = _pixel_coef(_theta(p, h, w), h, w)
    kind = torch.where(p.affine, 0, torch.where(p.flip, 2, 1)).to(torch.int8)
    flat_rows = (idx[:, None] * c + np.arange(c)[None]).reshape(-1)
    if c > 1:
        lut, coef, kind = lut.repeat_interleave(c, 0), coef.repeat_interleave(c, 0), kind.repeat_interleave(c, 0)
    src = src4.reshape(m * c, h, w)
    out = kernel.warp(src, coef.numpy(), lut.contiguous().numpy(), torch.get_num_threads(), kind.numpy(),
                      out=None if pool is None else pool.get((n * c, h, w)), rows=flat_rows)
    return torch.from_numpy(out).view(n, c, h, w)


def apply(images: torch.Tensor, p: AugmentParams, fused: bool = True, pool: OutputPool | None = None,
          rows: torch.Tensor | None = None) -> torch.Tensor:
    """Augment ``N x C x H x W`` (uint8 or float [0, 1]) with given parameters; float32 [0, 1] out.

    A uint8 batch on the CPU goes through the fused kernel when numba is present (``fused``);
    everything else through torch (``grid_sample``), which is what runs on a GPU. ``rows``: augment
    ``images[rows]`` (a loader's batch out of the whole resident split).
    """
    if fused and images.device.type == "cpu" and images.dtype == torch.uint8 and images.ndim == 4:
        kernel = _cpu_kernel()
        if kernel is not None:
            return _apply_cpu(images, p, kernel, pool, rows)
    if rows is not None:
        images = images.index_select(0, rows.to(images.device))
    x = _lighting(images, p)
    if x.data_ptr() == images.data_ptr():  # never edit the caller's tensor in place
        x = x.clone()
    h, w = x.shape[-2:]
    dev = x.device
    flip_only = (p.flip & ~p.affine)
    if bool(flip_only.any()):
        idx = torch.nonzero(flip_only).flatten().to(dev)
        x[idx] = x[idx].flip(-1)
    if bool(p.affine.any()):
        sel = torch.nonzero(p.affine).flatten()
        sub = AugmentParams(*(getattr(p, f)[sel] for f in AugmentParams.__dataclass_fields__))
        grid = _grid(_theta(sub, h, w), h, w, dev)
        idx = sel.to(dev)
        x[idx] = F.grid_sample(x[idx].contiguous(), grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False)
    return x


def augment(images: torch.Tensor, generator: torch.Generator, cfg: AugmentConfig = AugmentConfig(),
            pool: OutputPool | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
    """One random augmentation per image, drawn from ``generator`` (a CPU generator).

    ``pool`` (optional, CPU only) lets a loader recycle output memory between batches; ``rows``
    augments ``images[rows]`` without copying the batch out first.
    """
    n = images.shape[0] if rows is None else len(rows)
    return apply(images, draw_params(n, generator, cfg), pool=pool, rows=rows)


def tta_views(images: torch.Tensor, n: int = 4, seed: int = 0, cfg: AugmentConfig = AugmentConfig()) -> list[torch.Tensor]:
    """The plain view plus ``n`` augmented views (the paper: mean probability over 1 + 4 views)."""
    generator = torch.Generator().manual_seed(seed)
    return [to_float(images)] + [augment(images, generator, cfg) for _ in range(n)]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator for one (seed, epoch): a loader's epoch repeats whatever ran before it."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch) * 7_919 + 12_345) % (2**63 - 1))
