"""What a study will cost before a single run starts: time per cell, its bound, memory fit, makespan.

Why: a researcher books GPU time before running the paper's 108 trainings. Each cell's cost is its
counted work (``cost.work``: steps x FLOPs, bytes and launches, counted on the ``meta`` device)
timed on a device profile (``cost.devices``: measured here, or a datasheet card) by
``cost.estimate``. A cell's settings are its ``RunConfig`` (the run schema, defaults included), and
what it runs is what ``cxr_fast.train`` runs:

- training: ``epochs x steps`` steps, ``steps = ceil(n_train / batch)`` (the last batch of one image
  is dropped), each a ``TrainStep`` fed by the resident loader;
- evaluation: every epoch the plain view of every validation image, then at the end the plain view
  plus ``tta`` augmented views (``predict``), in batches of the training batch size;
- one checkpoint per epoch (parameters plus optimizer state), and a setup before the first step
  (data, model, the resident split copied to the device).

Memory comes from ``cost.memory`` (the same prediction as ``cxr-fast memory``), with the resident
loader's uint8 split (train + validation images, ``res x res`` bytes each) beside the model.
The makespan on N GPUs is list scheduling of whole runs (a run never spans GPUs), longest first, and
also in config order, which is how ``cxr-fast study --executor ray`` submits them today.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr_fast.cost.devices import DeviceProfile
from cxr_fast.cost.memory import OPTIMIZER_STATE
from cxr_fast.errors import CxrError
from cxr_fast.schema.run import RunConfig
from cxr_fast.units import GIB
from cxr_fast.vocabulary import AUTO, PACK_AUTO_MAX, pack_chunks, resolve_precision

SCHEMA = "cxr-fast-plan/1"
PLAN_FILE = "plan.json"  # in a study folder: what `cxr-fast study` planned, for the report


@dataclass
class PlanCell:
    """The part of a study cell the plan reads (``cxr_fast.study.Cell`` has these attributes)."""

    cell_id: str
    label: str
    arch: str
    res: int
    epochs: int
    settings: dict[str, Any] = field(default_factory=dict)
    config: RunConfig | None = None  # the cell's run settings, when the study validated them already

    def run_config(self) -> RunConfig:
        """The cell's run settings: the study's validated ones, else these settings with the schema's defaults,
        validated by the run schema (a plan reads exactly what ``train`` would run)."""
        if self.config is not None:
            return self.config
        data = {**self.settings, "label": self.label, "arch": self.arch, "res": self.res, "epochs": self.epochs}
        return RunConfig.parse(data, f"cell {self.cell_id}")


def cells_from(cells: Iterable[Any]) -> list[PlanCell]:
    """Plan cells from anything with ``cell_id, label, arch, res, epochs, settings`` (study cells, whose
    ``config`` is used when ``study.checked_cells`` set it)."""
    return [PlanCell(str(c.cell_id), str(c.label), str(c.arch), int(c.res), int(c.epochs), dict(c.settings),
                     getattr(c, "config", None)) for c in cells]


def split_sizes(subsample_size: int, val_fraction: float) -> tuple[int, int]:
    """(training, validation) images of a subsample (``data.sampling``: round(n x fraction) to validation)."""
    n_val = int(round(subsample_size * val_fraction))
    return subsample_size - n_val, n_val


def steps_per_epoch(n_train: int, batch: int, max_batches: int | None = None) -> int:
    """Training batches per epoch as ``cxr_fast.train`` makes them (a last batch of one image is dropped)."""
    steps = n_train // batch if n_train % batch == 1 else -(-n_train // batch)
    return min(steps, max_batches) if max_batches else steps


def memory_fit(arch: str, res: int, batch: int, precision: str, optimizer: str, resident_bytes: int,
               dev: DeviceProfile) -> dict[str, Any]:
    """Does the step fit the device at ``batch``, and with the resident split beside it?"""
    from cxr_fast.cost import memory
    from cxr_fast.cost.memcache import memory_profile

    capacity = int(dev.memory_gib * GIB)
    mem_precision = memory.normalize_precision(precision)

    def largest(prec: str, reserve: int = 0) -> int:
        prof = memory_profile(arch, res, prec, optimizer)
        if dev.kind == "cpu":
            return prof.max_batch_for_allocator(capacity - reserve)
        return prof.max_batch_size(capacity - reserve)

    prof = memory_profile(arch, res, mem_precision, optimizer)
    need = prof.allocator_bytes(batch) if dev.kind == "cpu" else prof.predicted_bytes(batch)
    max_batch = largest(mem_precision)
    return {
        "precision": mem_precision,
        "predicted_gib": need / GIB,
        "predicted_bytes": int(need),
        "capacity_bytes": capacity,
        "max_batch": max_batch,
        "max_batch_fp32": max_batch if mem_precision == "fp32" else largest("fp32"),
        "fits": need <= capacity,
        "resident_gib": resident_bytes / GIB,
        "resident_bytes": int(resident_bytes),
        "resident_fits": need + resident_bytes <= capacity,
        "max_batch_with_resident": largest(mem_precision, resident_bytes),
        "method": memory.assumptions()["formula"],
    }


def step_works(cell: PlanCell, dev: DeviceProfile) -> tuple[str, Any, Any, Any]:
    """(precision, training step, plain evaluation batch, final evaluation batch) of a cell, counted on meta
    (cached by ``cost.work``): the plan times them one run each, and ``pack_plan`` K runs to a step."""
    from cxr_fast.cost.work import eval_work, train_work

    s = cell.run_config()
    gpu = dev.kind == "gpu"
    precision = resolve_precision(s.precision, gpu, dev.supports_bf16, dev.name, f"cell {cell.cell_id}")
    train = train_work(cell.arch, cell.res, s.batch_size, precision, s.recipe, s.optimizer, foreach=gpu,
                       augment=s.augment, scaler=gpu and precision == "fp16")
    plain = eval_work(cell.arch, cell.res, s.batch_size, precision, s.recipe, views=1)
    final = eval_work(cell.arch, cell.res, s.batch_size, precision, s.recipe, views=1 + s.tta)
    return precision, train, plain, final


def plan_cell(cell: PlanCell, dev: DeviceProfile) -> dict[str, Any]:
    """Every number of one cell: sizes, step times (eager and CUDA graphs), phase times, bound, memory."""
    from cxr_fast.cost.estimate import rate_for, step_summary, step_time
    from cxr_fast.cost.work import parameter_bytes

    from cxr_fast.cost.fit import choose_loader

    s = cell.run_config()
    gpu = dev.kind == "gpu"
    precision, train, plain, final = step_works(cell, dev)
    batch, recipe, optimizer, tta = s.batch_size, s.recipe, s.optimizer, s.tta
    n_train, n_val = split_sizes(s.subsample_size, s.val_fraction)
    steps = steps_per_epoch(n_train, batch, s.max_batches)
    eval_batches = -(-n_val // batch)

    rate_train, source = rate_for(dev, precision, cell.arch, "train", train.graphable.flops)
    rate_eval, _ = rate_for(dev, precision, cell.arch, "eval", plain.graphable.flops)

    split_bytes = (n_train + n_val) * cell.res * cell.res
    memory = memory_fit(cell.arch, cell.res, batch, precision, optimizer, split_bytes, dev)
    # The run's own rule for ``auto`` (every backend assumed to run on the card planned for).
    loader, loader_why = choose_loader(s.loader, gpu, lambda name: True, split_bytes,
                                       lambda: memory["predicted_bytes"], lambda: memory["capacity_bytes"])
    resident_bytes = split_bytes if loader == "resident" else 0
    setup = dev.setup_s + resident_bytes / (dev.host_to_device if gpu else dev.sustained_bandwidth)
    state_bytes = parameter_bytes(cell.arch, recipe) * (1 + OPTIMIZER_STATE.get(optimizer, 1))
    checkpoint = cell.epochs * state_bytes / dev.checkpoint_bytes_per_s

    out: dict[str, Any] = {
        "cell_id": cell.cell_id, "label": cell.label, "arch": cell.arch, "res": cell.res, "epochs": cell.epochs,
        "batch_size": batch, "precision": precision, "optimizer": optimizer, "tta": tta, "recipe": recipe,
        "augment": s.augment,
        "n_train": n_train, "n_val": n_val, "steps_per_epoch": steps, "eval_batches": eval_batches,
        "work_per_step": train.total.summary(), "rate_flops": rate_train, "rate_source": source,
        "setup_s": setup, "checkpoint_s": checkpoint, "loader": loader, "loader_why": loader_why,
    }
    for mode, graphs in (("eager", False), ("graphs", True)):
        t_train = step_time(train, dev, rate_train, graphs)
        t_plain = step_time(plain, dev, rate_eval, graphs)
        t_final = step_time(final, dev, rate_eval, graphs)
        train_s = cell.epochs * steps * t_train.seconds
        eval_s = eval_batches * (cell.epochs * t_plain.seconds + t_final.seconds)
        cell_time = t_train.scaled(cell.epochs * steps) + t_plain.scaled(cell.epochs * eval_batches) \
            + t_final.scaled(eval_batches)
        out[mode] = {"step": step_summary(t_train), "train_s": train_s, "eval_s": eval_s,
                     "wall_s": setup + train_s + eval_s + checkpoint, "bound": cell_time.bound,
                     "train_bound": t_train.bound}
    out["memory"] = memory
    if loader == "resident" and not memory["resident_fits"]:
        out["loader_note"] = (f"the resident split ({memory['resident_gib']:.1f} GiB) does not fit beside the model "
                              f"on {dev.name}, and the config asks for resident: set loader: auto or cache")
    return out


def makespan(durations: Sequence[float], workers: int, longest_first: bool = True) -> float:
    """Finish time of whole runs on ``workers`` identical devices, each run to the first free one."""
    if workers < 1:
        raise CxrError(f"--gpus must be at least 1, got {workers}")
    order = sorted(durations, reverse=True) if longest_first else list(durations)
    free = [0.0] * workers
    heapq.heapify(free)
    for d in order:
        heapq.heappush(free, heapq.heappop(free) + d)
    return max(free)


# Packed training (issue 21): K compatible runs trained as one step do K models' FLOPs and bytes with about one
# model's launches. The factor is the bound (a packed step of K = 8 dispatches at most 2x the ops of one
# model's step), used for every K >= 2 until `cxr-fast gpu-check` measures packed steps on a card.
PACKED_LAUNCH_FACTOR = 2.0
PACK_GPUS = 8  # the pack table's many-GPU column
# What a packed step's K runs must share (the planned cell's fields): one architecture, input, recipe and schedule.
PACK_KEY = ("arch", "res", "recipe", "epochs", "batch_size", "precision", "optimizer", "augment", "tta",
            "steps_per_epoch", "eval_batches")


def pack_groups(rows: Sequence[dict[str, Any]]) -> list[list[int]]:
    """Indices of planned cells one packed step could train together (equal ``PACK_KEY``), in config order."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(tuple(row[k] for k in PACK_KEY), []).append(i)
    return list(groups.values())


