"""Packed training (``cxr_fast.packed``) against K separate steps: ops dispatched per step, and images/s.

Ops are every aten op one training step dispatches (forward, loss, backward, optimizer step; views included),
counted by the planner's counter (``cost.work``) on tensors of any size, so the count is exact and repeatable.
It is a proxy for GPU kernel launches, not a count of them: a grouped cuDNN convolution or a foreach optimizer
step can launch several kernels (``gpu-check`` counts real ones with ``torch.profiler``). The optimizer is
counted with ``foreach`` on, as it runs on CUDA.

Throughput interleaves the two ways (one packed step of K models, then one step of each of K separate models,
each on its own batch) so both see the same machine load; images/s counts all K models' images.

    python -m cxr_fast.bench.packed --ops                 # results/packed/ops.md
    python -m cxr_fast.bench.packed --cpu                 # results/packed/cpu.md
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cxr_fast.runtime import sync
from cxr_fast.vocabulary import ARCHS

KS = (1, 2, 4, 8)
RESOLUTIONS = (32, 64, 128)


def separate_steps(arch: str, recipe: str, k: int, optimizer: str = "sgd", device: str = "cpu",
                   precision: str = "fp32", channels_last: bool = True) -> list[Any]:
    """K ordinary ``TrainStep``s, one model each (seeds 0 .. K-1)."""
    from cxr_fast.models import build_model
    from cxr_fast.step import TrainStep, make_optimizer

    steps = []
    for seed in range(k):
        torch.manual_seed(seed)
        with torch.device("meta") if device == "meta" else contextlib.nullcontext():  # counting: no init
            model = build_model(arch, recipe)
        steps.append(TrainStep(model, make_optimizer(model, optimizer), 1.0 + seed, precision, device,
                               channels_last, recipe=recipe))
    return steps


def packed_step(arch: str, recipe: str, k: int, optimizer: str = "sgd", device: str = "cpu",
                precision: str = "fp32", channels_last: bool = True) -> Any:
    """One ``PackedStep`` over the same K models as ``separate_steps``."""
    from cxr_fast.packed import PackedStep, build_packed
    from cxr_fast.step import make_optimizer

    model = build_packed(arch, recipe, range(k), device=device)
    return PackedStep(model, make_optimizer(model, optimizer), [1.0 + s for s in range(k)], precision, device,
                      channels_last, recipe=recipe)


def batches(k: int, batch: int, res: int, device: Any, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One batch per model: uniform pixels, labels alternating 0 and 1 (both classes in every batch)."""
    gen = torch.Generator().manual_seed(seed)
    labels = (torch.arange(batch) % 2).float()
    return [(torch.rand(batch, 1, res, res, generator=gen).to(device), labels.to(device)) for _ in range(k)]


def _foreach(step: Any) -> None:
    for group in step.optimizer.param_groups:
        group["foreach"] = True


def step_ops(step: Any, images: torch.Tensor, labels: torch.Tensor) -> int:
    """Aten ops one call of ``step`` dispatches, optimizer state already made (one step first, uncounted)."""
    from cxr_fast.cost.work import _Counter

    _foreach(step)
    step(images, labels)
    with _Counter(images.device.type) as counter:
        step(images, labels)
    return counter.ops


def ops_rows(archs: Sequence[str] = ARCHS, ks: Sequence[int] = KS, recipe: str = "fastai07",
             optimizer: str = "sgd", res: int = 32, batch: int = 8) -> list[dict[str, Any]]:
    """Per architecture: one model's step, and a packed step of each K, in ops (and as a ratio to one step),
    counted on ``meta`` (shapes only, nothing computed), as ``cost.work`` counts."""
    from cxr_fast.packed import stack_batches

    rows = []
    for arch in archs:
        data = batches(max(ks), batch, res, "meta")
        one = step_ops(separate_steps(arch, recipe, 1, optimizer, "meta")[0], *data[0])
        for k in ks:
            ops = step_ops(packed_step(arch, recipe, k, optimizer, "meta"), *stack_batches(data[:k]))
            rows.append({"arch": arch, "recipe": recipe, "optimizer": optimizer, "k": k, "single_ops": one,
                         "packed_ops": ops, "sequential_ops": k * one, "ratio": ops / one})
    return rows


def _timed(fn: Any, device: Any) -> float:
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def throughput(arch: str, res: int, k: int, batch: int = 8, recipe: str = "fastai07", optimizer: str = "sgd",
               device: str = "cpu", precision: str = "fp32", channels_last: bool = True, warmup: int = 1,
               iters: int = 2) -> dict[str, Any]:
    """Training images/s of K models packed and of the same K stepped one after another (interleaved)."""
    from cxr_fast.packed import stack_batches

    dev = torch.device(device)
    data = batches(k, batch, res, dev)
    packed_batch = stack_batches(data)
    packed = packed_step(arch, recipe, k, optimizer, device, precision, channels_last)
    separate = separate_steps(arch, recipe, k, optimizer, device, precision, channels_last)
    totals = {"packed": 0.0, "sequential": 0.0}
    for i in range(warmup + iters):
        t_packed = _timed(lambda: packed(*packed_batch), dev)
        t_seq = _timed(lambda: [s(*b) for s, b in zip(separate, data)], dev)
        if i >= warmup:
            totals["packed"] += t_packed
            totals["sequential"] += t_seq
    images = k * batch * iters
    return {"arch": arch, "res": res, "k": k, "batch": batch, "recipe": recipe, "optimizer": optimizer,
            "packed_ips": images / totals["packed"], "sequential_ips": images / totals["sequential"],
            "speedup": totals["sequential"] / totals["packed"], "iters": iters, "images": images,
            "packed_s": totals["packed"], "sequential_s": totals["sequential"], "precision": packed.precision}


