"""One URL into one ``.part`` file over HTTP(S), standard library only: resumed, retried, checked.

A 42 GB download over hours will be cut: a dropped connection is resumed where it stopped with an HTTP
``Range`` request and retried with exponential backoff, and a killed run resumes from its ``.part`` file
on the next one. The bytes are hashed (sha256) and, for a ``.gz``, run through zlib as they arrive, so a
cut-short or corrupted gzip stream fails its own CRC and length check even where no checksum was
published. Only the caller renames a ``.part`` to its final name, after recording it: a half file is
never taken for a whole one.

A host that cannot be reached at all (no DNS, refused, no route) fails at once in one line naming the
URL: that is being offline, not a flaky transfer, and retrying it would only delay the message.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import re
import socket
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cxr_fast.errors import CxrError, one_line
from cxr_fast.io import check_space, disk_full_error, is_disk_full

_BLOCK = 1 << 20
_RETRY_HTTP = {408, 425, 429, 500, 502, 503, 504}
_UNREACHABLE = {errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_SPARE = 256 << 20  # free disk kept beyond what a download needs
_HEAD = 512  # first bytes kept to tell a web page from the file
_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body")

Progress = Callable[[int, "int | None"], None]  # (bytes in the .part so far, total or None)


class Unreachable(CxrError):
    """The host could not be reached at all: offline, a wrong mirror, or a firewall."""


class GaveUp(CxrError):
    """Retries ran out without progress: the network or the server is down for now."""


class BadDownload(CxrError):
    """The bytes arrived but fail a check (gzip CRC or length, size, sha256): exit status 1."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=1)


@dataclass
class Digest:
    """sha256 of the bytes so far, their first bytes (a web page in place of the file shows there) and, for
    gzip data, whether they make one whole gzip stream (or several)."""

    gzip: bool
    size: int = 0
    sha: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    _inflate: "zlib._Decompress | None" = None
    problem: str | None = None  # the first gzip error, if any
    head: bytes = b""  # the first _HEAD bytes

    def __post_init__(self) -> None:
        if self.gzip:
            self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def update(self, data: bytes) -> None:
        if len(self.head) < _HEAD:
            self.head += data[:_HEAD - len(self.head)]
        self.size += len(data)
        self.sha.update(data)
        if self.gzip and self.problem is None:
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        d = self._inflate
        assert d is not None
        try:
            while data:
                if d.eof:  # a gzip file may hold several members, and be padded with zeros
                    rest = d.unused_data + data
                    stripped = rest.lstrip(b"\0")
                    if not stripped:
                        return
                    if not stripped.startswith(b"\x1f\x8b"):
                        self.problem = "bytes after the end of the gzip stream"
                        return
                    d = self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    data = stripped
                d.decompress(data, _BLOCK)  # bounded output: the inflated bytes are only checked, never kept
                data = d.unconsumed_tail
        except zlib.error as exc:
            self.problem = f"not a whole gzip stream ({exc})"

    def content_problem(self) -> str | None:
        """Why the bytes so far are not the file: a web page (``is_html``), or, for gzip data, not one or
        more whole gzip streams; None when nothing is wrong."""
        if is_html(self.head):
            return "an HTML page, not the file (a login, consent or error page in its place?)"
        if self.problem is not None:
            return self.problem
        if self.gzip and self._inflate is not None and not self._inflate.eof:
            return "the gzip stream is cut short"
        return None

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