def packed_memory_bytes(row: dict[str, Any], k: int, dev: DeviceProfile) -> int:
    """Card memory of ``k`` of this cell's models in one step: k steps (parameters, optimizer state,
    activations) and k resident splits (none when the loader is not resident; seeds of one label could share
    theirs, which this does not count), one CUDA context."""
    from cxr_fast.cost.memory import CUDA_CONTEXT_BYTES

    m = row["memory"]
    context = CUDA_CONTEXT_BYTES if dev.kind == "gpu" else 0
    split = m["resident_bytes"] if row["loader"] == "resident" else 0
    return k * (m["predicted_bytes"] - context + split) + context


def choose_pack(row: dict[str, Any], n: int, dev: DeviceProfile, pack: str | int) -> int:
    """K for a group of ``n`` compatible cells: ``auto`` the largest whose K-fold memory fits the card (at most
    ``PACK_AUTO_MAX``), a
    number that number (at most ``n``), refused when it does not fit."""
    capacity = row["memory"]["capacity_bytes"]
    largest = next((k for k in range(n, 1, -1) if packed_memory_bytes(row, k, dev) <= capacity), 1)
    if pack == AUTO:
        return min(largest, PACK_AUTO_MAX)
    k = min(int(pack), n)
    if k >= 2 and k > largest:
        raise CxrError(f"--pack {pack}: {k} {row['arch']} models at {row['res']} px, batch {row['batch_size']} "
                       f"{row['precision']}, need {packed_memory_bytes(row, k, dev) / GIB:.1f} GiB on {dev.name} "
                       f"({dev.memory_gib:g} GiB); at most {largest} fit")
    return k


