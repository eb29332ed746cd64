"""Device profiles: what one device does per second, modelled from a datasheet or measured here.

Why: a study's cost is its counted work (``cost.work``) divided by what the device sustains. A
profile holds the rates the estimate (``cost.plan``) needs:

- ``peak_flops[precision]``: dense peak FLOP/s for what a step at that precision runs on. ``fp32`` is
  true fp32 (a run sets TF32 off: ``runtime.set_fp32_math``), the CUDA-core rate; ``tf32``, on Ampere
  and later, is the TF32 tensor-core rate. Datasheets quote tensor rates "with sparsity"; the table
  holds half of those.
- ``assumptions["software"]``: for a card the default install (CUDA 13 torch and DALI) has no kernels
  for, the builds the plan assumes it runs (``runtime.OLD_CARD_BUILD``).
- ``bandwidth``: peak memory bandwidth, bytes/s.
- ``compute_share`` / ``bandwidth_share``: the achievable share of those peaks (stated below).
- ``launch_s``: host time per dispatched aten op in eager mode (Python, dispatcher, kernel launch);
  ``graph_kernel_s``: device time per kernel inside a replayed CUDA graph; ``graph_launch_s``: one
  graph replay; ``sync_s``: one host-device synchronisation.

Modelled cards cite the vendor datasheet for every FLOP/s, bandwidth and memory number
(``CARDS``). The overheads, the achievable shares and the per-run setup are not on any datasheet:
they are this project's assumptions, said so in each profile, until a measured profile replaces them.
Measured profiles come from ``cxr-fast plan --calibrate`` (``bench.calibrate``) on this machine and
from ``cxr-fast gpu-check`` on a GPU host; they are kept in ``<cache>/devices/`` and, for a card that
matches the table, used in place of the modelled one.

Memory sizes are the datasheet's GB read as GiB, as ``cost.memory.DEFAULT_GPU_GB`` does (an 11 GB
GTX 1080 Ti reports 11,264 MiB to CUDA).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cxr_fast.errors import CxrError
from cxr_fast.runtime import OLD_CARD_BUILD
from cxr_fast.vocabulary import check_number, resolve_precision
from cxr_fast.units import GIB

SCHEMA = "cxr-fast-device/1"
TERA = 1e12
GIGA = 1e9

# Assumptions for modelled cards (not datasheet numbers; a measured profile replaces them).
COMPUTE_SHARE = 0.5  # of dense peak, for compute-bound kernels (cuDNN convs in training reach 40-70%)
BANDWIDTH_SHARE = 0.8  # of peak bandwidth, for bandwidth-bound kernels (streaming copies reach 80-90%)
LAUNCH_S = 6e-6  # eager host cost per aten op: Python + dispatcher + cudaLaunchKernel on a server CPU
GRAPH_KERNEL_S = 1e-6  # per kernel inside a replayed CUDA graph (device-side launch gap)
GRAPH_LAUNCH_S = 10e-6  # one cudaGraphLaunch
SYNC_S = 20e-6  # one host wait on the device (queue drained, scores copied)
SETUP_S = 3.0  # per run: data, subsample, model and init, before the first step
HOST_TO_DEVICE = 12 * GIGA  # bytes/s, pageable host-to-device copy (the resident split), PCIe 4 x16
CHECKPOINT_BYTES_PER_S = 1 * GIGA  # torch.save of the epoch checkpoint to local disk

CUDA_FP16_PASCAL = ("NVIDIA CUDA C++ Programming Guide, 'Arithmetic Instructions' throughput table: compute "
                    "capability 6.1 does 2 fp16 vs 128 fp32 results per clock per SM, so cuDNN/cuBLAS run "
                    "half inputs with fp32 arithmetic (pseudo-half): fp16 costs fp32's rate")
TF32_NOTE = ("precision tf32 runs fp32 matmuls and convolutions as TF32 on tensor cores; precision fp32 turns "
             "TF32 off (torch.backends.*.fp32_precision = 'ieee') and runs at the FP32 rate")
OLD_CARD_SOFTWARE = (f"compute capability below 7.5: CUDA 13 builds of torch and DALI (the default install) have "
                     f"no kernels for it; the plan assumes {OLD_CARD_BUILD}")


@dataclass(frozen=True)
class Card:
    """One row of the datasheet table (FLOP/s dense; bandwidth bytes/s; memory GiB)."""

    name: str
    title: str
    memory_gib: float
    bandwidth: float
    fp32: float  # CUDA-core FP32
    tf32: float | None  # dense tensor TF32 (None: no tensor TF32)
    fp16: float  # dense fp16 tensor rate with fp32 accumulate (or what fp16 effectively runs at)
    bf16: float | None
    source: str
    notes: str = ""
    aliases: tuple[str, ...] = ()
    match: str = ""  # regex on torch.cuda.get_device_name()
    software: str = ""  # the torch/DALI builds the card needs when the default install cannot run it


CARDS: dict[str, Card] = {c.name: c for c in (
    Card("1080ti", "NVIDIA GeForce GTX 1080 Ti", 11, 484 * GIGA, 11.34 * TERA, None, 11.34 * TERA, None,
         "NVIDIA GeForce GTX 1080 Ti specifications (nvidia.com/en-us/geforce/products/10series/geforce-gtx-1080-ti/): "
         "3584 CUDA cores x 1582 MHz boost x 2 = 11.34 TFLOPS fp32; 11 GB GDDR5X, 11 Gbps on 352 bits = 484 GB/s",
         CUDA_FP16_PASCAL, ("gtx1080ti", "1080-ti"), r"1080 Ti", software=OLD_CARD_SOFTWARE),
    Card("t4", "NVIDIA T4", 16, 320 * GIGA, 8.1 * TERA, None, 65 * TERA, None,
         "NVIDIA T4 Tensor Core GPU datasheet (nvidia.com/content/dam/en-zz/Solutions/Data-Center/tesla-t4/"
         "t4-tensor-core-datasheet-951643.pdf): FP32 8.1 TFLOPS, mixed FP16/FP32 65 TFLOPS, 16 GB GDDR6, 320+ GB/s",
         "no bf16 (Turing)", ("tesla-t4",), r"\bT4\b"),
    Card("v100", "NVIDIA V100 SXM2 16 GB", 16, 900 * GIGA, 15.7 * TERA, None, 125 * TERA, None,
         "NVIDIA Tesla V100 datasheet (images.nvidia.com/content/technologies/volta/pdf/"
         "tesla-volta-v100-datasheet-letter-fnl-web.pdf), SXM2: FP32 15.7 TFLOPS, Tensor 125 TFLOPS, "
         "16 GB HBM2, 900 GB/s", "no bf16 (Volta)", ("v100-16", "tesla-v100"), r"V100", software=OLD_CARD_SOFTWARE),
    Card("a100-40", "NVIDIA A100 SXM 40 GB", 40, 1555 * GIGA, 19.5 * TERA, 156 * TERA, 312 * TERA, 312 * TERA,
         "NVIDIA A100 Tensor Core GPU datasheet (nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
         "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf): FP32 19.5, TF32 156 (312 sparse), BF16/FP16 312 "
         "(624 sparse) TFLOPS; 40 GB HBM2 at 1,555 GB/s", TF32_NOTE, ("a100-40gb",), r"A100.*40"),
    Card("a100-80", "NVIDIA A100 SXM 80 GB", 80, 2039 * GIGA, 19.5 * TERA, 156 * TERA, 312 * TERA, 312 * TERA,
         "NVIDIA A100 Tensor Core GPU datasheet (as a100-40): same rates; 80 GB HBM2e at 2,039 GB/s (SXM)",
         TF32_NOTE, ("a100", "a100-80gb"), r"A100"),
    Card("l4", "NVIDIA L4", 24, 300 * GIGA, 30.3 * TERA, 60 * TERA, 121 * TERA, 121 * TERA,
         "NVIDIA L4 Tensor Core GPU datasheet (resources.nvidia.com, 'NVIDIA L4 datasheet'): FP32 30.3 TFLOPS, "
         "TF32 120, BF16/FP16 242 TFLOPS with sparsity; 24 GB GDDR6, 300 GB/s", TF32_NOTE, (), r"\bL4\b"),
    Card("l40s", "NVIDIA L40S", 48, 864 * GIGA, 91.6 * TERA, 183 * TERA, 362.05 * TERA, 362.05 * TERA,
         "NVIDIA L40S datasheet (resources.nvidia.com, 'L40S datasheet'): FP32 91.6, TF32 183 (366 sparse), "
         "BF16/FP16 362.05 (733 sparse) TFLOPS; 48 GB GDDR6, 864 GB/s", TF32_NOTE, (), r"L40S"),
    Card("3090", "NVIDIA GeForce RTX 3090", 24, 936 * GIGA, 35.6 * TERA, 35.6 * TERA, 71 * TERA, 71 * TERA,
         "NVIDIA Ampere GA102 GPU Architecture whitepaper (nvidia.com/content/PDF/"
         "nvidia-ampere-ga-102-gpu-architecture-whitepaper-v2.pdf), GeForce RTX 3090: FP32 35.6, TF32 tensor "
         "35.6, FP16/BF16 tensor with FP32 accumulate 71 TFLOPS (dense); 24 GB GDDR6X, 936 GB/s",
         TF32_NOTE, ("rtx3090",), r"3090"),
    Card("4090", "NVIDIA GeForce RTX 4090", 24, 1008 * GIGA, 82.6 * TERA, 82.6 * TERA, 165.2 * TERA, 165.2 * TERA,
         "NVIDIA Ada GPU Architecture whitepaper (images.nvidia.com/aem-dam/Solutions/geforce/ada/"
         "nvidia-ada-gpu-architecture.pdf), GeForce RTX 4090: FP32 82.6, TF32 tensor 82.6, FP16/BF16 tensor with "
         "FP32 accumulate 165.2 TFLOPS (dense); 24 GB GDDR6X, 1,008 GB/s", TF32_NOTE, ("rtx4090",), r"4090"),
    Card("h100", "NVIDIA H100 SXM5 80 GB", 80, 3350 * GIGA, 67 * TERA, 494.5 * TERA, 989.5 * TERA, 989.5 * TERA,
         "NVIDIA H100 Tensor Core GPU datasheet (resources.nvidia.com/en-us-tensor-core/"
         "nvidia-tensor-core-gpu-datasheet), H100 SXM: FP32 67, TF32 989, BF16/FP16 1,979 TFLOPS with sparsity; "
         "80 GB HBM3, 3.35 TB/s", TF32_NOTE, ("h100-sxm",), r"H100"),
    Card("h200", "NVIDIA H200 SXM 141 GB", 141, 4800 * GIGA, 67 * TERA, 494.5 * TERA, 989.5 * TERA, 989.5 * TERA,
         "NVIDIA H200 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h200/), H200 SXM: FP32 67, "
         "TF32 989, BF16/FP16 1,979 TFLOPS with sparsity; 141 GB HBM3e, 4.8 TB/s", TF32_NOTE, (), r"H200"),
)}


# What each rate of a profile may be: FLOP/s and bytes/s positive, shares of a peak in (0, 1], times 0 or more,
# memory a real size (far beyond a million GiB the batch search's float rounding counts down for hours).
PROFILE_BOUNDS: dict[str, dict[str, float]] = {
    "memory_gib": {"gt": 0, "le": 1e6}, "bandwidth": {"gt": 0}, "compute_share": {"gt": 0, "le": 1},
    "bandwidth_share": {"gt": 0, "le": 1}, "launch_s": {"ge": 0}, "graph_kernel_s": {"ge": 0},
    "graph_launch_s": {"ge": 0}, "sync_s": {"ge": 0}, "setup_s": {"ge": 0}, "host_to_device": {"gt": 0},
    "checkpoint_bytes_per_s": {"gt": 0}}


@dataclass
class DeviceProfile:
    """The rates of one device, modelled or measured (``points``: the calibration's timed steps)."""

    name: str
    title: str
    kind: str  # "gpu" | "cpu"
    source: str  # "modelled" | "measured"
    memory_gib: float
    peak_flops: dict[str, float]  # precision (fp32/tf32/fp16/bf16) -> FLOP/s the step's kernels run at
    bandwidth: float
    compute_share: float = COMPUTE_SHARE
    bandwidth_share: float = BANDWIDTH_SHARE
    launch_s: float = LAUNCH_S
    graph_kernel_s: float = GRAPH_KERNEL_S
    graph_launch_s: float = GRAPH_LAUNCH_S
    sync_s: float = SYNC_S
    setup_s: float = SETUP_S
    host_to_device: float = HOST_TO_DEVICE
    checkpoint_bytes_per_s: float = CHECKPOINT_BYTES_PER_S
    supports_bf16: bool = True
    citations: dict[str, str] = field(default_factory=dict)
    assumptions: dict[str, str] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)
    machine: dict[str, Any] | None = None
    card: str | None = None  # the CARDS entry a measured GPU replaces

    def __post_init__(self) -> None:
        """Every rate by the one number check (``PROFILE_BOUNDS``): a profile file with ``launch_s: -1`` planned a
        negative total, and a string bandwidth gave a traceback."""
        if not isinstance(self.peak_flops, dict):
            raise CxrError(f"peak_flops must be a mapping of precision to FLOP/s, got {self.peak_flops!r}")
        for key, value in self.peak_flops.items():
            check_number(value, f"peak_flops[{key}]", gt=0)
        for key, bounds in PROFILE_BOUNDS.items():
            check_number(getattr(self, key), key, **bounds)

    def auto_precision(self) -> str:
        """What ``precision: auto`` resolves to here, by the one rule (``vocabulary.resolve_precision``)."""
        return resolve_precision("auto", self.kind == "gpu", self.supports_bf16, self.name)

    def compute_rate(self, precision: str) -> float:
        """Achievable FLOP/s for compute-bound kernels at ``precision`` (before any measured fit)."""
        peak = self.peak_flops.get(precision)
        if peak is None:
            raise CxrError(f"{self.name} has no {precision} rate; choose one of {', '.join(sorted(self.peak_flops))}")
        return peak * self.compute_share

    @property
    def sustained_bandwidth(self) -> float:
        return self.bandwidth * self.bandwidth_share

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "profile") -> "DeviceProfile":
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise CxrError(f"{source}: not a cxr-fast device profile (schema {SCHEMA!r} expected)")
        known = {f for f in cls.__dataclass_fields__}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise CxrError(f"{source}: incomplete device profile ({exc})") from None
        except CxrError as exc:
            raise CxrError(f"{source}: {exc}") from None


