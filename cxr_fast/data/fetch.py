"""``cxr-fast fetch nih DIR``: NIH ChestX-ray14's image archives and metadata into one data folder.

The links are data (``resources/nih_links.json``: NIH's 12 static Box links, as in its
``batch_download_zips.py``), so a user can point at a mirror (``--mirror URL``: every file by its name) or a
links file of their own (``--links FILE``). NIH publishes no checksum, so every archive is checked by its
own gzip CRC and length while it downloads (``data.download``), and its size and sha256 are recorded in
``DIR/fetch.json`` and checked again on every rerun: a file changed or cut short since is refused by name.

Nothing here extracts anything: ``DIR`` is a data folder as it stands (``data.archives``). The metadata
has no static link; the package bundles ``Data_Entry_2017_v2020.csv.gz``, which is copied into ``DIR``.
A file appears under its final name only after its record is written (``.part`` until then), so a kill at
any point loses at most the bytes in flight.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from cxr_fast.data.download import BadDownload, Digest, Policy, digest_file, download
from cxr_fast.data.reader import name_problem
from cxr_fast.errors import CxrError
from cxr_fast.io import atomic_path, write_json
from cxr_fast.locks import exclusive
from cxr_fast.paths import BUNDLED_METADATA, RESOURCES

NIH_LINKS = RESOURCES / "nih_links.json"
RECORD = "fetch.json"
LOCK = ".fetch.lock"
RECORD_VERSION = 1
_WORKING = (".part", ".bad")  # fetch's names for a file in flight and a refused one
_METADATA = re.compile(r"Data_Entry_2017.*\.csv(\.gz)?$")
_SHA256 = re.compile(r"[0-9a-f]{64}$")


@dataclass(frozen=True)
class Item:
    """One file to fetch: its name in DIR, its URL, its archive number, and any published size or sha256."""

    name: str
    url: str
    part: int | None = None
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Plan:
    source: str  # where the links came from, for the record and the dry run
    items: tuple[Item, ...]
    copy_metadata: bool  # no item is a Data_Entry file: copy the bundled one


def entry_name_problem(name: str) -> str | None:
    """Why a links file may not name ``name`` in DIR, or None: a plain file name that is none of fetch's
    own (the record, the lock, a ``.part`` or ``.bad`` file), so no entry can overwrite fetch's work."""
    if name_problem(name) or name.startswith(".") or any(ord(c) < 32 for c in name):
        return "is not a plain file name"
    folded = name.casefold()
    if folded in (RECORD.casefold(), LOCK.casefold()):
        return f"is reserved: {RECORD} is fetch's record of what it fetched"
    if folded.endswith(_WORKING):
        return f"is reserved: fetch keeps a file being fetched or refused as NAME{' or NAME'.join(_WORKING)}"
    return None


def read_links(path: str | Path | None = None) -> dict:
    """A links file (default: NIH's, bundled), checked: every name a bare file name, every URL http(s)."""
    p = Path(path) if path is not None else NIH_LINKS
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CxrError(f"links file not found: {p}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CxrError(f"{p}: not a readable JSON links file ({exc})") from None
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, list) or not files:
        raise CxrError(f"{p}: no 'files' list (see {NIH_LINKS} for the format)")
    seen: set[str] = set()
    for i, f in enumerate(files):
        where = f"{p}: files[{i}]"
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not isinstance(f.get("url"), str):
            raise CxrError(f"{where}: needs a 'name' and a 'url'")
        problem = entry_name_problem(f["name"])
        if problem is not None:
            raise CxrError(f"{where}: name {f['name']!r} {problem}")
        if f["name"].casefold() in seen:  # a case-insensitive disk (macOS, Windows) holds one file for both
            raise CxrError(f"{where}: {f['name']} is listed twice (names are compared ignoring case)")
        seen.add(f["name"].casefold())
        if f.get("part") is not None and (not isinstance(f["part"], int) or f["part"] < 1):
            raise CxrError(f"{where}: part must be a whole number from 1")
        if f.get("size") is not None and (not isinstance(f["size"], int) or f["size"] < 0):
            raise CxrError(f"{where}: size must be a whole number of bytes")
        if f.get("sha256") is not None and not _SHA256.match(str(f["sha256"])):
            raise CxrError(f"{where}: sha256 must be 64 lowercase hex digits")
    return doc


