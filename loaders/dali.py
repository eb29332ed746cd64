"""``dali``: an NVIDIA DALI graph over the store's JPEGs: decode, resize and augment on the GPU.

The graph (``dali_graph``), with each operator's device explicit:

    readers.file (cpu)        the store's gray JPEGs in the epoch's order, label = position in the
                              spec; the reader never shuffles (see "Order" below)
    decoders.image            "mixed" on a GPU (nvJPEG: host parse, device decode), "cpu" without one
    resize                    to ``res`` (shrunk by up to ``max_pad`` when padding), antialiased
                              linear; float output without augmentation (no rounding before the
                              model), uint8 through the augmentation (half the memory traffic)
    brightness_contrast       the run's lighting around the image mean, saturating (train)
    rotate                    up to ``max_rotate`` degrees, ``fill_value=0``: black corners (train)
    crop_mirror_normalize     black padding back to ``res`` at a random place (when padding),
                              horizontal flip, /255 to [0, 1], CHW float

``spec.augmentation`` sets the strengths, probabilities and order (``cxr_fast.augment``). For
``fastai07`` the lighting comes after the rotation, as fastai 0.7 ran it: additive brightness and
fastai's contrast draw, centred on the rotated picture's mean (black corners included), which on a
GPU is copied to the host for the operator's argument (a GPU->CPU transfer the dynamic executor
allows, DALI >= 1.44). ``modern`` lights before rotating, centred on the image mean, as the reference
does. One function builds the graph for both devices: the decoder's placement and the copy of the mean
to the host are its only differences (``tests/test_dali_graph.py`` holds the GPU graph's definition to
the CPU one op by op, which is what can be checked without a GPU).

Order: the loader owns it, not DALI. ``shuffle_after_epoch`` ignores the pipeline's ``seed`` (every run
would see one order), cannot be told an epoch (``set_epoch`` and a resumed run would replay epoch 0's),
and a pass cut short (``max_batches``) would leave the reader mid-epoch. So each pass builds a fresh
pipeline whose reader walks the files in ``epoch_order(seed, epoch)`` (the order every store-backed
backend uses) and whose operators draw from a seed of (seed, epoch) alone (``epoch_generator``'s).
Building one costs tens of milliseconds, once per pass.

Why JPEG, not PNG: DALI decodes PNG on the CPU even in ``mixed`` mode, which is what made the
paper's loader slow; ``prepare`` turns each PNG into a quality-95 gray JPEG once. JPEG is lossy, so
this backend is held to the reference pixels with a looser bound than the lossless ones: mean
absolute error at most 0.5/255 and max at most 4/255 on the test images (``tests/test_loaders.py``;
measured 0.1/255 mean, 1.8/255 max with DALI 2.4's CPU operators). The augmentation draws its own
random numbers inside the graph: the same kinds, strengths and order as ``cxr_fast.augment``, not
the same draws. Without a GPU the same graph runs with CPU operators and ``device_id=None`` (how the
tests run it). Batches reach torch through DALI's PyTorch plugin; labels come from the spec by position.
"""

from __future__ import annotations

import os
from typing import Iterator

import torch

