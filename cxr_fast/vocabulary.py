"""The study's vocabulary, spelled once: resolutions, architectures, precisions, recipes and inits.

Every command and config reader checks its values against these, so a resolution or a name that one
command accepts is accepted by all of them, with the same one-line error when it is not.
"""

from __future__ import annotations

from typing import Any, Iterable

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
