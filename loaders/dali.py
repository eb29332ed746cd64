"""``dali``: an NVIDIA DALI graph over the store's JPEGs: decode, resize and augment on the GPU.

The graph (``dali_graph``), with each operator's device explicit:

    readers.file (cpu)        the store's gray JPEGs, label = position in the spec; full reshuffle
                              every epoch in train mode (``shuffle_after_epoch``)
    decoders.image            "mixed" on a GPU (nvJPEG: host parse, device decode), "cpu" without one
    resize                    to ``res`` (shrunk by up to ``max_pad`` when padding), antialiased
                              linear; float output without augmentation (no rounding before the
                              model), uint8 through the augmentation (half the memory traffic)
    brightness_contrast       brightness and contrast jitter around the image mean, saturating (train)
    rotate                    up to 20 degrees, ``fill_value=0``: black corners (train)
    crop_mirror_normalize     black padding back to ``res`` at a random place, horizontal flip,
                              /255 to [0, 1], CHW float

Why JPEG, not PNG: DALI decodes PNG on the CPU even in ``mixed`` mode, which is what made the
paper's loader slow; ``prepare`` turns each PNG into a quality-95 gray JPEG once. JPEG is lossy, so
this backend is held to the reference pixels with a looser bound than the lossless ones: mean
absolute error at most 0.5/255 and max at most 4/255 on the test images (``tests/test_loaders.py``;
measured 0.1/255 mean, 1.8/255 max with DALI 2.4's CPU operators). The augmentation draws its own
random numbers inside the graph: the same kinds and strengths as ``cxr_fast.augment``, not the same
draws; contrast is centred on the image mean with CPU operators and on mid-grey with GPU ones.
Without a GPU the same graph runs with CPU operators and ``device_id=None`` (how the tests run it).
Batches reach torch through DALI's PyTorch plugin; labels come from the spec by position.
"""

from __future__ import annotations

import os
from typing import Iterator

import torch

from cxr_fast.augment import AugmentConfig
from cxr_fast.loaders.base import LoaderSpec
from cxr_fast.loaders.cache import n_batches, open_for, rows_for

NAME = "dali"


def available() -> tuple[bool, str]:
    try:
        import nvidia.dali  # noqa: F401
        from nvidia.dali.plugin.pytorch import DALIGenericIterator  # noqa: F401
    except Exception as exc:  # ImportError, or a CUDA runtime mismatch raised at import
        return False, f"NVIDIA DALI is not importable: {exc}"
    where = "mixed (GPU) JPEG decode" if torch.cuda.is_available() else "CPU operators (no GPU here)"
    return True, f"DALI pipeline, {where}"


