"""gpu-check's shared-GPU section: K runs of one model sharing a GPU, against K one after another and one packed step.

Why: packed training (``cxr_fast.packed``) must beat the cheap alternative, K runs sharing one GPU (``cxr-fast study
--executor ray --runs-per-gpu K``, with CUDA MPS), not only one run per GPU; ``cxr-fast plan`` prices all three
(``cost.plan.shared_job``, ``packed_job``) and this measures them on a lent card.

Measured, per resolution, ``rounds`` rounds after ``warmup``, one sync at each end, each model on its own synthetic
batch of 8 already on the device (the card's ``auto`` precision, channels-last, SGD, eager):

- ``sequential``: one step of each of K separate ``TrainStep``s in turn, on one stream (one run per GPU, or K runs
  time-sliced without MPS);
- ``concurrent``: the same K steps from K Python threads, each with its own CUDA stream, so kernels of different
  models may overlap on the device. It measures the device-side overlap K runs could get, inside one process and one
  CUDA context (no MPS needed for streams of one context). It is not MPS: the threads' launches share the GIL, where
  K processes under MPS launch from K host threads, so for launch-bound steps it is a floor on what MPS gives;
- ``packed``: one ``PackedStep`` of the same K models (``bench.packed.packed_step``).

Milliseconds per round (K models' steps), beside the plan's eager prediction of each (``cost.estimate`` on the
profile ``cxr-fast plan --device cuda`` uses: K x one step, ``shared_work``'s MPS step, ``packed_work``'s step;
training step only, no loader). On a CPU the section says in one line that it is not on a GPU.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from cxr_fast.bench.graphs_check import sync_device
from cxr_fast.errors import CxrError, one_line

NOT_GPU = "skipped: not on a GPU"
ARCH = "resnet34"
K = 4
BATCH = 8  # the paper's, where one run's step is bound by launches
ROUNDS = 20
WARMUP = 3
RESOLUTIONS = (32, 128, 224)
FIRST_RES_S = 8.0  # a resolution's guess before any was timed: 2K models, warm-ups, 3 x rounds


def shared_section(device: Any, resolutions: Sequence[int] = RESOLUTIONS, left: Callable[[], float] = lambda: math.inf,
                   arch: str = ARCH, k: int = K) -> dict[str, Any]:
    """The section for ``gpu-check``: measured on CUDA, ``{"status": "skipped: not on a GPU"}`` elsewhere."""
    import torch

    if torch.device(device).type != "cuda":
        return {"status": NOT_GPU}
    return measure_shared(device, resolutions, left, arch=arch, k=k)


def measure_shared(device: Any, resolutions: Sequence[int] = RESOLUTIONS,
                   left: Callable[[], float] = lambda: math.inf, arch: str = ARCH, k: int = K, batch: int = BATCH,
                   rounds: int = ROUNDS, warmup: int = WARMUP) -> dict[str, Any]:
    """One row per resolution, smallest first, each started only when its predicted time (growing with res**2 from
    the last one timed) fits ``left()``. Refused in one line on a device that is not a GPU."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        raise CxrError(f"shared-GPU check: not on a GPU ({device}); K runs sharing a GPU are measured on CUDA only")
    if not isinstance(k, int) or k < 2:
        raise CxrError(f"shared-GPU check: K must be a whole number of at least 2, got {k!r}")
    rows: list[dict[str, Any]] = []
    last: tuple[int, float] | None = None
    for res in sorted(resolutions):
        need = FIRST_RES_S if last is None else last[1] * max(1.0, (res / last[0]) ** 2)
        if left() < need:
            rows.append({"res": res, "status": f"skipped (time budget: about {need:.0f} s needed, "
                                                 f"{max(0.0, left()):.0f} s left)"})
            continue
        t = time.perf_counter()
        try:
            row = {"res": res, "status": "ok", **_measure_one(device, arch, res, k, batch, rounds, warmup)}
        except Exception as exc:  # noqa: BLE001 - one failed resolution is recorded, the others still run
            row = {"res": res, "status": "error", "error": one_line(exc, 300)}
        row["predicted"] = shared_predicted(arch, res, k, batch, row.get("precision"))
        rows.append(row)
        last = (res, time.perf_counter() - t)
    return {"arch": arch, "k": k, "batch": batch, "rounds": rounds, "rows": rows}


def _measure_one(device: Any, arch: str, res: int, k: int, batch: int, rounds: int, warmup: int) -> dict[str, Any]:
    import torch

    from cxr_fast.bench.packed import batches, packed_step, separate_steps
    from cxr_fast.packed import stack_batches
    from cxr_fast.runtime import fixed_shapes

    fixed_shapes(device)
    separate = separate_steps(arch, "fastai07", k, "sgd", str(device), "auto")
    data = batches(k, batch, res, device)
    streams = [torch.cuda.Stream(device) for _ in range(k)]
    for s in streams:
        s.wait_stream(torch.cuda.current_stream(device))  # the batches were made on the default stream
    seq_s = time_sequential(separate, data, rounds, warmup, device)
    conc_s = time_concurrent(separate, data, rounds, warmup, device, lambda i: torch.cuda.stream(streams[i]))
    del separate
    packed = packed_step(arch, "fastai07", k, "sgd", str(device), "auto")
    images, labels = stack_batches(data)
    pack_s = time_sequential([packed], [(images, labels)], rounds, warmup, device)
    return {"precision": packed.precision, "sequential_ms": seq_s * 1e3, "concurrent_ms": conc_s * 1e3,
            "packed_ms": pack_s * 1e3, "concurrent_speedup": seq_s / conc_s, "packed_speedup": seq_s / pack_s}


