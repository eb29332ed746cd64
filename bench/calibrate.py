"""Measure a device profile here: time real training and evaluation steps, fit the rates the plan uses.

Why: datasheet peaks say little about a shared 2-core CPU or about how far cuDNN gets at batch 8; a
few timed steps on the device itself do. For each (architecture, resolution) asked for, this times
``TrainStep`` on tensors already on the device (``bench.throughput``, the same step ``cxr-fast train``
runs) and the evaluation forward (``TrainStep.predict``), then fits the compute rate that makes
``cost.estimate`` reproduce each timing from the step's counted work (``cost.work``). Measured
directly: the host cost of one dispatched op (a loop of tiny in-place adds), memory bandwidth (a large
copy), the time to build a model, and checkpoint write speed. The plan then interpolates between the
timed points of the same architecture, so calibrate the resolutions a study uses.

On a GPU the CUDA-graph constants stay the modelled assumptions (``cost.devices``); the eager launch
cost, the bandwidth and the rates are measured. ``cxr-fast gpu-check`` runs this on a GPU host and
writes the profile beside its results.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cxr_fast.cost import devices
from cxr_fast.cost.devices import DeviceProfile
from cxr_fast.errors import CxrError
from cxr_fast.units import GIB, MIB

MIN_SECONDS = 2.0  # per timed point: at least this long, and at least ITERS steps
ITERS = 3
WARMUP = 2
DATA_SETUP_S = 0.5  # per run besides building the model: metadata, subsample, loaders (assumed)


def launch_overhead(device: Any, n: int = 3000) -> float:
    """Seconds of host time per dispatched op: ``n`` tiny in-place adds, one sync at the end (best of 3)."""
    import torch

    from cxr_fast.runtime import sync

    x = torch.zeros(1, device=device)
    best = float("inf")
    for _ in range(3):
        sync(device)
        t = time.perf_counter()
        for _ in range(n):
            x.add_(1.0)
        sync(device)
        best = min(best, (time.perf_counter() - t) / n)
    return best


def copy_bandwidth(device: Any, nbytes: int = 256 * MIB) -> float:
    """Bytes/s of a large device-to-device copy (read + write counted), best of 5."""
    import torch

    from cxr_fast.runtime import sync

    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


def checkpoint_speed(folder: Path, nbytes: int = 64 * MIB) -> float:
    """Bytes/s of ``torch.save`` of a state of ``nbytes`` to ``folder`` (how a run writes its checkpoint)."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    state = {"w": torch.ones(nbytes // 4)}
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        t = time.perf_counter()
        torch.save(state, Path(tmp) / "probe.pt")
        return nbytes / max(time.perf_counter() - t, 1e-9)


def time_eval(trainer: Any, res: int, batch: int, min_seconds: float, iters: int, warmup: int) -> float:
    """Seconds per evaluation batch (one view): ``TrainStep.predict`` in eval mode."""
    import torch

    from cxr_fast.runtime import sync

    images = torch.rand(batch, 1, res, res).to(trainer.device)
    trainer.model.eval()
    try:
        for _ in range(warmup):
            trainer.predict(images)
        sync(trainer.device)
        steps, t = 0, time.perf_counter()
        while steps < iters or time.perf_counter() - t < min_seconds:
            trainer.predict(images)
            steps += 1
        sync(trainer.device)
        return (time.perf_counter() - t) / steps
    finally:
        trainer.model.train()


