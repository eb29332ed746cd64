"""Training and test-time augmentation, batch-wise in torch on whatever device the batch is on.

Sabottke & Spieler trained with fastai 0.7: "random rotations up to 20 degrees, random brightness and
contrast fluctuations, black pixel padding, and random flipping of the images about the vertical
axis", and scored with fastai's default test-time augmentation. A run's recipe picks one of two
configurations (``augment_config``):

- ``fastai07``, the paper's: fastai 0.7's ``transforms_side_on`` (``RandomRotate``,
  ``RandomLighting(0.05, 0.05)``, ``RandomFlip``) with the paper's two changes, 20 instead of 10
  degrees and a black instead of a reflected border. In fastai's order: rotate (p 0.75, bilinear,
  zero fill), then light the *rotated* picture, ``clip((x - m) * c + m + b, 0, 1)`` with ``m`` its
  mean (black corners included), ``b`` uniform in +-0.05 and ``c = 1 + r`` or ``1 / (1 - r)`` for
  ``r`` uniform in +-0.05, on every image; then flip (p 0.5). No zoom, padding or crop: for square
  inputs the side-on pipeline's Scale-then-RandomCrop to ``sz`` is the identity. The constants are
  cited where ``FASTAI07`` is defined.
- ``modern``, cxr-fast's earlier default (fastai v1-like strengths): ``y = b * (c * (x - m) + m)``
  with ``b, c`` uniform in ``1 +- 0.2`` and ``m`` the source image's mean, p 0.75, applied *before*
  the geometry, so the fill stays exactly black; rotation up to 20 degrees plus a zoom-out of up to
  10% placed at random (black borders), p 0.75; flip p 0.5.

Geometry is one affine per image, sampled with ``grid_sample`` (bilinear, zero fill); images that only
flip are flipped exactly. Random numbers are drawn on the CPU from a ``torch.Generator`` in a fixed
layout, so a seed gives the same augmentation on a CPU and on a GPU. Everything a batch needs on the
device (lighting factors, the affine maps, which images warp and which only flip) is packed on the host
into one tensor and copied once, pinned and ``non_blocking`` (``DeviceParams``): the host never waits for
the GPU in ``apply`` (``cxr_fast.syncs`` counts, tests/test_gpu_syncs.py holds it at zero). Known difference from fastai 0.7: OpenCV rotates about pixel ``(w // 2, h // 2)``,
here about the exact centre; for even sizes that is a translation of at most 0.25 px.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cxr_fast.runtime import to_device
from cxr_fast.vocabulary import RECIPES, check_choice

# ``multiplicative``: b * (c * (x - m) + m), factors in 1 +- x. ``fastai07``: (x - m) * c + m + b with
# fastai 0.7's draws of b and c.
LIGHTING_MODES: tuple[str, ...] = ("multiplicative", "fastai07")


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths, probabilities and order of the augmentation; the defaults are the ``modern`` recipe's."""

    max_rotate: float = 20.0  # degrees
    p_affine: float = 0.75  # rotation and padding, together
    max_pad: float = 0.1  # fraction the picture shrinks by at most, leaving black borders
    max_lighting: float = 0.2  # multiplicative: factors in [1 - x, 1 + x]; fastai07: b and r in [-x, x]
    p_lighting: float = 0.75
    p_flip: float = 0.5
    lighting: str = "multiplicative"  # one of LIGHTING_MODES
    lighting_last: bool = False  # light the rotated picture (fastai 0.7's order), not the source

    def __post_init__(self) -> None:
        if self.lighting not in LIGHTING_MODES:
            raise ValueError(f"lighting must be one of {LIGHTING_MODES}, got {self.lighting!r}")
        for name in ("p_affine", "p_lighting", "p_flip"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")
        if not 0.0 <= self.max_pad < 1.0:
            raise ValueError(f"max_pad must be in [0, 1), got {self.max_pad}")
        if self.max_rotate < 0 or self.max_lighting < 0:
            raise ValueError("max_rotate and max_lighting must not be negative")


# fastai 0.7's side-on transforms with the paper's changes. Source: github.com/fastai/fastai,
# old/fastai/transforms.py at commit c752c9f3b4b3d67a18d8081b6c0d6dc162a1be5e; line numbers of that file.
FASTAI07 = AugmentConfig(
    # transforms_basic = [RandomRotate(10), RandomLighting(0.05, 0.05)] (l. 707); the paper: 20 degrees.
    # RandomRotate.set_state: rdeg = rand0(deg), uniform in [-deg, deg) (l. 430, rand0 l. 128).
    max_rotate=20.0,
    # RandomRotate(deg, p=0.75, mode=cv2.BORDER_REFLECT) (l. 421), rotates when random() < p (l. 431).
    # The paper's black padding is rotate_cv's own default border, BORDER_CONSTANT (l. 44), in place of
    # that reflect; INTER_AREA (l. 436) runs as bilinear in cv2.warpAffine, as here.
    p_affine=0.75,
    # No zoom or padding: with max_zoom=None and pad=0 (tfms_from_stats' defaults, l. 716) image_gen puts
    # only Scale(sz) before the augmentations (l. 694-698), and the crop (RandomCrop, the default
    # crop_type, l. 716; appended after them, l. 644) cuts sz from sz: nothing for square images.
    max_pad=0.0,
    # RandomLighting(0.05, 0.05) (l. 707): b_rand, c_rand = rand0(0.05) (l. 469-470).
    max_lighting=0.05,
    # RandomLighting has no probability: it lights every image (l. 463-478).
    p_lighting=1.0,
    # RandomFlip(p=0.5) (l. 455), flips when random() < p (l. 459), np.fliplr: about the vertical axis.
    p_flip=0.5,
    # lighting(): clip((im - mu) * c + mu + b, 0, 1), mu = np.average(im) (l. 38-42), with
    # c = -1 / (c_rand - 1) if c_rand < 0 else c_rand + 1 (l. 476).
    lighting="fastai07",
    # compose() runs the list in order (l. 619-624): RandomRotate, then RandomLighting, then RandomFlip.
    lighting_last=True,
)
MODERN = AugmentConfig()
_BY_RECIPE = {"fastai07": FASTAI07, "modern": MODERN}


def augment_config(recipe: str) -> AugmentConfig:
    """The training (and TTA) augmentation of a recipe (``cxr_fast.vocabulary.RECIPES``)."""
    return _BY_RECIPE[check_choice(recipe, RECIPES, "recipe")]


_TENSOR_FIELDS = ("angle", "scale", "shift_x", "shift_y", "flip", "affine", "brightness", "contrast")


@dataclass
class AugmentParams:
    """Per-image parameters of one batch (CPU tensors of length N), and how to apply the lighting."""

    angle: torch.Tensor  # degrees, counter-clockwise as cv2's; 0 where no affine
    scale: torch.Tensor  # >= 1: how much the picture shrinks (1 = no padding)
    shift_x: torch.Tensor  # normalised [-1, 1] units
    shift_y: torch.Tensor
    flip: torch.Tensor  # bool
    affine: torch.Tensor  # bool: rotation/padding applied
    brightness: torch.Tensor  # a factor (1 = unchanged), or an offset when ``additive`` (0 = unchanged)
    contrast: torch.Tensor  # 1 = unchanged
    additive: bool = False  # fastai 0.7's lighting: (x - m) * c + m + b
    lighting_last: bool = False  # light the geometry's output around its own mean

    def select(self, idx: torch.Tensor) -> AugmentParams:
        """The parameters of images ``idx`` only."""
        return AugmentParams(*(getattr(self, f)[idx] for f in _TENSOR_FIELDS), additive=self.additive,
                             lighting_last=self.lighting_last)


def draw_params(n: int, generator: torch.Generator, cfg: AugmentConfig = AugmentConfig()) -> AugmentParams:
    """Sample one batch's parameters; the same generator state always gives the same parameters.

    Both lighting modes read the same draws (one row of 8 and one of 2 per image), so a seed picks
    the same rotations and flips whichever lighting a config uses.
    """
    u = torch.rand(n, 8, generator=generator, dtype=torch.float64)
    zeros, ones = torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
    affine = u[:, 0] < cfg.p_affine
    angle = torch.where(affine, (u[:, 1] * 2 - 1) * cfg.max_rotate, zeros)
    scale = torch.where(affine, 1.0 / (1.0 - cfg.max_pad * u[:, 2]), ones)
    room = scale - 1.0  # how far the shrunk picture can move and stay inside the frame
    shift_x = (u[:, 3] * 2 - 1) * room
    shift_y = (u[:, 4] * 2 - 1) * room
    flip = u[:, 5] < cfg.p_flip
    lighting = u[:, 6] < cfg.p_lighting
    # Two more draws from the same row keep the layout fixed: brightness and contrast.
    v = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    if cfg.lighting == "fastai07":
        r = (v[:, 1] * 2 - 1) * cfg.max_lighting
        brightness = torch.where(lighting, (v[:, 0] * 2 - 1) * cfg.max_lighting, zeros)
        contrast = torch.where(lighting, torch.where(r < 0, 1.0 / (1.0 - r), 1.0 + r), ones)
    else:
        brightness = torch.where(lighting, 1 + (v[:, 0] * 2 - 1) * cfg.max_lighting, ones)
        contrast = torch.where(lighting, 1 + (v[:, 1] * 2 - 1) * cfg.max_lighting, ones)
    return AugmentParams(angle, scale, shift_x, shift_y, flip, affine, brightness, contrast,
                         additive=cfg.lighting == "fastai07", lighting_last=cfg.lighting_last)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] -> float32 [0, 1]."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).mul_(1.0 / 255.0)
    return images.to(torch.float32)


