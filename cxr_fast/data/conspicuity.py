"""The phantom's control settings: how conspicuous a focal lesion is, and the share of a null label.

A resolution study varies one thing, the input resolution, so nothing here depends on it. Every length and
noise level is defined in ChestX-ray14's 1024 px frame (where the radiologists drew their boxes): a phantom
rendered at ``size`` px is that 1024 px chest seen at ``size``, and a study then resizes it to each of its
resolutions with one antialiased resize. A setting is therefore one number for every resolution, and
whatever a lesion loses at 32 px it loses by being small, never by a setting that changed.

The settings apply to the focal lesions the control study compares, ``SMALL_LESION`` (Nodule, boxes 46-97 px
at 1024 px, 10th-90th percentile) and ``LARGE_LESION`` (Mass, 78-356 px): both are drawn the same way, a
round opacity ``contrast`` gray levels over whatever lies beneath it with an edge ``edge`` of its radius
wide, so the two labels differ by size alone. Every random draw (rows, positions, sizes, the null label)
comes from the phantom's seed and the image index.

Why these defaults. Contrast 80 gray levels over aerated lung (about 50) makes a nodule twice as bright as
a vessel or rib over it (10 and 16): it was chosen at the highest resolution the CPU control runs, 128 px,
as the lower of the two contrasts tried there (40, 80) at which a ResNet34 trained from scratch for a few
CPU epochs finds nodules at all (at 40 it stayed at chance even at 128 px). Edge 0.05 of the radius is a
sharp, well-circumscribed border; noise 8 per 1024 px pixel is faint next to both. None of them was chosen
by what a low resolution does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from cxr_fast.vocabulary import check_number

# What each setting may be: gray levels over a 0-255 background, an edge a share of the radius, a null share.
# The one table: ``Conspicuity`` checks against it, and ``synth``'s flags declare it.
CONSPICUITY_BOUNDS: dict[str, dict[str, float]] = {
    "contrast": {"gt": 0.0, "le": 200.0}, "edge": {"gt": 0.0, "le": 1.0}, "noise": {"ge": 0.0, "le": 100.0},
    "null": {"ge": 0.0, "lt": 1.0}}

SMALL_LESION = "Nodule"
LARGE_LESION = "Mass"


@dataclass(frozen=True)
class Conspicuity:
    """How visible a focal lesion is against normal anatomy, and how often the null label is given."""

    contrast: float = 80.0  # gray levels (of 255, before the exposure scale) a lesion adds over its local background
    edge: float = 0.05  # edge width as a fraction of the lesion's radius (logistic scale): 0.05 sharp, 0.5 blurred
    noise: float = 8.0  # SD of white quantum noise in gray levels per pixel of the 1024 px frame
    null: float = 0.0  # share of images given NULL_LABEL, at random, with no pixels drawn (0: no null label)

    def __post_init__(self) -> None:
        for name, bounds in CONSPICUITY_BOUNDS.items():
            check_number(getattr(self, name), f"phantom {name}", **bounds)

    def params(self) -> dict[str, float]:
        """The settings as written into the phantom folder (``.phantom.json``)."""
        return {k: float(v) for k, v in dataclasses.asdict(self).items()}

    def tag(self) -> str:
        """The settings in a cache folder name: ``c80-e0.05-z8`` (+ ``-null0.3`` with a null label)."""
        return f"c{self.contrast:g}-e{self.edge:g}-z{self.noise:g}" + (f"-null{self.null:g}" if self.null else "")


def conspicuity(**given: Any) -> Conspicuity:
    """The defaults with ``given`` settings over them; None means 'the default'."""
    return Conspicuity(**{k: v for k, v in given.items() if v is not None})
