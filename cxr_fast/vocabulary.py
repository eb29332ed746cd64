"""The study's vocabulary, spelled once: resolutions, architectures, precisions, recipes, inits, optimizers,
splits and loader backends.

Every command and config reader checks its values against these (the run schema, ``cxr_fast.schema``,
builds its ``Literal`` types from them), so a name that one command accepts is accepted by all of them,
with the same one-line error when it is not. ``tests/test_single_definitions.py`` holds each spelled here
and nowhere else. ``check_number`` is the one check of a number the user gives outside the run schema (a
flag, a phantom spec, a device profile), in the schema's words (``range_phrase``).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Literal

from cxr_fast.errors import CxrError

# The paper's nine input resolutions (Sabottke & Spieler 2020, Table 2).
PAPER_RESOLUTIONS: tuple[int, ...] = (32, 64, 128, 224, 256, 320, 448, 512, 600)
# ResNet34 and DenseNet121 downsample 32x: below 16 px the last stage has no pixels left to pool.
MIN_RES = 16
MAX_RES = 4096
ARCHS: tuple[str, ...] = ("resnet34", "densenet121")
# bf16, fp16: autocast (fp16 with a GradScaler); tf32: fp32 tensors, matmuls and convolutions as TF32 on tensor
# cores (compute capability 8.0+); fp32: true fp32, TF32 off (``runtime.set_fp32_math``).
PRECISIONS: tuple[str, ...] = ("bf16", "fp16", "tf32", "fp32")
AUTOCAST_PRECISIONS: tuple[str, ...] = ("bf16", "fp16")  # the rest keep fp32 tensors (memory, cast costs)
# fastai07: the paper's fastai 0.7 head, class-weighted NLL and transforms; modern: one logit, weighted BCE.
RECIPES: tuple[str, ...] = ("fastai07", "modern")
DEFAULT_RECIPE = "fastai07"  # what `train`, the bench and the memory model use unless told otherwise
# imagenet: torchvision's ImageNet weights (or --weights FILE); random: torch's default init, said openly.
INITS: tuple[str, ...] = ("imagenet", "random")
# sgd: momentum 0.9, fastai 0.7's default and the paper's; adam: what a from-scratch CPU rehearsal needs.
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
# The fastai07 head's two BatchNorm1d weights: ones (today's PyTorch) or U(0,1), what PyTorch drew when fastai 0.7
# ran (until pytorch/pytorch#13774, late 2018; DESIGN.md, "What the paper leaves open").
HEAD_BN_INITS: tuple[str, ...] = ("ones", "uniform")
# How a subsample is split into training and validation, with the words a report uses for each.
SPLIT_NAMES: dict[str, str] = {"image": "image-wise split", "patient": "patient-wise split",
                               "official": "NIH's official split"}
SPLITS: tuple[str, ...] = tuple(SPLIT_NAMES)
# Loader backends, fastest first: the order ``loader: auto`` tries them in (``cxr_fast.loaders``).
LOADERS: tuple[str, ...] = ("resident", "dali", "cache", "ffcv", "pil")
# The datasets cxr-fast reads (``cxr_fast.data.sets``, one module each); ``auto`` detects the layout.
DATASETS: tuple[str, ...] = ("nih", "chexpert", "mimic", "padchest", "vindr", "rsna", "csv")
# CheXpert's and MIMIC-CXR's uncertain (-1) labels (Irvin et al. 2019, U-Ignore, U-Zeros, U-Ones): ignore leaves
# the image out of that label's subsample, zero counts it negative, one positive.
UNCERTAIN_POLICIES: tuple[str, ...] = ("ignore", "zero", "one")
# Their blank labels (not mentioned in the report): zero counts the image negative (CheXpert's own reading),
# ignore leaves it out of that label's subsample.
BLANK_POLICIES: tuple[str, ...] = ("zero", "ignore")
# Which views a dataset gives: frontal (PA and AP, the paper's data) or all, laterals included.
VIEW_POLICIES: tuple[str, ...] = ("frontal", "all")
# PadChest's labels: physician (the 27% a radiologist labelled) or all (the rest by its RNN from the reports).
LABEL_SOURCES: tuple[str, ...] = ("physician", "all")
# VinDr-CXR's training images carry three radiologists' labels: positive when a majority say so, or any one.
VOTES: tuple[str, ...] = ("majority", "any")
AUTO = "auto"  # "decide for me": a precision from the device, a loader from what runs and fits
# A seed is what numpy's and torch's generators take: 0 to 2**32 - 1 (numpy refuses more; torch wraps it).
SEED_BOUNDS: dict[str, int] = {"ge": 0, "le": 2**32 - 1}
# Packed training (cxr_fast.packed): `pack: auto|1|K` in a study, `--pack` on study and plan. auto packs as many
# compatible runs as fit the device's memory, at most PACK_AUTO_MAX (the largest K the issue measures).
PACK_AUTO_MAX = 8
# A run's auc_status when the model gave every validation image one score: no ranking, so no AUC (never 0.5).
# Written by ``metrics``, checked by ``schema.result``, shown by the report.
AUC_TIED = "tied"

# The same names as types, for the run schema (``Literal[("a", "b")]`` is ``Literal["a", "b"]``).
Arch = Literal[ARCHS]  # type: ignore[valid-type]
Recipe = Literal[RECIPES]  # type: ignore[valid-type]
Init = Literal[INITS]  # type: ignore[valid-type]
Optimizer = Literal[OPTIMIZERS]  # type: ignore[valid-type]
HeadBnInit = Literal[HEAD_BN_INITS]  # type: ignore[valid-type]
Split = Literal[SPLITS]  # type: ignore[valid-type]
PrecisionChoice = Literal[(AUTO, *PRECISIONS)]  # type: ignore[valid-type]
LoaderChoice = Literal[(AUTO, *LOADERS)]  # type: ignore[valid-type]
DatasetChoice = Literal[(AUTO, *DATASETS)]  # type: ignore[valid-type]
UncertainPolicy = Literal[UNCERTAIN_POLICIES]  # type: ignore[valid-type]
BlankPolicy = Literal[BLANK_POLICIES]  # type: ignore[valid-type]
ViewPolicy = Literal[VIEW_POLICIES]  # type: ignore[valid-type]
LabelSource = Literal[LABEL_SOURCES]  # type: ignore[valid-type]
Vote = Literal[VOTES]  # type: ignore[valid-type]


def check_res(value: Any, where: str = "resolution") -> int:
    """One resolution as an int within MIN_RES..MAX_RES, or a one-line error naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        elif isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        else:
            raise CxrError(f"{where}: a resolution is a whole number of pixels, got {value!r}")
    if not MIN_RES <= value <= MAX_RES:
        raise CxrError(f"{where}: resolution {value} is out of range ({MIN_RES} to {MAX_RES} px)")
    return value


