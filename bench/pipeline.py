"""The bench pipeline: per resolution, loader images/s, training images/s, the batch-size limit, and packed
training (K models in one step) against the same K models stepped in turn.

Before booking a GPU a user learns, at each resolution, how fast each input pipeline delivers, how
fast the model trains from data already on the device (its ceiling) and from the best loader (what they
will get), and how large a batch fits. ``run_bench(cfg)`` returns the result document as flat rows
(``cxr_fast.bench.results_io.make_row``); each section is one function over a shared ``BenchRun``, and
one failure is a row with its reason, never a crash. ``_try_run`` halves the batch on out-of-memory, as
timm's benchmark does.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from cxr_fast.bench.config import BenchConfig, Effort
from cxr_fast.errors import one_line
from cxr_fast.runtime import free_memory, set_fp32_math
from cxr_fast.units import GIB, MIB
from cxr_fast.vocabulary import AUTO, is_autocast

SCHEMA = "cxr-fast-bench/1"
Say = Callable[[str], None]


@dataclass
class BenchRun:
    """What every section at every resolution shares: settings, device, data and the reporting hooks."""

    cfg: BenchConfig
    effort: Effort
    device: Any
    precision: str
    memory_precision: str
    machine: dict
    card_bytes: int | None
    predict_bytes: int
    dataset: Any = None
    ids: Any = None
    targets: Any = None
    say: Say = lambda _m: None  # noqa: E731
    rows: list[dict] = field(default_factory=list)
    loader_raw: list[dict] = field(default_factory=list)

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def common(self) -> dict:
        return dict(precision=self.precision, channels_last=self.cfg.channels_last, optimizer=self.cfg.optimizer)

    def row(self, **fields: Any) -> dict:
        from cxr_fast.bench.results_io import make_row

        return make_row(self.machine, **fields)


def memory_precision(requested: str) -> str:
    """What the prediction assumes: 'auto' means a GPU's AMP (bf16/fp16) even on the CPU, since a card
    is the question; only an explicit fp32 or tf32 (fp32 tensors both) predicts fp32."""
    return "amp" if requested == AUTO or is_autocast(requested) else "fp32"


def bench_subset(dataset: Any, label: str, n_images: int | None) -> tuple[Any, Any]:
    """The images the loaders hold: the first ``n_images`` of the metadata, with ``label``'s targets.

    The same (ids, targets) every time, so the store made on the first run (keyed by them) is reused
    and ``cxr-fast gpu-check`` can prepare it in advance.
    """
    import numpy as np

    total = len(dataset.metadata.image_ids)
    n = min(n_images or total, total)
    return dataset.metadata.image_ids[:n], dataset.metadata.has(label)[:n].astype(np.float32)


def cpu_threads(requested: int | None) -> tuple[int, str]:
    """Intra-op threads for CPU training. With every core already busy (other processes), OpenMP's
    spin-waiting barriers make a 2-thread step 10-30x slower than a 1-thread one (measured on a shared
    2-core machine), so 'auto' drops to one thread when the 1-minute load is at the core count."""
    import torch

    if requested is not None:
        return requested, "asked for"
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return torch.get_num_threads(), "torch's default"
    if cores > 1 and load >= cores - 0.5:
        return 1, f"the machine is busy (load {load:.1f} on {cores} cores); give --threads to override"
    return torch.get_num_threads(), f"torch's default (load {load:.1f} on {cores} cores)"


def run_bench(cfg: BenchConfig, say: Say | None = None, advance: Callable[[], None] | None = None,
              dataset: Any = None) -> dict:
    """Run every section for every resolution and return the result document (also what is written).

    ``say`` gets one-line progress messages, ``advance`` is called once per finished unit of work (one
    loader section, or one architecture at one resolution); both default to silence. ``dataset``: an
    already opened dataset (the command opens it once, to show the phantom's progress bar first).
    """
    import torch

    from cxr_fast.bench.results_io import machine_info
    from cxr_fast.cost import memory
    from cxr_fast.step import device_precision, resolve_device

    t_start = time.perf_counter()
    advance = advance or (lambda: None)
    device = resolve_device(cfg.device)
    effort = cfg.gpu if device.type == "cuda" else cfg.cpu
    machine = machine_info(device)
    card_bytes = int(machine["gpu_memory_bytes"]) if device.type == "cuda" else None
    run = BenchRun(cfg, effort, device, device_precision(cfg.precision, device), memory_precision(cfg.precision),
                   machine, card_bytes, card_bytes or int(cfg.predict_gpu_gb * GIB), say=say or (lambda _m: None))
    tf32 = set_fp32_math(run.precision == "tf32")  # what every TrainStep below sets too; recorded below
    archs = list(effort.archs or cfg.archs)
    threads, threads_why = cpu_threads(cfg.threads) if not run.on_gpu else (None, "GPU run: torch's default")
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
        run.say(f"CPU training with {threads} intra-op thread(s): {threads_why}")
    try:
        _open_data(run, dataset)
        for res in cfg.res:
            best = loader_section(run, res)
            advance()
            for arch in archs:
                limit_section(run, arch, res, training_section(run, arch, res, best))
                advance()
            packed_training_section(run, res, archs)
    finally:
        torch.set_num_threads(saved_threads)
    return {
        "schema": SCHEMA,
        "machine": machine,
        "settings": {**_plain(cfg), "resolved": {
            "device": str(device), "precision": run.precision, "tf32": tf32, "archs": archs,
            "effort": dataclasses.asdict(effort), "n_images": len(run.ids), "memory_precision": run.memory_precision,
            "predict_gpu_gb": _gib(run.predict_bytes), "threads": threads,
            "threads_why": threads_why}},
        "memory_assumptions": memory.assumptions(),
        "rows": run.rows,
        "loaders": run.loader_raw,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }


def _open_data(run: BenchRun, dataset: Any) -> None:
    """Open the dataset once, pick the loaders' images, and with several resolutions decode each image
    once for all of them (best effort: on failure each loader prepares its own resolution)."""
    from cxr_fast.stores.prepare import PrepareConfig, auto_store_dir, prepare_store

    if dataset is None:
        run.say("opening the dataset" + ("" if run.cfg.data else " (the built-in phantom; made once on first use)"))
        dataset = run.cfg.run_settings().read_dataset(run.cfg.data, quiet=True)
    run.dataset = dataset
    run.ids, run.targets = bench_subset(dataset, run.cfg.label, run.effort.n_images)
    if len(run.cfg.res) < 2:
        return
    run.say(f"decoding {len(run.ids)} images once for {len(run.cfg.res)} resolutions (reused by later runs)")
    try:
        prepare_store(dataset, run.ids, run.targets, auto_store_dir(dataset, run.ids, run.targets),
                      PrepareConfig(resolutions=tuple(run.cfg.res), formats=("cache",), quiet=True))
    except Exception as exc:  # noqa: BLE001 - an optimisation only
        run.say(f"up-front decode skipped ({one_line(exc)}); each loader prepares its own resolution")


# ----------------------------------------------------------------------------------------------- sections


def loader_section(run: BenchRun, res: int) -> dict | None:
    """Every loader backend side by side at ``res``; returns the fastest one's row (None if none ran)."""
    from cxr_fast.bench.loaders import bench_loaders

    run.say(f"{res}px: loaders")
    effort = run.effort
    lrows = bench_loaders(res=res, backends=run.cfg.loaders, batch_size=effort.loader_batch_size, augment=True,
                          device=run.device, warmup_batches=1, min_seconds=effort.loader_seconds,
                          min_batches=effort.loader_batches, quiet=True,
                          progress=lambda m: run.say(f"{res}px loader {m}"),
                          dataset=run.dataset, image_ids=run.ids, targets=run.targets)
    run.loader_raw.extend(lrows)
    for lr in lrows:
        status = "ok" if lr.get("images_per_s") is not None else ("error" if lr.get("error") else "skipped")
        run.rows.append(run.row(arch="", res=res, kind="loader", backend=lr["backend"], status=status,
                                reason=lr.get("error") or (None if status == "ok" else lr.get("reason")),
                                batch_size=lr["batch_size"], images_per_s=lr.get("images_per_s"),
                                ratio=lr.get("ratio_to_pil"), ratio_to="pil" if lr.get("ratio_to_pil") else None,
                                n_images=lr.get("images"), seconds=lr.get("seconds")))
    ok = [r for r in lrows if r.get("images_per_s") and not r.get("error")]
    return max(ok, key=lambda r: r["images_per_s"]) if ok else None


def training_section(run: BenchRun, arch: str, res: int, best: dict | None) -> tuple[Any, Any, int]:
    """The train_synthetic and train_loader rows of one (arch, res); returns (synthetic measurement,
    memory profile, batch size used).

    On a GPU (and whenever ``effort.paired`` is off) two blocks: synthetic steps, then loader-fed steps,
    the synthetic block retried at half the batch on out-of-memory. On a shared CPU (``paired``) the two
    kinds of step alternate, so neighbours' load hits both equally.
    """
    from cxr_fast.bench.throughput import build_trainer, loader_throughput, paired_throughput, synthetic_throughput
    from cxr_fast.cost import memory

    cfg, effort = run.cfg, run.effort
    prof = memory.profile(arch, res, run.memory_precision, cfg.channels_last, cfg.optimizer)
    bs = _training_batch(cfg, effort, prof, run.card_bytes)

    def trainer():
        return build_trainer(arch, run.device, run.precision, cfg.channels_last, cfg.optimizer)

    def loader(batch: int):
        from cxr_fast.feed import make_loader

        return make_loader(best["backend"], _train_spec(run, res, batch))

    try:
        if effort.paired and best is not None:
            run.say(f"{res}px {arch}: training steps, synthetic and fed by {best['backend']} in turn, batch {bs}")
            try:
                synth, fed = paired_throughput(trainer(), res, bs, loader(bs), warmup=effort.warmup,
                                               iters=effort.iters, min_seconds=effort.train_seconds)
            except Exception as exc:  # noqa: BLE001 - one failure is a row, not a crash
                run.rows += [_failed(run, arch, res, "train_synthetic", "synthetic", exc, bs),
                             _failed(run, arch, res, "train_loader", best["backend"], exc, bs)]
                return None, prof, bs
            run.rows += [_synth_row(run, arch, res, bs, synth, prof), _fed_row(run, arch, res, bs, fed, synth, best, prof)]
            return synth, prof, bs

        def synthetic(batch: int):
            run.say(f"{res}px {arch}: training step, synthetic input, batch {batch}")
            step = trainer()
            return step, synthetic_throughput(step, res, batch, warmup=effort.warmup, iters=effort.iters,
                                              min_seconds=effort.train_seconds)

        outcome, bs, exc = _try_run(run, f"{res}px {arch}", synthetic, bs)
        if outcome is None:
            run.rows.append(_failed(run, arch, res, "train_synthetic", "synthetic", exc, bs))
            run.rows.append(run.row(arch=arch, res=res, kind="train_loader", status="skipped", batch_size=bs,
                                    reason="no loader backend ran" if best is None else "the synthetic step failed",
                                    **run.common))
            return None, prof, bs
        step, synth = outcome
        run.rows.append(_synth_row(run, arch, res, bs, synth, prof))
        if best is None:
            run.rows.append(run.row(arch=arch, res=res, kind="train_loader", status="skipped", batch_size=bs,
                                    reason="no loader backend ran", **run.common))
            return synth, prof, bs
        run.say(f"{res}px {arch}: training step fed by {best['backend']}, batch {bs}")
        try:
            fed = loader_throughput(step, loader(bs), bs, warmup=effort.loader_warmup, iters=effort.iters,
                                    min_seconds=effort.train_seconds)
            run.rows.append(_fed_row(run, arch, res, bs, fed, synth, best, prof))
        except Exception as exc:  # noqa: BLE001
            run.rows.append(_failed(run, arch, res, "train_loader", best["backend"], exc, bs))
        return synth, prof, bs
    finally:
        free_memory(run.device)


def limit_section(run: BenchRun, arch: str, res: int, training: tuple[Any, Any, int]) -> None:
    """The batch-size limit of one (arch, res): predicted always, measured on a GPU."""
    synth, prof, bs = training
    effort = run.effort
    predicted_bs = prof.max_batch_size(run.predict_bytes)
    measured, note, status = None, None if run.on_gpu else "measured on a GPU only", "ok"
    if run.on_gpu and not effort.measure_limit:
        note = "not measured (measure_limit off)"
    if run.on_gpu and effort.measure_limit:
        from cxr_fast.bench.batch_search import measure_max_batch

        run.say(f"{res}px {arch}: measuring the largest batch (grow from the prediction until OOM, then bisect)")
        try:
            measured = measure_max_batch(arch, res, run.precision, run.cfg.channels_last, run.cfg.optimizer,
                                         str(run.device), start=max(1, min(predicted_bs, effort.limit_cap)),
                                         cap=effort.limit_cap, growth=1.25)
        except Exception as exc:  # noqa: BLE001
            note, status = f"batch search failed: {one_line(exc)}", "error"
            run.say(f"{res}px {arch}: {note}")
    run.rows.append(run.row(
        arch=arch, res=res, kind="batch_limit", status=status, batch_size=synth.batch_size if synth else bs,
        precision=run.memory_precision, channels_last=run.cfg.channels_last, optimizer=run.cfg.optimizer,
        max_batch_predicted=predicted_bs, gpu_gb=_gib(run.predict_bytes), param_count=prof.n_params,
        max_batch_measured=measured["max_ok"] if measured else None,
        max_batch_capped=measured["capped"] if measured else None,
        mem_per_sample_mb=_mb(synth.mem_per_sample_bytes) if synth else None,
        predicted_mem_per_sample_mb=_mb(prof.bytes_per_sample), reason=note,
    ))


def packed_off_reason(on_gpu: bool) -> str:
    """Why the packed section measured nothing (its effort's ``packed_ks`` is empty), and how to turn it on."""
    where = "gpu" if on_gpu else "cpu"
    why = ("" if on_gpu else " by default: a CPU is not launch-bound, so packing does not pay there "
           "(results/packed/cpu.md), and at 600 px it would take minutes")
    return (f"off on the {where.upper()} ({where}.packed_ks: []){why}; to measure it, give --config a bench "
            f"YAML with {where}: {{packed_ks: [1, 2]}}")


def packed_training_section(run: BenchRun, res: int, archs: list[str]) -> None:
    """Packed against sequential training images/s at ``res``: one step of K models (``cxr_fast.packed``) against
    one step of each of the same K models in turn (``bench.packed.throughput``, the two interleaved), per
    architecture and K of the effort, at its ``packed_batch`` per model (the fastai07 recipe, synthetic batches).

    Off (one skipped row saying how to turn it on) when the effort has no K. Each K starts only while its predicted
    time (the architecture's last K, scaled by K) fits the effort's ``packed_seconds`` for this resolution, and on a
    GPU only when its predicted memory (the packed step and the K separate models, held at once) fits the card.
    """
    from cxr_fast.bench.packed import throughput
    from cxr_fast.runtime import fixed_shapes

    effort, cfg = run.effort, run.cfg
    if not effort.packed_ks:
        reason = packed_off_reason(run.on_gpu)
        run.say(f"{res}px packed training: {reason}")
        run.rows.append(run.row(arch="", res=res, kind="train_packed", status="skipped", reason=reason, **run.common))
        return
    fixed_shapes(run.device)  # one shape per measurement, as in training; the warm-up pays cuDNN's autotuning
    batch, start = effort.packed_batch, time.perf_counter()
    for arch in archs:
        last: tuple[int, float] | None = None  # (K, seconds) of this architecture's last measurement
        for k in sorted(effort.packed_ks):
            common = dict(arch=arch, res=res, kind="train_packed", batch_size=batch, packed_k=k, **run.common)
            need = 0.0 if last is None else last[1] * k / last[0]
            left = effort.packed_seconds - (time.perf_counter() - start)
            if need > left or left <= 0:
                run.rows.append(run.row(backend="packed", status="skipped", **common, reason=(
                    f"time budget: about {need:.0f} s needed, {max(0.0, left):.0f} s of packed_seconds "
                    f"({effort.packed_seconds:g} s per resolution) left")))
                continue
            too_big = _packed_memory(run, arch, res, k, batch)
            if too_big:
                run.rows.append(run.row(backend="packed", status="skipped", reason=too_big, **common))
                continue
            run.say(f"{res}px {arch}: packed training, K={k} in one step against K steps in turn, batch {batch} each")
            t, failure = time.perf_counter(), None
            try:
                m = throughput(arch, res, k, batch, "fastai07", cfg.optimizer, str(run.device), run.precision,
                               cfg.channels_last, effort.packed_warmup, effort.packed_iters)
            except Exception as exc:  # noqa: BLE001 - one failure is a row, not a crash
                failure = exc.with_traceback(None)  # its frames hold the failed step's tensors
            free_memory(run.device)  # outside the except block, once the frames are released
            last = (k, time.perf_counter() - t)
            if failure is not None:
                run.rows.append({**_failed(run, arch, res, "train_packed", "packed", failure, batch), "packed_k": k})
                continue
            run.say(f"{res}px {arch} K={k}: packed {m['packed_ips']:.3g} img/s, sequential {m['sequential_ips']:.3g} "
                    f"img/s ({m['speedup']:.2f}x)")
            shared = dict(n_images=m["images"], **common)
            run.rows.append(run.row(backend="packed", status="ok", images_per_s=round(m["packed_ips"], 3),
                                    step_ms=round(1000 * m["packed_s"] / m["iters"], 2), ratio=round(m["speedup"], 3),
                                    ratio_to="sequential", seconds=round(m["packed_s"], 3), **shared))
            run.rows.append(run.row(backend="sequential", status="ok", images_per_s=round(m["sequential_ips"], 3),
                                    step_ms=round(1000 * m["sequential_s"] / m["iters"], 2),
                                    seconds=round(m["sequential_s"], 3), **shared))


def _packed_memory(run: BenchRun, arch: str, res: int, k: int, batch: int) -> str | None:
    """Why K models will not fit the card (None when they do, and on a CPU): the memory model's packed step of K
    models at ``batch`` each (K times one model's) plus the K separate models' weights, gradients and optimizer
    state, which the measurement holds at the same time."""
    if run.card_bytes is None:
        return None
    from cxr_fast.cost import memory

    prof = memory.profile(arch, res, run.memory_precision, run.cfg.channels_last, run.cfg.optimizer)
    need = k * (prof.allocator_bytes(batch) + prof.static_bytes) + memory.CUDA_CONTEXT_BYTES
    if need <= run.card_bytes:
        return None
    return (f"predicted memory: K={k} packed and sequential need about {need / GIB:.1f} GiB, "
            f"the card has {run.card_bytes / GIB:.1f} GiB")


# ----------------------------------------------------------------------------------------------- helpers


def _try_run(run: BenchRun, what: str, fn: Callable[[int], Any], batch: int,
             retries: int = 2) -> tuple[Any, int, BaseException | None]:
    """``fn(batch)``, halving the batch on out-of-memory up to ``retries`` times: (result, batch, error)."""
    import torch

    from cxr_fast.runtime import is_oom

    for attempt in range(retries + 1):
        try:
            return fn(batch), batch, None
        except Exception as exc:  # noqa: BLE001 - the caller turns a final failure into a row
            # The traceback holds the failed step's frames and tensors: keep only what the row needs.
            oom = is_oom(exc)
            failure = torch.OutOfMemoryError(one_line(exc)) if oom else exc.with_traceback(None)
        # Freed here, outside the except block, once the exception and its frames are released.
        free_memory(run.device)
        if oom and batch > 1 and attempt < retries:
            run.say(f"{what}: out of memory at batch {batch}; retrying at {batch // 2}")
            batch //= 2
            continue
        return None, batch, failure
    return None, batch, None  # pragma: no cover - the loop always returns


def _training_batch(cfg: BenchConfig, effort: Effort, prof: Any, card_bytes: int | None) -> int:
    if cfg.batch_size:
        return cfg.batch_size
    if effort.batch_size:
        return effort.batch_size
    predicted = prof.max_batch_size(card_bytes) if card_bytes else 256
    return max(1, min(256, int(predicted * 0.8)))


def _train_spec(run: BenchRun, res: int, batch: int) -> Any:
    """The training loader the loader-fed steps read: the recipe's augmentation, as ``train`` uses it."""
    from cxr_fast.augment import augment_config
    from cxr_fast.loaders.base import LoaderSpec
    from cxr_fast.vocabulary import DEFAULT_RECIPE

    return LoaderSpec(dataset=run.dataset, image_ids=run.ids, targets=run.targets, res=res, batch_size=batch,
                      train=True, device=run.device, seed=0, channels_last=run.cfg.channels_last, drop_last=True,
                      augment=True, augmentation=augment_config(DEFAULT_RECIPE))


def _failed(run: BenchRun, arch: str, res: int, kind: str, backend: str | None, exc: BaseException | None,
            batch: int) -> dict:
    from cxr_fast.runtime import is_oom

    reason = one_line(exc) if exc is not None else "unknown failure"
    run.say(f"{res}px {arch}: {kind} failed: {reason}")
    status = "oom" if exc is not None and is_oom(exc) else "error"
    return run.row(arch=arch, res=res, kind=kind, backend=backend, status=status, reason=reason, batch_size=batch,
                   **run.common)


def _synth_row(run: BenchRun, arch: str, res: int, bs: int, synth: Any, prof: Any) -> dict:
    return run.row(arch=arch, res=res, kind="train_synthetic", backend="synthetic", status="ok", batch_size=bs,
                   images_per_s=round(synth.images_per_s, 3), step_ms=_step_ms(synth), param_count=prof.n_params,
                   n_images=synth.images, seconds=round(synth.seconds, 3), peak_mem_mb=_mb(synth.peak_mem_bytes),
                   mem_per_sample_mb=_mb(synth.mem_per_sample_bytes),
                   predicted_mem_per_sample_mb=_mb(prof.bytes_per_sample), **run.common)


def _fed_row(run: BenchRun, arch: str, res: int, bs: int, fed: Any, synth: Any, best: dict, prof: Any) -> dict:
    ratio = fed.images_per_s / synth.images_per_s if synth.images_per_s else None
    return run.row(arch=arch, res=res, kind="train_loader", backend=best["backend"], status="ok", batch_size=bs,
                   images_per_s=round(fed.images_per_s, 3), step_ms=_step_ms(fed), param_count=prof.n_params,
                   ratio=None if ratio is None else round(ratio, 3), ratio_to="train_synthetic",
                   n_images=fed.images, seconds=round(fed.seconds, 3), peak_mem_mb=_mb(fed.peak_mem_bytes),
                   **run.common)


def _step_ms(m: Any) -> float | None:
    steps = m.images / m.batch_size if m.batch_size else 0
    return round(1000 * m.seconds / steps, 2) if steps else None


def _gib(value: int) -> float:
    return round(value / GIB, 2)


def _mb(value: float | None) -> float | None:
    return None if value is None else round(value / MIB, 2)


def _plain(cfg: BenchConfig) -> dict:
    from cxr_fast.config import to_dict

    return to_dict(cfg)


def failed_sections(doc: dict) -> list[str]:
    """'600px resnet34 train_loader (cache): reason' for every row that errored, so the exit code can say so.

    A loader that cannot run here is 'skipped' (its reason is shown), not failed.
    """
    out = []
    for r in doc.get("rows", []):
        if r.get("status") in ("error", "oom"):
            k = f"K={r['packed_k']}" if r.get("packed_k") else None
            what = " ".join(str(x) for x in (f"{r.get('res')}px", r.get("arch"), r.get("kind"), k) if x)
            where = f" ({r['backend']})" if r.get("backend") else ""
            out.append(f"{what}{where}: {r.get('reason')}")
    return out