def packed_work(work: Any, k: int) -> Any:
    """``k`` models' work in one step: k times the FLOPs and bytes, ``PACKED_LAUNCH_FACTOR`` times the ops and
    kernels (each kernel doing k / factor of one model's), one model's host syncs (one read for all k)."""
    from cxr_fast.cost.work import Work

    if k == 1:
        return work
    f = PACKED_LAUNCH_FACTOR
    return Work(round(work.ops * f), tuple((fl * k / f, b * k / f, round(n * f)) for fl, b, n in work.kernels),
                work.syncs)


def packed_job(cell: PlanCell, rows: Sequence[dict[str, Any]], dev: DeviceProfile) -> dict[str, Any]:
    """The time of one packed job (the cells of ``rows``, one per model) with CUDA graphs: counted as one run
    of ``cell``'s shape whose work is packed; setup and checkpoints are the runs' own, summed."""
    from cxr_fast.cost.estimate import rate_for, step_time
    from cxr_fast.cost.work import StepWork

    k, row = len(rows), rows[0]
    precision, *steps = step_works(cell, dev)
    train, plain, final = (StepWork(packed_work(s.graphable, k), packed_work(s.eager, k)) for s in steps)
    rate_train, _ = rate_for(dev, precision, cell.arch, "train", train.graphable.flops)
    rate_eval, _ = rate_for(dev, precision, cell.arch, "eval", plain.graphable.flops)
    t_train = step_time(train, dev, rate_train, True)
    t_plain, t_final = step_time(plain, dev, rate_eval, True), step_time(final, dev, rate_eval, True)
    train_s = row["epochs"] * row["steps_per_epoch"] * t_train.seconds
    eval_s = row["eval_batches"] * (row["epochs"] * t_plain.seconds + t_final.seconds)
    other = dev.setup_s + sum(r["setup_s"] - dev.setup_s + r["checkpoint_s"] for r in rows)
    return {"k": k, "cells": [r["cell_id"] for r in rows], "train_s": train_s, "eval_s": eval_s,
            "wall_s": other + train_s + eval_s, "train_bound": t_train.bound}


