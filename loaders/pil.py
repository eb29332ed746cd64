"""The baseline, the paper's way: a torch DataLoader that decodes each PNG per item, every epoch.

Per item: the shared reader (a PIL decode, RGBA/16-bit handled), PIL's antialiased bilinear resize
to ``res``, then torchvision transforms on the PIL image: brightness/contrast jitter, a random
affine (rotation up to 20 degrees, shrink up to 10% with black fill) and a horizontal flip, in the
same proportions as ``cxr_fast.augment``. Each item's draw is seeded from ``(seed, epoch, item)`` so a run repeats.
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

NAME = "pil"


def available() -> tuple[bool, str]:
    try:
        import torchvision  # noqa: F401
    except ImportError as exc:  # pragma: no cover - torchvision is a dependency
        return False, f"torchvision is not importable: {exc}"
    return True, "torch DataLoader + PIL decode per item"


def _transforms(cfg: AugmentConfig):
    from torchvision import transforms as T

    return T.Compose([
        T.RandomApply([T.ColorJitter(brightness=cfg.max_lighting, contrast=cfg.max_lighting)], p=cfg.p_lighting),
        T.RandomApply([T.RandomAffine(degrees=cfg.max_rotate, scale=(1.0 - cfg.max_pad, 1.0),
                                      translate=(cfg.max_pad / 2, cfg.max_pad / 2),
                                      interpolation=T.InterpolationMode.BILINEAR, fill=0)], p=cfg.p_affine),
        T.RandomHorizontalFlip(p=cfg.p_flip),
    ])


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
                torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_033 + i)
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
        n, b = len(self.dataset), self.spec.batch_size
        return n // b if self.spec.drop_last else -(-n // b)

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
