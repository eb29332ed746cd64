"""The trial that chose the packing mechanism: HFTA-style fusion (``cxr_fast.packed``) against ``torch.func``
(``stack_module_state`` + ``functional_call`` + ``vmap`` over stacked parameters and buffers), and K separate steps.

Both packed ways run the modern recipe here (no dropout): ``vmap``'s ``randomness="different"`` draws all K masks
from one generator, so per-model dropout streams would need the head taken out of ``vmap`` first. BatchNorm's
running statistics work under ``vmap`` once the buffers are stacked and batched too (``in_dims=0``): the in-place
update then lands in each model's slice. Ops: every aten op of one step (forward, loss, backward, SGD with foreach,
zero_grad), counted by ``cost.work``'s counter. Throughput: the three ways interleaved step by step.

    python results/packed/vmap_trial.py            # writes results/packed/mechanism.md
"""

from __future__ import annotations

import copy
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from cxr_fast.bench.packed import batches, machine_line, packed_step, separate_steps, step_ops
from cxr_fast.cost.work import _Counter
from cxr_fast.models import build_model
from cxr_fast.packed import stack_batches
from cxr_fast.runtime import sync


class VmapStep:
    """K models as one ``vmap``-ed functional call over stacked parameters and buffers (modern recipe)."""

    def __init__(self, arch: str, k: int, channels_last: bool = True) -> None:
        models = []
        for seed in range(k):
            torch.manual_seed(seed)
            models.append(build_model(arch, "modern"))
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        models = [m.to(memory_format=self.memory_format) for m in models]
        self.params, self.buffers = stack_module_state(models)
        base = copy.deepcopy(models[0]).to("meta")
        self.forward = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, 0))
        self.optimizer = torch.optim.SGD(list(self.params.values()), lr=5e-4, momentum=0.9, foreach=True)
        self.pos_weight = torch.tensor([1.0 + s for s in range(k)]).view(k, 1)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out = self.forward(self.params, self.buffers, images).squeeze(-1)  # K x N
        per_model = F.binary_cross_entropy_with_logits(out, labels.float(), pos_weight=self.pos_weight,
                                                       reduction="none").mean(1)
        loss = per_model.sum()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return per_model.detach()


def vmap_ops(step: VmapStep, images: torch.Tensor, labels: torch.Tensor) -> tuple[int, list[str]]:
    """Ops of one step, and any batching-rule fallback warnings (loops in disguise)."""
    torch._C._functorch._set_vmap_fallback_warning_enabled(True)
    with warnings.catch_warnings(record=True) as caught:  # torch warns once per process: watch both steps
        warnings.simplefilter("always")
        step(images, labels)
        with _Counter("cpu") as counter:
            step(images, labels)
    names = {str(w.message).split("batching rule for ")[-1].split(".")[0] for w in caught
             if "batching rule" in str(w.message)}
    return counter.ops, sorted(names)


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    sync(torch.device("cpu"))
    return time.perf_counter() - t


def rates(arch: str, res: int, k: int, iters: int = 2) -> dict[str, float]:
    """images/s of the three ways, interleaved after one warm-up step each."""
    data = batches(k, 8, res, "cpu")
    packed_batch = stack_batches(data)
    ways = {"separate": (lambda s=separate_steps(arch, "modern", k): [x(*b) for x, b in zip(s, data)]),
            "hfta": (lambda s=packed_step(arch, "modern", k): s(*packed_batch)),
            "vmap": (lambda s=VmapStep(arch, k): s(*packed_batch))}
    totals = dict.fromkeys(ways, 0.0)
    for i in range(1 + iters):
        for name, fn in ways.items():
            t = _time(fn)
            if i:
                totals[name] += t
    return {name: k * 8 * iters / t for name, t in totals.items()}


def main() -> int:
    start = time.perf_counter()
    lines = ["# Packing mechanism: HFTA-style fusion against torch.func vmap", "",
             f"Command: `python results/packed/vmap_trial.py` ({machine_line()}).", "",
             "Modern recipe (no dropout), SGD with foreach, fp32, channels-last. Ops counted on the CPU at 64 px "
             "(batch 2: the count does not depend on it); throughput with batch 8 per model.", "",
             "## Aten ops per training step (a proxy for GPU kernel launches)", "",
             "| architecture | K | one model | K separate | HFTA packed | vmap packed | vmap fallbacks |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for arch in ("resnet34", "densenet121"):
        data = batches(8, 2, 64, "cpu")  # 64 px: at 32 px ResNet34's last maps are 1 x 1 and hide a fallback
        one = step_ops(separate_steps(arch, "modern", 1)[0], *data[0])
        for k in (1, 2, 4, 8):
            images, labels = stack_batches(data[:k])
            hfta = step_ops(packed_step(arch, "modern", k), images, labels)
            vm, fallbacks = vmap_ops(VmapStep(arch, k), images, labels)
            lines.append(f"| {arch} | {k} | {one} | {k * one} | {hfta} | {vm} | {'; '.join(fallbacks) or 'none'} |")
            print(lines[-1], flush=True)
    lines += ["", "## Training images/s on this CPU (the three ways interleaved, 2 timed steps each)", "",
              "| architecture | px | K | K separate | HFTA packed | vmap packed |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for arch in ("resnet34", "densenet121"):
        for res, k in ((32, 4), (64, 4), (32, 8)):
            r = rates(arch, res, k)
            lines.append(f"| {arch} | {res} | {k} | {r['separate']:.1f} | {r['hfta']:.1f} | {r['vmap']:.1f} |")
            print(lines[-1], flush=True)
    lines += ["", f"{time.perf_counter() - start:.0f} s in all."]
    out = Path(__file__).with_name("mechanism.md")
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