def dali_graph(files: list[str], labels: list[int], res: int, train: bool, augment: bool, gpu: bool,
               shuffle_seed: int, cfg: AugmentConfig = AugmentConfig()):
    """The graph body; call inside ``pipeline_def`` (see ``build_pipeline``)."""
    from nvidia.dali import fn, types

    jpegs, index = fn.readers.file(files=files, labels=labels, shuffle_after_epoch=train, seed=shuffle_seed,
                                   pad_last_batch=True, name="Reader", device="cpu")
    images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.GRAY)
    if not (train and augment):
        images = fn.resize(images, resize_x=res, resize_y=res, interp_type=types.INTERP_LINEAR, antialias=True,
                           dtype=types.FLOAT)
        images = fn.crop_mirror_normalize(images, mean=0.0, std=255.0, dtype=types.FLOAT, output_layout="CHW")
        return images, index

    def chance(p: float):
        return fn.cast(fn.random.coin_flip(probability=p), dtype=types.FLOAT)

    affine = chance(cfg.p_affine)
    lighting = chance(cfg.p_lighting)
    # Black padding: resize to a smaller square, then pad back to res at a random place.
    shrink = 1.0 - affine * fn.random.uniform(range=(0.0, cfg.max_pad))
    side = shrink * float(res)
    # uint8 through the augmentation: half the memory traffic of float, and saturating arithmetic
    # clamps brightness/contrast to [0, 255] for free (rounding an augmented view costs nothing).
    images = fn.resize(images, resize_x=side, resize_y=side, interp_type=types.INTERP_LINEAR, antialias=True)
    brightness = 1.0 + lighting * fn.random.uniform(range=(-cfg.max_lighting, cfg.max_lighting))
    contrast = 1.0 + lighting * fn.random.uniform(range=(-cfg.max_lighting, cfg.max_lighting))
    # Contrast around the image mean on the CPU graph; on a GPU a reduction's output cannot feed an
    # argument (those are CPU-side), so the centre is mid-grey there.
    centre = 128.0 if gpu else fn.reductions.mean(images, dtype=types.FLOAT)
    images = fn.brightness_contrast(images, brightness=brightness, contrast=contrast, contrast_center=centre,
                                    dtype=types.UINT8)
    angle = affine * fn.random.uniform(range=(-cfg.max_rotate, cfg.max_rotate))
    images = fn.rotate(images, angle=angle, fill_value=0, keep_size=True, interp_type=types.INTERP_LINEAR)
    images = fn.crop_mirror_normalize(
        images, crop_h=res, crop_w=res, crop_pos_x=fn.random.uniform(range=(0.0, 1.0)),
        crop_pos_y=fn.random.uniform(range=(0.0, 1.0)), out_of_bounds_policy="pad", fill_values=0.0,
        mirror=fn.random.coin_flip(probability=cfg.p_flip), mean=0.0, std=255.0, dtype=types.FLOAT,
        output_layout="CHW",
    )
    return images, index


def build_pipeline(files: list[str], labels: list[int], spec: LoaderSpec, cfg: AugmentConfig = AugmentConfig()):
    """A built DALI pipeline for the spec: GPU operators on CUDA devices, CPU ones (device_id=None) otherwise."""
    from nvidia.dali import pipeline_def

    gpu = spec.device.type == "cuda"
    device_id = (spec.device.index or 0) if gpu else None
    threads = max(1, spec.num_workers or os.cpu_count() or 1)

    @pipeline_def(batch_size=spec.batch_size, num_threads=threads, device_id=device_id, seed=spec.seed + 1,
                  prefetch_queue_depth=2, exec_dynamic=True)
    def pipe():
        return dali_graph(files, labels, spec.res, spec.train, spec.augment, gpu, spec.seed, cfg)

    p = pipe()
    p.build()
    return p


class DaliLoader:
    def __init__(self, spec: LoaderSpec, cfg: AugmentConfig = AugmentConfig()) -> None:
        from nvidia.dali.plugin.base_iterator import LastBatchPolicy
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        self.spec = spec
        store = open_for(spec, "jpeg")
        rows, targets = rows_for(spec, store)
        names = store.manifest["image_ids"]
        files = [str(store.jpeg_path(names[r])) for r in rows]
        self.targets = torch.from_numpy(targets).to(spec.device)
        self.n = len(files)
        self.pipe = build_pipeline(files, list(range(self.n)), spec, cfg)
        policy = LastBatchPolicy.DROP if spec.drop_last else LastBatchPolicy.PARTIAL
        self.iterator = DALIGenericIterator([self.pipe], ["images", "index"], reader_name="Reader",
                                            last_batch_policy=policy, auto_reset=True)
        self.epoch = 0

    def __len__(self) -> int:
        return n_batches(self.n, self.spec)

    def set_epoch(self, epoch: int) -> None:
        """DALI's reader reshuffles at each epoch on its own; the epoch number is kept for the record."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        spec = self.spec
        fmt = torch.channels_last if spec.channels_last else torch.contiguous_format
        for out in self.iterator:
            batch = out[0]
            x = batch["images"].to(spec.device, non_blocking=True)
            idx = batch["index"].reshape(-1).to(torch.int64).to(spec.device)
            yield x.contiguous(memory_format=fmt), self.targets[idx]


def build(spec: LoaderSpec) -> DaliLoader:
    return DaliLoader(spec, spec.augmentation)