# The baseline packing is priced against (issue 21): K runs of one shape sharing one GPU, each its own process (Ray's
# fractional GPUs, ``cxr-fast study --executor ray --runs-per-gpu K``), with CUDA MPS so that their kernels overlap.
def shared_memory_bytes(row: dict[str, Any], k: int, dev: DeviceProfile) -> int:
    """Card memory of ``k`` of this cell's runs sharing one card: ``packed_memory_bytes``'s k steps and k resident
    splits, and k CUDA contexts (one per process; MPS clients may need less, which this does not assume)."""
    from cxr_fast.cost.memory import CUDA_CONTEXT_BYTES

    return packed_memory_bytes(row, k, dev) + (k - 1) * (CUDA_CONTEXT_BYTES if dev.kind == "gpu" else 0)


def choose_shared(row: dict[str, Any], k: int, dev: DeviceProfile) -> int:
    """The most runs, at most ``k`` (the pack's K), whose memory fits the card together."""
    capacity = row["memory"]["capacity_bytes"]
    return next((j for j in range(k, 1, -1) if shared_memory_bytes(row, j, dev) <= capacity), 1)


def shared_work(work: Any, k: int) -> Any:
    """``k`` runs' step taken together on one card, as one ``Work`` that ``estimate.work_time`` times.

    With CUDA MPS the k processes (same shape, so in near lockstep) each launch their own kernel j from their
    own host thread at once, and the device runs the k copies side by side: each kernel slot does k times the
    FLOPs and bytes with one run's launches and host syncs (each process waits only for its own). So, per step
    of all k, on a GPU with launch floor ``L`` (eager: ``launch_s``; graphs: ``graph_kernel_s`` plus one
    ``graph_launch_s``):

        T_k = sum over kernels n x max(L, k x f / rate, k x b / bandwidth)
              + (ops - kernels) x launch_s + syncs x sync_s                      (eager; graphs: + graph_launch_s)

    A launch-bound run (k x device time < L for its kernels) gains: T_k = T_1, k runs for the time of one; a
    compute- or bandwidth-bound one does not: T_k = k x T_1. The lockstep is a middle estimate: runs that drift
    apart could hide one's long kernels in another's launch gaps (at best max(T_1, k x device time of a step)),
    and MPS's own overheads are not counted. Without MPS the processes time-slice the GPU and nothing overlaps:
    T_k = k x T_1 (``shared_job`` with ``mps=False``; context switches not counted)."""
    from cxr_fast.cost.work import Work

    if k == 1:
        return work
    return Work(work.ops, tuple((fl * k, b * k, n) for fl, b, n in work.kernels), work.syncs)