def modelled(card: Card) -> DeviceProfile:
    """The datasheet profile of ``card`` with this module's stated assumptions."""
    peak = {"fp32": card.fp32, "fp16": card.fp16}
    if card.tf32:
        peak["tf32"] = card.tf32
    if card.bf16:
        peak["bf16"] = card.bf16
    return DeviceProfile(
        name=card.name, title=card.title, kind="gpu", source="modelled", memory_gib=card.memory_gib,
        peak_flops=peak, bandwidth=card.bandwidth, supports_bf16=card.bf16 is not None, card=card.name,
        citations={"datasheet": card.source, **({"note": card.notes} if card.notes else {})},
        assumptions={**assumption_notes(), **({"software": card.software} if card.software else {})})


def assumption_notes() -> dict[str, str]:
    return {
        "compute_share": f"{COMPUTE_SHARE:.0%} of dense peak for compute-bound kernels",
        "bandwidth_share": f"{BANDWIDTH_SHARE:.0%} of peak bandwidth for bandwidth-bound kernels",
        "launch_s": f"{LAUNCH_S * 1e6:g} us host time per eager aten op",
        "graph_kernel_s": f"{GRAPH_KERNEL_S * 1e6:g} us per kernel inside a CUDA graph",
        "graph_launch_s": f"{GRAPH_LAUNCH_S * 1e6:g} us per graph replay",
        "sync_s": f"{SYNC_S * 1e6:g} us per host-device synchronisation",
        "setup_s": f"{SETUP_S:g} s per run before the first step, plus the resident split at "
                   f"{HOST_TO_DEVICE / GIGA:g} GB/s host to device",
        "checkpoint": f"{CHECKPOINT_BYTES_PER_S / GIGA:g} GB/s to write each epoch's checkpoint",
        "source": "not datasheet numbers: this project's assumptions until `cxr-fast gpu-check` measures the card",
    }


