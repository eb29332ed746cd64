"""``cxr-fast bench`` settings: dataclasses with the built-in defaults (``configs/bench.yaml`` writes them
out), then a YAML file, then command-line flags. Nothing global: ``load_bench_config`` returns the object the
run uses, and it is saved with the results."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from cxr_fast.errors import CxrError
from cxr_fast.schema.run import DATASET_FIELDS, RunConfig
from cxr_fast.vocabulary import ARCHS, check_choice, parse_resolutions


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
    # The packed-training section (``bench.packed``): K models in one step against the same K stepped in turn.
    packed_ks: list[int] = field(default_factory=list)  # the K values measured; empty: the section is off
    packed_batch: int = 8  # images per model per step: the paper's 8, where a GPU step is bound by launches
    packed_warmup: int = 1  # untimed steps of each way (packed, sequential) before the timed ones
    packed_iters: int = 2  # timed steps of each way
    packed_seconds: float = 30.0  # per resolution: a K starts only while its predicted time fits this


def cpu_effort() -> Effort:
    # Packed training is off on the CPU: a CPU is not launch-bound, so packing is no faster there
    # (results/packed/cpu.md), and K=1,2 at 600 px would add minutes to `cxr-fast bench --res 600`.
    return Effort(archs=["resnet34"], batch_size=2, warmup=1, iters=2, train_seconds=3.0, loader_warmup=0,
                  loader_batch_size=8, loader_batches=3, loader_seconds=1.0, n_images=600, paired=True,
                  measure_limit=False, limit_cap=0, packed_ks=[], packed_batch=2, packed_warmup=1, packed_iters=1,
                  packed_seconds=15.0)


def gpu_effort() -> Effort:
    return Effort(packed_ks=[1, 2, 4, 8], packed_warmup=2, packed_iters=5)


_RUN = RunConfig.model_fields
# The bench's settings that mean what a run's do: their defaults and their rules are the run schema's.
RUN_SETTINGS = ("label", "precision", "channels_last", "optimizer", "device", "data", *DATASET_FIELDS)


@dataclass
class BenchConfig:
    """What ``cxr-fast bench`` measures: lists of resolutions and architectures, the loaders, the efforts."""

    res: list[int] = field(default_factory=lambda: [224])
    archs: list[str] = field(default_factory=lambda: list(ARCHS))
    loaders: list[str] = field(default_factory=lambda: ["all"])
    label: str = _RUN["label"].default
    precision: str = _RUN["precision"].default
    channels_last: bool = _RUN["channels_last"].default
    optimizer: str = _RUN["optimizer"].default
    device: str = _RUN["device"].default
    predict_gpu_gb: float = 11.0  # the card the prediction is for when not on a GPU (the paper's)
    data: str | None = _RUN["data"].default
    dataset: str = _RUN["dataset"].default
    uncertain: str = _RUN["uncertain"].default
    blank: str = _RUN["blank"].default
    views: str = _RUN["views"].default
    label_source: str = _RUN["label_source"].default
    vote: str = _RUN["vote"].default
    out: str | None = None
    json: str | None = None
    batch_size: int | None = None  # overrides the effort's training batch size
    threads: int | None = None  # CPU intra-op threads; None: torch's default, or 1 when the machine is busy
    cpu: Effort = field(default_factory=cpu_effort)
    gpu: Effort = field(default_factory=gpu_effort)

    def run_settings(self) -> RunConfig:
        """The bench's settings that mean what a run's do, as the run schema holds them."""
        return RunConfig.parse({name: getattr(self, name) for name in RUN_SETTINGS}, "bench")


def load_bench_config(path: str | None = None, **flags: Any) -> BenchConfig:
    """Defaults, then the YAML file (if given), then the command-line flags that were set."""
    from cxr_fast.config import from_dict, load_yaml, override

    cfg = BenchConfig()
    if path:
        data = load_yaml(path)
        for key in ("cpu", "gpu"):
            if key in data:
                if not isinstance(data[key], dict):
                    raise CxrError(f"{path}: '{key}' must be a mapping of settings")
                base = cpu_effort() if key == "cpu" else gpu_effort()
                merged = {**dataclasses.asdict(base), **data[key]}
                data[key] = from_dict(Effort, merged, f"{path} [{key}]")
        if "res" in data:
            data["res"] = parse_resolutions(data["res"], path)
        for key in ("archs", "loaders"):
            if isinstance(data.get(key), str):
                data[key] = [s.strip() for s in data[key].split(",") if s.strip()]
        cfg = from_dict(BenchConfig, {**dataclasses.asdict(cfg), **data, "cpu": data.get("cpu", cfg.cpu),
                                      "gpu": data.get("gpu", cfg.gpu)}, path)
    cfg = override(cfg, **flags)
    validate(cfg)
    return cfg


def validate(cfg: BenchConfig) -> None:
    """Every setting by the shared vocabulary, before anything is measured."""
    from cxr_fast.cost.memory import check_gpu_gb
    from cxr_fast.loaders import BACKENDS

    cfg.res = parse_resolutions(cfg.res, "--res")
    for arch in list(cfg.archs) + list(cfg.cpu.archs or []) + list(cfg.gpu.archs or []):
        check_choice(arch, ARCHS, "architecture")
    for name in cfg.loaders:
        check_choice(name, ("all", *BACKENDS), "loader")
    cfg.run_settings()
    if cfg.batch_size is not None and cfg.batch_size < 1:
        raise CxrError(f"--batch-size must be 1 or more, got {cfg.batch_size}")
    if cfg.threads is not None and cfg.threads < 1:
        raise CxrError(f"--threads must be 1 or more, got {cfg.threads}")
    for name, effort in (("cpu", cfg.cpu), ("gpu", cfg.gpu)):
        check_packed(effort, name)
    check_gpu_gb(cfg.predict_gpu_gb, "predict_gpu_gb")


PACKED_K_MAX = 64  # more models than this in one step is a typo, not a measurement


def check_packed(effort: Effort, where: str) -> None:
    """The packed section's settings of one device's effort, each refused in one line naming it."""
    for k in effort.packed_ks:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= PACKED_K_MAX:
            raise CxrError(f"{where}.packed_ks: each K must be a whole number from 1 to {PACKED_K_MAX}, got {k!r}")
    if len(set(effort.packed_ks)) != len(effort.packed_ks):
        raise CxrError(f"{where}.packed_ks: each K once, got {effort.packed_ks}")
    for name, least in (("packed_batch", 1), ("packed_iters", 1), ("packed_warmup", 0)):
        if getattr(effort, name) < least:
            raise CxrError(f"{where}.{name} must be {least} or more, got {getattr(effort, name)}")
    if not effort.packed_seconds > 0:
        raise CxrError(f"{where}.packed_seconds must be positive, got {effort.packed_seconds}")
