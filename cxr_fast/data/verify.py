"""One pass over every image a dataset's metadata names, with the same reader every stage uses.

Reports what a user must know before spending GPU hours: images that are missing or truncated (by
name), names that lead outside the data folder, repeated metadata rows, images of a shape no chest
X-ray has, and how many were converted to gray (by mode), windowed from 16 bits (by the step of the
high-bit rule) or turned upright. The rules are the reader's (``read_usable``): ``prepare`` stores exactly
the images counted usable here. Every stage after ``verify`` skips
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
from typing import Iterable, Iterator

from cxr_fast.data.archive_stream import Finished, imap_members
from cxr_fast.data.sets.base import Dataset
from cxr_fast.data.pixels import RULE
from cxr_fast.data.reader import (ImageError, ImageInfo, OddShapeError, OutsideRootError, decode_usable,
                                   header_problem, read_usable)
from cxr_fast.parallel import imap_progress
from cxr_fast.vocabulary import PAPER_RESOLUTIONS

_ODD = "odd shape"  # the kind of problem of an image that decodes but has no chest X-ray's shape


@dataclass
class VerifyReport:
    root: str
    n_images: int = 0
    n_ok: int = 0
    rgba_converted: int = 0
    scaled_16bit: int = 0
    converted: Counter = field(default_factory=Counter)  # mode converted to gray -> images
    windowed: Counter = field(default_factory=Counter)  # high-bit rule step (data.pixels) -> 16-bit images
    reoriented: int = 0  # turned upright by their EXIF orientation
    inverted: int = 0  # DICOMs inverted (MONOCHROME1 or Presentation LUT Shape INVERSE, ``data.dicom``)
    modes: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)
    missing: list[str] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)
    outside: list[dict[str, str]] = field(default_factory=list)  # names leading outside the data folder
    duplicates: list[str] = field(default_factory=list)  # Image Index of each repeated row
    odd_shape: list[dict[str, str]] = field(default_factory=list)  # decodable, but no chest X-ray's shape
    refused: list[dict[str, str]] = field(default_factory=list)  # archive members never read (links, repeats...)
    archives: list[dict[str, str]] = field(default_factory=list)  # archives that broke: where, and why

    def smaller_than(self, resolutions: Iterable[int]) -> dict[int, int]:
        """Per resolution, the usable images with a side under it: a run at that resolution upsamples them
        (CheXpert-small's are about 390 x 320), which the user should know before choosing it."""
        return {int(r): sum(n for (w, h), n in self.sizes.items() if min(w, h) < r) for r in resolutions}

    @property
    def usable(self) -> bool:
        return self.n_ok == self.n_images and self.n_images > 0 and not self.duplicates and not self.archives

    def to_json(self) -> dict:
        return {
            "root": self.root, "n_images": self.n_images, "n_ok": self.n_ok, "usable": self.usable,
            "rgba_converted": self.rgba_converted, "scaled_16bit": self.scaled_16bit,
            "converted": dict(self.converted), "windowed": dict(self.windowed), "reoriented": self.reoriented,
            "inverted": self.inverted,
            "pixel_rule": RULE,
            "modes": dict(self.modes), "sizes": {f"{w}x{h}": c for (w, h), c in self.sizes.items()},
            "smaller_than": {str(r): n for r, n in self.smaller_than(PAPER_RESOLUTIONS).items()},
            "missing": self.missing, "unreadable": self.unreadable, "outside": self.outside,
            "duplicates": self.duplicates, "odd_shape": self.odd_shape, "refused": self.refused,
            "archives": self.archives,
        }


def _check(item: tuple[str, str]) -> tuple[str, str | None, ImageInfo | None]:
    name, path = item
    if not os.path.isfile(path):
        return name, "missing", None
    try:
        _, info = read_usable(path)
    except OddShapeError as exc:
        return name, f"{_ODD}\0{exc.reason}", exc.info
    except ImageError as exc:
        return name, exc.reason, None
    return name, None, info


def _check_header(item: tuple[str, str]) -> tuple[str, str | None]:
    """``_check`` without decoding pixels (``reader.header_problem``): for ``screen_files``."""
    name, path = item
    return name, header_problem(path)


def screen_files(ds: Dataset, image_ids: Iterable[str], workers: int | None = None,
                 quiet: bool = True) -> dict[str, str]:
    """Images of ``image_ids`` a run reading the source files could not use, name -> why, by the header
    check ``_check_header`` (the rules ``verify`` applies, short of a full decode). Images held in archives
    are not screened here: only a store reads them, and its manifest lists the unreadable ones."""
    items, linked_out = [], {}
    for name in map(str, image_ids):
        try:
            items.append((name, str(ds.path_of(name))))
        except OutsideRootError as exc:  # a link leading out of the data folder: never read
            linked_out[name] = exc.reason
    if ds.archives is not None:
        items = [item for item in items if ds.archives.member_at(item[1]) is None]
    results = imap_progress(_check_header, items, "screen images", workers=workers, quiet=quiet or not items,
                            ordered=True, chunksize=64)
    return {**linked_out, **{name: why for name, why in results if why is not None}}


def _check_member(name: str, data: bytes) -> tuple[str, str | None, ImageInfo | None]:
    try:
        _, info = decode_usable(data, name)
    except OddShapeError as exc:
        return name, f"{_ODD}\0{exc.reason}", exc.info
    except ImageError as exc:
        return name, exc.reason, None
    return name, None, info


def _check_archives(ds: Dataset, items: list[tuple[str, str]], report: VerifyReport, workers: int | None,
                    quiet: bool) -> Iterator[tuple[str, str | None, ImageInfo | None]]:
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


def verify_dataset(ds: Dataset, workers: int | None = None, quiet: bool = False) -> VerifyReport:
    """Decode every image named in the metadata; never raises for a bad image, lists it instead.

    The rows the dataset left out for leading outside the folder count as images, and as bad; so does an image
    whose file is a link leading out of it (``path_of`` refuses it).
    """
    items, linked_out = [], {}
    for name in map(str, ds.metadata.image_ids):
        try:
            items.append((name, str(ds.path_of(name))))
        except OutsideRootError as exc:
            linked_out[name] = exc.reason
    outside = {**ds.outside, **linked_out}
    report = VerifyReport(root=str(ds.root), n_images=len(items) + len(outside))
    refused = ds.archives.refused if ds.archives is not None else {}
    report.outside = [{"image": name, "reason": reason} for name, reason in outside.items() if name not in refused]
    report.refused = [{"image": name, "reason": reason} for name, reason in outside.items() if name in refused]
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
        elif info is None:
            report.unreadable.append({"image": name, "reason": str(problem)})
        else:
            _count(report, info)
            if problem is not None:  # decoded, but of no chest X-ray's shape
                report.odd_shape.append({"image": name, "reason": problem.split("\0", 1)[1]})
            else:
                report.n_ok += 1
    return report


def _count(report: VerifyReport, info: ImageInfo) -> None:
    """What the reader did to one decoded image, into the report's counts."""
    report.modes[info.mode] += 1
    report.sizes[(info.width, info.height)] += 1
    report.rgba_converted += int(info.converted_rgba)
    report.scaled_16bit += int(info.scaled_16bit)
    if info.converted_from is not None:
        report.converted[info.converted_from] += 1
    if info.window is not None:
        report.windowed[info.window] += 1
    report.reoriented += int(info.reoriented)
    report.inverted += int(info.inverted)
