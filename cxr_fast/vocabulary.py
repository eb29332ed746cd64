"""The study's vocabulary, spelled once: resolutions, architectures, precisions, recipes, inits, optimizers,
splits and loader backends.

Every command and config reader checks its values against these (the run schema, ``cxr_fast.schema``,
builds its ``Literal`` types from them), so a name that one command accepts is accepted by all of them,
with the same one-line error when it is not. ``tests/test_single_definitions.py`` holds each spelled here
and nowhere else.
"""

from __future__ import annotations

from typing import Any, Iterable, Literal

from cxr_fast.errors import CxrError

# The paper's nine input resolutions (Sabottke & Spieler 2020, Table 2).
PAPER_RESOLUTIONS: tuple[int, ...] = (32, 64, 128, 224, 256, 320, 448, 512, 600)
# ResNet34 and DenseNet121 downsample 32x: below 16 px the last stage has no pixels left to pool.
MIN_RES = 16
MAX_RES = 4096
ARCHS: tuple[str, ...] = ("resnet34", "densenet121")
PRECISIONS: tuple[str, ...] = ("bf16", "fp16", "fp32")
# fastai07: the paper's fastai 0.7 head, class-weighted NLL and transforms; modern: one logit, weighted BCE.
RECIPES: tuple[str, ...] = ("fastai07", "modern")
DEFAULT_RECIPE = "fastai07"  # what `train`, the bench and the memory model use unless told otherwise
# imagenet: torchvision's ImageNet weights (or --weights FILE); random: torch's default init, said openly.
INITS: tuple[str, ...] = ("imagenet", "random")
# sgd: momentum 0.9, fastai 0.7's default and the paper's; adam: what a from-scratch CPU rehearsal needs.
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
# How a subsample is split into training and validation, with the words a report uses for each.
SPLIT_NAMES: dict[str, str] = {"image": "image-wise split", "patient": "patient-wise split",
                               "official": "NIH's official split"}
SPLITS: tuple[str, ...] = tuple(SPLIT_NAMES)
# Loader backends, fastest first: the order ``loader: auto`` tries them in (``cxr_fast.loaders``).
LOADERS: tuple[str, ...] = ("resident", "dali", "cache", "ffcv", "pil")
AUTO = "auto"  # "decide for me": a precision from the device, a loader from what runs and fits

# The same names as types, for the run schema (``Literal[("a", "b")]`` is ``Literal["a", "b"]``).
Arch = Literal[ARCHS]  # type: ignore[valid-type]
Recipe = Literal[RECIPES]  # type: ignore[valid-type]
Init = Literal[INITS]  # type: ignore[valid-type]
Optimizer = Literal[OPTIMIZERS]  # type: ignore[valid-type]
Split = Literal[SPLITS]  # type: ignore[valid-type]
PrecisionChoice = Literal[(AUTO, *PRECISIONS)]  # type: ignore[valid-type]
LoaderChoice = Literal[(AUTO, *LOADERS)]  # type: ignore[valid-type]


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
    still be asked for). bf16 asked for on an accelerator without it is refused, never emulated unsaid."""
    prefix = f"{where}: " if where else ""
    if requested == AUTO:
        return ("bf16" if has_bf16 else "fp16") if accelerator else "fp32"
    if requested not in PRECISIONS:
        raise CxrError(f"{prefix}unknown precision {requested!r}; choose {AUTO}, {', '.join(PRECISIONS)}")
    if requested == "bf16" and accelerator and not has_bf16:
        raise CxrError(f"{prefix}precision bf16 on {device_name}, which has no bf16; use fp16 or fp32")
    return requested