def calibrate(points: Sequence[tuple[str, int]], batch: int = 8, precision: str = "auto", optimizer: str = "sgd",
              recipe: str = "fastai07", device: str = "auto", min_seconds: float = MIN_SECONDS,
              say: Callable[[str], None] | None = None) -> DeviceProfile:
    """Time each (arch, res) and return the measured profile (not yet saved)."""
    import torch

    from cxr_fast.bench.results_io import machine_info
    from cxr_fast.bench.throughput import build_trainer, synthetic_throughput
    from cxr_fast.cost.estimate import fit_rate
    from cxr_fast.cost.work import eval_work, train_work
    from cxr_fast.paths import cache_dir
    from cxr_fast.step import bf16_supported, device_precision, resolve_device

    say = say or (lambda m: None)
    if not points:
        raise CxrError("nothing to calibrate: no (architecture, resolution) given")
    dev = resolve_device(device)
    precision = device_precision(precision, dev)
    gpu = dev.type == "cuda"
    machine = machine_info(dev)
    say(f"calibrating {machine['device_name']} ({dev}, {precision}, batch {batch})")
    launch = launch_overhead(dev)
    bandwidth = copy_bandwidth(dev)
    ckpt = checkpoint_speed(cache_dir() / "tmp")
    say(f"  {launch * 1e6:.1f} us per op, {bandwidth / 1e9:.1f} GB/s copy, checkpoint {ckpt / 1e9:.2f} GB/s")
    if gpu:
        props = torch.cuda.get_device_properties(dev)
        name, memory_gib = devices.cuda_profile_name(props.name), props.total_memory / GIB
        card = devices.card_for_device_name(props.name)
        base = devices.modelled(card) if card is not None else None
    else:
        name = devices.cpu_profile_name()
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
        card, base = None, None
    probe = DeviceProfile(name=name, title=str(machine["device_name"]), kind="gpu" if gpu else "cpu",
                          source="measured", memory_gib=round(memory_gib, 2), peak_flops={}, bandwidth=bandwidth,
                          compute_share=1.0, bandwidth_share=1.0, launch_s=launch, checkpoint_bytes_per_s=ckpt,
                          supports_bf16=precision == "bf16" or (gpu and bf16_supported(dev)),
                          card=card.name if card is not None else None, machine=machine)
    measured: list[dict[str, Any]] = []
    builds: list[float] = []
    for arch, res in points:
        t = time.perf_counter()
        trainer = build_trainer(arch, dev, precision, True, optimizer)
        builds.append(time.perf_counter() - t)
        m = synthetic_throughput(trainer, res, batch, warmup=WARMUP, iters=ITERS, min_seconds=min_seconds)
        step_s = m.seconds / (m.images / batch)
        eval_s = time_eval(trainer, res, batch, min_seconds / 2, ITERS, WARMUP)
        train = train_work(arch, res, batch, precision, recipe, optimizer, foreach=gpu,
                           scaler=gpu and precision == "fp16").graphable
        plain = eval_work(arch, res, batch, precision, recipe, views=1).graphable
        for mode, work, seconds in (("train", train, step_s), ("eval", plain, eval_s)):
            measured.append({"arch": arch, "res": int(res), "batch": batch, "precision": precision, "mode": mode,
                             "seconds": seconds, "flops": work.flops, "rate": fit_rate(work, probe, seconds)})
        say(f"  {arch} {res}px: train {step_s * 1e3:.1f} ms/step ({measured[-2]['rate'] / 1e9:.1f} GFLOP/s "
            f"fitted), eval {eval_s * 1e3:.1f} ms/batch")
        del trainer
    probe.points = measured
    probe.peak_flops = {precision: max(p["rate"] for p in measured)}
    probe.setup_s = sum(builds) / len(builds) + DATA_SETUP_S
    probe.citations = {"measured": f"cxr-fast plan --calibrate on {machine['hostname']} at {machine['date']}: "
                                   f"{len(points)} (arch, res) points at batch {batch}, {precision}, {optimizer}"}
    probe.assumptions = {"setup_s": f"model build measured + {DATA_SETUP_S:g} s assumed for data and loaders",
                         "host_to_device": "modelled" if gpu else "not used on a CPU (bandwidth instead)"}
    if base is not None:  # what the measurement cannot see here (graph replays) stays the card's model
        probe.graph_kernel_s, probe.graph_launch_s, probe.sync_s = base.graph_kernel_s, base.graph_launch_s, base.sync_s
        probe.host_to_device = base.host_to_device
        probe.assumptions["graphs"] = "CUDA-graph constants are the modelled assumptions (cost.devices)"
    return probe


def calibration_points(cells: Sequence[Any]) -> tuple[list[tuple[str, int]], int, str, str, str]:
    """The (arch, res) pairs of a study's checked cells (``study.checked_cells``: each has its ``RunConfig``)
    and the batch, precision, optimizer and recipe they share."""
    pairs = sorted({(str(c.arch), int(c.res)) for c in cells}, key=lambda p: (p[0], p[1]))
    configs = [c.config for c in cells]

    def shared(key: str) -> Any:
        values = {getattr(s, key) for s in configs}
        if len(values) > 1:
            raise CxrError(f"the cells use several values of {key} ({', '.join(map(str, sorted(values)))}); "
                           "calibrate one --only grid at a time")
        return values.pop()

    return pairs, shared("batch_size"), shared("precision"), shared("optimizer"), shared("recipe")
