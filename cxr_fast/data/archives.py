"""NIH's ``images_NNN.tar.gz`` archives read in place: a data folder without the 45 GB extracted copy.

cxr-fast decodes each image once (``prepare``), so an extracted copy is pure waste. ``verify`` and
``prepare`` stream each archive's members instead, one worker per archive (a gzip stream can only be read
from its start; ``data.archive_stream``), and decode straight from memory: no PNG is ever written to disk.

The reader's rules (``reader``) hold for members as for files. A member is used only when it is a plain
file named ``NAME`` or ``images/NAME`` with NAME a bare ``.png`` name (NIH's tarballs hold ``images/NAME``).
A link, a device, an absolute path, ``..``, a deeper folder or a member over ``MAX_MEMBER_BYTES`` (128 MiB, from
its header: a member is read whole into memory) is never read, and an image name that two
members claim (in one archive or two) is refused, since either copy could be the truth. An image on disk
beside the archives wins over a member. A truncated or corrupt archive is named with the member where it
broke; images decoded before that point are kept.

Listing an archive means reading it through (tar headers are spread over the stream), so each listing
is cached per archive (real path, size, mtime) in the cache folder, and paid once.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tarfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterable, Iterator, Sequence

from cxr_fast.data.reader import DataWarning, is_inside, name_problem
from cxr_fast.errors import CxrError, one_line
from cxr_fast.io import write_json
from cxr_fast.paths import cache_dir
from cxr_fast.units import MIB

# NIH's Box folder names them images_001.tar.gz ... images_012.tar.gz; NIH's batch_download_zips.py saves
# them as images_01.tar.gz ... images_12.tar.gz.
PATTERNS: tuple[str, ...] = ("images_[0-9][0-9][0-9].tar.gz", "images_[0-9][0-9].tar.gz")
LISTING_VERSION = 2  # 2: members over MAX_MEMBER_BYTES are refused
_BLOCK = 1 << 20
# A member is read whole into a worker's memory, so its size (from its tar header, before a byte is read) is
# capped. NIH's PNGs are 0.1-4 MiB; a 4,300 x 4,300 radiograph (the largest in use) stored with no compression
# at all as 16-bit RGB is 106 MiB. A member over the cap is no radiograph PNG: refused, named, never read.
MAX_MEMBER_BYTES = 128 * MIB
_STREAM_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


class ArchiveError(CxrError):
    """An archive that cannot be read to its end: names it and the member where it broke (exit status 1)."""

    def __init__(self, archive: str | Path, where: str, reason: str) -> None:
        super().__init__(f"{archive}: broken {where} ({reason})", exit_code=1)
        self.archive = str(archive)


@dataclass(frozen=True)
class Listing:
    """What one archive holds: every ``.png`` member as (image name, member path, why it is never read or
    None), in archive order, and where the archive broke (None when it reads to its end)."""

    path: str
    size: int
    mtime_ns: int
    claims: tuple[tuple[str, str, str | None], ...]
    broken: str | None = None


def find_archives(root: str | Path) -> list[Path]:
    """The NIH image archives directly in ``root``, in name order."""
    r = Path(root)
    return sorted({p for pattern in PATTERNS for p in r.glob(pattern) if p.is_file()})


def member_image(info: tarfile.TarInfo) -> tuple[str | None, str | None]:
    """(image name, why the member is never read) for a ``.png`` member; (None, None) for anything else
    (folders, non-images), which an archive may hold without harm."""
    path = info.name
    base = path.rstrip("/").rsplit("/", 1)[-1]
    if info.isdir() or not base.lower().endswith(".png"):
        return None, None
    if info.issym() or info.islnk():
        return base, "is a link"
    if not info.isreg():
        return base, "is not a plain file"
    if path.startswith("/"):
        return base, "has an absolute path"
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        return base, "leads outside the archive (..)"
    if name_problem(base) is not None or not (len(parts) == 1 or (len(parts) == 2 and parts[0] == "images")):
        return base, "is not NAME or images/NAME"
    if info.size > MAX_MEMBER_BYTES:
        return base, f"is {info.size / MIB:,.0f} MiB, over the {MAX_MEMBER_BYTES / MIB:g} MiB an image member may be"
    return base, None


def _walk(archive: str | Path, wanted: Collection[str] = ()) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
    """Every member in archive order, with its bytes when its path is in ``wanted`` (else None).

    Reads the archive to its very end, so gzip's CRC and length checks run; raises ``ArchiveError``
    naming the member in (or after) which the stream broke. A consumer that stops early stops the read.
    """
    where = "at its start"
    try:
        with gzip.open(archive, "rb") as gz, tarfile.open(fileobj=gz, mode="r|") as tar:
            for info in tar:
                where = f"in member {info.name!r}"
                data = None
                if info.isreg():
                    fh = tar.extractfile(info)
                    assert fh is not None
                    if info.name in wanted and info.size <= MAX_MEMBER_BYTES:  # a bigger one is refused when
                        # listed; never read whole, even when a changed archive offers it
                        data = fh.read()
                        if len(data) != info.size:
                            raise EOFError(f"member cut short: {len(data)} of {info.size} bytes")
                    else:
                        while fh.read(_BLOCK):
                            pass
                where = f"after member {info.name!r}"
                yield info, data
            where = "at its end"
            while gz.read(_BLOCK):  # the tar's end marker is not the gzip stream's end: read on for the CRC
                pass
    except _STREAM_ERRORS as exc:
        raise ArchiveError(archive, where, one_line(exc)) from None


def read_members(archive: str | Path, wanted: Collection[str]) -> Iterator[tuple[str, bytes]]:
    """(member path, bytes) for each wanted member that is a plain file, in archive order (see ``_walk``)."""
    for info, data in _walk(archive, wanted):
        if data is not None:
            yield info.name, data


def list_archive(path: str | Path) -> Listing:
    """Read ``path`` through and list its ``.png`` members (``member_image``), noting where it broke."""
    st = os.stat(path)
    claims: list[tuple[str, str, str | None]] = []
    broken = None
    try:
        for info, _ in _walk(path):
            image, problem = member_image(info)
            if image is not None:
                claims.append((image, info.name, problem))
    except ArchiveError as exc:
        broken = str(exc)
    return Listing(str(path), int(st.st_size), int(st.st_mtime_ns), tuple(claims), broken)


def _listing_file(path: Path) -> Path:
    digest = hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:24]
    return cache_dir() / "archive-listings" / f"{digest}.json"


def cached_listing(path: str | Path) -> Listing:
    """``list_archive``, from the cache when the archive's real path, size and mtime match; a broken
    archive is never cached (a fresh fetch replaces it)."""
    p = Path(path)
    st = os.stat(p)
    store = _listing_file(p)
    try:
        saved = json.loads(store.read_text(encoding="utf-8"))
        if (saved["version"], saved["path"], saved["size"], saved["mtime_ns"]) == \
                (LISTING_VERSION, os.path.realpath(p), st.st_size, st.st_mtime_ns):
            return Listing(str(p), st.st_size, st.st_mtime_ns, tuple((a, b, c) for a, b, c in saved["claims"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    listing = list_archive(p)
    if listing.broken is None and (listing.size, listing.mtime_ns) == (st.st_size, st.st_mtime_ns):
        try:
            write_json(store, {"version": LISTING_VERSION, "path": os.path.realpath(p), "size": listing.size,
                               "mtime_ns": listing.mtime_ns, "claims": [list(c) for c in listing.claims]})
        except OSError:
            pass  # a read-only cache costs a second listing next time, nothing else
    return listing


@dataclass
class Archives:
    """The archives of one data folder: which member holds each image, and which images are refused."""

    root: Path
    listings: list[Listing]
    members: dict[str, tuple[str, str]]  # image name -> (archive path, member path), usable ones only
    refused: dict[str, str]  # image name -> why it is never read

    @property
    def broken(self) -> dict[str, str]:
        """Archive path -> the line saying where it broke, for archives that did not read to their end."""
        return {x.path: x.broken for x in self.listings if x.broken is not None}

    def path_of(self, image: str) -> Path:
        """Where ``image`` is shown to be: ``ROOT/images_001.tar.gz/images/NAME`` (not a file: the reader
        says so when asked to open it)."""
        archive, member = self.members[image]
        return Path(archive) / member

    def member_at(self, path: str | Path) -> tuple[str, str] | None:
        """(archive, member) when ``path`` is one of ``path_of``'s, else None."""
        image = Path(path).name
        found = self.members.get(image)
        return found if found is not None and Path(found[0]) / found[1] == Path(path) else None