def parse_resolutions(value: Any, where: str = "--res") -> list[int]:
    """``all`` -> the paper's nine; a comma list, an int or a list -> checked ints, no repeats."""
    if isinstance(value, str):
        if value.strip().lower() == "all":
            return list(PAPER_RESOLUTIONS)
        value = [v for v in value.split(",") if v.strip()]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise CxrError(f"{where}: give resolutions as a comma list of pixels or 'all', got {value!r}")
    out = [check_res(v, where) for v in value]
    if len(set(out)) != len(out):
        raise CxrError(f"{where}: resolutions repeat a value: {out}")
    return out


def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def range_phrase(b: dict[str, Any]) -> str:
    """``{"ge": 1}`` -> "at least 1"; ``{"ge": 0}`` -> "0 or more"; ``{"gt": 0}`` -> "positive";
    ``{"gt": 0, "lt": 1}`` -> "between 0 and 1"; ``{"ge": 0, "lt": 1}`` -> "in [0, 1)"."""
    low = ("ge", b["ge"]) if "ge" in b else ("gt", b["gt"]) if "gt" in b else None
    high = ("le", b["le"]) if "le" in b else ("lt", b["lt"]) if "lt" in b else None
    if low and high:
        if low[0] == "gt" and high[0] == "lt":
            return f"between {_num(low[1])} and {_num(high[1])}"
        return f"in {'[' if low[0] == 'ge' else '('}{_num(low[1])}, {_num(high[1])}{']' if high[0] == 'le' else ')'}"
    if low:
        if low == ("gt", 0):
            return "positive"
        return f"{_num(low[1])} or more" if low == ("ge", 0) else \
            (f"at least {_num(low[1])}" if low[0] == "ge" else f"more than {_num(low[1])}")
    if high:
        return f"at most {_num(high[1])}" if high[0] == "le" else f"less than {_num(high[1])}"
    return "in range"