def parse_parts(text: str) -> list[int]:
    """``'1,2'`` or ``'1-3,12'`` -> archive numbers."""
    out: set[int] = set()
    for word in filter(None, (w.strip() for w in text.split(","))):
        first, _, last = word.partition("-")
        try:
            lo, hi = int(first), int(last or first)
        except ValueError:
            raise CxrError(f"--parts: {word!r} is not a number or a range like 1-3") from None
        if lo < 1 or hi < lo:
            raise CxrError(f"--parts: {word!r} is not a range of archive numbers from 1")
        out.update(range(lo, hi + 1))
    if not out:
        raise CxrError("--parts: give archive numbers, e.g. 1,2 or 1-3")
    return sorted(out)


def make_plan(links: str | Path | None = None, mirror: str | None = None, parts: Sequence[int] | None = None) -> Plan:
    """What to fetch: the links (``links`` file or NIH's), each URL moved to ``mirror`` when given, only the
    archives ``parts`` names (files without a part number, such as metadata, always)."""
    doc = read_links(links)
    base = str(doc.get("base", ""))
    if mirror is not None and urllib.parse.urlsplit(mirror).scheme not in ("http", "https"):
        raise CxrError(f"--mirror {mirror}: give an http:// or https:// URL")
    items = []
    for f in doc["files"]:
        url = urllib.parse.urljoin(mirror.rstrip("/") + "/", f["name"]) if mirror else urllib.parse.urljoin(base, f["url"])
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise CxrError(f"{links or NIH_LINKS}: {f['name']}: {url!r} is not an http(s) URL")
        items.append(Item(f["name"], url, f.get("part"), f.get("size"), f.get("sha256")))
    if parts is not None:
        known = sorted(i.part for i in items if i.part is not None)
        unknown = sorted(set(parts) - set(known))
        if unknown:
            raise CxrError(f"--parts: no archive {', '.join(map(str, unknown))} in the links; they number "
                           f"{known[0]}-{known[-1]}" if known else "--parts: the links number no archives")
        items = [i for i in items if i.part is None or i.part in parts]
    source = str(links) if links is not None else f"NIH's links ({NIH_LINKS.name})"
    if mirror:
        source += f", fetched by name from {mirror}"
    return Plan(source, tuple(items), not any(_METADATA.match(i.name) for i in items))


# ----------------------------------------------------------------------------- the record


def read_record(root: Path) -> dict:
    """``DIR/fetch.json``: name -> url, size, sha256 and when, for every file fetch finished."""
    path = root / RECORD
    if not path.exists():
        return {"version": RECORD_VERSION, "files": {}}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("version") == RECORD_VERSION and isinstance(doc.get("files"), dict):
            return doc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        pass
    raise CxrError(f"{path}: damaged fetch record; restore it, or delete it and rerun with --adopt to record "
                   "the files as they are")


def _mismatch(digest: Digest, size: int | None, sha256: str | None, against: str) -> str | None:
    if size is not None and digest.size != size:
        return f"{digest.size} bytes where {against} says {size}"
    if sha256 is not None and digest.hexdigest() != sha256:
        return f"sha256 {digest.hexdigest()[:12]}... is not the {sha256[:12]}... {against} gives"
    return digest.content_problem()


# ----------------------------------------------------------------------------- fetching


def _state(root: Path, item: Item, record: dict) -> str:
    dest, part = root / item.name, root / (item.name + ".part")
    if dest.exists():
        return "here, checked against fetch.json" if item.name in record["files"] else \
            "here but not in fetch.json: refused unless --adopt"
    if part.exists():
        return f"resumes from byte {part.stat().st_size:,}"
    return "to fetch"


def describe(plan: Plan, root: Path) -> list[str]:
    """The dry run: one line per file, with what a real run would do with it."""
    record = read_record(root) if root.is_dir() else {"files": {}}
    archives = sum(i.part is not None for i in plan.items)
    lines = [f"{root}: {archives} archive(s) and {len(plan.items) - archives} other file(s) from {plan.source}"]
    for item in plan.items:
        lines.append(f"  {item.name}  {item.url}  ({_state(root, item, record)})")
    if plan.copy_metadata:
        here = _metadata_here(root)
        lines.append(f"  {BUNDLED_METADATA.name}  " + (f"(not copied: {here.name} is here)" if here else
                     "copied from the copy bundled with cxr-fast (NIH gives the metadata no static link)"))
    known = [i.size for i in plan.items]
    total = f"{sum(known) / 1e9:.1f} GB" if all(s is not None for s in known) else \
        "sizes not published (all 12 NIH archives: about 42 GB)"
    lines.append(f"{total}; nothing was fetched (--dry-run)")
    return lines