def card(name: str) -> Card | None:
    """The table entry for a name or alias (case, spaces, dashes and a 'gtx'/'rtx' prefix ignored)."""
    key = _key(name)
    for c in CARDS.values():
        if key in {_key(c.name), *(_key(a) for a in c.aliases)}:
            return c
    return None


def card_for_device_name(device_name: str) -> Card | None:
    """The table entry a CUDA device name (``NVIDIA H100 80GB HBM3``) is, or None."""
    for c in CARDS.values():
        if c.match and re.search(c.match, device_name, flags=re.IGNORECASE):
            if c.name == "a100-80" and re.search(r"40\s*GB", device_name, flags=re.IGNORECASE):
                continue
            return c
    return None


def _key(name: str) -> str:
    k = re.sub(r"[\s_\-]+", "", name.lower())
    return re.sub(r"^(nvidia)?(geforce)?(gtx|rtx|tesla)?", "", k) or k


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def profiles_dir() -> Path:
    from cxr_fast.paths import cache_dir

    return cache_dir() / "devices"


def save_profile(profile: DeviceProfile, path: str | Path | None = None) -> Path:
    """Write ``profile`` (atomically) to ``path``, or to the cache under its name, where ``resolve`` finds it."""
    from cxr_fast.io import write_json

    target = Path(path) if path is not None else profiles_dir() / f"{slug(profile.name)}.json"
    write_json(target, profile.to_dict())
    return target


