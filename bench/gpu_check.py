"""One-shot GPU check: run it once on a GPU host; it measures what a CPU cannot and writes it down.

    cxr-fast gpu-check                       # results under $OUT (else ./bench-results/)
    cxr-fast gpu-check --out DIR --budget-s 420

On a bare GPU host without internet, install the checkout first: ``pip install --no-deps -e .``.

In order, each step timed, JSON rewritten after every step (a kill keeps what was done):
1. the CUDA context's own memory (what PyTorch's allocator never sees);
2. the built-in phantom (600 images, 1024 px; made once into the cache);
3. the decode-once stores for the nine resolutions (jpeg for DALI, uint8 cache, ffcv when installed);
4. batch-size limits, measured (double/bisect until OOM, ``bench.batch_search``) against the
   prediction (``cost.memory``): ResNet34 and DenseNet121 at several resolutions under an emulated
   11 GiB card (``set_per_process_memory_fraction``, compared on the same allocator budget), and at
   600 px on the whole card (compared with the CUDA context included). Goal: within 10%;
5. the device profile ``cxr-fast plan`` reads (``bench.calibrate``: timed training and evaluation steps
   at batch 8 per architecture and limit resolution, the launch cost, the bandwidth), written to
   ``device-profile.json`` and into the cache, where it replaces the card's datasheet model;
6. ``cxr-fast bench`` at the nine resolutions with quick settings: loader images/s per backend,
   training images/s synthetic vs fed by the best loader (goal: >= 95%), and each loader's rate
   against what ResNet34 (AMP, channels-last) consumes (goal: >= 2x).
Then it prints a short table. It stops starting new work when ``--budget-s`` is spent, so the whole
check fits in about 8 minutes on an H100. ``--cpu-smoke`` runs the same code on the CPU with tiny
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
    """Budget keeping, step timing and the JSON document, rewritten after each step."""

    def __init__(self, out: Path, budget_s: float, doc: dict) -> None:
        self.out, self.budget_s, self.doc = out, budget_s, doc
        self.t0 = time.perf_counter()
        self.path = out / "gpu-check.json"

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def save(self) -> None:
        from cxr_fast.io import write_json

        self.doc["elapsed_s"] = round(self.elapsed(), 1)
        write_json(self.path, self.doc)

    def step(self, name: str, fn: Callable[[], Any], min_left_s: float = 0.0) -> Any:
        """Run one step, record its time and result or error; skip it when the budget is spent."""
        if self.left() < min_left_s:
            print(f"[{self.elapsed():6.1f}s] {name}: skipped, budget spent", flush=True)
            self.doc["steps"][name] = {"status": "skipped", "reason": "time budget spent"}
            self.save()
            return None
        print(f"[{self.elapsed():6.1f}s] {name} ...", flush=True)
        t = time.perf_counter()
        try:
            result = fn()
            self.doc["steps"][name] = {"status": "ok", "seconds": round(time.perf_counter() - t, 1)}
        except Exception as exc:  # noqa: BLE001 - a failed step is recorded, the others still run
            traceback.print_exc()
            self.doc["steps"][name] = {"status": "error", "seconds": round(time.perf_counter() - t, 1),
                                       "error": one_line(exc, 500)}
            result = None
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


def measure_limits(device, total_bytes: int, archs, resolutions, left: Callable[[], float]) -> list[dict]:
    """Measured vs predicted max batch: emulated 11 GiB card at each resolution, whole card at 600 px."""
    from cxr_fast.bench.batch_search import measure_max_batch
    from cxr_fast.cost import memory
    from cxr_fast.step import device_precision

    precision = device_precision("auto", device)
    plans = [(arch, res, EMULATED_GB) for res in resolutions for arch in archs]
    plans += [(arch, FULL_CARD_RES, None) for arch in archs]
    rows: list[dict] = []
    for arch, res, gb in plans:
        if left() < 30:
            rows.append({"arch": arch, "res": res, "budget": gb or "card", "status": "skipped (time budget)"})
            continue
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
                                  cap=max(4096, 2 * predicted), memory_fraction=fraction, growth=1.25)
        except Exception as exc:  # noqa: BLE001 - one failed search must not lose the others
            traceback.print_exc()
            rows.append({"arch": arch, "res": res, "emulated_gb": gb, "predicted": predicted,
                         "status": f"error: {one_line(exc)}"})
            continue
        measured = m["max_ok"]
        row = {
            "arch": arch, "res": res, "precision": precision, "emulated_gb": gb, "budget_bytes": budget,
            "compared_on": compared_on, "predicted": predicted, "measured": measured, "capped": m["capped"],
            "error": None if not measured else round((predicted - measured) / measured, 4),
            "within_10pct": None if not measured else abs(predicted - measured) <= 0.10 * measured,
            "tries": m["tries"], "peaks": m["peaks"], "seconds": round(time.perf_counter() - t, 1),
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
              if measured else f"      measured {measured}", flush=True)
        rows.append(row)
    return rows


PROFILE_RESERVE_S = 45.0  # the device profile: about 1 s per timed point, train and eval, plus warm-ups
BENCH_S_PER_RES = 25.0  # the bench, per resolution


def time_reserves(skip_bench: bool, skip_profile: bool, n_res: int) -> tuple[float, float]:
    """(seconds the limit searches leave for the steps after them, seconds the device profile needs left).

    The bench is the main job and the profile is what ``cxr-fast plan`` needs from a real card, so the
    limit searches stop early rather than eat their time; the first number covers the second.
    """
    bench = 0.0 if skip_bench else BENCH_S_PER_RES * n_res
    profile = 0.0 if skip_profile else PROFILE_RESERVE_S
    return bench + profile, bench + profile / 2


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


def run_bench_all(cfg_kwargs: dict, resolutions, left: Callable[[], float], per_res_s: float, on_row) -> dict:
    """``cxr-fast bench`` one resolution at a time, so a time budget can stop it between resolutions."""
    from cxr_fast.bench.config import BenchConfig
    from cxr_fast.bench.pipeline import run_bench

    doc: dict | None = None
    for res in resolutions:
        if left() < per_res_s:
            print(f"    {res}px: skipped (time budget)", flush=True)
            continue
        t = time.perf_counter()
        part = run_bench(BenchConfig(res=[res], **cfg_kwargs), say=lambda m: print(f"    {m}", flush=True))
        print(f"    {res}px done in {time.perf_counter() - t:.0f} s", flush=True)
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
    budget_s: float = 420.0  # stop starting new work after this many seconds
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

    if not args.cpu_smoke and not torch.cuda.is_available():
        raise CxrError("no CUDA GPU here; the GPU check measures what a CPU cannot (--cpu-smoke checks the "
                       "command itself on the CPU)")
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
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

    after_limits, profile_needs = time_reserves(args.skip_bench, args.skip_profile, len(resolutions))
    if device.type == "cuda" and not args.skip_limits:
        total = torch.cuda.get_device_properties(device).total_memory
        doc["limits"] = check.step("limits", lambda: measure_limits(device, total, archs, limit_res,
                                                                    lambda: check.left() - after_limits),
                                   min_left_s=60 + after_limits)

    if not args.skip_profile:
        doc["device_profile"] = check.step("device-profile", lambda: measure_profile(device, out, archs, limit_res,
                                                                                   args.cpu_smoke),
                                           min_left_s=profile_needs)

    if not args.skip_bench:
        cfg_kwargs = dict(archs=archs, loaders=["all"], label=label, device=str(device), data=None,
                          cpu=effort, gpu=effort)

        def on_row(part: dict) -> None:
            doc["bench"] = part
            doc["summary"] = summarize(part)
            check.save()

        per_res = 5.0 if args.cpu_smoke else BENCH_S_PER_RES
        bench = check.step("bench", lambda: run_bench_all(cfg_kwargs, resolutions, check.left, per_res, on_row),
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
