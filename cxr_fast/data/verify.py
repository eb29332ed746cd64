"""One pass over every image a dataset's metadata names, with the same reader every stage uses.

Reports what a user must know before spending GPU hours: images that are missing or truncated (by
name), names that lead outside the data folder, repeated metadata rows, images of a shape no chest
X-ray has, and how many were RGBA or 16-bit and were converted. Every stage after ``verify`` skips
the outside names and the repeats with one warning; ``verify`` lists them and fails.

Images held in ``images_NNN.tar.gz`` archives (``data.archives``) are checked the same way, streamed one
archive per worker; a member an archive refuses (a link, a path outside, a name two members claim) and
an archive that breaks (named with the member where it did) are listed too.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

from cxr_fast.data.archive_stream import Finished, imap_members
from cxr_fast.data.nih import NihDataset
from cxr_fast.data.reader import ImageError, decode_gray_with_info, read_gray_with_info
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
    refused: list[dict[str, str]] = field(default_factory=list)  # archive members never read (links, repeats...)
    archives: list[dict[str, str]] = field(default_factory=list)  # archives that broke: where, and why

    @property
    def usable(self) -> bool:
        return self.n_ok == self.n_images and self.n_images > 0 and not self.duplicates and not self.archives

    def to_json(self) -> dict:
        return {
            "root": self.root, "n_images": self.n_images, "n_ok": self.n_ok, "usable": self.usable,
            "rgba_converted": self.rgba_converted, "scaled_16bit": self.scaled_16bit,
            "modes": dict(self.modes), "sizes": {f"{w}x{h}": c for (w, h), c in self.sizes.items()},
            "missing": self.missing, "unreadable": self.unreadable, "outside": self.outside,
            "duplicates": self.duplicates, "odd_shape": self.odd_shape, "refused": self.refused,
            "archives": self.archives,
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


def _check_member(name: str, data: bytes) -> tuple[str, str | None, tuple | None]:
    try:
        _, info = decode_gray_with_info(data, name)
    except ImageError as exc:
        return name, exc.reason, None
    return name, None, (info.mode, info.width, info.height, info.converted_rgba, info.scaled_16bit)


def _check_archives(ds: NihDataset, items: list[tuple[str, str]], report: VerifyReport, workers: int | None,
                    quiet: bool) -> Iterator[tuple[str, str | None, tuple | None]]:
    """``_check`` results for images held in archives, one streaming worker per archive; archives that
    break go into ``report.archives`` and their unreached images come back as unreadable."""
    assert ds.archives is not None
    tasks: dict[str, dict[str, str]] = {}
    for name, path in items:
        archive, member = ds.archives.member_at(path)  # type: ignore[misc]
        tasks.setdefault(archive, {})[member] = name
    broken = dict(ds.archives.broken)
    for event in imap_members(_check_member, list(tasks.items()), "verify (archives)", workers=workers, quiet=quiet):
        if not isinstance(event, Finished):
            yield event.result
            continue
        if event.problem is not None:
            broken[event.archive] = event.problem
        why = f"not read: {event.problem}" if event.problem else f"not in {event.archive}, whose listing has it"
        for name in event.unread:
            yield name, why, None
    report.archives = [{"archive": archive, "problem": line} for archive, line in sorted(broken.items())]


def verify_dataset(ds: NihDataset, workers: int | None = None, quiet: bool = False) -> VerifyReport:
    """Decode every image named in the metadata; never raises for a bad image, lists it instead.

    The rows ``read_nih_folder`` left out for leading outside the folder count as images, and as bad.
    """
    items = [(str(name), str(ds.path_of(str(name)))) for name in ds.metadata.image_ids]
    report = VerifyReport(root=str(ds.root), n_images=len(items) + len(ds.outside))
    refused = ds.archives.refused if ds.archives is not None else {}
    report.outside = [{"image": name, "reason": reason} for name, reason in ds.outside.items() if name not in refused]
    report.refused = [{"image": name, "reason": reason} for name, reason in ds.outside.items() if name in refused]
    report.duplicates = list(ds.metadata.duplicates)
    held = [item for item in items if ds.archives is not None and ds.archives.member_at(item[1]) is not None]
    files = [item for item in items if ds.archives is None or ds.archives.member_at(item[1]) is None]
    results = imap_progress(_check, files, "verify", workers=workers, quiet=quiet or not files, ordered=True,
                            chunksize=16)
    if ds.archives is not None:
        results = itertools.chain(results, _check_archives(ds, held, report, workers, quiet))
    for name, problem, info in results:
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
