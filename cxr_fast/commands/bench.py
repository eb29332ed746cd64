"""``cxr-fast bench``: per resolution, loader images/s, training images/s and the batch-size limit.

The main job of cxr-fast: before booking a GPU a user learns, at each resolution, how fast each input
pipeline delivers, how fast the model trains from data already on the device (its ceiling) and from
the best loader (what they will get), and how large a batch fits. ``run_bench`` does the work and
returns the result document; ``run`` is the thin CLI wrapper around it.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cxr_fast.vocabulary import ARCHS

HELP = "throughput and batch-size limits per resolution: loaders, training step, memory"
DESCRIPTION = (
    "For each resolution: images/s of every available loader backend (and its ratio to the PIL "
    "baseline), training images/s from synthetic tensors on the device (the model's ceiling) and fed by "
    "the best loader (what you get), their ratio, the largest batch (measured on a GPU, predicted "
    "always) and the memory per image. Without --data it runs on the built-in phantom. Writes "
    "bench.json and bench.csv to --out (default bench-results/<timestamp>/). Unset flags come from "
    "--config, then the built-in defaults (the same as configs/bench.yaml)."
)


@dataclass
class Effort:
    """How hard to measure on one kind of device (the CPU gets a small, few-minute version)."""

    archs: list[str] | None = None  # None: the top-level archs
    batch_size: int | None = None  # training batch; None: min(256, 80% of the predicted max for the card)
    warmup: int = 5  # untimed training steps
    iters: int = 20  # timed training steps, at least ...
    train_seconds: float = 2.0  # ... and at least this long (small resolutions take more steps)
    loader_warmup: int = 2  # untimed loader-fed training steps (after one untimed start-up batch)
    loader_batch_size: int = 256
    loader_batches: int = 20  # at least this many timed loader batches per backend
    loader_seconds: float = 5.0  # ... and at least this long
    n_images: int | None = 2000  # images the loaders hold (None: the whole dataset)
    paired: bool = False  # interleave synthetic and loader-fed steps (a shared CPU: same interference for both)
    measure_limit: bool = True  # measured max batch (GPU only)
    limit_cap: int = 2048


def cpu_effort() -> Effort:
    return Effort(archs=["resnet34"], batch_size=2, warmup=1, iters=2, train_seconds=3.0, loader_warmup=0, loader_batch_size=8,
                  loader_batches=3, loader_seconds=1.0, n_images=600, paired=True, measure_limit=False,
                  limit_cap=0)


@dataclass
class BenchConfig:
    res: list[int] = field(default_factory=lambda: [224])
    archs: list[str] = field(default_factory=lambda: list(ARCHS))
    loaders: list[str] = field(default_factory=lambda: ["all"])
    label: str = "Nodule"
    precision: str = "auto"
    channels_last: bool = True
    optimizer: str = "sgd"
    device: str = "auto"
    predict_gpu_gb: float = 11.0  # the card the prediction is for when not on a GPU (the paper's)
    data: str | None = None
    out: str | None = None
    json: str | None = None
    batch_size: int | None = None  # overrides the effort's training batch size
    threads: int | None = None  # CPU intra-op threads; None: torch's default, or 1 when the machine is busy
    cpu: Effort = field(default_factory=cpu_effort)
    gpu: Effort = field(default_factory=Effort)


def load_config(path: str | None = None, **flags: Any) -> BenchConfig:
    """Defaults, then the YAML file (if given), then the command-line flags that were set."""
    from cxr_fast.config import from_dict, load_yaml, override
    from cxr_fast.errors import CxrError

    cfg = BenchConfig()
    if path:
        data = load_yaml(path)
        for key in ("cpu", "gpu"):
            if key in data:
                if not isinstance(data[key], dict):
                    raise CxrError(f"{path}: '{key}' must be a mapping of settings")
                base = cpu_effort() if key == "cpu" else Effort()
                merged = {**dataclasses.asdict(base), **data[key]}
                data[key] = from_dict(Effort, merged, f"{path} [{key}]")
        if "res" in data:
            data["res"] = _res_list(data["res"], path)
        for key in ("archs", "loaders"):
            if isinstance(data.get(key), str):
                data[key] = [s.strip() for s in data[key].split(",") if s.strip()]
        cfg = from_dict(BenchConfig, {**dataclasses.asdict(cfg), **data, "cpu": data.get("cpu", cfg.cpu),
                                      "gpu": data.get("gpu", cfg.gpu)}, path)
    cfg = override(cfg, **flags)
    _validate(cfg)
    return cfg


def _res_list(value: Any, source: str = "--res") -> list[int]:
    from cxr_fast.vocabulary import parse_resolutions

    return parse_resolutions(value, source)


def _validate(cfg: BenchConfig) -> None:
    from cxr_fast.errors import CxrError
    from cxr_fast.loaders import BACKENDS
    from cxr_fast.models import ARCHS

    cfg.res = _res_list(cfg.res)
    for arch in list(cfg.archs) + list(cfg.cpu.archs or []) + list(cfg.gpu.archs or []):
        if arch not in ARCHS:
            raise CxrError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")
    for name in cfg.loaders:
        if name != "all" and name not in BACKENDS:
            raise CxrError(f"unknown loader {name!r}; choose all or from {', '.join(BACKENDS)}")
    if cfg.optimizer not in ("sgd", "adam"):
        raise CxrError(f"unknown optimizer {cfg.optimizer!r}; choose sgd or adam")
    if cfg.batch_size is not None and cfg.batch_size < 1:
        raise CxrError(f"--batch-size must be 1 or more, got {cfg.batch_size}")
    if cfg.threads is not None and cfg.threads < 1:
        raise CxrError(f"--threads must be 1 or more, got {cfg.threads}")
    if cfg.predict_gpu_gb <= 0:
        raise CxrError(f"predict_gpu_gb must be positive, got {cfg.predict_gpu_gb}")


# ----------------------------------------------------------------------------- the work


def _memory_precision(requested: str) -> str:
    """What the prediction assumes: 'auto' means a GPU's AMP (bf16/fp16) even on the CPU, since a card
    is the question; only an explicit fp32 predicts fp32."""
    return "fp32" if requested == "fp32" else "amp"


def _training_batch(cfg: BenchConfig, effort: Effort, prof, card_bytes: int | None) -> int:
    if cfg.batch_size:
        return cfg.batch_size
    if effort.batch_size:
        return effort.batch_size
    predicted = prof.max_batch_size(card_bytes) if card_bytes else 256
    return max(1, min(256, int(predicted * 0.8)))


def _best_loader(loader_rows: list[dict]) -> dict | None:
    ok = [r for r in loader_rows if r.get("images_per_s") and not r.get("error")]
    return max(ok, key=lambda r: r["images_per_s"]) if ok else None


def bench_subset(dataset, label: str, n_images: int | None):
    """The images the loaders hold: the first ``n_images`` of the metadata, with ``label``'s targets.

    The same (ids, targets) every time, so the store made on the first run (keyed by them) is reused
    and ``gpu_check`` can prepare it in advance.
    """
    import numpy as np

    total = len(dataset.metadata.image_ids)
    n = min(n_images or total, total)
    return dataset.metadata.image_ids[:n], dataset.metadata.has(label)[:n].astype(np.float32)


def run_bench(cfg: BenchConfig, say: Callable[[str], None] | None = None,
              advance: Callable[[], None] | None = None) -> dict:
    """Run every section for every resolution and return the result document (also what is written).

    ``say`` gets one-line progress messages, ``advance`` is called once per finished unit of work
    (one loader section or one architecture at one resolution); both default to silence.
    """
    from cxr_fast.bench import memory
    from cxr_fast.bench.results_io import machine_info
    from cxr_fast.step import resolve_device, resolve_precision

    say = say or (lambda _m: None)
    advance = advance or (lambda: None)
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    on_gpu = device.type == "cuda"
    effort = cfg.gpu if on_gpu else cfg.cpu
    archs = list(effort.archs or cfg.archs)
    precision = resolve_precision(cfg.precision, device)
    mem_precision = _memory_precision(cfg.precision)
    machine = machine_info(device)
    card_bytes = int(machine["gpu_memory_bytes"]) if on_gpu else None
    predict_bytes = card_bytes or int(cfg.predict_gpu_gb * memory.GIB)
    predict_gb = round(predict_bytes / memory.GIB, 2)

    threads, threads_why = _cpu_threads(cfg.threads) if not on_gpu else (None, "GPU run: torch's default")
    saved_threads = None
    if threads is not None:
        import torch

        saved_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        say(f"CPU training with {threads} intra-op thread(s): {threads_why}")
    try:
        return _run_sections(cfg, effort, archs, device, on_gpu, precision, mem_precision, machine, card_bytes,
                             predict_bytes, predict_gb, say, advance, t_start,
                             {"threads": threads, "threads_why": threads_why})
    finally:
        if saved_threads is not None:
            import torch

            torch.set_num_threads(saved_threads)


def _cpu_threads(requested: int | None) -> tuple[int, str]:
    """Intra-op threads for CPU training. With every core already busy (other processes), OpenMP's
    spin-waiting barriers make a 2-thread step 10-30x slower than a 1-thread one (measured on a shared
    2-core machine), so 'auto' drops to one thread when the 1-minute load is at the core count."""
    import os

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


def _run_sections(cfg, effort, archs, device, on_gpu, precision, mem_precision, machine, card_bytes,
                  predict_bytes, predict_gb, say, advance, t_start, threads_info) -> dict:
    from cxr_fast.bench import memory
    from cxr_fast.bench.loaders import bench_loaders
    from cxr_fast.bench.results_io import make_row
    from cxr_fast.data.source import resolve_dataset

    say("opening the dataset" + ("" if cfg.data else " (the built-in phantom; made once on first use)"))
    dataset = resolve_dataset(cfg.data, quiet=True)
    ids, targets = bench_subset(dataset, cfg.label, effort.n_images)
    n_images = len(ids)

    if len(cfg.res) > 1:
        _prepare_all(dataset, ids, targets, cfg.res, say)
    ctx = _Context(cfg=cfg, effort=effort, machine=machine, device=device, precision=precision, dataset=dataset,
                   ids=ids, targets=targets, say=say)
    rows: list[dict] = []
    loader_raw: list[dict] = []
    for res in cfg.res:
        # 1. Loader throughput, every backend side by side.
        say(f"{res}px: loaders")
        lrows = bench_loaders(res=res, backends=cfg.loaders, data=cfg.data, label=cfg.label, n_images=n_images,
                              batch_size=effort.loader_batch_size, augment=True, device=device,
                              warmup_batches=1, min_seconds=effort.loader_seconds,
                              min_batches=effort.loader_batches, quiet=True,
                              progress=lambda m, r=res: say(f"{r}px loader {m}"))
        loader_raw.extend(lrows)
        for lr in lrows:
            status = "ok" if lr.get("images_per_s") is not None else ("error" if lr.get("error") else "skipped")
            rows.append(make_row(machine, arch="", res=res, kind="loader", backend=lr["backend"], status=status,
                                 reason=lr.get("error") or (None if status == "ok" else lr.get("reason")),
                                 batch_size=lr["batch_size"], images_per_s=lr.get("images_per_s"),
                                 ratio=lr.get("ratio_to_pil"), ratio_to="pil" if lr.get("ratio_to_pil") else None,
                                 n_images=lr.get("images"), seconds=lr.get("seconds")))
        best = _best_loader(lrows)
        advance()

        for arch in archs:
            prof = memory.profile(arch, res, mem_precision, cfg.channels_last, cfg.optimizer)
            bs = _training_batch(cfg, effort, prof, card_bytes)
            predicted_bs = prof.max_batch_size(predict_bytes)
            # 2. Training throughput: synthetic tensors on the device, then fed by the best loader.
            train_rows, synth = _training(ctx, arch, res, bs, best, prof)
            rows.extend(train_rows)
            _free(device)

            # 3. Batch-size limit: predicted always, measured on a GPU.
            measured, limit_note = None, None if on_gpu else "measured on a GPU only"
            if on_gpu and not effort.measure_limit:
                limit_note = "not measured (measure_limit off)"
            if on_gpu and effort.measure_limit:
                from cxr_fast.bench.batch_search import measure_max_batch

                say(f"{res}px {arch}: measuring the largest batch (grow from the prediction until OOM, then bisect)")
                try:
                    measured = measure_max_batch(arch, res, precision, cfg.channels_last, cfg.optimizer, str(device),
                                                 start=max(1, min(predicted_bs, effort.limit_cap)),
                                                 cap=effort.limit_cap, growth=1.25)
                except Exception as exc:  # noqa: BLE001
                    limit_note = f"batch search failed: {_reason(exc)}"
                    say(f"{res}px {arch}: {limit_note}")
            search_failed = limit_note.startswith("batch search failed")
            rows.append(make_row(
                machine, arch=arch, res=res, kind="batch_limit", status="error" if search_failed else "ok",
                batch_size=synth.batch_size if synth else bs,
                precision=mem_precision, channels_last=cfg.channels_last, optimizer=cfg.optimizer,
                max_batch_predicted=predicted_bs, gpu_gb=predict_gb, param_count=prof.n_params,
                max_batch_measured=measured["max_ok"] if measured else None,
                max_batch_capped=measured["capped"] if measured else None,
                mem_per_sample_mb=_mb(synth.mem_per_sample_bytes) if synth else None,
                predicted_mem_per_sample_mb=_mb(prof.bytes_per_sample),
                reason=limit_note,
            ))
            advance()

    return {
        "schema": "cxr-fast-bench/1",
        "machine": machine,
        "settings": {**_plain(cfg), "resolved": {"device": str(device), "precision": precision, "archs": archs,
                                                  "effort": dataclasses.asdict(effort), "n_images": n_images,
                                                  "memory_precision": mem_precision, "predict_gpu_gb": predict_gb,
                                                  **threads_info}},
        "memory_assumptions": memory.assumptions(),
        "rows": rows,
        "loaders": loader_raw,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }


def _prepare_all(dataset, ids, targets, resolutions: list[int], say: Callable[[str], None]) -> None:
    """Decode each image once for every resolution asked (the uint8 cache the fast backends read), in the
    store the loaders look up, instead of once per resolution on demand. Best effort: on failure the
    loaders still make what they need themselves."""
    from cxr_fast.prepare import PrepareConfig, auto_store_dir, prepare_store

    say(f"decoding {len(ids)} images once for {len(resolutions)} resolutions (reused by later runs)")
    try:
        prepare_store(dataset, ids, targets, auto_store_dir(dataset, ids, targets),
                      PrepareConfig(resolutions=tuple(resolutions), formats=("cache",), quiet=True))
    except Exception as exc:  # noqa: BLE001 - an optimisation only
        say(f"up-front decode skipped ({_reason(exc)}); each loader prepares its own resolution")


@dataclass
class _Context:
    """What every measurement at every resolution shares."""

    cfg: BenchConfig
    effort: Effort
    machine: dict
    device: Any
    precision: str
    dataset: Any
    ids: Any
    targets: Any
    say: Callable[[str], None]

    @property
    def common(self) -> dict:
        return dict(precision=self.precision, channels_last=self.cfg.channels_last, optimizer=self.cfg.optimizer)


def _training(ctx: _Context, arch: str, res: int, bs: int, best: dict | None, prof) -> tuple[list[dict], Any]:
    """The train_synthetic and train_loader rows for one (arch, res), and the synthetic measurement.

    On a GPU (and whenever ``effort.paired`` is off) two blocks: synthetic steps, then loader-fed
    steps; an OOM retries at half the batch, twice at most. On a shared CPU (``paired``) the two
    kinds of step alternate, so neighbours' load hits both equally.
    """
    from cxr_fast.bench.results_io import make_row
    from cxr_fast.bench.throughput import build_trainer, loader_throughput, paired_throughput, synthetic_throughput
    from cxr_fast.loaders import backend

    cfg, effort, say, common = ctx.cfg, ctx.effort, ctx.say, ctx.common

    def failed(kind: str, name: str | None, exc: BaseException, batch: int) -> dict:
        say(f"{res}px {arch}: {kind} failed: {_reason(exc)}")
        return make_row(ctx.machine, arch=arch, res=res, kind=kind, backend=name, status=_status(exc),
                        reason=_reason(exc), batch_size=batch, **common)

    def new_loader(batch: int):
        return backend(best["backend"]).build(_train_spec(ctx.dataset, ctx.ids, ctx.targets, res, batch, ctx.device, cfg))

    if effort.paired and best is not None:
        say(f"{res}px {arch}: training steps, synthetic and fed by {best['backend']} in turn, batch {bs}")
        try:
            trainer = build_trainer(arch, ctx.device, ctx.precision, cfg.channels_last, cfg.optimizer)
            synth, fed = paired_throughput(trainer, res, bs, new_loader(bs), warmup=effort.warmup,
                                           iters=effort.iters, min_seconds=effort.train_seconds)
        except Exception as exc:  # noqa: BLE001 - one failure is a row, not a crash
            return [failed("train_synthetic", "synthetic", exc, bs), failed("train_loader", best["backend"], exc, bs)], None
        return [_synth_row(make_row, ctx.machine, arch, res, bs, synth, prof, common),
                _fed_row(make_row, ctx.machine, arch, res, bs, fed, synth, best["backend"], prof, common)], synth

    rows: list[dict] = []
    synth = trainer = None
    for attempt in range(3):
        say(f"{res}px {arch}: training step, synthetic input, batch {bs}")
        try:
            trainer = build_trainer(arch, ctx.device, ctx.precision, cfg.channels_last, cfg.optimizer)
            synth = synthetic_throughput(trainer, res, bs, warmup=effort.warmup, iters=effort.iters,
                                         min_seconds=effort.train_seconds)
            break
        except Exception as exc:  # noqa: BLE001
            trainer = None
            _free(ctx.device)
            if _status(exc) == "oom" and bs > 1 and attempt < 2:
                say(f"{res}px {arch}: out of memory at batch {bs}; retrying at {bs // 2}")
                bs //= 2
                continue
            rows.append(failed("train_synthetic", "synthetic", exc, bs))
            break
    if synth is not None:
        rows.append(_synth_row(make_row, ctx.machine, arch, res, bs, synth, prof, common))
    if best is None or synth is None:
        rows.append(make_row(ctx.machine, arch=arch, res=res, kind="train_loader", status="skipped",
                             reason="no loader backend ran" if best is None else "the synthetic step failed",
                             batch_size=bs, **common))
        return rows, synth
    say(f"{res}px {arch}: training step fed by {best['backend']}, batch {bs}")
    try:
        fed = loader_throughput(trainer, new_loader(bs), bs, warmup=effort.loader_warmup, iters=effort.iters,
                                min_seconds=effort.train_seconds)
        rows.append(_fed_row(make_row, ctx.machine, arch, res, bs, fed, synth, best["backend"], prof, common))
    except Exception as exc:  # noqa: BLE001
        rows.append(failed("train_loader", best["backend"], exc, bs))
    return rows, synth


def _train_spec(dataset, ids, targets, res: int, bs: int, device, cfg: BenchConfig):
    from cxr_fast.augment import augment_config
    from cxr_fast.loaders.base import LoaderSpec
    from cxr_fast.vocabulary import DEFAULT_RECIPE

    return LoaderSpec(dataset=dataset, image_ids=ids, targets=targets, res=res, batch_size=bs, train=True,
                      device=device, seed=0, channels_last=cfg.channels_last, drop_last=True, augment=True,
                      augmentation=augment_config(DEFAULT_RECIPE))


def _synth_row(make_row, machine, arch, res, bs, synth, prof, common) -> dict:
    return make_row(machine, arch=arch, res=res, kind="train_synthetic", backend="synthetic", status="ok",
                    batch_size=bs, images_per_s=round(synth.images_per_s, 3), step_ms=_step_ms(synth),
                    param_count=prof.n_params, n_images=synth.images, seconds=round(synth.seconds, 3),
                    peak_mem_mb=_mb(synth.peak_mem_bytes), mem_per_sample_mb=_mb(synth.mem_per_sample_bytes),
                    predicted_mem_per_sample_mb=_mb(prof.bytes_per_sample), **common)


def _fed_row(make_row, machine, arch, res, bs, fed, synth, backend_name, prof, common) -> dict:
    ratio = fed.images_per_s / synth.images_per_s if synth.images_per_s else None
    return make_row(machine, arch=arch, res=res, kind="train_loader", backend=backend_name, status="ok",
                    batch_size=bs, images_per_s=round(fed.images_per_s, 3), step_ms=_step_ms(fed),
                    param_count=prof.n_params, ratio=None if ratio is None else round(ratio, 3),
                    ratio_to="train_synthetic", n_images=fed.images, seconds=round(fed.seconds, 3),
                    peak_mem_mb=_mb(fed.peak_mem_bytes), **common)


def _step_ms(m) -> float | None:
    steps = m.images / m.batch_size if m.batch_size else 0
    return round(1000 * m.seconds / steps, 2) if steps else None


def _mb(value: float | None) -> float | None:
    return None if value is None else round(value / 2**20, 2)


def _status(exc: BaseException) -> str:
    from cxr_fast.bench.batch_search import is_oom

    return "oom" if is_oom(exc) else "error"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300]


def _free(device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _plain(cfg: BenchConfig) -> dict:
    from cxr_fast.config import to_dict

    return to_dict(cfg)


# ----------------------------------------------------------------------------- presentation


def print_tables(doc: dict, console) -> None:
    from rich.table import Table

    rows = doc["rows"]
    machine = doc["machine"]
    title_suffix = f"{machine['device_name']} ({machine['device']}), torch {machine['torch_version']}"

    t = Table(title=f"Loader throughput, images/s (train mode, augmentation on) — {title_suffix}")
    for c, j in (("res", "right"), ("backend", "left"), ("batch", "right"), ("images/s", "right"),
                 ("x pil", "right"), ("status", "left")):
        t.add_column(c, justify=j)
    for r in rows:
        if r["kind"] == "loader":
            t.add_row(str(r["res"]), r["backend"], str(r["batch_size"]), _fmt(r["images_per_s"]),
                      _fmt(r["ratio"], "{:.1f}x"), r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}")
    console.print(t)

    t = Table(title=f"Training step, images/s ({doc['settings']['resolved']['precision']}, "
                    f"{'channels-last' if doc['settings']['channels_last'] else 'NCHW'})")
    for c in ("res", "arch", "batch", "synthetic", "best loader", "loader-fed", "fed/synthetic"):
        t.add_column(c, justify="left" if c in ("arch", "best loader") else "right")
    by_key = {(r["arch"], r["res"], r["kind"]): r for r in rows}
    for r in rows:
        if r["kind"] != "train_synthetic":
            continue
        fed = by_key.get((r["arch"], r["res"], "train_loader"), {})
        t.add_row(str(r["res"]), r["arch"], str(r["batch_size"]),
                  _fmt(r["images_per_s"]) if r["status"] == "ok" else r["status"],
                  fed.get("backend") or "-",
                  _fmt(fed.get("images_per_s")) if fed.get("status") == "ok" else (fed.get("status") or "-"),
                  _fmt(fed.get("ratio"), "{:.0%}"))
    console.print(t)

    gb = doc["settings"]["resolved"]["predict_gpu_gb"]
    t = Table(title=f"Largest batch ({doc['settings']['resolved']['memory_precision']}, "
                    f"{doc['settings']['optimizer']}) and memory per image")
    for c in ("res", "arch", f"predicted @ {gb:g} GiB", "measured", "MiB/image measured", "MiB/image predicted"):
        t.add_column(c, justify="left" if c == "arch" else "right")
    for r in rows:
        if r["kind"] == "batch_limit":
            measured = r["max_batch_measured"]
            t.add_row(str(r["res"]), r["arch"], str(r["max_batch_predicted"]),
                      "-" if measured is None else f"{measured}{'+' if r['max_batch_capped'] else ''}",
                      _fmt(r["mem_per_sample_mb"]), _fmt(r["predicted_mem_per_sample_mb"]))
    console.print(t)


def _fmt(value: float | None, spec: str | None = None) -> str:
    """Numbers for a table: three significant digits for small rates (a CPU trains < 1 image/s at 600 px)."""
    if value is None:
        return "-"
    if spec is None:
        spec = "{:,.1f}" if abs(value) >= 10 else "{:.3g}"
    return spec.format(value)


# ----------------------------------------------------------------------------- CLI


def configure(parser: argparse.ArgumentParser) -> None:
    def add(*flags: str, **kw) -> None:
        kw.setdefault("default", argparse.SUPPRESS)
        parser.add_argument(*flags, **kw)

    add("--config", metavar="YAML", help="settings file (see configs/bench.yaml); flags override it")
    add("--res", metavar="R", help="resolution(s), comma separated, or 'all' (32,64,128,224,256,320,448,512,600); default 224")
    add("--arch", dest="archs", metavar="A[,B]", help="resnet34,densenet121 (default: both on a GPU, resnet34 on the CPU)")
    add("--loaders", metavar="all|NAME,...", help="loader backends to measure (default all; pil is always the baseline)")
    add("--batch-size", type=int, metavar="B", help="training batch (default: 2 on the CPU, ~80%% of the predicted max on a GPU, at most 256)")
    add("--data", metavar="DIR", help="NIH-layout data folder (default: the built-in phantom)")
    add("--label", help="label the loaders carry (default Nodule; speed does not depend on it)")
    add("--precision", choices=("auto", "bf16", "fp16", "fp32"), help="autocast dtype (default auto)")
    add("--channels-last", action=argparse.BooleanOptionalAction, help="channels-last memory format (default on)")
    add("--optimizer", choices=("sgd", "adam"), help="optimizer (default sgd, the paper's)")
    add("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    add("--threads", type=int, metavar="N", help="CPU intra-op threads (default: torch's, or 1 when the machine is already busy)")
    add("--predict-gpu-gb", type=float, metavar="GB", help="card size for the predicted max batch when not on a GPU (default 11)")
    add("--json", metavar="PATH", help="also write the JSON document here")
    add("--out", metavar="DIR", help="results folder (default bench-results/<timestamp>/)")
    add("--quiet", action="store_true", help="no progress display")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from cxr_fast.bench.results_io import default_out_dir, write_results

    flags = {k: getattr(args, k, None) for k in ("res", "archs", "loaders", "batch_size", "data", "label",
                                                 "precision", "channels_last", "optimizer", "device",
                                                 "predict_gpu_gb", "json", "out", "threads")}
    for key in ("archs", "loaders"):
        if flags[key] is not None:
            flags[key] = [s.strip() for s in flags[key].split(",") if s.strip()]
    if flags["archs"]:  # an explicit --arch wins over the per-device default
        flags["archs"] = list(flags["archs"])
    cfg = load_config(getattr(args, "config", None), **flags)
    if flags["archs"]:
        cfg.cpu.archs = cfg.gpu.archs = None
    console = Console()
    quiet = getattr(args, "quiet", False)
    units = len(cfg.res) * (1 + len(cfg.archs if flags["archs"] else (cfg.cpu.archs or cfg.archs)))
    t0 = time.perf_counter()
    # The phantom (first run only) shows its own progress bar, so it is made before ours starts.
    from cxr_fast.data.source import resolve_dataset

    resolve_dataset(cfg.data, quiet=quiet)
    if quiet:
        doc = run_bench(cfg)
    else:
        with Progress(SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=console,
                      transient=True) as progress:
            task = progress.add_task("bench", total=units)

            def say(msg: str) -> None:
                progress.update(task, description=msg)
                progress.console.log(msg, highlight=False)

            def advance() -> None:
                total = progress.tasks[0].total or 0
                progress.update(task, advance=1, total=max(total, progress.tasks[0].completed + 1))

            doc = run_bench(cfg, say=say, advance=advance)
    doc["wall_s"] = round(time.perf_counter() - t0, 1)
    out = Path(cfg.out) if cfg.out else default_out_dir()
    paths = write_results(out, doc, stem="bench", json_path=cfg.json)
    print_tables(doc, console)
    console.print(f"wrote {paths['json']} and {paths['csv']}" + (f" and {cfg.json}" if cfg.json else "")
                  + f" in {doc['wall_s']:.0f} s", highlight=False)
    failed = failed_sections(doc)
    if failed:
        import sys

        print(f"cxr-fast bench: error: {len(failed)} section(s) failed: {'; '.join(failed[:3])}"
              + (" ..." if len(failed) > 3 else "") + " (rows with status error/oom in the results)", file=sys.stderr)
        return 1
    return 0


def failed_sections(doc: dict) -> list[str]:
    """'600px resnet34 train_loader (cache): reason' for every row that errored, so the exit code can say so.

    A loader that cannot run here is 'skipped' (its reason is shown), not failed.
    """
    out = []
    for r in doc.get("rows", []):
        if r.get("status") in ("error", "oom"):
            what = f"{r.get('res')}px {r.get('arch') or ''} {r.get('kind')}".replace("  ", " ")
            out.append(f"{what} ({r.get('backend')}): {r.get('reason')}" if r.get("backend") else f"{what}: {r.get('reason')}")
    return out