def shared_job(cell: PlanCell, rows: Sequence[dict[str, Any]], dev: DeviceProfile, graphs: bool,
               mps: bool = True) -> dict[str, Any]:
    """The time of the runs of ``rows`` (one shape, ``cell``'s) sharing one card at once (``shared_work``),
    eager or each with CUDA graphs; setup and checkpoints are the runs' own, summed, as in ``packed_job``.
    Refused in one line when their memory does not fit the card together."""
    from cxr_fast.cost.estimate import rate_for, step_time
    from cxr_fast.cost.work import StepWork

    k, row = len(rows), rows[0]
    need = shared_memory_bytes(row, k, dev)
    if need > row["memory"]["capacity_bytes"]:
        raise CxrError(f"{k} {row['arch']} runs at {row['res']} px, batch {row['batch_size']} {row['precision']}, "
                       f"sharing one {dev.name} need {need / GIB:.1f} GiB ({dev.memory_gib:g} GiB); at most "
                       f"{choose_shared(row, k, dev)} fit")
    precision, *steps = step_works(cell, dev)
    overlap, turns = (k, 1) if mps else (1, k)  # MPS: k copies per kernel slot; time-slicing: k turns of one run
    train, plain, final = (StepWork(shared_work(s.graphable, overlap), shared_work(s.eager, overlap)) for s in steps)
    rate_train, _ = rate_for(dev, precision, cell.arch, "train", train.graphable.flops)
    rate_eval, _ = rate_for(dev, precision, cell.arch, "eval", plain.graphable.flops)
    t_train = step_time(train, dev, rate_train, graphs)
    t_plain, t_final = step_time(plain, dev, rate_eval, graphs), step_time(final, dev, rate_eval, graphs)
    train_s = turns * row["epochs"] * row["steps_per_epoch"] * t_train.seconds
    eval_s = turns * row["eval_batches"] * (row["epochs"] * t_plain.seconds + t_final.seconds)
    other = dev.setup_s + sum(r["setup_s"] - dev.setup_s + r["checkpoint_s"] for r in rows)
    return {"k": k, "cells": [r["cell_id"] for r in rows], "graphs": graphs, "mps": mps, "train_s": train_s,
            "eval_s": eval_s, "wall_s": other + train_s + eval_s, "train_bound": t_train.bound}


