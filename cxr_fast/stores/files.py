"""What every part of a store checks its files with: a file's sha256, and the record the manifest keeps of it.

Below the format modules and the manifest alike, so a writer records its files without importing the
module that later checks them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_HASH_BLOCK = 8 << 20


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def file_record(path: str | Path, sha256: str | None = None) -> dict:
    """What the manifest keeps of a file: size, sha256 (computed unless given) and mtime."""
    st = os.stat(path)
    return {"size": int(st.st_size), "sha256": sha256 or sha256_file(path), "mtime_ns": int(st.st_mtime_ns)}