_INSIDE = {"ge": lambda v, b: v >= b, "gt": lambda v, b: v > b, "le": lambda v, b: v <= b, "lt": lambda v, b: v < b}


def check_number(value: Any, what: str, *, integer: bool = False, **bounds: Any) -> Any:
    """The one check of a number the user gives (a flag, a spec, a profile): a number of the right kind,
    finite, within ``bounds`` (``ge``, ``gt``, ``le``, ``lt``). A NaN, an infinity or a huge value would
    otherwise hang a search, plan a negative time or fail after the work; here it is one line naming ``what``.
    The run schema declares the same bounds on its fields and says a refusal in the same words."""
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise CxrError(f"{what} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise CxrError(f"{what} must be a finite number, got {value!r}")
    if not all(_INSIDE[k](value, b) for k, b in bounds.items()):
        raise CxrError(f"{what} must be {range_phrase(bounds)}, got {value!r}")
    return value


def check_choice(value: Any, choices: Iterable[str], what: str, where: str = "") -> str:
    """``value`` if it is one of ``choices``, else one line naming the value and the choices."""
    choices = tuple(choices)
    if value not in choices:
        prefix = f"{where}: " if where else ""
        raise CxrError(f"{prefix}unknown {what} {value!r}; choose from {', '.join(choices)}")
    return str(value)


def resolve_precision(requested: str, accelerator: bool, has_bf16: bool, device_name: str = "this device",
                      where: str = "") -> str:
    """The one rule for a run's autocast dtype, for a live device (``step.device_precision``) and for a device
    profile the planner times (``cost.devices``): ``auto`` is bf16 on an accelerator that has it, fp16 on
    one that does not, fp32 on the CPU (where bf16 autocast is usually slower than fp32 without AMX; it can
    still be asked for). bf16 asked for on an accelerator without it is refused, never emulated unsaid.
    ``has_bf16`` means bf16 and TF32 tensor cores (CUDA compute capability 8.0+: both came with Ampere), read
    from the card, never from ``torch.cuda.is_bf16_supported()``, which counts emulation; tf32 is refused
    wherever there are no TF32 tensor cores (there it would silently be fp32)."""
    prefix = f"{where}: " if where else ""
    if requested == AUTO:
        return ("bf16" if has_bf16 else "fp16") if accelerator else "fp32"
    if requested not in PRECISIONS:
        raise CxrError(f"{prefix}unknown precision {requested!r}; choose {AUTO}, {', '.join(PRECISIONS)}")
    if requested == "bf16" and accelerator and not has_bf16:
        raise CxrError(f"{prefix}precision bf16 on {device_name}, which has no bf16; use fp16 or fp32")
    if requested == "tf32" and not (accelerator and has_bf16):
        raise CxrError(f"{prefix}precision tf32 on {device_name}, which has no TF32 tensor cores (a CUDA GPU of "
                       "compute capability 8.0 or later has them); use fp32")
    return requested


def is_autocast(precision: str) -> bool:
    """Whether a resolved precision runs under autocast (half-width activations); tf32 and fp32 keep fp32
    tensors, so memory and the cost model count them alike."""
    return precision in AUTOCAST_PRECISIONS


def parse_pack(value: Any, where: str = "--pack") -> str | int:
    """``auto`` (as many compatible runs per step as fit, at most ``PACK_AUTO_MAX``) or a whole number of runs
    per step, at least 1 (1: every run alone, as without packing)."""
    text = str(value).strip().lower()
    if text == AUTO:
        return AUTO
    if not isinstance(value, (bool, float)) and text.isdigit() and int(text) >= 1:
        return int(text)
    raise CxrError(f"{where} must be auto or a whole number of models of at least 1, got {value!r}")


def pack_chunks(items: list[Any], k: int) -> list[list[Any]]:
    """``items`` (runs that could share a step) as the fewest jobs of at most ``k``, as even as possible: 9 runs
    at K = 8 are jobs of 5 and 4, not 8 and a lone 1 (in order, so a label's seeds stay together)."""
    if not items:
        return []
    jobs = -(-len(items) // max(1, k))
    size, extra = divmod(len(items), jobs)
    out, start = [], 0
    for j in range(jobs):
        end = start + size + (1 if j < extra else 0)
        out.append(items[start:end])
        start = end
    return out