def pack_plan(cells: Sequence[PlanCell], rows: Sequence[dict[str, Any]], dev: DeviceProfile, pack: str | int,
              gpus: Sequence[int] = (1, PACK_GPUS)) -> dict[str, Any]:
    """The grid's totals eager, with CUDA graphs, and packed + graphs, on each of ``gpus`` (whole runs or
    packed jobs, longest first), with the K chosen per group of compatible cells; under ``shared`` the baseline
    of the same K runs sharing one GPU with CUDA MPS (``shared_job``, eager and with graphs; K lowered to the
    most whose memory fits side by side), in sets of K to the first free GPU."""
    groups, jobs = [], []
    shared_jobs: dict[str, list[dict[str, Any]]] = {"shared_mps": [], "shared_mps_graphs": []}
    for idx in pack_groups(rows):
        row = rows[idx[0]]
        k = choose_pack(row, len(idx), dev, pack)
        chunks = pack_chunks(idx, k)
        jobs += [packed_job(cells[chunk[0]], [rows[i] for i in chunk], dev) for chunk in chunks]
        k_shared = choose_shared(row, k, dev)
        for chunk in pack_chunks(idx, k_shared):
            for mode, graphs in (("shared_mps", False), ("shared_mps_graphs", True)):
                shared_jobs[mode].append(shared_job(cells[chunk[0]], [rows[i] for i in chunk], dev, graphs))
        groups.append({**{key: row[key] for key in ("arch", "res", "recipe", "epochs", "batch_size", "precision")},
                       "cells": len(idx), "k": k, "jobs": [len(c) for c in chunks],
                       "memory_gib": packed_memory_bytes(row, k, dev) / GIB, "capacity_gib": dev.memory_gib,
                       "k_shared": k_shared, "shared_memory_gib": shared_memory_bytes(row, k_shared, dev) / GIB})
    walls = {"eager": [r["eager"]["wall_s"] for r in rows], "graphs": [r["graphs"]["wall_s"] for r in rows],
             "packed_graphs": [j["wall_s"] for j in jobs]}
    totals = {mode: {"jobs": len(w), "wall_s": {str(g): makespan(w, g) for g in gpus}} for mode, w in walls.items()}
    shared = {mode: {"jobs": len(js), "wall_s": {str(g): makespan([j["wall_s"] for j in js], g) for g in gpus}}
              for mode, js in shared_jobs.items()}
    return {"pack": pack, "launch_factor": PACKED_LAUNCH_FACTOR, "gpus": list(gpus), "totals": totals,
            "groups": groups, "jobs": jobs, "shared": {"totals": shared, "jobs": shared_jobs}}