def time_sequential(steps: Sequence[Any], data: Sequence[tuple[Any, Any]], rounds: int, warmup: int,
                    device: Any) -> float:
    """Seconds per round: each step once on its own batch, in turn, in this thread."""
    for _ in range(warmup):
        for step, (x, y) in zip(steps, data):
            step(x, y)
    sync_device(device)
    t = time.perf_counter()
    for _ in range(rounds):
        for step, (x, y) in zip(steps, data):
            step(x, y)
    sync_device(device)
    return (time.perf_counter() - t) / max(1, rounds)


def time_concurrent(steps: Sequence[Any], data: Sequence[tuple[Any, Any]], rounds: int, warmup: int, device: Any,
                    stream: Callable[[int], Any] = lambda i: contextlib.nullcontext()) -> float:
    """Seconds per round: step i runs ``rounds`` times in thread i inside ``stream(i)`` (its CUDA stream), all
    threads released together; the clock stops when all joined and the device is synced. An error in a thread
    is raised here."""
    errors: list[BaseException] = []
    gate = threading.Barrier(len(steps) + 1)

    def work(i: int) -> None:
        step, (x, y) = steps[i], data[i]
        try:
            with stream(i):
                for _ in range(warmup):
                    step(x, y)
                gate.wait()
                for _ in range(rounds):
                    step(x, y)
        except BaseException as exc:  # noqa: BLE001 - carried to the caller
            errors.append(exc)
            gate.abort()

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(steps))]
    for th in threads:
        th.start()
    try:
        gate.wait()  # every thread warmed up (its queue may still run; the sync below waits for all of it)
    except threading.BrokenBarrierError:
        pass
    t = time.perf_counter()
    for th in threads:
        th.join()
    sync_device(device)
    if errors:
        raise errors[0]
    return (time.perf_counter() - t) / max(1, rounds)


def shared_predicted(arch: str, res: int, k: int, batch: int, precision: str | None) -> dict[str, Any]:
    """The plan's eager milliseconds per round of the training step's graphable work: K x one step (sequential),
    K runs under MPS (``cost.plan.shared_work``) and one packed step (``cost.plan.packed_work``)."""
    try:
        from cxr_fast.cost import devices
        from cxr_fast.cost.estimate import rate_for, work_time
        from cxr_fast.cost.plan import PACKED_LAUNCH_FACTOR, packed_work, shared_work
        from cxr_fast.cost.work import train_work
        from cxr_fast.vocabulary import DEFAULT_RECIPE

        dev = devices.resolve("cuda")
        precision = precision or ("bf16" if dev.supports_bf16 else "fp16")
        one = train_work(arch, res, batch, precision, DEFAULT_RECIPE, "sgd", foreach=True, augment=False).graphable

        def ms(work: Any) -> float:
            rate, _ = rate_for(dev, precision, arch, "train", work.flops)
            return work_time(work, dev, rate).seconds * 1e3

        return {"profile": dev.name, "sequential_ms": k * ms(one), "shared_mps_ms": ms(shared_work(one, k)),
                "packed_ms": ms(packed_work(one, k)), "packed_launch_factor": PACKED_LAUNCH_FACTOR}
    except Exception as exc:  # noqa: BLE001 - the measurement stands without a prediction
        return {"unavailable": one_line(exc, 200)}


def shared_lines(section: dict[str, Any] | None) -> list[str]:
    """The section as printed by ``gpu-check``: measured ms per round beside the plan's."""
    if not section:
        return []
    if "rows" not in section:
        return [f"shared GPU: {section.get('status', 'not measured')}"]
    lines = [f"\nshared GPU, {section['arch']} batch {section['batch']}, K = {section['k']}: ms per round of K steps "
             "(concurrent = K threads, one CUDA stream each)",
             "res   sequential  concurrent  packed   plan: sequential  shared (MPS)  packed"]
    for r in section["rows"]:
        if r["status"] != "ok":
            lines.append(f"{r['res']:>4}  {r['status']}" + (f": {r['error']}" if r.get("error") else ""))
            continue
        p = r.get("predicted") or {}
        plan = ("  ".join(f"{p[key]:>12.2f}" for key in ("sequential_ms", "shared_mps_ms", "packed_ms"))
                if "sequential_ms" in p else f"  {p.get('unavailable', '-')}")
        lines.append(f"{r['res']:>4}  {r['sequential_ms']:>10.2f}  {r['concurrent_ms']:>10.2f}  "
                     f"{r['packed_ms']:>6.2f}   {plan}")
    return lines