def packed_section(archs: Sequence[str] = ARCHS, resolutions: Sequence[int] = RESOLUTIONS, ks: Sequence[int] = KS,
                   batch: int = 8, device: str = "cpu", precision: str = "fp32", channels_last: bool = True,
                   optimizer: str = "sgd", warmup: int = 1, iters: int = 2, say: Any = None) -> list[dict[str, Any]]:
    """The bench pipeline's packed-training section: one row per (architecture, resolution, K)."""
    rows = []
    for arch in archs:
        for res in resolutions:
            for k in ks:
                rows.append(throughput(arch, res, k, batch, "fastai07", optimizer, device, precision, channels_last,
                                       warmup, iters))
                if say is not None:
                    r = rows[-1]
                    say(f"{arch} {res}px K={k}: packed {r['packed_ips']:.1f} img/s, "
                        f"sequential {r['sequential_ips']:.1f} img/s ({r['speedup']:.2f}x)")
    return rows


def machine_line() -> str:
    """The machine, as results/README.md names it."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {torch.get_num_threads()} torch threads, Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def ops_markdown(rows: list[dict[str, Any]], command: str) -> str:
    lines = ["# Aten ops per training step: packed (K models) against one model", "",
             f"Command: `{command}` ({machine_line()}).", "",
             "Every aten op one training step dispatches (forward, loss, backward, SGD step with `foreach`, "
             "`zero_grad`; views included), counted by `cost.work`'s counter on the `meta` device (fastai07 recipe, "
             "fp32, channels-last, batch 8 per model at 32 px; the count does not depend on either). A proxy for "
             "GPU kernel launches, not a count of them: a grouped cuDNN convolution or a foreach step may launch "
             "several kernels. Sequential is K separate steps, K times one model's ops. What grows with K is "
             "dropout: each model draws its own mask from its own generator (2 ops per model per dropout layer). "
             "A packed DenseNet121 dispatches fewer ops than one model: each dense layer concatenates its new "
             "features onto the block's running per-model stack (one 2-way `cat`, sliced twice in the backward) "
             "where torchvision concatenates all earlier features again (an i-way `cat`, sliced i times).", "",
             "| architecture | K | one model | packed step | K sequential | packed / one |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['k']} | {r['single_ops']} | {r['packed_ops']} | {r['sequential_ops']} "
                     f"| {r['ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def cpu_markdown(rows: list[dict[str, Any]], command: str, seconds: float) -> str:
    lines = ["# Packed against sequential training on this CPU, images/s", "",
             f"Command: `{command}` ({machine_line()}; {seconds:.0f} s).", "",
             "K models (fastai07 recipe, SGD, fp32, channels-last, batch 8 per model, random init) on synthetic "
             "batches already in memory. Packed: one step of all K; sequential: one step of each model in turn. "
             "The two alternate step by step, so both see the same machine load; images/s counts the images of "
             "all K models.", "",
             "| architecture | px | K | packed img/s | sequential img/s | packed / sequential |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['res']} | {r['k']} | {r['packed_ips']:.1f} | {r['sequential_ips']:.1f} "
                     f"| {r['speedup']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxr_fast.bench.packed", description=__doc__.splitlines()[0])
    parser.add_argument("--ops", action="store_true", help="count ops per step (results/packed/ops.md)")
    parser.add_argument("--cpu", action="store_true", help="packed against sequential images/s (results/packed/cpu.md)")
    parser.add_argument("--out", type=Path, default=Path("results/packed"), help="folder for the tables")
    parser.add_argument("--arch", nargs="+", default=list(ARCHS))
    parser.add_argument("--res", nargs="+", type=int, default=list(RESOLUTIONS))
    parser.add_argument("--k", nargs="+", type=int, default=list(KS))
    parser.add_argument("--iters", type=int, default=2, help="timed steps per measurement (after one warm-up)")
    args = parser.parse_args(argv)
    if not (args.ops or args.cpu):
        parser.error("say what to measure: --ops, --cpu or both")
    command = "python -m cxr_fast.bench.packed " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.ops:
        rows = ops_rows(args.arch, args.k)
        (args.out / "ops.md").write_text(ops_markdown(rows, command), encoding="utf-8")
        print(ops_markdown(rows, command))
    if args.cpu:
        start = time.perf_counter()
        rows = packed_section(args.arch, args.res, args.k, iters=args.iters, say=print)
        text = cpu_markdown(rows, command, time.perf_counter() - start)
        (args.out / "cpu.md").write_text(text, encoding="utf-8")
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
