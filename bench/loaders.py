"""Loader throughput: images/s of each backend at one resolution, side by side, after a warm-up.

API (what ``cxr-fast bench`` calls)::

    bench_loaders(res=600, backends=None, data=None, label="Effusion", n_images=None, batch_size=64,
                  augment=True, device=None, warmup_batches=2, min_seconds=8.0, min_batches=4,
                  num_workers=None, seed=0, quiet=False, progress=None) -> list[dict]

- ``backends``: names from ``cxr_fast.loaders.BACKENDS`` (None or ``["all"]``: every one); ``pil``
  is always measured too (first), since every ratio is relative to it.
- ``data``: an NIH-layout folder, or None for the built-in phantom (1024 px, made once, cached).
- ``n_images``: how many of the dataset's images to load (None: all).
- ``device``: ``"cuda"``/``"cpu"``/a ``torch.device``; None picks CUDA when present.
- ``progress``: optional callable ``(message: str) -> None`` for the caller's console.

Each returned dict: ``backend, res, batch_size, device, augment, available, reason,
images_per_s, ratio_to_pil, images, seconds, setup_s``. A backend that cannot run here has
``available=False``, its reason, and ``None`` for the numbers; one that fails while running has
``available=True``, ``error`` set and ``None`` numbers. ``setup_s`` includes making its store the
first time (decode once); the measured rate excludes it and a warm-up of ``warmup_batches``.
The rate counts a batch as delivered when it is on the device (CUDA synchronised), in the format
training receives: float32 in [0, 1], augmented, channels-last. ``results_io.machine_info`` describes the host.

From a shell, the loader table alone: ``python -m cxr_fast.bench.loaders --res 600 --json PATH``
(how ``results/loaders-cpu-600.json`` was made).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from cxr_fast.augment import augment_config
from cxr_fast.data.source import resolve_dataset
from cxr_fast.errors import one_line
from cxr_fast.feed import make_loader
from cxr_fast.loaders import BACKENDS, availability, backend
from cxr_fast.loaders.base import LoaderSpec
from cxr_fast.runtime import sync
from cxr_fast.vocabulary import DEFAULT_RECIPE


def measure(loader, device: torch.device, warmup_batches: int, min_seconds: float, min_batches: int) -> tuple[int, float]:
    """Images delivered and seconds taken after the warm-up; runs whole epochs until both minimums are met."""
    epoch, seen_batches, images, t0 = 0, 0, 0, None
    while True:
        loader.set_epoch(epoch)
        for x, _ in loader:
            seen_batches += 1
            if t0 is None:
                if seen_batches >= warmup_batches:
                    sync(device)
                    t0 = time.perf_counter()
                continue
            images += int(x.shape[0])
            if images and seen_batches - warmup_batches >= min_batches:
                sync(device)
                elapsed = time.perf_counter() - t0
                if elapsed >= min_seconds:
                    return images, elapsed
        epoch += 1
        if epoch > 10_000:  # pragma: no cover - an empty loader
            raise RuntimeError("loader yielded no batches")


def bench_loaders(
    res: int = 600,
    backends: Sequence[str] | None = None,
    data: str | Path | None = None,
    label: str = "Effusion",
    n_images: int | None = None,
    batch_size: int = 64,
    augment: bool = True,
    device: str | torch.device | None = None,
    warmup_batches: int = 2,
    min_seconds: float = 8.0,
    min_batches: int = 4,
    num_workers: int | None = None,
    seed: int = 0,
    quiet: bool = False,
    progress: Callable[[str], None] | None = None,
    dataset: Any = None,
    image_ids: Any = None,
    targets: Any = None,
) -> list[dict]:
    """Measure each backend (see the module docstring); pil first, then the rest in registry order.

    ``dataset`` (and ``image_ids``/``targets``): already opened and picked by the caller, so a bench over
    many resolutions opens and parses the data once; otherwise from ``data``, ``n_images`` and ``label``.
    """
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = list(BACKENDS) if not backends or list(backends) == ["all"] else list(dict.fromkeys(backends))
    for n in names:
        backend(n)  # unknown names fail now, before any work
    names = ["pil"] + [n for n in names if n != "pil"]
    if dataset is None:
        dataset = resolve_dataset(data, quiet=quiet)
    ids = image_ids if image_ids is not None else (
        dataset.metadata.image_ids[: n_images] if n_images else dataset.metadata.image_ids)
    if targets is None:
        targets = dataset.metadata.has(label)[: len(ids)].astype(np.float32)
    avail = availability()
    say = progress or (lambda _m: None)
    rows: list[dict] = []
    for name in names:
        ok, reason = avail[name]
        row = {"backend": name, "res": res, "batch_size": batch_size, "device": str(dev), "augment": augment,
               "available": ok, "reason": reason, "images_per_s": None, "ratio_to_pil": None,
               "images": None, "seconds": None, "setup_s": None}
        rows.append(row)
        if not ok:
            say(f"{name}: not available ({reason})")
            continue
        spec = LoaderSpec(dataset=dataset, image_ids=ids, targets=targets, res=res, batch_size=batch_size,
                          train=True, device=dev, seed=seed, augment=augment, num_workers=num_workers,
                          augmentation=augment_config(DEFAULT_RECIPE))  # the transforms `train` uses
        say(f"{name}: setting up")
        try:
            t = time.perf_counter()
            loader = make_loader(name, spec)
            row["setup_s"] = round(time.perf_counter() - t, 3)
            say(f"{name}: measuring")
            images, seconds = measure(loader, dev, warmup_batches, min_seconds, min_batches)
        except Exception as exc:  # one broken backend must not hide the others' numbers
            row["error"] = one_line(exc, 500)
            say(f"{name}: failed ({row['error']})")
            continue
        finally:
            loader = None
        row.update(images=images, seconds=round(seconds, 3), images_per_s=round(images / seconds, 2))
        say(f"{name}: {row['images_per_s']:.1f} images/s")
    base = rows[0]["images_per_s"]
    for row in rows:
        if base and row["images_per_s"] is not None:
            row["ratio_to_pil"] = round(row["images_per_s"] / base, 3)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cxr_fast.bench.loaders --res 600 --json PATH``: the loader table alone, as JSON."""
    import argparse
    import json

    from cxr_fast.bench.results_io import machine_info
    from cxr_fast.io import write_json

    parser = argparse.ArgumentParser(prog="python -m cxr_fast.bench.loaders", description=main.__doc__)
    parser.add_argument("--res", type=int, default=600)
    parser.add_argument("--loaders", default="all", help="all or comma-separated backend names")
    parser.add_argument("--data", default=None, help="NIH-layout folder (default: the built-in phantom)")
    parser.add_argument("--n-images", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0, help="at least this long per backend")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", default=None, help="write machine + rows here")
    args = parser.parse_args(argv)
    dev = torch.device(args.device) if args.device else None
    rows = bench_loaders(res=args.res, backends=args.loaders.split(","), data=args.data, n_images=args.n_images,
                         batch_size=args.batch_size, augment=args.augment, device=dev, min_seconds=args.seconds,
                         progress=lambda m: print(m, flush=True))
    used = torch.device(rows[0]["device"])
    doc = {"machine": machine_info(used, loader_libraries=True), "data": args.data or "built-in phantom (600 images, 1024 px)",
           "command": "python -m cxr_fast.bench.loaders " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
           "rows": rows}
    if args.json:
        write_json(args.json, doc)
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