def is_html(head: bytes) -> bool:
    """Whether a file's first bytes are a web page's: no archive, CSV or image starts like one, and a server
    answers a stale link, a login or a quota page that way, with 200 OK."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith(_HTML_STARTS)


def digest_file(path: str | Path, gzip: bool, progress: Progress | None = None) -> Digest:
    """A ``Digest`` of a file on disk (a ``.part`` being resumed, or an archive checked on a rerun)."""
    d = Digest(gzip)
    total = os.path.getsize(path)
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK * 8):
            d.update(block)
            if progress is not None:
                progress(d.size, total)
    return d


@dataclass(frozen=True)
class Policy:
    """How hard to try: attempts without progress before giving up, the first wait (doubling, capped),
    the socket timeout."""

    retries: int = 8
    backoff_s: float = 2.0
    max_wait_s: float = 120.0
    timeout_s: float = 60.0


def _unreachable(exc: BaseException) -> bool:
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, socket.gaierror):
        return True
    return isinstance(reason, OSError) and reason.errno in _UNREACHABLE


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    from cxr_fast.version import __version__

    headers = {"User-Agent": f"cxr-fast/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def download(url: str, part: str | Path, gzip: bool, policy: Policy = Policy(), progress: Progress | None = None,
             sleep: Callable[[float], None] = time.sleep) -> Digest:
    """Fetch ``url`` into ``part`` (resuming what it holds), and return the ``Digest`` of the whole file.

    Raises ``Unreachable`` at once when the host cannot be reached before any byte came, ``CxrError``
    for an HTTP error that retrying cannot fix (404, 403) or when retries run out, and ``BadDownload``
    when the bytes fail the gzip check.
    """
    path = Path(part)
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = digest_file(path, gzip, progress) if path.exists() else Digest(gzip)
    failures = 0  # attempts in a row that got no further toward the whole file than any attempt before
    furthest = digest.size  # a server that ignores Range and never finishes sends the same bytes each time
    received = False  # any byte from this URL in this run: after that a failure is a flaky transfer
    while True:
        offset = digest.size
        total: int | None = None
        try:
            with _open(url, offset, policy.timeout_s) as response:
                if (response.headers.get("Content-Type") or "").lower().startswith("text/html"):
                    raise BadDownload(f"{url}: served as a web page (Content-Type text/html), not the file: "
                                      "a login, consent or error page? Check the link in a browser")
                if offset and response.status == 206:
                    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
                    if match is None or int(match.group(1)) != offset:
                        raise BadDownload(f"{url}: answered a request from byte {offset} with "
                                          f"{response.headers.get('Content-Range')!r}")
                    total = int(match.group(3)) if match.group(3) != "*" else None
                else:
                    if offset:  # the server ignored the range: start again from the first byte
                        path.unlink()
                        digest = Digest(gzip)
                        offset = 0
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                if total is not None:
                    check_space(path, total - offset, spare=_SPARE)
                with open(path, "ab") as fh:
                    while block := response.read1(_BLOCK):  # what has arrived: a kill loses little
                        fh.write(block)
                        digest.update(block)
                        if digest.problem is not None:  # deflate errors show where they are: stop there
                            raise BadDownload(f"{url}: {digest.content_problem()}")
                        received = True
                        if progress is not None:
                            progress(digest.size, total)
            if total is not None and digest.size < total:
                raise http.client.IncompleteRead(b"", total - digest.size)
            if total is not None and digest.size > total:
                raise BadDownload(f"{url}: {digest.size} bytes where the server announced {total}")
            break
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:  # nothing after the bytes we hold: they may be the whole file
                match = _CONTENT_RANGE.match((exc.headers.get("Content-Range") or "").replace("bytes */", "bytes 0-0/"))
                if match is not None and match.group(3) == str(offset):
                    break
                path.unlink()
                digest = Digest(gzip)
                continue
            if exc.code not in _RETRY_HTTP:
                raise CxrError(f"{url}: HTTP {exc.code} {exc.reason}") from None
            failure = f"HTTP {exc.code} {exc.reason}"
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            if is_disk_full(exc):  # not the network's fault: no retry can help
                raise disk_full_error(path, digest.size, total) from None
            if not received and _unreachable(exc):
                raise Unreachable(f"cannot reach {url} ({one_line(getattr(exc, 'reason', exc))}); offline, or a "
                                  "wrong --mirror? Nothing more was fetched") from None
            failure = one_line(exc)
        if digest.size > furthest:  # progress: bytes past the furthest any attempt reached
            furthest, failures = digest.size, 0
        failures += 1
        if failures > policy.retries:
            raise GaveUp(f"{url}: gave up after {policy.retries} retries without progress toward the whole file "
                         f"(furthest: byte {furthest:,}; last: {failure}); rerun to resume from byte {digest.size}")
        sleep(min(policy.max_wait_s, policy.backoff_s * 2 ** (failures - 1)))
    problem = digest.content_problem()
    if problem is not None:
        raise BadDownload(f"{url}: {problem}")
    return digest
