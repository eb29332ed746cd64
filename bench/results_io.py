"""Benchmark result files: one JSON document and one flat CSV, in the spirit of timm's benchmark CSVs.

Every row is one measurement, keyed by (arch, res, kind), and carries the machine it ran on so rows
from different hosts can be concatenated and still be read correctly.

Row kinds:
- ``loader``: a loader backend's images/s (``arch`` empty); ``ratio`` is to the ``pil`` baseline.
- ``train_synthetic``: training images/s from tensors already on the device (the model's ceiling).
- ``train_loader``: training images/s fed by ``backend``; ``ratio`` is to ``train_synthetic``.
- ``batch_limit``: the largest batch, ``max_batch_predicted`` always, ``max_batch_measured`` on a GPU.
- ``train_packed``: packed training (``bench.packed``), two rows per (arch, res, ``packed_k``): ``backend``
  ``packed`` (one step of all K models; ``ratio`` is to ``sequential``) and ``sequential`` (one step of each of
  the K models in turn); images/s count all K models' images, ``batch_size`` is each model's, ``step_ms`` the
  time of one packed step or of the K separate steps. Where the section is off, one ``skipped`` row per
  resolution (``arch`` empty) says why and how to turn it on.

``step_ms`` is the mean time of one training step (timm's ``train_step_time``); ``param_count`` the
model's trainable parameters.

``status`` is ``ok``, ``skipped`` (a backend that cannot run here; ``reason`` says why), ``error`` or
``oom``. Rates are images/s; memory is MiB (2**20 bytes); ``gpu_gb`` is GiB, the card the prediction
is for (the device's own memory on a GPU, ``predict_gpu_gb`` otherwise). ``mem_per_sample_mb`` is
measured on CUDA only: (peak allocated - allocated before the timed steps) / batch size.

The JSON document (``cxr-fast bench``) holds: ``schema`` ("cxr-fast-bench/1"), ``machine``
(:func:`machine_info`), ``settings`` (the resolved config, plus ``resolved``: device, precision,
archs, effort), ``memory_assumptions`` (``cost.memory.assumptions()``), ``rows`` (as above),
``loaders`` (the raw per-backend records of ``bench.loaders.bench_loaders``) and ``wall_s``.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import os
import platform
import socket
from pathlib import Path
from typing import Any, Iterable

from cxr_fast.io import write_json, write_text
from cxr_fast.machine import cpu_name

KINDS: tuple[str, ...] = ("loader", "train_synthetic", "train_loader", "batch_limit", "train_packed")

# CSV column order (the JSON rows carry the same keys).
ROW_FIELDS: tuple[str, ...] = (
    "arch", "res", "kind", "backend", "status", "reason",
    "batch_size", "packed_k", "precision", "channels_last", "optimizer",
    "images_per_s", "step_ms", "ratio", "ratio_to", "n_images", "seconds", "param_count",
    "peak_mem_mb", "mem_per_sample_mb", "predicted_mem_per_sample_mb",
    "max_batch_measured", "max_batch_predicted", "max_batch_capped", "gpu_gb",
    "device", "device_name", "hostname", "cpu_count", "torch_version", "date",
)

MACHINE_FIELDS: tuple[str, ...] = ("hostname", "cpu_count", "torch_version", "device", "device_name", "date")


def machine_info(device: Any = "cpu", loader_libraries: bool = False) -> dict[str, Any]:
    """Who measured: host, cores, torch, the device and its name (the GPU model on CUDA), and when; with
    ``loader_libraries``, also what loader numbers depend on (torch's threads, DALI's and FFCV's versions)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        name = props.name
        gpu_memory = int(props.total_memory)
    else:
        name = cpu_name()
        gpu_memory = None
    info = {
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "device": str(dev),
        "device_name": name,
        "gpu_memory_bytes": gpu_memory,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    }
    if loader_libraries:
        info["torch_threads"] = torch.get_num_threads()
        for key, module in (("dali", "nvidia.dali"), ("ffcv", "ffcv")):
            try:
                info[key] = getattr(__import__(module, fromlist=["_"]), "__version__", "installed")
            except Exception:  # noqa: BLE001 - not installed, or not importable here: not recorded
                pass
    return info


def make_row(machine: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A row with every CSV column present (None where a field does not apply)."""
    unknown = set(fields) - set(ROW_FIELDS)
    if unknown:
        raise ValueError(f"unknown result field(s): {sorted(unknown)}")
    if fields.get("kind") not in KINDS:
        raise ValueError(f"row kind must be one of {KINDS}, got {fields.get('kind')!r}")
    row = {name: None for name in ROW_FIELDS}
    row.update({k: machine.get(k) for k in MACHINE_FIELDS})
    row.update(fields)
    return row


def rows_to_csv(rows: Iterable[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(ROW_FIELDS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def write_results(out_dir: str | Path, document: dict[str, Any], stem: str = "bench",
                  json_path: str | Path | None = None) -> dict[str, Path]:
    """Write ``<out_dir>/<stem>.json`` (the whole document) and ``<stem>.csv`` (its rows), atomically.

    ``json_path`` additionally writes the JSON document there (the ``--json`` flag).
    """
    out = Path(out_dir)
    paths = {"json": out / f"{stem}.json", "csv": out / f"{stem}.csv"}
    write_json(paths["json"], document)
    write_text(paths["csv"], rows_to_csv(document.get("rows", [])))
    if json_path is not None:
        extra = Path(json_path)
        write_json(extra, document)
        paths["json_extra"] = extra
    return paths


def default_out_dir(base: str | Path = "bench-results") -> Path:
    """``bench-results/<UTC timestamp>/``: a new folder per run, never overwriting an older result."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(base) / stamp
