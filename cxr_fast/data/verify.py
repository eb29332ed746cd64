"""One pass over every image a dataset's metadata names, with the same reader every stage uses.

Reports what a user must know before spending GPU hours: images that are missing or truncated (by
name), names that lead outside the data folder, repeated metadata rows, images of a shape no chest
X-ray has, and how many were RGBA or 16-bit and were converted. Every stage after ``verify`` skips
the outside names and the repeats with one warning; ``verify`` lists them and fails.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from cxr_fast.data.nih import NihDataset
from cxr_fast.data.reader import ImageError, read_gray_with_info
from cxr_fast.parallel import imap_progress

# A chest X-ray is roughly square and hundreds of pixels wide (NIH's are 1024 px; the paper goes down to
# 32 px by resizing, never by starting there). A side under MIN_SIDE or an aspect ratio beyond MAX_ASPECT
# is a thumbnail, a strip or a broken export: resizing it to a square would feed the model a smear.
MIN_SIDE = 64
MAX_ASPECT = 4.0


def shape_problem(width: int, height: int) -> str | None:
    """Why a ``width x height`` image is no plausible chest X-ray (see MIN_SIDE, MAX_ASPECT), or None."""
    if min(width, height) < MIN_SIDE:
        return f"odd shape {width}x{height}: a side under {MIN_SIDE} px"
    if max(width, height) > MAX_ASPECT * min(width, height):
        return f"odd shape {width}x{height}: aspect ratio beyond 1:{MAX_ASPECT:g}"
    return None


@dataclass
class VerifyReport:
    root: str
    n_images: int = 0
    n_ok: int = 0
    rgba_converted: int = 0
    scaled_16bit: int = 0
    modes: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)
    missing: list[str] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)
    outside: list[dict[str, str]] = field(default_factory=list)  # names leading outside the data folder
    duplicates: list[str] = field(default_factory=list)  # Image Index of each repeated row
    odd_shape: list[dict[str, str]] = field(default_factory=list)  # decodable, but no chest X-ray's shape

    @property
    def usable(self) -> bool:
        return self.n_ok == self.n_images and self.n_images > 0 and not self.duplicates

    def to_json(self) -> dict:
        return {
            "root": self.root, "n_images": self.n_images, "n_ok": self.n_ok, "usable": self.usable,
            "rgba_converted": self.rgba_converted, "scaled_16bit": self.scaled_16bit,
            "modes": dict(self.modes), "sizes": {f"{w}x{h}": c for (w, h), c in self.sizes.items()},
            "missing": self.missing, "unreadable": self.unreadable, "outside": self.outside,
            "duplicates": self.duplicates, "odd_shape": self.odd_shape,
        }


def _check(item: tuple[str, str]) -> tuple[str, str | None, tuple | None]:
    name, path = item
    if not os.path.isfile(path):
        return name, "missing", None
    try:
        _, info = read_gray_with_info(path)
    except ImageError as exc:
        return name, exc.reason, None
    return name, None, (info.mode, info.width, info.height, info.converted_rgba, info.scaled_16bit)


def verify_dataset(ds: NihDataset, workers: int | None = None, quiet: bool = False) -> VerifyReport:
    """Decode every image named in the metadata; never raises for a bad image, lists it instead.

    The rows ``open_dataset`` left out for leading outside the folder count as images, and as bad.
    """
    items = [(str(name), str(ds.path_of(str(name)))) for name in ds.metadata.image_ids]
    report = VerifyReport(root=str(ds.root), n_images=len(items) + len(ds.outside))
    report.outside = [{"image": name, "reason": reason} for name, reason in ds.outside.items()]
    report.duplicates = list(ds.metadata.duplicates)
    for name, problem, info in imap_progress(_check, items, "verify", workers=workers, quiet=quiet, ordered=True,
                                             chunksize=16):
        if problem == "missing":
            report.missing.append(name)
        elif problem is not None:
            report.unreadable.append({"image": name, "reason": problem})
        else:
            mode, w, h, rgba, sixteen = info
            report.modes[mode] += 1
            report.sizes[(w, h)] += 1
            report.rgba_converted += int(rgba)
            report.scaled_16bit += int(sixteen)
            odd = shape_problem(w, h)
            if odd is not None:
                report.odd_shape.append({"image": name, "reason": odd})
            else:
                report.n_ok += 1
    return report
