"""Small NIH-layout image sets made with PIL for the loader, store and augmentation tests.

Each image's brightness encodes its label (positives bright, negatives dark), so a test can tell
whether a label stayed with its image through shuffling and augmentation. Optional odd files
(RGBA, 16-bit, truncated) exercise the shared reader's rules in every backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
POSITIVE_BASE, NEGATIVE_BASE = 190, 45


def picture(i: int, size: int, positive: bool) -> np.ndarray:
    """A smooth chest-like uint8 picture: gradients, soft blobs and mild texture, level set by the label."""
    rng = np.random.default_rng(1000 + i)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.full((size, size), POSITIVE_BASE if positive else NEGATIVE_BASE, dtype=np.float32)
    img += 25 * (xx - 0.5) + 15 * np.sin(6.28 * (yy * (2 + i % 3)))
    for _ in range(4):
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.15)
        img += rng.uniform(-30, 30) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    small = rng.normal(0, 6, (size // 16, size // 16)).astype(np.float32)
    img += np.asarray(Image.fromarray(small, mode="F").resize((size, size), Image.Resampling.BICUBIC))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _significant_bits(bits: int):
    """A PNG's sBIT chunk: how many bits of each sample carry the picture (``data.pixels``, the ``bits`` step)."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add(b"sBIT", bytes([bits]))
    return info


def make_dataset(root: Path, n: int = 8, size: int = 640, rgba: bool = False, sixteen: bool = False,
                 truncated: bool = False) -> tuple[Path, list[str], np.ndarray]:
    """Write ``n`` PNGs + metadata under ``root``; returns (root, image ids, labels as float32).

    Odd index images are positive ("Effusion"). With ``rgba``/``sixteen`` image 1/2 is saved as
    RGBA/16-bit; with ``truncated`` one more image is written cut in half (it is listed last).
    """
    (root / "images").mkdir(parents=True, exist_ok=True)
    ids, labels, lines = [], [], [HEADER]
    count = n + (1 if truncated else 0)
    for i in range(count):
        name = f"{i + 1:08d}_000.png"
        positive = i % 2 == 1
        gray = picture(i, size, positive)
        path = root / "images" / name
        if rgba and i == 1:
            Image.fromarray(np.stack([gray, gray, gray, np.full_like(gray, 255)], -1), mode="RGBA").save(path)
        elif sixteen and i == 2:  # the 8-bit picture stored in 16 bits, declared so (sBIT 8): its brightness kept
            Image.fromarray(gray.astype(np.uint16) * 257).save(path, pnginfo=_significant_bits(8))
        else:
            Image.fromarray(gray, mode="L").save(path)
        if truncated and i == count - 1:
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        ids.append(name)
        labels.append(1.0 if positive else 0.0)
        finding = "Effusion" if positive else "No Finding"
        lines.append(f"{name},{finding},0,{i + 1},50,M,PA,{size},{size},0.143,0.143")
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    return root, ids, np.asarray(labels, dtype=np.float32)