from cxr_fast.augment import AugmentConfig, epoch_generator
from cxr_fast.loaders.base import LoaderSpec
from cxr_fast.loaders.common import epoch_order, n_batches, open_for, rows_for
from cxr_fast.runtime import to_device
from cxr_fast.stores.jpeg import FORMAT as STORE_FORMAT  # what cxr_fast.feed.make_loader prepares for this backend

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
               cfg: AugmentConfig = AugmentConfig()):
    """The graph body; call inside ``pipeline_def`` (see ``build_pipeline``). ``files`` are read in the
    order given (the caller's epoch order); ``gpu`` only places the decoder (the rest follows its output)."""
    from nvidia.dali import fn, types

    jpegs, index = fn.readers.file(files=files, labels=labels, random_shuffle=False, shuffle_after_epoch=False,
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
    lit = chance(cfg.p_lighting)
    pad = cfg.max_pad > 0
    # uint8 through the augmentation: half the memory traffic of float, and saturating arithmetic
    # clamps brightness/contrast to [0, 255] for free (rounding an augmented view costs nothing).
    if pad:  # black padding: resize to a smaller square, pad back to res at a random place below
        side = (1.0 - affine * fn.random.uniform(range=(0.0, cfg.max_pad))) * float(res)
        images = fn.resize(images, resize_x=side, resize_y=side, interp_type=types.INTERP_LINEAR, antialias=True)
    else:
        images = fn.resize(images, resize_x=res, resize_y=res, interp_type=types.INTERP_LINEAR, antialias=True)
    if not cfg.lighting_last:
        images = _light(images, cfg, lit, gpu)
    angle = affine * fn.random.uniform(range=(-cfg.max_rotate, cfg.max_rotate))
    images = fn.rotate(images, angle=angle, fill_value=0, keep_size=True, interp_type=types.INTERP_LINEAR)
    where = {}
    if pad:
        where = dict(crop_h=res, crop_w=res, crop_pos_x=fn.random.uniform(range=(0.0, 1.0)),
                     crop_pos_y=fn.random.uniform(range=(0.0, 1.0)), out_of_bounds_policy="pad", fill_values=0.0)
    if cfg.lighting_last:  # fastai 0.7: light the rotated (and padded) picture, then flip
        if pad:
            images = fn.crop(images, **where)
            where = {}
        images = _light(images, cfg, lit, gpu)
    images = fn.crop_mirror_normalize(
        images, **where, mirror=fn.random.coin_flip(probability=cfg.p_flip), mean=0.0, std=255.0,
        dtype=types.FLOAT, output_layout="CHW",
    )
    return images, index


def _light(images, cfg: AugmentConfig, lit, gpu: bool):
    """``brightness_contrast`` with ``cfg``'s lighting on uint8 ``images``; ``lit`` is 1.0 where an image is lit.

    DALI computes ``shift * 255 + brightness * (centre + contrast * (x - centre))`` and saturates to
    uint8. fastai07: ``shift = b``, ``brightness = 1``, centre = the picture's mean, so it is fastai
    0.7's ``clip((x - m) * c + m + b, 0, 1)`` (``cxr_fast.augment.FASTAI07``). multiplicative:
    ``brightness = b``, ``shift = 0``.
    """
    from nvidia.dali import fn, types

    size = cfg.max_lighting
    if cfg.lighting == "fastai07":
        shift = lit * fn.random.uniform(range=(-size, size))
        r = lit * fn.random.uniform(range=(-size, size))
        neg = fn.cast(r < 0.0, dtype=types.FLOAT)
        contrast = neg / (1.0 - neg * r) + (1.0 - neg) * (1.0 + r)  # 1 / (1 - r) if r < 0 else 1 + r
        return fn.brightness_contrast(images, brightness_shift=shift, contrast=contrast,
                                      contrast_center=_centre(images, gpu), dtype=types.UINT8)
    brightness = 1.0 + lit * fn.random.uniform(range=(-size, size))
    contrast = 1.0 + lit * fn.random.uniform(range=(-size, size))
    return fn.brightness_contrast(images, brightness=brightness, contrast=contrast,
                                  contrast_center=_centre(images, gpu), dtype=types.UINT8)


def _centre(images, gpu: bool):
    """Each image's mean, the lighting's centre in both recipes (as in ``cxr_fast.augment``), on the host:
    an operator's argument must live there, so on a GPU the per-image mean is copied over."""
    from nvidia.dali import fn, types

    centre = fn.reductions.mean(images, dtype=types.FLOAT)
    return centre.cpu() if gpu else centre


def epoch_seed(seed: int, epoch: int) -> int:
    """The DALI pipeline seed of one (seed, epoch): ``epoch_generator``'s, folded into DALI's non-negative
    range, so an epoch's augmentation draws depend on nothing that ran before it."""
    return epoch_generator(seed, epoch).initial_seed() % (2**31 - 1)


def build_pipeline(files: list[str], labels: list[int], spec: LoaderSpec, cfg: AugmentConfig = AugmentConfig(),
                   epoch: int = 0):
    """A built DALI pipeline for the spec and ``epoch`` that reads ``files`` in the order given: GPU operators on
    CUDA devices, CPU ones (device_id=None) otherwise."""
    from nvidia.dali import pipeline_def

    gpu = spec.device.type == "cuda"
    device_id = (spec.device.index or 0) if gpu else None
    threads = max(1, spec.num_workers or os.cpu_count() or 1)

    @pipeline_def(batch_size=spec.batch_size, num_threads=threads, device_id=device_id,
                  seed=epoch_seed(spec.seed, epoch), prefetch_queue_depth=2, exec_dynamic=True)
    def pipe():
        return dali_graph(files, labels, spec.res, spec.train, spec.augment, gpu, cfg)

    p = pipe()
    p.build()
    return p


class DaliLoader:
    def __init__(self, spec: LoaderSpec, cfg: AugmentConfig = AugmentConfig()) -> None:
        self.spec = spec
        self.cfg = cfg
        store = open_for(spec, STORE_FORMAT)
        rows, targets = rows_for(spec, store)
        names = store.manifest["image_ids"]
        self.files = [str(store.jpeg_path(names[r])) for r in rows]
        self.targets = targets  # on the host: the reader's index arrives there, so the lookup needs no upload
        self.n = len(self.files)
        self.epoch = 0
        # Epoch 0's pipeline is built now, so a graph DALI rejects fails here rather than at the first batch.
        self._ready: tuple[int, object] | None = (0, self._iterator(0))

    def __len__(self) -> int:
        return n_batches(self.n, self.spec)

    def set_epoch(self, epoch: int) -> None:
        """The next pass reads epoch ``epoch``'s order with its augmentation draws (a resumed run included)."""
        self.epoch = epoch

    def _iterator(self, epoch: int):
        """A fresh pipeline and iterator for one pass over ``epoch``: the reader starts at the epoch's first
        file whatever the previous pass left unread (a ``max_batches`` cut)."""
        from nvidia.dali.plugin.base_iterator import LastBatchPolicy
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        order = epoch_order(self.n, self.spec, epoch)
        pipe = build_pipeline([self.files[i] for i in order], [int(i) for i in order], self.spec, self.cfg, epoch)
        policy = LastBatchPolicy.DROP if self.spec.drop_last else LastBatchPolicy.PARTIAL
        return DALIGenericIterator([pipe], ["images", "index"], reader_name="Reader", last_batch_policy=policy,
                                   auto_reset=False)

    def _take(self, epoch: int):
        """The prebuilt iterator when it is this epoch's and unused, else a new one."""
        ready, self._ready = self._ready, None
        if ready is not None and ready[0] == epoch:
            return ready[1]
        del ready  # another epoch's: let its pipeline go before a second one holds device memory
        return self._iterator(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        spec = self.spec
        fmt = torch.channels_last if spec.channels_last else torch.contiguous_format
        for out in self._take(self.epoch):
            batch = out[0]
            x = batch["images"].to(spec.device, non_blocking=True)
            y = torch.from_numpy(self.targets[batch["index"].reshape(-1).to(torch.int64).numpy()])
            yield x.contiguous(memory_format=fmt), to_device(y, spec.device)


def build(spec: LoaderSpec) -> DaliLoader:
    return DaliLoader(spec, spec.augmentation)