def _unlit(p: AugmentParams) -> bool:
    """True when no image of the batch changes brightness or contrast."""
    rest = 0.0 if p.additive else 1.0
    return bool((p.brightness == rest).all() and (p.contrast == 1).all())


def _gain_bias(images: torch.Tensor, p: AugmentParams, mean: torch.Tensor | None = None,
               bc: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-image ``x * gain + bias`` (gain on the input's scale, bias on [0, 1]); None when all are unlit.

    ``bc``: brightness and contrast already where ``images`` are (``DeviceParams``); else ``p``'s, which
    must then be on the same device (the CPU paths)."""
    if _unlit(p):
        return None
    scale_in = 1.0 / 255.0 if images.dtype == torch.uint8 else 1.0
    if mean is None:
        mean = _sampled_mean(images)
    mean = mean * scale_in
    b, c = bc if bc is not None else (p.brightness.to(torch.float32), p.contrast.to(torch.float32))
    if p.additive:  # fastai 0.7: (x - m) * c + m + b
        return c * scale_in, (1 - c) * mean + b
    return b * c * scale_in, b * (1 - c) * mean


def _mean_step(h: int, w: int) -> int:
    """Stride of the grid the image mean is taken on: at least 128 x 128 pixels, ~1/255 accurate."""
    return max(1, min(h, w) // 128)


def _sampled_mean(images: torch.Tensor) -> torch.Tensor:
    step = _mean_step(*images.shape[-2:])
    return images[..., ::step, ::step].to(torch.float32).mean(dim=(1, 2, 3))


def _lighting(images: torch.Tensor, p: AugmentParams,
              bc: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Float32 [0, 1] output with brightness/contrast applied as one per-image ``x * s + o``."""
    gb = _gain_bias(images, p, bc=bc)
    if gb is None:
        return to_float(images)
    n = images.shape[0]
    s, o = gb[0].view(n, 1, 1, 1), gb[1].view(n, 1, 1, 1)
    return torch.addcmul(o, images.to(torch.float32) if images.dtype != torch.float32 else images, s).clamp_(0.0, 1.0)


def _light_geometry_output(x: torch.Tensor, p: AugmentParams,
                           bc: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """fastai 0.7's order: light float [0, 1] ``x`` in place, each image around its own mean.

    The mean is taken over the whole rotated picture, black corners included (fastai's
    ``np.average(im)``), and the corners are lit like any other pixel.
    """
    gb = _gain_bias(x, p, x.mean(dim=(1, 2, 3)), bc)
    if gb is None:
        return x
    n = x.shape[0]
    return x.mul_(gb[0].view(n, 1, 1, 1)).add_(gb[1].view(n, 1, 1, 1)).clamp_(0.0, 1.0)


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

    Lighting before the geometry rides in each image's 256-entry table. Lighting after it (fastai
    0.7's order) needs the mean of the warped picture: the warp sums each output row as it writes
    it, and a second, elementwise pass lights the output in place.
    With ``rows`` the batch is ``images[rows]``, gathered inside the kernel: no torch op runs here,
    so torch's OpenMP threads never spin against the kernel's on a small CPU.
    """
    import numpy as np

    m, c, h, w = images.shape
    src4 = images.numpy()
    idx = np.arange(m) if rows is None else rows.numpy().astype(np.int64)
    n = len(idx)
    threads = torch.get_num_threads()
    levels = torch.arange(256, dtype=torch.float32).mul_(1.0 / 255.0)  # exactly to_float's values
    row_sums = None
    if p.lighting_last:
        lut = levels.expand(n, 256)
        if not _unlit(p):
            row_sums = np.empty((n * c, h), dtype=np.float64)
    else:
        step = _mean_step(h, w)
        mean = torch.from_numpy(src4[:, :, ::step, ::step][idx].reshape(n, -1).mean(axis=1, dtype=np.float64)
                                .astype(np.float32))
        gb = _gain_bias(images, p, mean)
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
    out = kernel.warp(src, coef.numpy(), lut.contiguous().numpy(), threads, kind.numpy(),
                      out=None if pool is None else pool.get((n * c, h, w)), rows=flat_rows, row_sums=row_sums)
    x = torch.from_numpy(out).view(n, c, h, w)
    if row_sums is not None:
        mean = torch.from_numpy((row_sums.reshape(n, c * h).sum(axis=1) / (c * h * w)).astype(np.float32))
        gain, bias = _gain_bias(x, p, mean)
        if c > 1:
            gain, bias = gain.repeat_interleave(c), bias.repeat_interleave(c)
        kernel.light(out, gain.numpy(), bias.numpy(), threads)
    return x


@dataclass
class DeviceParams:
    """What the torch path needs of one batch's ``AugmentParams``, on the batch's device after one copy.

    Which images warp and which only flip is known on the host (the draws are there), so their indices
    travel with the rest: selecting them on the device then needs no ``nonzero`` and no ``bool(mask.any())``,
    both of which would make the host wait for the GPU.
    """

    brightness: torch.Tensor  # N, float32
    contrast: torch.Tensor  # N, float32
    theta: torch.Tensor  # A x 2 x 3, float32: the affine maps of the warped images only
    affine_idx: torch.Tensor  # A, int64
    flip_idx: torch.Tensor  # F, int64: images that flip and do not warp

    @classmethod
    def send(cls, p: AugmentParams, h: int, w: int, device: torch.device) -> DeviceParams:
        """Pack on the host (float32: indices below 2**24 are exact), copy once, unpack as views."""
        affine = torch.nonzero(p.affine).flatten()  # CPU tensors: no device involved
        flip = torch.nonzero(p.flip & ~p.affine).flatten()
        theta = _theta(p.select(affine), h, w) if len(affine) else torch.empty(0, 2, 3, dtype=torch.float64)
        packed = torch.cat([p.brightness.to(torch.float32), p.contrast.to(torch.float32),
                            theta.to(torch.float32).flatten(), affine.to(torch.float32), flip.to(torch.float32)])
        dev = to_device(packed, device)
        n, a = len(p.brightness), len(affine)
        sizes = [n, n, 6 * a, a, len(flip)]
        b, c, th, ai, fi = torch.split(dev, sizes)
        return cls(b, c, th.view(a, 2, 3), ai.to(torch.int64), fi.to(torch.int64))


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
        images = images.index_select(0, to_device(rows, images.device))
    h, w = images.shape[-2:]
    d = DeviceParams.send(p, h, w, images.device)
    bc = (d.brightness, d.contrast)
    x = to_float(images) if p.lighting_last else _lighting(images, p, bc)
    if x.data_ptr() == images.data_ptr():  # never edit the caller's tensor in place
        x = x.clone()
    if len(d.flip_idx):  # sizes are the host's: no device read
        x[d.flip_idx] = x[d.flip_idx].flip(-1)
    if len(d.affine_idx):
        grid = _grid(d.theta, h, w, x.device)
        x[d.affine_idx] = F.grid_sample(x[d.affine_idx].contiguous(), grid, mode="bilinear", padding_mode="zeros",
                                        align_corners=False)
    if p.lighting_last:
        x = _light_geometry_output(x, p, bc)
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
    """The plain view plus ``n`` views under the run's training transforms ``cfg``.

    fastai 0.7's ``Learner.TTA(n_aug=4)`` (old/fastai/learner.py at e6b56de53f80d2b2d39037c82d3a23ce72507cd7,
    l. 392-415) predicts the validation set once plainly and ``n_aug`` times through ``aug_dl``, the
    validation images under the *training* transforms (``ImageData.get_ds``: ``fn(val..., tfms[0])``,
    fastai/dataset.py at 00e57e13f923b8347fdd0d646b447edaae8f0b5a: fastai 0.7's module, before old/).
    It repeats the plain prediction ``ceil(n_aug / 4)`` times (l. 413): once for the default 4, so
    the mean over these 1 + 4 views is fastai's.
    """
    generator = torch.Generator().manual_seed(seed)
    return [to_float(images)] + [augment(images, generator, cfg) for _ in range(n)]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator for one (seed, epoch): a loader's epoch repeats whatever ran before it."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch) * 7_919 + 12_345) % (2**63 - 1))