def _metadata_here(root: Path) -> Path | None:
    return next((p for p in sorted(root.glob("Data_Entry_2017*")) if _METADATA.match(p.name)), None) \
        if root.is_dir() else None


def fetch(plan: Plan, root: str | Path, policy: Policy = Policy(), adopt: bool = False, quiet: bool = False,
          say: Callable[[str], None] = print) -> dict:
    """Fetch every file of ``plan`` into ``root`` that is not there, check the ones that are, and return the
    record. Files that fail a check are refused by name after the rest are done (``BadDownload``, exit 1);
    an unreachable host or a server that stays down stops the run at once."""
    r = Path(root)
    r.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    with exclusive(r / LOCK, busy=f"{r}: another cxr-fast fetch is writing here; wait for it to finish"), \
            _bar(quiet) as bar:
        record = read_record(r)
        if plan.copy_metadata and _metadata_here(r) is None:  # first: a half-fetched folder can already be verified
            target = r / BUNDLED_METADATA.name
            with atomic_path(target) as tmp:
                shutil.copyfile(BUNDLED_METADATA, tmp)
            say(f"{target}: copied from the metadata bundled with cxr-fast (torchxrayvision's copy of NIH's v2020 file)")
        for item in plan.items:
            problem = _one(item, r, record, policy, adopt, bar)
            if problem is not None:
                problems.append(problem)
    if problems:
        more = f" ({len(problems) - 1} more: {'; '.join(problems[1:3])})" if len(problems) > 1 else ""
        raise BadDownload(problems[0] + more)
    return record


def _one(item: Item, root: Path, record: dict, policy: Policy, adopt: bool, bar: Any) -> str | None:
    """Fetch or check one file; the reason it is refused, or None."""
    dest, part = root / item.name, root / (item.name + ".part")
    gz = item.name.endswith(".gz")
    known = record["files"].get(item.name)
    if dest.exists():
        if known is None and not adopt:
            return (f"{dest} is here but not in {RECORD} (not fetched by cxr-fast), so nothing vouches for it: move "
                    "it away to fetch it again, or pass --adopt to record it as it is")
        # A recorded sha256 says it all; a file nothing vouches for also gets the gzip check.
        digest = digest_file(dest, gz and known is None, bar.task(f"checking {item.name}"))
        if known is None:
            problem = _mismatch(digest, item.size, item.sha256, "the links file")
            if problem is None:
                _record(root, record, item, digest, adopted=True)
            return None if problem is None else f"{dest}: {problem}; not adopted"
        problem = _mismatch(digest, known["size"], known["sha256"], f"{RECORD} (recorded {known.get('fetched', '?')})")
        return None if problem is None else \
            f"{dest} changed since it was fetched: {problem}; delete it and rerun to fetch it again"
    if known is not None and part.exists() and part.stat().st_size == known["size"]:
        digest = digest_file(part, False, bar.task(f"checking {item.name}"))  # killed between record and rename
        if _mismatch(digest, known["size"], known["sha256"], RECORD) is None:
            os.replace(part, dest)
            return None
    try:
        digest = download(item.url, part, gz, policy, bar.task(item.name))
        problem = _mismatch(digest, item.size, item.sha256, "the links file")
        if problem is not None:
            raise BadDownload(f"{item.url}: {problem}")
    except BadDownload as exc:
        bad = root / (item.name + ".bad")
        if part.exists():
            os.replace(part, bad)
        return f"{item.name} refused: {exc} (kept as {bad.name}; rerun to fetch it again)"
    _record(root, record, item, digest)
    os.replace(part, dest)
    return None


def _record(root: Path, record: dict, item: Item, digest: Digest, adopted: bool = False) -> None:
    record["files"][item.name] = {
        "url": item.url, "size": digest.size, "sha256": digest.hexdigest(),
        "fetched": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), **({"adopted": True} if adopted else {}),
    }
    write_json(root / RECORD, record)


class _bar:
    """A rich progress display with one bar per file (bytes, rate, time left); silent when ``quiet``."""

    def __init__(self, quiet: bool) -> None:
        from rich.progress import (BarColumn, DownloadColumn, Progress, TimeRemainingColumn,
                                   TransferSpeedColumn)

        self.progress = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(), disable=quiet)

    def __enter__(self) -> "_bar":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def task(self, description: str) -> Callable[[int, int | None], None]:
        task = self.progress.add_task(description, total=None)

        def update(done: int, total: int | None) -> None:
            self.progress.update(task, completed=done, total=total)

        return update