def by_resolution(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per resolution: each architecture's bound (eager, graphs), batch limits and the loader's fit."""
    rows: list[dict[str, Any]] = []
    for res in sorted({c["res"] for c in cells}):
        at = [c for c in cells if c["res"] == res]
        row: dict[str, Any] = {"res": res, "archs": {}}
        pairs = sorted({(c["arch"], c["batch_size"]) for c in at})
        several = len({b for _, b in pairs}) > 1  # a grid's batch-size axis: each batch its own entry
        for arch, batch in pairs:
            c = max((c for c in at if (c["arch"], c["batch_size"]) == (arch, batch)),
                    key=lambda c: c["eager"]["wall_s"])
            m = c["memory"]
            row["archs"][f"{arch} batch {batch}" if several else arch] = {
                                  "bound": c["eager"]["bound"], "bound_graphs": c["graphs"]["bound"],
                                  "step_ms": c["eager"]["step"]["ms"], "step_ms_graphs": c["graphs"]["step"]["ms"],
                                  "batch_size": c["batch_size"], "precision": c["precision"],
                                  "max_batch": m["max_batch"], "max_batch_fp32": m["max_batch_fp32"],
                                  "fits": m["fits"], "resident_fits": m["resident_fits"],
                                  "loader": c["loader"] if m["resident_fits"] or c["loader"] != "resident"
                                  else "resident: does not fit, set auto or cache"}
        row["resident_gib"] = max(c["memory"]["resident_gib"] for c in at)
        row["resident_fits"] = all(c["memory"]["resident_fits"] for c in at)
        rows.append(row)
    return rows


def fit_statements(cells: list[dict[str, Any]], dev: DeviceProfile) -> list[str]:
    """For each architecture (and batch size) at its largest resolution: does the config's batch fit, and twice
    it, in fp32 and in the run's precision? (The paper's question: what fit at 600 px on an 11 GB 1080 Ti.)"""
    lines = []
    for arch, batch in sorted({(c["arch"], c["batch_size"]) for c in cells}):  # each batch size of a batch axis
        c = max((c for c in cells if (c["arch"], c["batch_size"]) == (arch, batch)), key=lambda c: c["res"])
        b, m = c["batch_size"], c["memory"]
        limits = {"fp32": m["max_batch_fp32"]}
        if m["precision"] != "fp32":
            limits[f"{c['precision']} autocast"] = m["max_batch"]
        for what, largest in limits.items():
            verdict = (f"batch {b} {'fits' if b <= largest else 'does not fit'} and batch {2 * b} "
                       f"{'fits' if 2 * b <= largest else 'does not'}")
            lines.append(f"{arch} at {c['res']} px in {what} on {dev.name} ({dev.memory_gib:g} GiB): {verdict} "
                         f"(largest {largest}, model alone)")
    return lines


def plan_study(cells: Iterable[Any], dev: DeviceProfile, gpus: int = 1, name: str = "study",
               progress: Any = None, pack: str | int | None = None) -> dict[str, Any]:
    """The plan document: every cell, totals eager and with CUDA graphs, per-resolution bounds, makespans,
    and with ``pack`` (auto or K) the totals packed + graphs on 1 and ``PACK_GPUS`` GPUs (``pack_plan``)."""
    cell_list = cells_from(cells)
    if not cell_list:
        raise CxrError("the study has no cells to plan")
    if gpus < 1:
        raise CxrError(f"--gpus must be at least 1, got {gpus}")
    rows = []
    for cell in cell_list:
        rows.append(plan_cell(cell, dev))
        if progress is not None:
            progress(cell)
    totals: dict[str, Any] = {}
    for mode in ("eager", "graphs"):
        walls = [r[mode]["wall_s"] for r in rows]
        totals[mode] = {
            "wall_s": sum(walls), "train_s": sum(r[mode]["train_s"] for r in rows),
            "eval_s": sum(r[mode]["eval_s"] for r in rows),
            "other_s": sum(r["setup_s"] + r["checkpoint_s"] for r in rows),
            "makespan_s": makespan(walls, gpus, True), "makespan_config_order_s": makespan(walls, gpus, False),
            "lower_bound_s": max(sum(walls) / gpus, max(walls)),
            "bounds": {b: sum(1 for r in rows if r[mode]["bound"] == b) for b in ("compute", "bandwidth", "launches")},
        }
    doc: dict[str, Any] = {
        "schema": SCHEMA, "study": name, "gpus": gpus,
        "device": {k: getattr(dev, k) for k in ("name", "title", "kind", "source", "memory_gib", "peak_flops",
                                                   "bandwidth", "compute_share", "bandwidth_share", "launch_s",
                                                   "graph_kernel_s", "graph_launch_s", "sync_s", "setup_s",
                                                   "citations", "assumptions", "machine")},
        "cells": rows, "totals": totals, "by_res": by_resolution(rows), "fit": fit_statements(rows, dev),
        "notes": notes(dev),
    }
    if pack is not None:
        doc["pack"] = pack_plan(cell_list, rows, dev, pack, sorted({1, PACK_GPUS, gpus}))
    return doc


def notes(dev: DeviceProfile) -> list[str]:
    out = ["FLOPs count a multiply-accumulate as 2 (torch.utils.flop_counter); bytes are each kernel's inputs "
           "plus outputs; launches are aten ops dispatched (cost.work)",
           "per kernel: max(FLOPs / (share x peak), bytes / (share x bandwidth)); eager GPU: each kernel takes at "
           "least its launch; CPU: launches add (cost.estimate)",
           "store preparation (decoding each label's PNGs once, before the runs) is not included"]
    if dev.source == "modelled":
        out.append(f"{dev.name}: rates from the datasheet ({dev.citations.get('datasheet', '')}); overheads and "
                   "shares are assumptions until `cxr-fast gpu-check` measures the card")
    return out


def announce(cells: Iterable[Any], study_dir: str | Path, device: str | None = None, name: str = "study",
             write: bool = True) -> str:
    """One line for ``cxr-fast study``: the plan's total, and ``plan.json`` in the study folder for the report.

    Never raises: an estimate that cannot be made (no profile for this CPU, say) must not stop a study.
    """
    try:
        from cxr_fast.cost.devices import resolve
        from cxr_fast.io import write_json

        dev = resolve(device or "auto")
        doc = plan_study(cells, dev, 1, name)
        if write:
            write_json(Path(study_dir) / PLAN_FILE, doc)
        t = doc["totals"]["eager"]
        return (f"plan: {len(doc['cells'])} runs, about {human(t['wall_s'])} on {dev.name} ({dev.source}; "
                f"training {human(t['train_s'])}, evaluation {human(t['eval_s'])}); `cxr-fast plan` for the table")
    except Exception as exc:  # noqa: BLE001 - an estimate is advice; the study goes on without it
        from cxr_fast.errors import one_line

        return f"plan: no estimate ({one_line(exc, 200)})"


def human(seconds: float) -> str:
    """``42 s``, ``12.5 min``, ``3.2 h``, ``2.1 d``."""
    if not math.isfinite(seconds):
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
