"""Pack an NIH-layout image folder into ``images_NNN.tar.gz`` archives, as NIH ships them (``images/NAME``)."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path


def pack(source: Path, out: Path, parts: int = 3, prefix: str = "images/") -> list[Path]:
    """Split ``source``'s PNGs (name order) over ``parts`` archives in ``out``, beside a copy of its metadata
    (and phantom marker); returns the archives. Member mtimes are fixed so the bytes are reproducible."""
    out.mkdir(parents=True, exist_ok=True)
    for meta in list(source.glob("Data_Entry_2017*.csv*")) + list(source.glob(".phantom.json")):
        shutil.copy2(meta, out / meta.name)
    images = sorted(p for p in source.rglob("*.png"))
    per = -(-len(images) // parts)
    archives = []
    for i in range(parts):
        path = out / f"images_{i + 1:03d}.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            folder = tarfile.TarInfo(prefix.rstrip("/") or ".")
            folder.type, folder.mode, folder.mtime = tarfile.DIRTYPE, 0o755, 1_500_000_000
            if prefix:
                tar.addfile(folder)
            for image in images[i * per:(i + 1) * per]:
                info = tar.gettarinfo(str(image), arcname=prefix + image.name)
                info.mtime, info.uid, info.gid, info.uname, info.gname = 1_500_000_000, 0, 0, "", ""
                with open(image, "rb") as fh:
                    tar.addfile(info, fh)
        archives.append(path)
    return archives
