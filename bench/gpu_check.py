"""One-shot GPU check: run it once on a GPU host; it measures what a CPU cannot and writes it down.

    cxr-fast gpu-check                       # results under $OUT (else ./bench-results/)
    cxr-fast gpu-check --out DIR --budget-s 480

On a bare GPU host without internet, install the checkout first: ``pip install --no-deps -e .``.

In order, each step timed, JSON rewritten after every step (a kill keeps what was done):
1. the CUDA context's own memory (what PyTorch's allocator never sees);
2. the built-in phantom (600 images, 1024 px; made once into the cache);
3. the decode-once stores for the nine resolutions (jpeg for DALI, uint8 cache, ffcv when installed);
   then DALI: whether it imports (its error, one line, if not) and which JPEG decoder really ran
   (``mixed`` decodes with nvJPEG only where ``libnvjpeg.so.13`` loads; else on the CPU);
4. batch-size limits, measured (double/bisect until OOM, ``bench.batch_search``) against the
   prediction (``cost.memory``): ResNet34 and DenseNet121 at several resolutions under an emulated
   11 GiB card (``set_per_process_memory_fraction``, compared on the same allocator budget), and at
   600 px on the whole card (compared with the CUDA context included). Goal: within 10%. Each search
   has its share of the step's time and starts a try only when the try's predicted time fits;
   then one training section (ResNet34 fed by the cache loader, augmented) under
   ``torch.cuda.set_sync_debug_mode("warn")``: every host sync a step makes, and the line that made it;
5. the device profile ``cxr-fast plan`` reads (``bench.calibrate``: timed training and evaluation steps
   at batch 8 per architecture and limit resolution, the launch cost, the bandwidth), written to
   ``device-profile.json`` and into the cache, where it replaces the card's datasheet model; then CUDA graphs
   (``bench.graphs_check``): one architecture's training step eager and graphed per resolution, beside the plan's
   prediction from that profile (skipped on a CPU: no GPU); then packed training (``bench.packed_check``): a
   packed step of K = 1, 2, 4, 8 models per architecture at 64, 224 and 600 px (those of --res), eager and graphed
   ms and the kernels one step launches (``torch.profiler``), beside the plan's packed step time and its launch
   factor (the smoke: K = 1, 2 at the smallest resolution, kernels 'not on a GPU');
6. ``cxr-fast bench`` at the nine resolutions with quick settings: loader images/s per backend,
   training images/s synthetic vs fed by the best loader (goal: >= 95%), and each loader's rate
   against what ResNet34 (AMP, channels-last) consumes (goal: >= 2x).
Then it prints a short table. The budget is hard: each step (and each batch search, each bench
resolution) starts only when its predicted time fits what is left, and records its time and whether the
budget cut it, so the default (480 s, phantom and stores included) fits one 10-minute command on a fresh
H100 or H200 with the wheels' install. ``--cpu-smoke`` runs the same code on the CPU with tiny
settings, to check the script itself on a machine without a GPU (no limits are measured there).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cxr_fast.errors import CxrError, one_line
from cxr_fast.units import GIB, MIB
from cxr_fast.vocabulary import ARCHS, parse_resolutions

LIMIT_RES = (128, 224, 448, 600)
EMULATED_GB = 11.0
FULL_CARD_RES = 600


class Check:
    """Budget keeping, step timing and the JSON document, rewritten after each step.

    The budget is hard, not only checked between steps: a step may get its own ``limit_s`` and reads
    ``section_left()`` (its own limit or the whole budget, whichever ends first) before each piece of work it
    starts, and ``mark_cut`` records what it left out, so each step says how long it ran and whether the
    budget cut it.
    """

    def __init__(self, out: Path, budget_s: float, doc: dict, clock: Callable[[], float] = time.perf_counter) -> None:
        self.out, self.budget_s, self.doc, self.clock = out, budget_s, doc, clock
        self.t0 = clock()
        self.path = out / "gpu-check.json"
        self.section_end = float("inf")  # elapsed seconds at which the running step's own limit ends
        self.cuts: list[str] = []  # what the running step left out for lack of time

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def section_left(self) -> float:
        """Seconds the running step has left: its own limit or the whole budget, whichever ends first."""
        return min(self.left(), self.section_end - self.elapsed())

    def mark_cut(self, what: str) -> None:
        """The running step left ``what`` out because its time was spent."""
        self.cuts.append(what)

    def save(self) -> None:
        from cxr_fast.io import write_json

        self.doc["elapsed_s"] = round(self.elapsed(), 1)
        write_json(self.path, self.doc)

    def step(self, name: str, fn: Callable[[], Any], min_left_s: float = 0.0, limit_s: float | None = None) -> Any:
        """Run one step, record its time, its limit, whether the budget cut it, and its result or error;
        skip it when less than ``min_left_s`` is left. ``limit_s`` bounds the step (``section_left``)."""
        if self.left() < min_left_s:
            print(f"[{self.elapsed():6.1f}s] {name}: skipped, budget spent", flush=True)
            self.doc["steps"][name] = {"status": "skipped", "reason": "time budget spent", "cut_by_budget": True}
            self.save()
            return None
        print(f"[{self.elapsed():6.1f}s] {name} ...", flush=True)
        t = self.clock()
        self.section_end = float("inf") if limit_s is None else self.elapsed() + limit_s
        self.cuts = []
        record: dict[str, Any] = {"status": "ok"}
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - a failed step is recorded, the others still run
            traceback.print_exc()
            record = {"status": "error", "error": one_line(exc, 500)}
            result = None
        record.update(seconds=round(self.clock() - t, 1), limit_s=None if limit_s is None else round(limit_s, 1),
                      cut_by_budget=bool(self.cuts), cut=self.cuts[:20])
        self.doc["steps"][name] = record
        self.section_end, self.cuts = float("inf"), []
        self.save()
        return result


def context_overhead(device) -> dict:
    """Card memory in use that the allocator does not own: CUDA context, cuDNN/cuBLAS handles."""
    import torch

    x = torch.randn(8, 1, 64, 64, device=device, requires_grad=True)
    w = torch.randn(8, 1, 3, 3, device=device, requires_grad=True)
    torch.nn.functional.conv2d(x, w).sum().backward()
    (torch.randn(64, 64, device=device) @ torch.randn(64, 64, device=device)).sum().item()
    torch.cuda.synchronize(device)
    free, total = torch.cuda.mem_get_info(device)
    reserved = torch.cuda.memory_reserved(device)
    del x, w
    torch.cuda.empty_cache()
    return {"total_bytes": int(total), "free_bytes": int(free), "reserved_bytes": int(reserved),
            "context_bytes_measured": int(total - free - reserved)}


MIN_SEARCH_S = 5.0  # a batch search given less than this is skipped, not started


def search_weights(plans: list[tuple[str, int, float | None]], total_bytes: int) -> list[float]:
    """Each search's share of the limits' time. A try fills the memory it is given, so its time grows with
    that memory, not with the resolution: a whole-card search weighs what the card holds over 11 GiB."""
    card_gb = total_bytes / GIB
    return [1.0 + (gb or card_gb) / EMULATED_GB for _, _, gb in plans]


def search_share(left_s: float, weights: list[float], i: int) -> float:
    """Seconds search ``i`` may take of ``left_s``: its weight over the searches still to run, so the time
    an early search leaves over goes to the later ones."""
    return max(0.0, left_s) * weights[i] / sum(weights[i:])


def measure_limits(device, total_bytes: int, archs, resolutions, left: Callable[[], float],
                   mark_cut: Callable[[str], None] = lambda what: None,
                   clock: Callable[[], float] = time.perf_counter) -> list[dict]:
    """Measured vs predicted max batch: emulated 11 GiB card at each resolution, whole card at 600 px.

    Each search is bounded by time (its weighted share of ``left()``, checked before every try), so a
    whole-card 600 px DenseNet121 search cannot run past the budget; a cut search reports the range it
    narrowed the limit to, and no error against the prediction unless the limit is known exactly.
    """
    from cxr_fast.bench.batch_search import measure_max_batch
    from cxr_fast.cost import memory
    from cxr_fast.step import device_precision

    precision = device_precision("auto", device)
    plans = [(arch, res, EMULATED_GB) for res in resolutions for arch in archs]
    plans += [(arch, FULL_CARD_RES, None) for arch in archs]
    weights = search_weights(plans, total_bytes)
    rows: list[dict] = []
    for i, (arch, res, gb) in enumerate(plans):
        share = search_share(left(), weights, i)
        if share < MIN_SEARCH_S:
            what = f"{arch} {res}px {f'{gb:g} GiB' if gb else 'whole card'}"
            mark_cut(f"limits {what}: skipped")
            rows.append({"arch": arch, "res": res, "budget": gb or "card", "status": "skipped (time budget)"})
            continue
        deadline = clock() + share
        prof = memory.profile(arch, res, "amp", True, "sgd")
        if gb is not None:
            fraction = min(1.0, gb * GIB / total_bytes)
            budget = int(fraction * total_bytes)
            predicted = prof.max_batch_for_allocator(budget)
            compared_on = "allocator budget (emulated card, no CUDA context)"
        else:
            fraction, budget = None, total_bytes
            predicted = prof.max_batch_size(total_bytes)
            compared_on = "whole card (CUDA context constant included)"
        t = time.perf_counter()
        print(f"    {arch} {res}px {'%g GiB' % gb if gb else 'whole card'}: predicted {predicted}", flush=True)
        try:
            m = measure_max_batch(arch, res, precision, True, "sgd", str(device), start=max(1, predicted),
                                  cap=max(4096, 2 * predicted), memory_fraction=fraction, growth=1.25,
                                  time_left=lambda end=deadline: end - clock())
        except Exception as exc:  # noqa: BLE001 - one failed search must not lose the others
            traceback.print_exc()
            rows.append({"arch": arch, "res": res, "emulated_gb": gb, "predicted": predicted,
                         "status": f"error: {one_line(exc)}"})
            continue
        measured = m["max_ok"]
        known = bool(measured) and not (m["cut_by_budget"] and not m["exact"])  # a cut search: a range, no error
        if m["cut_by_budget"]:
            mark_cut(f"limits {arch} {res}px {f'{gb:g} GiB' if gb else 'whole card'}: search cut after "
                     f"{len(m['tries'])} tries")
        row = {
            "arch": arch, "res": res, "precision": precision, "emulated_gb": gb, "budget_bytes": budget,
            "compared_on": compared_on, "predicted": predicted, "measured": measured, "capped": m["capped"],
            "cut_by_budget": m["cut_by_budget"], "time_share_s": round(share, 1),
            "measured_upper": None if not m["cut_by_budget"] or m["first_fail"] is None else m["first_fail"] - 1,
            "error": None if not known else round((predicted - measured) / measured, 4),
            "within_10pct": None if not known else abs(predicted - measured) <= 0.10 * measured,
            "tries": m["tries"], "try_seconds": m["try_seconds"], "peaks": m["peaks"],
            "seconds": round(time.perf_counter() - t, 1),
            "predicted_allocator_bytes_at_measured": prof.allocator_bytes(measured) if measured else None,
            "profile": prof.to_dict(),
        }
        # Measured bytes per extra image, from the successful tries' peaks: calibrates the model.
        ok = sorted((int(k), v) for k, v in m["peaks"].items())
        if len(ok) >= 2:  # the widest span of batch sizes, so allocator rounding matters least
            (b1, p1), (b2, p2) = ok[0], ok[-1]
            row["measured_bytes_per_sample"] = round((p2 - p1) / (b2 - b1))
            row["predicted_bytes_per_sample_no_margin"] = round(prof.activation_bytes_per_sample)
        print(f"      measured {measured}{'+' if m['capped'] else ''} ({row['error']:+.1%} error)"
              if row["error"] is not None else f"      measured {measured}"
              + (" (cut by the time budget)" if m["cut_by_budget"] else ""), flush=True)
        rows.append(row)
    return rows


def loaded_libraries(maps: str | None = None) -> set[str]:
    """Base names of the shared libraries this process has mapped (Linux ``/proc/self/maps``)."""
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return set()
    return {Path(line.split()[-1]).name for line in maps.splitlines() if ".so" in line and "/" in line}


def jpeg_decoder_ran(gpu_output: bool, libraries: set[str]) -> str:
    """Which JPEG decoder really ran. ``mixed`` names a device, not a decoder: without ``libnvjpeg.so.13``
    nvImageCodec skips its nvJPEG extension and decodes on the CPU (libjpeg-turbo), then copies to the GPU."""
    if not gpu_output:
        return "cpu"
    return "mixed (nvJPEG)" if any(n.startswith("libnvjpeg.so") for n in libraries) else "cpu (then copied to GPU)"


def dali_check(device, workdir: Path) -> dict:
    """Whether DALI imports here (its error, one line, if not), and which decoder decodes one JPEG with the
    graph's own decoder call (``mixed`` on a GPU): a DALI that imports but decodes on the CPU is no test of
    the GPU path."""
    import numpy as np
    import torch
    from PIL import Image

    from cxr_fast.loaders import backend

    ok, reason = backend("dali").available()
    if not ok:
        return {"importable": False, "error": one_line(RuntimeError(reason)).removeprefix("RuntimeError: "),
                "decoder": None}
    from nvidia import dali
    from nvidia.dali import fn, pipeline_def, types

    gpu = torch.device(device).type == "cuda"
    path = workdir / "dali-probe.jpg"
    Image.fromarray((np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)).save(path, quality=90)

    @pipeline_def(batch_size=1, num_threads=1, device_id=0 if gpu else None)
    def probe():
        jpegs, _ = fn.readers.file(files=[str(path)])
        return fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.GRAY)

    pipe = probe()
    pipe.build()
    (out,) = pipe.run()
    on_gpu = type(out).__name__ == "TensorListGPU"
    libs = loaded_libraries()
    return {"importable": True, "error": None, "version": getattr(dali, "__version__", None),
            "requested": "mixed" if gpu else "cpu", "output_on_gpu": on_gpu,
            "nvjpeg_loaded": any(n.startswith("libnvjpeg.so") for n in libs), "decoder": jpeg_decoder_ran(on_gpu, libs)}


def sync_debug_section(trainer, batches, steps: int, set_mode: Callable[[str], None] | None = None) -> dict:
    """Training steps under ``torch.cuda.set_sync_debug_mode("warn")``: every host sync a step makes is
    recorded (message and the line that made it), so a step that touches the host shows on a real card.

    The mode is set back to ``default`` whatever happens; ``set_mode`` is injectable for a CPU test.
    """
    import warnings

    import torch

    set_mode = set_mode or torch.cuda.set_sync_debug_mode
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        set_mode("warn")
        try:
            for _ in range(steps):
                trainer(*next(batches))
        finally:
            set_mode("default")
    syncs: dict[str, int] = {}
    for w in caught:
        if "synchroniz" in str(w.message).lower():
            key = f"{Path(w.filename).name}:{w.lineno}: {str(w.message).splitlines()[0][:160]}"
            syncs[key] = syncs.get(key, 0) + 1
    total = sum(syncs.values())
    return {"steps": steps, "syncs": total, "syncs_per_step": round(total / max(1, steps), 2), "where": syncs}


def measure_sync_debug(device, dataset, ids, targets, res: int, batch: int = 32, steps: int = 10,
                       backend: str = "cache") -> dict:
    """One training section (ResNet34 fed by the ``backend`` loader with the default recipe's augmentation)
    under sync-debug mode, after two warm-up steps outside it (first-call set-up may sync)."""
    from cxr_fast.augment import augment_config
    from cxr_fast.bench.throughput import build_trainer
    from cxr_fast.feed import make_loader
    from cxr_fast.loaders.base import LoaderSpec
    from cxr_fast.runtime import cycle, sync
    from cxr_fast.vocabulary import DEFAULT_RECIPE

    spec = LoaderSpec(dataset=dataset, image_ids=ids, targets=targets, res=res, batch_size=batch, train=True,
                      device=device, seed=0, channels_last=True, drop_last=True, augment=True,
                      augmentation=augment_config(DEFAULT_RECIPE))
    trainer = build_trainer("resnet34", device)
    batches = cycle(make_loader(backend, spec))
    for _ in range(2):
        trainer(*next(batches))
    sync(device)
    out = sync_debug_section(trainer, batches, steps)
    sync(device)
    return {"arch": "resnet34", "res": res, "batch": batch, "loader": backend, **out}


PROFILE_RESERVE_S = 45.0  # the device profile: about 1 s per timed point, train and eval, plus warm-ups
BENCH_S_PER_RES = 25.0  # the bench, per resolution
SYNC_DEBUG_S = 20.0  # the sync-debug training section: a loader, a model, 12 steps at 224 px
GRAPHS_S = 40.0  # the CUDA graphs section (bench.graphs_check): eager and graphed steps per resolution
PACKED_S = 60.0  # packed steps (bench.packed_check): K = 1..8, both architectures, a few resolutions, largest cut first
SHARED_S = 40.0  # the shared-GPU baseline (bench.shared_check): K runs in turn, on K streams, and packed
DEFAULT_BUDGET_S = 480.0  # one 10-minute command on a fresh H100/H200: this, plus installing the wheels,
# starting Python and CUDA, and at most RES_MARGIN's overrun of the last bench resolution


def time_reserves(skip_bench: bool, skip_profile: bool, n_res: int, sync_debug: bool = False) -> tuple[float, float]:
    """(seconds the limit searches leave for the steps after them, seconds the device profile needs left).

    The bench is the main job and the profile is what ``cxr-fast plan`` needs from a real card, so the
    limit searches stop early rather than eat their time; the first number covers the second.
    """
    bench = 0.0 if skip_bench else BENCH_S_PER_RES * n_res
    profile = 0.0 if skip_profile else PROFILE_RESERVE_S
    return bench + profile + (SYNC_DEBUG_S if sync_debug else 0.0), bench + profile / 2


def measure_profile(device, out: Path, archs, resolutions, smoke: bool = False) -> dict:
    """The measured device profile for ``cxr-fast plan`` (timed steps at the paper's batch size 8),
    saved in the cache, where it replaces the modelled card, and beside the check's results."""
    from cxr_fast.bench.calibrate import calibrate
    from cxr_fast.cost import devices

    points = [(a, 32 if smoke else r) for a in archs for r in ((32,) if smoke else resolutions)]
    profile = calibrate(points, batch=2 if smoke else 8, device=str(device), min_seconds=0.0 if smoke else 1.0,
                        say=lambda m: print(f"    {m}", flush=True))
    cached = None if smoke else devices.save_profile(profile)  # a smoke run must not replace a calibration
    copy = devices.save_profile(profile, out / "device-profile.json")
    return {"name": profile.name, "card": profile.card, "launch_s": profile.launch_s,
            "bandwidth": profile.bandwidth, "points": len(profile.points), "cache": str(cached) if cached else None,
            "file": str(copy)}


RES_MARGIN = 1.25  # a resolution starts only if 1.25x its predicted time fits: it cannot be stopped once begun


def predict_res_s(res: int, done: list[tuple[int, float]], first_s: float) -> float:
    """Seconds the bench at ``res`` should take, from the resolutions already run (ascending).

    Its fixed part (loader start-up, warm-up) and its pixel part (steps at a batch capped at 256, so
    time grows with res**2) are fitted to the last two resolutions; from one, all of it scales with
    res**2 (pessimistic); before any, ``first_s``.
    """
    if not done:
        return first_s
    r2, t2 = done[-1]
    if len(done) == 1:
        return t2 * max(1.0, (res / r2) ** 2)
    r1, t1 = done[-2]
    slope = max(0.0, (t2 - t1) / (r2 ** 2 - r1 ** 2)) if r2 != r1 else 0.0
    return max(t2, max(0.0, t2 - slope * r2 ** 2) + slope * res ** 2)


def run_bench_all(cfg_kwargs: dict, resolutions, left: Callable[[], float], per_res_s: float, on_row,
                  mark_cut: Callable[[str], None] = lambda what: None,
                  clock: Callable[[], float] = time.perf_counter) -> dict:
    """``cxr-fast bench`` one resolution at a time, each started only when its predicted time fits what is
    left (``predict_res_s``), so one large resolution at a large batch cannot run past the budget."""
    from cxr_fast.bench.config import BenchConfig
    from cxr_fast.bench.pipeline import run_bench

    doc: dict | None = None
    done: list[tuple[int, float]] = []
    for res in sorted(resolutions):
        need = RES_MARGIN * predict_res_s(res, done, per_res_s)
        if left() < need:
            print(f"    {res}px: skipped (time budget: about {need:.0f} s needed, {left():.0f} s left)", flush=True)
            mark_cut(f"bench {res}px: skipped (predicted {need:.0f} s, {max(0.0, left()):.0f} s left)")
            continue
        t = clock()
        part = run_bench(BenchConfig(res=[res], **cfg_kwargs), say=lambda m: print(f"    {m}", flush=True))
        done.append((res, clock() - t))
        print(f"    {res}px done in {done[-1][1]:.0f} s", flush=True)
        if doc is None:
            doc = part
        else:
            doc["rows"].extend(part["rows"])
            doc["loaders"].extend(part["loaders"])
            doc["settings"]["res"].extend(part["settings"]["res"])
        on_row(doc)
    return doc or {}


def summarize(bench: dict) -> list[dict]:
    """Per resolution: model appetite, loader rates against it, and the loader-fed/synthetic ratio."""
    rows = bench.get("rows", [])
    out: list[dict] = []
    for res in sorted({r["res"] for r in rows}):
        sel = [r for r in rows if r["res"] == res]
        synth = {r["arch"]: r for r in sel if r["kind"] == "train_synthetic" and r["status"] == "ok"}
        fed = {r["arch"]: r for r in sel if r["kind"] == "train_loader" and r["status"] == "ok"}
        loaders = {r["backend"]: r["images_per_s"] for r in sel if r["kind"] == "loader" and r["images_per_s"]}
        appetite = synth.get("resnet34", {}).get("images_per_s")
        entry = {"res": res, "resnet34_synthetic": appetite, "loaders": loaders,
                 "loader_vs_appetite": {k: round(v / appetite, 2) for k, v in loaders.items()} if appetite else {},
                 "fed_over_synthetic": {a: fed[a]["ratio"] for a in fed},
                 "best_loader": {a: fed[a]["backend"] for a in fed}}
        out.append(entry)
    return out


def print_summary(doc: dict) -> None:
    ctx = doc.get("context") or {}
    print(f"\n=== GPU check: {doc['machine'].get('device_name')} ({doc['date']}), {doc.get('elapsed_s', 0):.0f} s ===")
    if ctx:
        print(f"CUDA context + libraries: {ctx['context_bytes_measured'] / MIB:.0f} MiB measured "
              f"(model constant {doc['memory_assumptions']['cuda_context_bytes'] / MIB:.0f} MiB)")
    dali = doc.get("dali")
    if dali:
        print(f"DALI: {dali['decoder']} decode" if dali["importable"] else f"DALI: not importable ({dali['error']})")
    syncs = doc.get("sync_debug")
    if syncs:
        print(f"host syncs in {syncs['steps']} training steps (sync-debug mode): {syncs['syncs']}")
    from cxr_fast.bench.graphs_check import graphs_lines

    for line in graphs_lines(doc.get("graphs")):
        print(line)
    from cxr_fast.bench.packed_check import packed_lines

    for line in packed_lines(doc.get("packed")):
        print(line)
    from cxr_fast.bench.shared_check import shared_lines

    for line in shared_lines(doc.get("shared")):
        print(line)
    limits = [r for r in doc.get("limits") or [] if "measured" in r]
    if limits:
        print("\nmax batch        res  budget        predicted  measured  error")
        for r in limits:
            budget = f"{r['emulated_gb']:g} GiB" if r["emulated_gb"] else "card"
            err = "-" if r["error"] is None else f"{r['error']:+.1%}"
            print(f"{r['arch']:<14} {r['res']:>5}  {budget:<12} {r['predicted']:>9}  "
                  f"{r['measured']:>7}{'+' if r['capped'] else ' '} {err:>7}")
    summary = doc.get("summary") or []
    if summary:
        backends = sorted({b for s in summary for b in s["loaders"]})
        print("\nres  resnet34 img/s  " + "  ".join(f"{b:>10}" for b in backends)
              + "   fed/synth r34  fed/synth d121")
        for s in summary:
            cells = "  ".join(f"{s['loader_vs_appetite'].get(b, float('nan')):>9.2f}x" for b in backends)
            fo = s["fed_over_synthetic"]
            print(f"{s['res']:>4} {s['resnet34_synthetic'] or float('nan'):>14.4g}  {cells}   "
                  f"{_pct(fo.get('resnet34')):>13}  {_pct(fo.get('densenet121')):>14}")
        print("(loader columns: loader images/s / ResNet34 training images/s; goal >= 2x. fed/synth goal >= 95%)")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


@dataclass
class GpuCheckOptions:
    """What ``cxr-fast gpu-check`` measures and for how long (its flags)."""

    out: str | None = None  # results folder; None: $OUT, else ./bench-results/
    budget_s: float = DEFAULT_BUDGET_S  # start no work that would not end within this many seconds
    res: str = "all"  # bench resolutions
    limit_res: str = ",".join(map(str, LIMIT_RES))  # resolutions of the batch-limit check
    archs: str = ",".join(ARCHS)
    skip_limits: bool = False
    skip_bench: bool = False
    skip_profile: bool = False  # the device profile `cxr-fast plan` uses (bench.calibrate)
    cpu_smoke: bool = False  # tiny CPU run of the check itself (no GPU needed)


def run_gpu_check(args: GpuCheckOptions) -> int:
    """Every step in order within the budget; the JSON is rewritten after each. 0 when every step ran."""
    import torch

    from cxr_fast.bench.config import Effort
    from cxr_fast.bench.pipeline import bench_subset
    from cxr_fast.bench.results_io import machine_info, write_results
    from cxr_fast.cost import memory
    from cxr_fast.runtime import check_device_supported

    if not args.cpu_smoke and not torch.cuda.is_available():
        raise CxrError("no CUDA GPU here; the GPU check measures what a CPU cannot (--cpu-smoke checks the "
                       "command itself on the CPU)")
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    check_device_supported(device)  # a card this torch has no kernels for: one line, before any work
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    resolutions = parse_resolutions(args.res, "--res")
    limit_res = parse_resolutions(args.limit_res, "--limit-res")
    machine = machine_info(device)
    date = dt.date.today().isoformat()
    out = Path(args.out or os.environ.get("OUT") or "bench-results")
    out = out / f"gpu-check-{_slug(machine['device_name'])}-{date}"
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"schema": "cxr-fast-gpu-check/1", "date": date, "machine": machine,
                           "memory_assumptions": memory.assumptions(), "steps": {}, "goals": {
                               "limits": "predicted within 10% of measured max batch",
                               "fed_over_synthetic": ">= 0.95 at every resolution",
                               "loader_vs_appetite": ">= 2x ResNet34 AMP channels-last training images/s"}}
    check = Check(out, args.budget_s, doc)
    print(f"gpu-check on {machine['device_name']} -> {out}", flush=True)

    if device.type == "cuda":
        doc["context"] = check.step("context", lambda: context_overhead(device))

    from cxr_fast.data.source import resolve_dataset

    dataset = check.step("phantom", lambda: resolve_dataset(None, quiet=False))
    if dataset is None:
        print_summary(doc)
        return 1
    if args.cpu_smoke:
        effort = Effort(archs=None, batch_size=2, warmup=1, iters=1, train_seconds=0.0, loader_warmup=0,
                        loader_batch_size=8, loader_batches=1, loader_seconds=0.0, n_images=32,
                        measure_limit=False, limit_cap=0)
    else:
        effort = Effort(archs=None, batch_size=None, warmup=3, iters=10, train_seconds=1.0, loader_warmup=2,
                        loader_batch_size=128, loader_batches=4, loader_seconds=1.0, n_images=600,
                        measure_limit=False, limit_cap=0)  # limits are measured in their own step
    effort.packed_ks = []  # packed training is its own step (bench.packed_check), with its own time
    label = "Nodule"
    ids, targets = bench_subset(dataset, label, effort.n_images)

    def prepare() -> dict:
        from cxr_fast.loaders import availability
        from cxr_fast.stores import ffcv
        from cxr_fast.stores.manifest import FORMATS
        from cxr_fast.stores.prepare import PrepareConfig, auto_store_dir, prepare_store

        formats = [f for f in FORMATS if f != ffcv.FORMAT or availability()["ffcv"][0]]
        root = auto_store_dir(dataset, ids, targets)  # where the loaders look for it
        prepare_store(dataset, ids, targets, root, PrepareConfig(resolutions=tuple(resolutions),
                                                                 formats=tuple(formats), quiet=False))
        return {"store": str(root), "formats": formats, "resolutions": resolutions}

    doc["store"] = check.step("prepare", prepare)

    doc["dali"] = check.step("dali", lambda: dali_check(device, out))

    cuda = device.type == "cuda"
    after_limits, profile_needs = time_reserves(args.skip_bench, args.skip_profile, len(resolutions), sync_debug=cuda)
    after_limits += GRAPHS_S + PACKED_S + SHARED_S if cuda else 0.0
    if cuda and not args.skip_limits:
        total = torch.cuda.get_device_properties(device).total_memory
        doc["limits"] = check.step("limits", lambda: measure_limits(device, total, archs, limit_res,
                                                                    check.section_left, check.mark_cut),
                                   min_left_s=60 + after_limits, limit_s=check.left() - after_limits)

    if cuda:  # a CPU has no stream to wait for: sync-debug mode is CUDA's
        debug_res = 224 if 224 in resolutions else min(resolutions)
        doc["sync_debug"] = check.step("sync-debug", lambda: measure_sync_debug(device, dataset, ids, targets,
                                                                                debug_res),
                                       min_left_s=SYNC_DEBUG_S, limit_s=SYNC_DEBUG_S)

    if not args.skip_profile:
        doc["device_profile"] = check.step("device-profile", lambda: measure_profile(device, out, archs, limit_res,
                                                                                   args.cpu_smoke),
                                           min_left_s=profile_needs)

    from cxr_fast.bench.graphs_check import graphs_section

    # After the device profile, so the plan's prediction beside it uses this card's measured profile.
    doc["graphs"] = check.step("graphs", lambda: graphs_section(device, resolutions, check.section_left, archs[0]),
                               min_left_s=10.0 if cuda else 0.0, limit_s=GRAPHS_S)

    from cxr_fast.bench.packed_check import packed_check_section, packed_resolutions

    # Packed steps beside the plan (which uses the measured profile too); the smoke checks the code path, tiny.
    packed = (dict(resolutions=[min(resolutions)], archs=archs[:1], ks=(1, 2), steps=1, warmup=1) if args.cpu_smoke
              else dict(resolutions=packed_resolutions(resolutions), archs=archs))
    doc["packed"] = check.step("packed", lambda: packed_check_section(device, left=check.section_left, **packed),
                               min_left_s=10.0 if cuda else 0.0, limit_s=PACKED_S)

    from cxr_fast.bench.shared_check import shared_section

    # The baseline packing must beat: K runs sharing the card (on K streams), beside K in turn and one packed step.
    doc["shared"] = check.step("shared", lambda: shared_section(device, left=check.section_left, arch=archs[0]),
                               min_left_s=10.0 if cuda else 0.0, limit_s=SHARED_S)

    if not args.skip_bench:
        cfg_kwargs = dict(archs=archs, loaders=["all"], label=label, device=str(device), data=None,
                          cpu=effort, gpu=effort)

        def on_row(part: dict) -> None:
            doc["bench"] = part
            doc["summary"] = summarize(part)
            check.save()

        per_res = 5.0 if args.cpu_smoke else BENCH_S_PER_RES
        bench = check.step("bench", lambda: run_bench_all(cfg_kwargs, resolutions, check.section_left, per_res,
                                                          on_row, check.mark_cut),
                           min_left_s=per_res)
        if bench:
            doc["bench"] = bench
            doc["summary"] = summarize(bench)
            write_results(out, bench, stem="bench")
    check.save()
    print_summary(doc)
    print(f"\nwrote {check.path}", flush=True)
    failed = [k for k, v in doc["steps"].items() if v["status"] == "error"]
    return 1 if failed else 0
