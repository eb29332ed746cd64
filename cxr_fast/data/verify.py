"""One pass over every image a dataset's metadata names, with the same reader every stage uses.

Reports what a user must know before spending GPU hours: images that are missing or truncated (by
name), and how many were RGBA or 16-bit and were converted.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from cxr_fast.data.nih import NihDataset
from cxr_fast.data.reader import ImageError, read_gray_with_info
from cxr_fast.parallel import imap_progress


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

    @property
    def usable(self) -> bool:
        return self.n_ok == self.n_images and self.n_images > 0

    def to_json(self) -> dict:
        return {
            "root": self.root, "n_images": self.n_images, "n_ok": self.n_ok, "usable": self.usable,
            "rgba_converted": self.rgba_converted, "scaled_16bit": self.scaled_16bit,
            "modes": dict(self.modes), "sizes": {f"{w}x{h}": c for (w, h), c in self.sizes.items()},
            "missing": self.missing, "unreadable": self.unreadable,
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
    """Decode every image named in the metadata; never raises for a bad image, lists it instead."""
    items = [(str(name), str(ds.path_of(str(name)))) for name in ds.metadata.image_ids]
    report = VerifyReport(root=str(ds.root), n_images=len(items))
    for name, problem, info in imap_progress(_check, items, "verify", workers=workers, quiet=quiet, ordered=True,
                                             chunksize=16):
        if problem == "missing":
            report.missing.append(name)
        elif problem is not None:
            report.unreadable.append({"image": name, "reason": problem})
        else:
            mode, w, h, rgba, sixteen = info
            report.n_ok += 1
            report.modes[mode] += 1
            report.sizes[(w, h)] += 1
            report.rgba_converted += int(rgba)
            report.scaled_16bit += int(sixteen)
    return report