def open_archives(root: str | Path, paths: Sequence[Path], quiet: bool | None = None) -> Archives:
    """List ``paths`` (cached; uncached ones in parallel, one process each) and apply the member rules."""
    from cxr_fast.parallel import imap_progress

    r = Path(root)
    inside: list[Path] = []
    for p in paths:
        if is_inside(r, p):
            inside.append(p)
        else:
            warnings.warn(f"{p} is a link leading outside {r}; not read (link the whole data folder instead)",
                          DataWarning, stacklevel=3)
    if quiet is None:
        quiet = not os.isatty(1)
    fresh = [p for p in inside if not _listed(p)]
    listings = {str(p): cached_listing(p) for p in inside if p not in fresh}
    if fresh and not quiet:
        print(f"listing {len(fresh)} archive(s) in {r} once (read through; cached in {cache_dir()})")
    for listing in imap_progress(cached_listing, fresh, "listing archives", quiet=quiet):
        listings[listing.path] = listing
    ordered = [listings[str(p)] for p in inside]
    claims: dict[str, list[tuple[str, str, str | None]]] = {}
    for listing in ordered:
        for image, member, problem in listing.claims:
            claims.setdefault(image, []).append((listing.path, member, problem))
    members: dict[str, tuple[str, str]] = {}
    refused: dict[str, str] = {}
    for image, held in claims.items():
        if len(held) > 1:
            where = ", ".join(f"{Path(a).name}:{m}" for a, m, _ in held[:3])
            refused[image] = f"claimed by {len(held)} archive members ({where}); either could be the truth"
        elif held[0][2] is not None:
            archive, member, problem = held[0]
            refused[image] = f"{Path(archive).name}: member {member!r} {problem}; never read"
        else:
            members[image] = (held[0][0], held[0][1])
    return Archives(r, ordered, members, refused)


def _listed(path: Path) -> bool:
    """Whether ``path`` has a cached listing that matches it (so opening it is instant)."""
    try:
        saved = json.loads(_listing_file(path).read_text(encoding="utf-8"))
        st = os.stat(path)
        return (saved["version"], saved["size"], saved["mtime_ns"]) == (LISTING_VERSION, st.st_size, st.st_mtime_ns)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def attach_archives(root: str | Path, names: Iterable[str], found: dict[str, Path],
                    outside: dict[str, str]) -> Archives | None:
    """Add what the archives in ``root`` hold to ``read_nih_folder``'s maps: each usable member to ``found``
    (as ``Archives.path_of``), each refused name to ``outside``. A file on disk wins; None (nothing listed)
    when there is no archive or every name is already on disk."""
    paths = find_archives(root)
    if not paths or all(n in found or n in outside for n in names):
        return None
    archives = open_archives(root, paths)
    for image, reason in archives.refused.items():
        if image not in found:
            outside.setdefault(image, reason)
    for image in archives.members:
        if image not in found and image not in outside:
            found[image] = archives.path_of(image)
    for line in archives.broken.values():
        warnings.warn(f"{line}: images past that point are missing; fetch it again", DataWarning, stacklevel=3)
    return archives
