"""The baseline, the paper's way: a torch DataLoader that decodes each PNG per item, every epoch.

Per item: the shared reader (a PIL decode, RGBA/16-bit handled), PIL's antialiased bilinear resize
to ``res``, then the run's augmentation (``spec.augmentation``) as torchvision transforms on the PIL
image, with ``cxr_fast.augment``'s kinds, strengths, probabilities and order: for ``fastai07`` a
rotation (black fill), then fastai 0.7's additive lighting around the rotated picture's mean, then a
flip; for ``modern`` brightness/contrast jitter, then a rotation with a shrink of up to 10% (black
fill), then a flip. Each item's draw is seeded from ``(seed, epoch, item)`` so a run repeats; the
draws are the baseline's own, not ``cxr_fast.augment``'s, and the result is rounded to uint8.
It is the yardstick the fast backends are measured against, not something to train with.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from cxr_fast.augment import AugmentConfig
from cxr_fast.data.reader import read_gray
from cxr_fast.loaders.base import LoaderSpec
from cxr_fast.loaders.common import n_batches

NAME = "pil"
STORE_FORMAT = None  # reads the PNGs themselves, the baseline


def available() -> tuple[bool, str]:
    try:
        import torchvision  # noqa: F401
    except ImportError as exc:  # pragma: no cover - torchvision is a dependency
        return False, f"torchvision is not importable: {exc}"
    return True, "torch DataLoader + PIL decode per item"


class _AdditiveLighting:
    """fastai 0.7's lighting on a gray PIL image: ``clip((x - m) * c + m + b, 0, 1)``, ``m`` its mean.

    ``b`` and ``r`` uniform in +-``max_lighting``, ``c = 1 + r`` or ``1 / (1 - r)`` (see
    ``cxr_fast.augment.FASTAI07``); draws come from torch's global generator, which ``PilDataset``
    seeds per item.
    """

    def __init__(self, max_lighting: float, p: float) -> None:
        self.max_lighting, self.p = max_lighting, p

    def __call__(self, img: Image.Image) -> Image.Image:
        u = torch.rand(3, dtype=torch.float64).tolist()
        if u[0] >= self.p:
            return img
        b = (u[1] * 2 - 1) * self.max_lighting
        r = (u[2] * 2 - 1) * self.max_lighting
        c = 1.0 / (1.0 - r) if r < 0 else 1.0 + r
        x = np.asarray(img, dtype=np.float32) * np.float32(1.0 / 255.0)
        m = float(x.mean(dtype=np.float64))
        y = np.clip((x - m) * c + m + b, 0.0, 1.0)
        return Image.fromarray(np.rint(y * 255.0).astype(np.uint8), mode="L")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_lighting={self.max_lighting}, p={self.p})"


def _transforms(cfg: AugmentConfig):
    """torchvision's version of ``cfg``: geometry, lighting and flip in ``cfg``'s order."""
    from torchvision import transforms as T

    bilinear = T.InterpolationMode.BILINEAR
    if cfg.max_pad > 0:
        geometry = T.RandomAffine(degrees=cfg.max_rotate, scale=(1.0 - cfg.max_pad, 1.0),
                                  translate=(cfg.max_pad / 2, cfg.max_pad / 2), interpolation=bilinear, fill=0)
    else:
        geometry = T.RandomRotation(degrees=cfg.max_rotate, interpolation=bilinear, fill=0)
    geometry = T.RandomApply([geometry], p=cfg.p_affine)
    if cfg.lighting == "fastai07":
        lighting = _AdditiveLighting(cfg.max_lighting, cfg.p_lighting)
    else:
        lighting = T.RandomApply([T.ColorJitter(brightness=cfg.max_lighting, contrast=cfg.max_lighting)],
                                 p=cfg.p_lighting)
    steps = [geometry, lighting] if cfg.lighting_last else [lighting, geometry]
    return T.Compose(steps + [T.RandomHorizontalFlip(p=cfg.p_flip)])


class PilDataset(torch.utils.data.Dataset):
    """Decode, resize and (optionally) augment one image per ``__getitem__``."""

    def __init__(self, paths: list[str], targets: np.ndarray, res: int, augment: bool, cfg: AugmentConfig) -> None:
        self.paths = paths
        self.targets = np.asarray(targets, dtype=np.float32)
        self.res = res
        self.transform = _transforms(cfg) if augment else None
        self.seed = 0
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = Image.fromarray(read_gray(self.paths[i]), mode="L")
        if img.size != (self.res, self.res):
            img = img.resize((self.res, self.res), Image.Resampling.BILINEAR)
        if self.transform is not None:
            # Seeded per (seed, epoch, item): the same draw whatever the worker count and order, and
            # the caller's global RNG is left as it was.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(((self.seed * 1_000_003 + self.epoch) * 1_000_033 + i) % (2**63 - 1))  # any seed
                img = self.transform(img)
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())[None]
        return x, torch.tensor(self.targets[i])


class PilLoader:
    def __init__(self, spec: LoaderSpec, cfg: AugmentConfig = AugmentConfig()) -> None:
        self.spec = spec
        self.epoch = 0
        paths = [str(spec.dataset.path_of(str(i))) for i in spec.image_ids]
        self.dataset = PilDataset(paths, spec.targets, spec.res, spec.train and spec.augment, cfg)
        self.dataset.seed = spec.seed
        self.workers = spec.num_workers if spec.num_workers is not None else (os.cpu_count() or 1)

    def __len__(self) -> int:
        return n_batches(len(self.dataset), self.spec)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        spec = self.spec
        self.dataset.epoch = self.epoch
        gen = torch.Generator().manual_seed(spec.seed * 1_000_003 + self.epoch)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=spec.batch_size, shuffle=spec.train, drop_last=spec.drop_last,
            num_workers=self.workers, generator=gen, pin_memory=spec.device.type == "cuda",
            persistent_workers=False,
        )
        fmt = torch.channels_last if spec.channels_last else torch.contiguous_format
        for x, y in loader:
            x = x.to(spec.device, non_blocking=True).to(torch.float32).mul_(1.0 / 255.0)
            yield x.contiguous(memory_format=fmt), y.to(spec.device, non_blocking=True)


def build(spec: LoaderSpec) -> PilLoader:
    return PilLoader(spec, spec.augmentation)
