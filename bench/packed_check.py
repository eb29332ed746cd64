"""gpu-check's packed-training section: packed steps measured on the card, beside the plan's prediction for them.

Measured: ``cxr_fast.packed.PackedStep`` of K models (K = 1, 2, 4, 8; ResNet34 and DenseNet121, fastai07, SGD, bf16
where the card has it, channels-last, the paper's batch of 8 per model) on one synthetic packed batch already on the
device (``bench.packed``'s models and batches): milliseconds per packed step eager and, where ``cxr_fast.graphs``
captures (``use_graphs`` on the step), replayed from a graph; and the device operations one eager step launches
(every kernel, memcpy and memset on the device's timeline), counted by ``torch.profiler``. kernels(K) / kernels(1) is
the measured launch factor, printed beside the plan's ``PACKED_LAUNCH_FACTOR``, which is a guess until this
measures it.

Predicted: as ``cost.plan.packed_job`` prices a packed step: ``cost.plan.packed_work`` of one model's training step
(``cost.work.train_work``, foreach SGD, no augmentation: the measured batch is synthetic), timed by
``cost.estimate.step_time`` eager and with graphs on the device profile ``cxr-fast plan --device cuda`` uses (the
measured one once gpu-check's device-profile step has saved it).

Off a GPU the same code runs (``--cpu-smoke``, tests): graphs say why they are off, kernels are 'not on a GPU', and
the prediction says why there is none.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from cxr_fast.bench.graphs_check import sync_device, timed_steps
from cxr_fast.errors import one_line
from cxr_fast.vocabulary import ARCHS

KS = (1, 2, 4, 8)
RESOLUTIONS = (64, 224, 600)  # the ones of these the check's --res holds (else its smallest)
BATCH = 8  # per model: the paper's, where a step is bound by launches
RECIPE = "fastai07"
OPTIMIZER = "sgd"
STEPS = 6
WARMUP = 2
FIRST_S = 8.0  # an architecture's first measurement, before any was timed: K models built, warm-ups, the profiler
NOT_ON_GPU = "not on a GPU"


def packed_resolutions(resolutions: Sequence[int]) -> list[int]:
    """The resolutions the check measures: ``RESOLUTIONS`` among ``resolutions``, else the smallest of those."""
    chosen = [r for r in RESOLUTIONS if r in resolutions]
    return chosen or [min(resolutions)]


def _precision(device: Any) -> str:
    """bf16 on a card that has it (graphs refuse fp16's scaler), else fp32; fp32 on a CPU."""
    import torch

    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "fp32"


def packed_check_section(device: Any, resolutions: Sequence[int], left: Callable[[], float] = lambda: math.inf,
                         archs: Sequence[str] = ARCHS, ks: Sequence[int] = KS, steps: int = STEPS,
                         warmup: int = WARMUP, backend: Any = None, profile: str = "cuda") -> dict[str, Any]:
    """One row per (resolution, architecture, K), smallest resolution first, each started only when its predicted
    time fits ``left()`` (the architecture's last measurement scaled by K x res**2, never down). ``backend``: a
    stand-in for ``graphs.CudaBackend`` (tests); ``profile``: the device profile the prediction uses."""
    from cxr_fast.cost.plan import PACKED_LAUNCH_FACTOR
    from cxr_fast.runtime import free_memory

    precision = _precision(device)
    rows: list[dict[str, Any]] = []
    last: dict[str, tuple[int, int, float]] = {}  # arch -> (res, K, seconds) of its last measurement
    for res in sorted(resolutions):
        for arch in archs:
            for k in sorted(ks):
                need = FIRST_S if arch not in last else _scaled(last[arch], res, k)
                have = left()
                if have < need:
                    rows.append({"res": res, "arch": arch, "k": k, "status": f"skipped (time budget: about "
                                 f"{need:.0f} s needed, {max(0.0, have):.0f} s left)"})
                    continue
                t = time.perf_counter()
                try:
                    row = {"res": res, "arch": arch, "k": k, "status": "ok",
                           **measure_packed_step(device, arch, res, k, precision, steps, warmup, backend)}
                except Exception as exc:  # noqa: BLE001 - one failed K is recorded, the others still run
                    row = {"res": res, "arch": arch, "k": k, "status": "error", "error": one_line(exc, 300)}
                free_memory(device)
                row["predicted"] = packed_predicted(arch, res, k, BATCH, precision, profile)
                rows.append(row)
                last[arch] = (res, k, time.perf_counter() - t)
    _launch_factors(rows)
    return {"batch": BATCH, "recipe": RECIPE, "optimizer": OPTIMIZER, "precision": precision, "steps": steps,
            "launch_factor": PACKED_LAUNCH_FACTOR, "rows": rows}


def _scaled(last: tuple[int, int, float], res: int, k: int) -> float:
    r, kk, seconds = last
    return seconds * max(1.0, (k * res ** 2) / (kk * r ** 2))


def measure_packed_step(device: Any, arch: str, res: int, k: int, precision: str, steps: int, warmup: int,
                backend: Any = None) -> dict[str, Any]:
    """One packed step of K models: eager ms, device operations per eager step, then graphed ms (the same step
    wrapped by ``use_graphs``, or by ``GraphedStep`` over ``backend``)."""
    import torch

    from cxr_fast.bench.packed import batches, packed_step
    from cxr_fast.graphs import GraphedStep, use_graphs
    from cxr_fast.packed import stack_batches
    from cxr_fast.runtime import fixed_shapes

    device = torch.device(device)
    fixed_shapes(device)
    step = packed_step(arch, RECIPE, k, OPTIMIZER, str(device), precision, True)
    images, labels = stack_batches(batches(k, BATCH, res, device))
    eager_s, losses = timed_steps(step, images, labels, warmup, max(1, steps), device)
    kernels = count_device_ops(lambda: step(images, labels), device) if device.type == "cuda" else NOT_ON_GPU
    out: dict[str, Any] = {"precision": step.precision, "eager_ms": eager_s * 1e3, "kernels": kernels,
                           "losses_finite": bool(torch.isfinite(losses).all())}
    graphed = GraphedStep(step, backend=backend) if backend is not None else use_graphs(step, True)
    if not isinstance(graphed, GraphedStep):
        return {**out, "graphed_ms": None, "graphs": step.graphs}
    t = time.perf_counter()
    graphed(images, labels)  # the capture (its warm-up undone), then its first replay
    sync_device(device)
    out["capture_s"] = time.perf_counter() - t
    graphed_s, _ = timed_steps(graphed, images, labels, max(0, warmup - 1), max(1, steps), device)
    return {**out, "graphed_ms": graphed_s * 1e3, "graphs": graphed.graphs}


def count_device_ops(fn: Callable[[], Any], device: Any) -> int:
    """Operations ``fn`` runs on ``device``'s timeline, as ``torch.profiler`` records them: on CUDA every kernel,
    memcpy and memset (each a launch); on the CPU every op (what the tests can check the counting on)."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    sync_device(device)
    # The host's activity too on CUDA (kineto links kernels to their launches); only the device's rows are counted.
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]) as prof:
        fn()
        sync_device(device)
    want = DeviceType.CUDA if cuda else DeviceType.CPU
    return sum(1 for e in prof.events() if e.device_type == want)


def _launch_factors(rows: list[dict[str, Any]]) -> None:
    """kernels(K) / kernels(1) on each row whose (res, arch) has both counted."""
    ones = {(r["res"], r["arch"]): r["kernels"] for r in rows
            if r["k"] == 1 and r["status"] == "ok" and isinstance(r.get("kernels"), int)}
    for r in rows:
        one = ones.get((r["res"], r["arch"]))
        if r["status"] == "ok" and isinstance(r.get("kernels"), int) and one:
            r["kernel_ratio"] = r["kernels"] / one


def packed_predicted(arch: str, res: int, k: int, batch: int, precision: str, profile: str = "cuda") -> dict[str, Any]:
    """The plan's milliseconds for one packed step of K models, eager and with graphs, and its kernels per step, on
    ``profile``; a card the planner cannot time says why in one line."""
    try:
        from cxr_fast.cost import devices
        from cxr_fast.cost.estimate import rate_for, step_time
        from cxr_fast.cost.plan import packed_work
        from cxr_fast.cost.work import StepWork, train_work

        dev = devices.resolve(profile)
        one = train_work(arch, res, batch, precision, RECIPE, OPTIMIZER, foreach=True, augment=False)
        step = StepWork(packed_work(one.graphable, k), packed_work(one.eager, k))
        rate, source = rate_for(dev, precision, arch, "train", step.graphable.flops)
        return {"profile": dev.name, "rate_source": source, "kernels": step.total.n_kernels,
                "eager_ms": step_time(step, dev, rate).seconds * 1e3,
                "graphs_ms": step_time(step, dev, rate, graphs=True).seconds * 1e3}
    except Exception as exc:  # noqa: BLE001 - the measurement stands without a prediction
        return {"unavailable": one_line(exc, 200)}


def packed_lines(section: dict[str, Any] | None) -> list[str]:
    """The section as ``gpu-check`` prints it: measured ms per packed step and kernels beside the plan's, and the
    measured launch factor beside the plan's."""
    if not section:
        return []
    if "rows" not in section:
        return [f"Packed training: {section.get('status', 'not measured')}"]
    rows = section["rows"]
    lines = [f"\nPacked training, {section['recipe']} {section['precision']} batch {section['batch']} per model: "
             "ms per packed step of K models, measured beside the plan",
             "res  arch          K    eager  graphed  vs K eager  kernels  k(K)/k(1)   plan eager  plan graphs  "
             "plan kernels"]
    eager_one = {(r["res"], r["arch"]): r["eager_ms"] for r in rows if r["k"] == 1 and r["status"] == "ok"}
    notes: dict[str, None] = {}
    for r in rows:
        head = f"{r['res']:>4}  {r['arch']:<12} {r['k']:>2}"
        if r["status"] != "ok":
            lines.append(f"{head}  {r['status'] if r['status'] != 'error' else 'error: ' + r['error']}")
            continue
        one = eager_one.get((r["res"], r["arch"]))
        vs = f"{r['k'] * one / r['eager_ms']:.2f}x" if one and r["eager_ms"] > 0 else "-"
        graphed = "-" if r["graphed_ms"] is None else f"{r['graphed_ms']:.2f}"
        if r["graphed_ms"] is None:
            notes[f"graphs: {r['graphs']}"] = None
        kernels = r["kernels"] if isinstance(r["kernels"], int) else "-"
        if not isinstance(r["kernels"], int):
            notes[f"kernels: {r['kernels']}"] = None
        ratio = f"{r['kernel_ratio']:.2f}" if "kernel_ratio" in r else "-"
        p = r.get("predicted") or {}
        if "eager_ms" in p:
            plan = f"{p['eager_ms']:>11.2f}  {p['graphs_ms']:>11.2f}  {p['kernels']:>12}"
        else:
            plan = "          -            -             -"
            notes[f"plan: {p.get('unavailable', 'none')}"] = None
        lines.append(f"{head} {r['eager_ms']:>8.2f} {graphed:>8} {vs:>11} {kernels!s:>8} {ratio:>10}  {plan}")
    factors = [f"{r['arch']} {r['res']} px K={r['k']}: {r['kernel_ratio']:.2f}" for r in rows
               if r["k"] == max(x["k"] for x in rows) and "kernel_ratio" in r]
    lines.append(f"(vs K eager: K x eager ms at K=1 / eager ms at K. The plan's launch factor: "
                 f"{section['launch_factor']:g} x one model's kernels for any K > 1"
                 + (f"; measured kernels(K)/kernels(1): {', '.join(factors)})" if factors else ")"))
    lines += sorted(notes)
    return lines
