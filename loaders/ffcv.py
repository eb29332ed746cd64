"""``ffcv``: reads the store's ``.beton`` (FFCV 1.0.2) and augments on the device.

The ``.beton`` holds one-channel raw uint8 pixels at ``res`` (an ``NDArrayField``), the label and
the store row. Raw pixels rather than FFCV's ``RGBImageField``: that field takes three channels
only (and FFCV's writer hangs forever on a one-channel image), replicated JPEG would triple the
decode work and add JPEG error, and raw uint8 is exactly the reference-rounded cache, so this
backend meets the same 0.5/255 bound as ``cache``. FFCV's compiled reader does the gather and the
epoch order (its RANDOM order, seeded by ``(seed, epoch)``); conversion to float and the paper's
augmentation run in torch on the device (``cxr_fast.augment``). Labels come from the spec, looked
up by the stored row, so they travel with their images through FFCV's shuffling.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from cxr_fast.augment import AugmentConfig, OutputPool, epoch_generator
from cxr_fast.loaders.base import LoaderSpec
from cxr_fast.loaders.common import finish, n_batches, open_for, rows_for
from cxr_fast.runtime import keep_torch_threads, to_device
from cxr_fast.stores.ffcv import FORMAT as STORE_FORMAT  # what cxr_fast.feed.make_loader prepares for this backend

NAME = "ffcv"


def available() -> tuple[bool, str]:
    try:
        with keep_torch_threads():
            import ffcv  # noqa: F401
            from ffcv.loader import Loader  # noqa: F401
    except Exception as exc:  # ImportError, or a missing native library (turbojpeg, opencv)
        return False, f"FFCV is not importable ({exc}); pip install ffcv==1.0.2 after libturbojpeg and opencv"
    return True, "FFCV .beton of raw uint8, augmentation on the device"


class FfcvLoader:
    def __init__(self, spec: LoaderSpec, cfg: AugmentConfig = AugmentConfig()) -> None:
        with keep_torch_threads():
            self._init(spec, cfg)

    def _init(self, spec: LoaderSpec, cfg: AugmentConfig) -> None:
        from ffcv.fields.decoders import IntDecoder, NDArrayDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import ToTensor

        self.spec = spec
        self.cfg = cfg
        store = open_for(spec, STORE_FORMAT)
        rows, targets = rows_for(spec, store)
        # The .beton holds the store's readable rows in order: row -> position in the file.
        _, keep = store.positions(store.manifest["image_ids"])
        beton_of_row = np.full(len(keep), -1, dtype=np.int64)
        beton_of_row[np.flatnonzero(keep)] = np.arange(int(keep.sum()))
        lut = np.zeros(len(keep), dtype=np.float32)
        lut[rows] = targets
        self.label_of_row = lut  # on the host, where FFCV's rows arrive: the lookup needs no upload
        self.n = len(rows)
        self.epoch = 0
        self.pool = OutputPool() if spec.device.type == "cpu" else None
        self.loader = Loader(
            str(store.ffcv_path(spec.res)), batch_size=spec.batch_size,
            num_workers=max(1, spec.num_workers or torch.get_num_threads()),
            order=OrderOption.RANDOM if spec.train else OrderOption.SEQUENTIAL,
            seed=spec.seed, indices=beton_of_row[rows].tolist(), drop_last=spec.drop_last,
            pipelines={"image": [NDArrayDecoder(), ToTensor()], "label": None, "row": [IntDecoder(), ToTensor()]},
        )

    def __len__(self) -> int:
        return n_batches(self.n, self.spec)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        spec = self.spec
        gen = epoch_generator(spec.seed, self.epoch) if spec.train and spec.augment else None
        self.loader.next_epoch = self.epoch  # FFCV's order for this epoch: seed + epoch
        with keep_torch_threads():
            batches = iter(self.loader)  # FFCV sets its thread count for the epoch
        for images, rows in batches:
            x = to_device(images[:, None], spec.device)  # FFCV's batch is pageable: pinned first on a GPU
            y = to_device(torch.from_numpy(self.label_of_row[rows.reshape(-1).to(torch.int64).numpy()]), spec.device)
            yield finish(x, spec, gen, self.cfg, self.pool), y


def build(spec: LoaderSpec) -> FfcvLoader:
    return FfcvLoader(spec, spec.augmentation)
