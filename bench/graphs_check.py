"""gpu-check's CUDA graphs section: the training step eager and replayed from a graph, per resolution, beside the plan.

Measured: ``step.TrainStep`` (one architecture, the paper's batch of 8, the card's ``auto`` precision,
channels-last, SGD) on one synthetic batch already on the device, eager and through ``cxr_fast.graphs.GraphedStep``
built from the same initial weights; milliseconds per step over ``steps`` steps after a warm-up, one sync at each
end. Both end on the same number of steps, so their last losses and largest parameter difference say whether the
graph trains what eager trains (bf16 and cuDNN's algorithm choice make them close, not equal).

Predicted: ``cost.estimate``'s time of the step's graphable work (forward, loss, backward, optimizer: what the graph
holds; no loader) eager and as one graph, on the device profile ``cxr-fast plan --device cuda`` uses (the measured
one once gpu-check's device-profile step has saved it). On a CPU the section is skipped: no GPU.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

from cxr_fast.errors import one_line

SKIPPED_CPU = "skipped: no GPU"
ARCH = "resnet34"
BATCH = 8  # the paper's, where a step is bound by launches
STEPS = 30
WARMUP = 3
FIRST_RES_S = 6.0  # a resolution's guess before any was timed: two models, warm-ups, a capture, 2 x 33 steps


def graphs_section(device: Any, resolutions: list[int], left: Callable[[], float] = lambda: math.inf,
                   arch: str = ARCH) -> dict[str, Any]:
    """The section for ``gpu-check``: measured on CUDA, ``{"status": "skipped: no GPU"}`` elsewhere."""
    import torch

    if torch.device(device).type != "cuda":
        return {"status": SKIPPED_CPU}
    return measure_graphs(device, resolutions, left, arch=arch)


def measure_graphs(device: Any, resolutions: list[int], left: Callable[[], float] = lambda: math.inf,
                   arch: str = ARCH, batch: int = BATCH, steps: int = STEPS, warmup: int = WARMUP,
                   backend: Any = None) -> dict[str, Any]:
    """One row per resolution, smallest first, each started only when its predicted time fits ``left()``
    (it grows with res**2 from the last one timed). ``backend``: a stand-in for ``graphs.CudaBackend`` (tests)."""
    rows: list[dict[str, Any]] = []
    last: tuple[int, float] | None = None
    for res in sorted(resolutions):
        need = FIRST_RES_S if last is None else last[1] * max(1.0, (res / last[0]) ** 2)
        have = left()
        if have < need:
            rows.append({"res": res, "status": f"skipped (time budget: about {need:.0f} s needed, "
                                                 f"{max(0.0, have):.0f} s left)"})
            continue
        t = time.perf_counter()
        try:
            row = {"res": res, "status": "ok", **_measure_one(device, arch, res, batch, steps, warmup, backend)}
        except Exception as exc:  # noqa: BLE001 - one failed resolution is recorded, the others still run
            row = {"res": res, "status": "error", "error": one_line(exc, 300)}
        row["predicted"] = predicted(arch, res, batch, row.get("precision"))
        rows.append(row)
        last = (res, time.perf_counter() - t)
    return {"arch": arch, "batch": batch, "steps": steps, "rows": rows}


def _measure_one(device: Any, arch: str, res: int, batch: int, steps: int, warmup: int, backend: Any) -> dict:
    import torch

    from cxr_fast.bench.throughput import build_trainer
    from cxr_fast.graphs import GraphedStep
    from cxr_fast.runtime import fixed_shapes

    device = torch.device(device)
    fixed_shapes(device)
    torch.manual_seed(0)
    eager = build_trainer(arch, device)
    twin = build_trainer(arch, device)
    twin.model.load_state_dict(copy.deepcopy(eager.model.state_dict()))
    graphed = GraphedStep(twin, backend=backend)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 1, res, res, generator=gen).to(device)
    labels = (torch.arange(batch) % 2).float().to(device)

    torch.manual_seed(1)
    eager_s, eager_loss = _timed(eager, images, labels, warmup, steps, device)
    torch.manual_seed(1)
    t = time.perf_counter()
    graphed(images, labels)  # the capture (warm-up steps undone), then its first replay
    sync_device(device)
    capture_s = time.perf_counter() - t
    graphed_s, graphed_loss = _timed(graphed, images, labels, warmup - 1, steps, device)
    with torch.no_grad():
        diff = max(float((a.float() - b.float()).abs().max()) for a, b in
                   zip(eager.model.parameters(), twin.model.parameters()))
    return {"precision": eager.precision, "eager_ms": eager_s * 1e3, "graphed_ms": graphed_s * 1e3,
            "speedup": eager_s / graphed_s if graphed_s > 0 else None, "capture_s": capture_s,
            "last_loss_eager": eager_loss, "last_loss_graphed": graphed_loss, "max_param_diff": diff,
            "graphs": graphed.graphs}


def sync_device(device: Any) -> None:
    """``runtime.sync``, imported when first timed (torch stays out of gpu-check's start-up)."""
    from cxr_fast.runtime import sync

    sync(device)


def timed_steps(step: Any, images: Any, labels: Any, warmup: int, steps: int, device: Any) -> tuple[float, Any]:
    """(seconds per step, the last step's output, None after no step): ``warmup`` steps, a sync, then ``steps``
    steps and a sync. gpu-check's packed and shared sections time their steps with it too."""
    for _ in range(warmup):
        step(images, labels)
    sync_device(device)
    t = time.perf_counter()
    out = None
    for _ in range(steps):
        out = step(images, labels)
    sync_device(device)
    return (time.perf_counter() - t) / max(1, steps), out


def _timed(step: Any, images: Any, labels: Any, warmup: int, steps: int, device: Any) -> tuple[float, float]:
    """``timed_steps`` with the last loss as a float."""
    seconds, loss = timed_steps(step, images, labels, warmup, steps, device)
    return seconds, float(loss) if loss is not None else math.nan


def predicted(arch: str, res: int, batch: int, precision: str | None) -> dict[str, Any]:
    """The plan's milliseconds for the graphable part of a training step, eager and as one graph, on the profile
    ``cxr-fast plan --device cuda`` would use; a card the planner cannot time says why in one line."""
    try:
        from cxr_fast.cost import devices
        from cxr_fast.cost.estimate import rate_for, work_time
        from cxr_fast.cost.work import train_work
        from cxr_fast.vocabulary import DEFAULT_RECIPE

        dev = devices.resolve("cuda")
        precision = precision or ("bf16" if dev.supports_bf16 else "fp16")
        work = train_work(arch, res, batch, precision, DEFAULT_RECIPE, "sgd", foreach=True, augment=False)
        rate, source = rate_for(dev, precision, arch, "train", work.graphable.flops)
        return {"profile": dev.name, "rate_source": source,
                "eager_ms": work_time(work.graphable, dev, rate).seconds * 1e3,
                "graphs_ms": work_time(work.graphable, dev, rate, graph=True).seconds * 1e3}
    except Exception as exc:  # noqa: BLE001 - the measurement stands without a prediction
        return {"unavailable": one_line(exc, 200)}


def graphs_lines(section: dict[str, Any] | None) -> list[str]:
    """The section as printed by ``gpu-check``: measured eager and graphed ms per step beside the plan's."""
    if not section:
        return []
    if "rows" not in section:
        return [f"CUDA graphs: {section.get('status', 'not measured')}"]
    lines = [f"\nCUDA graphs, {section['arch']} batch {section['batch']}: ms per training step",
             "res   eager  graphed  speedup   plan eager  plan graphs"]
    for r in section["rows"]:
        if r["status"] != "ok":
            lines.append(f"{r['res']:>4}  {r['status'] if r['status'] != 'error' else 'error: ' + r['error']}")
            continue
        p = r.get("predicted") or {}
        plan = (f"{p['eager_ms']:>11.2f}  {p['graphs_ms']:>11.2f}" if "eager_ms" in p
                else f"  (plan: {p.get('unavailable', 'none')})")
        speed = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        lines.append(f"{r['res']:>4} {r['eager_ms']:>7.2f}  {r['graphed_ms']:>7.2f}  {speed:>7}  {plan}")
    return lines