def load_profile(path: str | Path) -> DeviceProfile:
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CxrError(f"device profile {p} not found") from None
    except (OSError, ValueError) as exc:
        raise CxrError(f"device profile {p} is not readable JSON ({type(exc).__name__})") from None
    return DeviceProfile.from_dict(data, str(p))


def _measured(name: str) -> DeviceProfile | None:
    path = profiles_dir() / f"{slug(name)}.json"
    return load_profile(path) if path.is_file() else None


def cpu_profile_name() -> str:
    """This CPU's profile name: its model and core count (a calibration holds for that pair)."""
    import os

    from cxr_fast.machine import cpu_name

    return f"cpu {cpu_name()} x{os.cpu_count()}"


def cuda_profile_name(device_name: str) -> str:
    return f"cuda {device_name}"


def resolve(spec: str = "auto") -> DeviceProfile:
    """``auto`` | ``cpu`` | ``cuda`` | a card name (``h100``, ``1080ti``) | a profile JSON path.

    A measured profile wins over the modelled card it measured; ``cpu`` has no model and needs
    ``cxr-fast plan --calibrate`` first.
    """
    text = str(spec).strip()
    if text.endswith(".json") or Path(text).is_file():
        return load_profile(text)
    if text == "auto":
        import torch

        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        prof = _measured(cpu_profile_name())
        if prof is None:
            raise CxrError(f"no measured profile for this CPU ({cpu_profile_name()}); run "
                           "`cxr-fast plan CONFIG --calibrate` first, or name a card with --device")
        return prof
    if text.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise CxrError(f"--device {spec}: no CUDA GPU here; name a card instead ({', '.join(CARDS)})")
        name = torch.cuda.get_device_name(torch.device(text))
        prof = _measured(cuda_profile_name(name))
        if prof is not None:
            return prof
        c = card_for_device_name(name)
        if c is None:
            raise CxrError(f"--device {spec}: {name} is not in the card table and has no measured profile; "
                           "run `cxr-fast plan CONFIG --calibrate` on it")
        return _with_memory(modelled(c), torch.cuda.get_device_properties(torch.device(text)).total_memory)
    c = card(text)
    if c is None:
        raise CxrError(f"unknown device {spec!r}; choose cpu, cuda, a profile .json or a card: {', '.join(CARDS)}")
    for prof in measured_profiles():
        if prof.card == c.name:
            return prof
    return modelled(c)


def _with_memory(profile: DeviceProfile, total_bytes: int) -> DeviceProfile:
    return replace(profile, memory_gib=round(total_bytes / GIB, 2))


def measured_profiles() -> list[DeviceProfile]:
    """Every readable measured profile in the cache (a damaged file is skipped, not fatal)."""
    out: list[DeviceProfile] = []
    folder = profiles_dir()
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        try:
            out.append(load_profile(path))
        except CxrError:
            continue
    return out

