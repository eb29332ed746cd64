"""Training-step throughput: the model's ceiling (synthetic tensors on the device) and what a loader delivers.

Both measurements run the same ``cxr_fast.step.TrainStep`` the trainer uses, so "images/s" here is
what ``cxr-fast train`` gets. The ratio loader/synthetic says whether the input side keeps up: 1.0
means the GPU never waits for data.

Timing: ``warmup`` steps first (cuDNN autotuning, allocator growth, optimizer-state creation, a
loader's worker start-up), then ``iters`` timed steps closed by one device synchronisation.
Peak memory (CUDA only) is ``max_memory_allocated`` over the timed steps; per sample it is
``(peak - allocated before the timed steps) / batch_size``, i.e. activations plus gradients per image.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator

import torch

from cxr_fast.runtime import cycle, fixed_shapes, sync


@dataclass
class Measurement:
    """One timed run: images processed, wall seconds, and (CUDA only) memory peaks."""

    images: int
    seconds: float
    batch_size: int
    peak_mem_bytes: int | None = None
    mem_per_sample_bytes: float | None = None

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["images_per_s"] = self.images_per_s
        return d


def build_trainer(arch: str, device: torch.device | str, precision: str = "auto", channels_last: bool = True,
                  optimizer: str = "sgd", lr: float = 5e-4):
    """A fresh random-init model (weights do not change speed) inside the project's TrainStep."""
    from cxr_fast.models import build_model
    from cxr_fast.step import TrainStep, make_optimizer

    model = build_model(arch)
    return TrainStep(model, make_optimizer(model, optimizer, lr=lr), pos_weight=1.0, precision=precision,
                     device=device, channels_last=channels_last)


def _timed(trainer, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], warmup: int, iters: int,
           batch_size: int, min_seconds: float = 0.0) -> Measurement:
    device = trainer.device
    fixed_shapes(device)  # one shape per measurement, as in training; the warm-up pays cuDNN's autotuning
    for _ in range(warmup):
        images, labels = next(batches)
        trainer(images, labels)
    sync(device)
    base = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    n = steps = 0
    start = time.perf_counter()
    # At least ``iters`` steps and ``min_seconds``; the clock is read without a sync, so on a GPU it
    # may run ahead of the device by the queue's depth, which the closing sync then pays for.
    while steps < iters or (time.perf_counter() - start < min_seconds and steps < 1000 * max(iters, 1)):
        images, labels = next(batches)
        trainer(images, labels)
        n += int(labels.shape[0])
        steps += 1
    sync(device)
    seconds = time.perf_counter() - start
    peak = per_sample = None
    if device.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated(device))
        per_sample = (peak - base) / batch_size if base is not None else None
    return Measurement(images=n, seconds=seconds, batch_size=batch_size, peak_mem_bytes=peak,
                       mem_per_sample_bytes=per_sample)


def synthetic_batches(batch_size: int, res: int, device: torch.device, channels_last: bool = True,
                      seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The same batch forever, made once on the device: no input cost at all."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    images = torch.rand(batch_size, 1, res, res, generator=gen).to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = (torch.rand(batch_size, generator=gen) > 0.5).float().to(device)
    while True:
        yield images, labels


def synthetic_throughput(trainer, res: int, batch_size: int, warmup: int = 2, iters: int = 10,
                         min_seconds: float = 0.0) -> Measurement:
    """Images/s of training steps on tensors already on the device: the model's ceiling."""
    batches = synthetic_batches(batch_size, res, trainer.device, trainer.channels_last)
    return _timed(trainer, batches, warmup, iters, batch_size, min_seconds)


def loader_throughput(trainer, loader: Iterable, batch_size: int, warmup: int = 2, iters: int = 10,
                      min_seconds: float = 0.0) -> Measurement:
    """Images/s of training steps fed by ``loader``: what a user gets end to end.

    The first batch is pulled untimed and dropped: it pays the loader's one-off start-up (workers,
    pipeline build), which a real epoch amortises over thousands of batches.
    """
    batches = cycle(loader)
    next(batches)
    return _timed(trainer, batches, warmup, iters, batch_size, min_seconds)


def paired_throughput(trainer, res: int, batch_size: int, loader: Iterable, warmup: int = 1, iters: int = 2,
                      min_seconds: float = 0.0) -> tuple[Measurement, Measurement]:
    """Synthetic and loader-fed steps interleaved (A, B, A, B, ...), each timed on its own.

    For a shared CPU, where other processes come and go: both rates see the same interference, so
    their ratio measures the loader, not the neighbours. Each step is synchronised (free on a CPU;
    on a GPU it would stall the queue, which is why GPUs use the two block measurements instead).
    """
    device = trainer.device
    synth_batches = synthetic_batches(batch_size, res, device, trainer.channels_last)
    fed_batches = cycle(loader)
    next(fed_batches)  # the loader's start-up, untimed
    fixed_shapes(device)
    for _ in range(warmup):
        trainer(*next(synth_batches))
    sync(device)
    totals = {"synthetic": [0, 0.0], "loader": [0, 0.0]}
    steps = 0
    start = time.perf_counter()
    while steps < iters or (time.perf_counter() - start < 2 * min_seconds and steps < 1000 * max(iters, 1)):
        for name, batches in (("synthetic", synth_batches), ("loader", fed_batches)):
            t = time.perf_counter()
            images, labels = next(batches)
            trainer(images, labels)
            sync(device)
            totals[name][0] += int(labels.shape[0])
            totals[name][1] += time.perf_counter() - t
        steps += 1
    return (Measurement(images=totals["synthetic"][0], seconds=totals["synthetic"][1], batch_size=batch_size),
            Measurement(images=totals["loader"][0], seconds=totals["loader"][1], batch_size=batch_size))
