"""A built-in phantom of ChestX-ray14: the NIH layout with real label rows and synthetic pixels.

Rows (labels, patients, follow-ups, views) are drawn from the real metadata, so label frequencies and
co-occurrence are real. Pixels are a chest-like picture (body, lungs, mediastinum, heart, ribs,
diaphragm, texture and noise) in which each finding is drawn at the size radiologists boxed it in
``BBox_List_2017.csv.gz``: a nodule is 46-98 px wide at 1024 px, so about 4 px at 64 px, and small
findings need high resolution here as they did in the paper. Each image depends only on (seed, index),
so a run is deterministic whatever the number of workers, and an interrupted run resumes.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cxr_fast.data.nih import FINDINGS, canonical_label, read_metadata
from cxr_fast.errors import CxrError
from cxr_fast.io import atomic_path, write_json, write_text
from cxr_fast.parallel import imap_progress
from cxr_fast.paths import BUNDLED_BBOXES, BUNDLED_METADATA

METADATA_NAME = "Data_Entry_2017_v2020.csv"
# Bumped whenever rendering changes, so a cached phantom from older code is never mixed with new images.
PHANTOM_VERSION = 2
HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
# Lesion box sizes (sqrt of area, px at 1024) for labels the box file lacks, as (10th, 90th) percentiles.
_FALLBACK_SIZES = {"Edema": (250.0, 450.0), "Emphysema": (300.0, 500.0), "Hernia": (90.0, 180.0),
                   "Consolidation": (170.0, 480.0), "Fibrosis": (150.0, 350.0), "Pleural_Thickening": (80.0, 250.0)}
_BOX_ALIASES = {"Infiltrate": "Infiltration"}


@dataclass(frozen=True)
class PhantomSpec:
    """Everything one worker needs to render one image."""

    size: int
    seed: int
    lesion_sizes: dict[str, tuple[float, ...]]


def lesion_sizes(path: Path = BUNDLED_BBOXES) -> dict[str, tuple[float, ...]]:
    """sqrt(w*h) of every radiologist box per label (1024 px space), plus fallbacks for unboxed labels."""
    sizes: dict[str, list[float]] = defaultdict(list)
    with gzip.open(path, "rt", newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        for row in reader:
            label = _BOX_ALIASES.get(row[1], row[1])
            sizes[label].append(float(np.sqrt(float(row[4]) * float(row[5]))))
    out = {k: tuple(v) for k, v in sizes.items()}
    for label, (lo, hi) in _FALLBACK_SIZES.items():
        out.setdefault(label, tuple(np.linspace(lo, hi, 9)))
    return out


# ---------------------------------------------------------------------------------------------------
# Drawing primitives: all work on a float32 canvas in [0, 255] with coordinates in pixels.


def _soft_disc(canvas: np.ndarray, cy: float, cx: float, ry: float, rx: float, amount: float,
               edge: float = 0.15, profile: str = "flat") -> None:
    """Add ``amount`` inside an ellipse with a soft edge, touching only its bounding window."""
    h, w = canvas.shape
    pad = 1.0 + edge * 2
    y0, y1 = max(0, int(cy - ry * pad)), min(h, int(cy + ry * pad) + 1)
    x0, x1 = max(0, int(cx - rx * pad)), min(w, int(cx + rx * pad) + 1)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.ogrid[y0:y1, x0:x1]
    r = np.sqrt(((yy - cy) / max(ry, 0.5)) ** 2 + ((xx - cx) / max(rx, 0.5)) ** 2)
    weight = 1.0 / (1.0 + np.exp((r - 1.0) / max(edge, 1e-3)))
    if profile == "dome":
        weight = weight * np.clip(1.2 - 0.5 * r * r, 0.0, 1.0)
    canvas[y0:y1, x0:x1] += amount * weight


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Band-limited noise in about [-1, 1]: random cells upsampled bicubically (cheap texture)."""
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    img = Image.fromarray(small, mode="F").resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 1.5


def _pick_size(rng: np.random.Generator, spec: PhantomSpec, label: str) -> float:
    """A lesion size for ``label`` drawn from the real box sizes, scaled to the canvas."""
    choices = spec.lesion_sizes[label]
    return float(choices[rng.integers(len(choices))]) * spec.size / 1024.0


@dataclass
class _Anatomy:
    """Where the chest's parts landed in this image, so findings can be placed inside lungs."""

    lung_cy: float
    lung_ry: float
    lung_rx: float
    left_cx: float  # image left = patient's right
    right_cx: float
    heart_cy: float
    heart_cx: float


def _draw_chest(rng: np.random.Generator, s: int, emphysema: bool, cardiomegaly: bool) -> tuple[np.ndarray, _Anatomy]:
    canvas = np.full((s, s), 12.0, dtype=np.float32)
    u = s / 1024.0
    body_rx, body_ry = s * rng.uniform(0.40, 0.47), s * rng.uniform(0.48, 0.55)
    cx, cy = s * 0.5 + rng.normal(0, 8 * u), s * 0.55 + rng.normal(0, 8 * u)
    _soft_disc(canvas, cy, cx, body_ry, body_rx, 100.0, edge=0.04)
    # Lungs: dark fields; emphysema makes them larger, darker (hyperlucent) and the diaphragm flat.
    grow = 1.12 if emphysema else 1.0
    lung_ry, lung_rx = s * 0.30 * grow, s * 0.135 * grow
    lung_cy = s * 0.46
    gap = s * rng.uniform(0.155, 0.175)
    left_cx, right_cx = cx - gap, cx + gap
    depth = 78.0 if emphysema else 62.0
    for lx in (left_cx, right_cx):
        _soft_disc(canvas, lung_cy, lx, lung_ry, lung_rx, -depth, edge=0.06)
    # Vascular texture inside lungs (less in emphysema).
    texture = _smooth_noise(rng, s, 48) * (4.0 if emphysema else 9.0)
    canvas += texture * (canvas < 70)
    # Ribs: bright arcs across both lungs.
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    for k in range(9):
        y_rib = lung_cy - lung_ry * 0.9 + k * lung_ry * 0.21
        arc = y_rib + 0.0009 / u * (xx - cx) ** 2 * 0.35
        band = np.exp(-(((yy - arc) / (7.0 * u)) ** 2))
        canvas += 16.0 * band * (canvas < 90)
    # Mediastinum and spine.
    _soft_disc(canvas, s * 0.40, cx, s * 0.30, s * 0.065, 55.0, edge=0.1)
    # Heart: patient's left = image right; cardiomegaly makes its width > half the thorax.
    heart_scale = rng.uniform(1.35, 1.55) if cardiomegaly else rng.uniform(0.9, 1.05)
    heart_cy, heart_cx = s * 0.63, cx + s * 0.04
    _soft_disc(canvas, heart_cy, heart_cx, s * 0.12 * heart_scale ** 0.7, s * 0.13 * heart_scale, 60.0, edge=0.08)
    # Diaphragm domes: bright below the lung bases (flattened and lower with emphysema).
    dome_y = lung_cy + lung_ry * (0.95 if emphysema else 0.85)
    for lx in (left_cx, right_cx):
        _soft_disc(canvas, dome_y + s * 0.12, lx, s * (0.10 if emphysema else 0.13), lung_rx * 1.2, 50.0, edge=0.1)
    anatomy = _Anatomy(lung_cy, lung_ry, lung_rx, left_cx, right_cx, heart_cy, heart_cx)
    # End-on vessels: small bright dots that a low-resolution view cannot tell from a nodule.
    for _ in range(int(rng.integers(12, 24))):
        y, x = _in_lung(rng, anatomy, 0.85)
        d = rng.uniform(10, 28) * u
        _soft_disc(canvas, y, x, d / 2, d / 2, rng.uniform(12, 24), edge=0.2, profile="dome")
    return canvas, anatomy


def _in_lung(rng: np.random.Generator, a: _Anatomy, margin: float = 0.75) -> tuple[float, float]:
    side = a.left_cx if rng.random() < 0.5 else a.right_cx
    t, rad = rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform(0, 1)) * margin
    return a.lung_cy + np.sin(t) * rad * a.lung_ry, side + np.cos(t) * rad * a.lung_rx


def _draw_finding(canvas: np.ndarray, rng: np.random.Generator, spec: PhantomSpec, a: _Anatomy, label: str) -> None:
    s = spec.size
    if label == "Nodule":
        for _ in range(int(rng.integers(1, 3))):
            d = _pick_size(rng, spec, "Nodule") * 0.75
            y, x = _in_lung(rng, a)
            _soft_disc(canvas, y, x, d / 2, d / 2 * rng.uniform(0.85, 1.15), rng.uniform(22, 34), edge=0.12, profile="dome")
    elif label == "Mass":
        d = _pick_size(rng, spec, "Mass") * 0.8
        y, x = _in_lung(rng, a, 0.6)
        for _ in range(3):  # lobulated: a few overlapping blobs
            _soft_disc(canvas, y + rng.normal(0, d * 0.12), x + rng.normal(0, d * 0.12), d / 2 * rng.uniform(0.7, 1.0),
                       d / 2 * rng.uniform(0.7, 1.0), rng.uniform(14, 20), edge=0.15, profile="dome")
    elif label == "Effusion":
        h = _pick_size(rng, spec, "Effusion") * 0.7
        for side in ([a.left_cx, a.right_cx] if rng.random() < 0.4 else [rng.choice([a.left_cx, a.right_cx])]):
            _soft_disc(canvas, a.lung_cy + a.lung_ry * 0.95, side, h * 0.6, a.lung_rx * 1.05, rng.uniform(35, 50), edge=0.2)
    elif label == "Atelectasis":
        d = _pick_size(rng, spec, "Atelectasis")
        y, x = _in_lung(rng, a, 0.6)
        _soft_disc(canvas, y + a.lung_ry * 0.25, x, d * 0.18, d * 0.6, rng.uniform(25, 35), edge=0.3)
    elif label == "Edema":
        for side in (a.left_cx, a.right_cx):
            hx = (side + a.heart_cx) / 2
            _soft_disc(canvas, a.lung_cy + a.lung_ry * 0.1, hx, a.lung_ry * 0.55, a.lung_rx * 0.8, rng.uniform(18, 26), edge=0.5)
        yy = np.arange(s, dtype=np.float32)[:, None]
        lines = (np.sin(yy / (6.0 * s / 1024.0)) > 0.8) * 8.0
        base = slice(int(a.lung_cy + a.lung_ry * 0.4), int(a.lung_cy + a.lung_ry * 0.9))
        canvas[base] += lines[base] * (canvas[base] < 80)
    elif label == "Emphysema":
        pass  # drawn in the anatomy: larger hyperlucent lungs, flat diaphragm, sparse vessels
    elif label == "Cardiomegaly":
        pass  # drawn in the anatomy: the heart is widened
    elif label == "Hernia":
        d = _pick_size(rng, spec, "Hernia")
        y, x = a.heart_cy + s * 0.02, a.heart_cx - s * 0.02
        _soft_disc(canvas, y, x, d / 2, d / 2, 30.0, edge=0.1)
        _soft_disc(canvas, y - d * 0.2, x, d * 0.22, d * 0.35, -45.0, edge=0.1)  # gas above the fluid level
    elif label in ("Infiltration", "Pneumonia", "Consolidation"):
        d = _pick_size(rng, spec, label)
        y, x = _in_lung(rng, a, 0.5)
        patch = np.zeros_like(canvas)
        _soft_disc(patch, y, x, d / 2, d / 2, 1.0, edge=0.3)
        mottle = np.clip(_smooth_noise(rng, s, 96) + 0.6, 0, 1.5)
        canvas += patch * mottle * rng.uniform(18, 30 if label == "Consolidation" else 24)
    elif label == "Pneumothorax":
        d = _pick_size(rng, spec, "Pneumothorax")
        side = a.left_cx if rng.random() < 0.5 else a.right_cx
        top = a.lung_cy - a.lung_ry * 0.7
        _soft_disc(canvas, top, side, d * 0.5, a.lung_rx * 0.9, -25.0, edge=0.05)
        _soft_disc(canvas, top + d * 0.5, side, 2.0 * s / 1024, a.lung_rx * 0.7, 30.0, edge=0.5)
    elif label == "Fibrosis":
        y0 = int(a.lung_cy - a.lung_ry * 0.8)
        y1 = int(a.lung_cy)
        net = (np.abs(_smooth_noise(rng, s, 160)) < 0.12).astype(np.float32) * 18.0
        canvas[y0:y1] += net[y0:y1] * (canvas[y0:y1] < 90)
    elif label == "Pleural_Thickening":
        side, sign = (a.left_cx, -1) if rng.random() < 0.5 else (a.right_cx, 1)
        _soft_disc(canvas, a.lung_cy, side + sign * a.lung_rx * 0.92, a.lung_ry * 0.6, 10.0 * s / 1024, 40.0, edge=0.4)


def render(spec: PhantomSpec, index: int, labels: tuple[str, ...]) -> np.ndarray:
    """One phantom radiograph, uint8 HxW, depending only on (seed, index, labels)."""
    # Separate streams for anatomy, each finding and the exposure/noise, so adding a finding changes
    # only the finding's own pixels (the tests measure lesion sizes this way).
    rng = np.random.default_rng([spec.seed, index, 0])
    canvas, anatomy = _draw_chest(rng, spec.size, "Emphysema" in labels, "Cardiomegaly" in labels)
    for label in labels:
        _draw_finding(canvas, np.random.default_rng([spec.seed, index, 1 + FINDINGS.index(label)]), spec, anatomy, label)
    rng = np.random.default_rng([spec.seed, index, 99])
    # Exposure differences between radiographs, then quantum noise.
    canvas = canvas * rng.uniform(0.85, 1.15) + rng.uniform(-10, 10)
    canvas += rng.normal(0.0, 3.0, canvas.shape).astype(np.float32)
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8)


def _render_to_file(job: tuple[PhantomSpec, int, tuple[str, ...], str]) -> str:
    spec, index, labels, path = job
    target = Path(path)
    if not target.exists():  # resume: a file present was renamed into place whole
        with atomic_path(target) as tmp:
            Image.fromarray(render(spec, index, labels), mode="L").save(tmp, format="PNG", compress_level=3)
    return target.name


def _choose_rows(meta, n: int, seed: int, enrich: tuple[str, ...] = (), enrich_fraction: float = 0.3) -> list[int]:
    """Real metadata rows: random ones, or with ``enrich`` about ``enrich_fraction`` of them carrying those labels.

    Enrichment keeps rows real (their labels, co-occurrence and patients) and only changes how often a
    label is drawn, as the paper's own per-label subsample does; it gives a small phantom enough positives.
    """
    if n > len(meta):
        raise CxrError(f"--n {n} is more than the {len(meta)} rows of {meta.source}")
    if not 0.0 < enrich_fraction < 1.0:
        raise CxrError(f"enrich fraction must be between 0 and 1, got {enrich_fraction}")
    rng = np.random.default_rng(seed)
    chosen: set[int] = set()
    for label in enrich:
        pool = np.flatnonzero(meta.has(label))
        want = min(len(pool), int(round(n * enrich_fraction / len(enrich))))
        chosen.update(rng.choice(pool, size=want, replace=False).tolist())
    rest = np.setdiff1d(np.arange(len(meta)), np.fromiter(chosen, dtype=np.int64, count=len(chosen)))
    chosen.update(rng.choice(rest, size=n - len(chosen), replace=False).tolist())
    return sorted(chosen)


def make_phantom(out: str | Path, n: int = 600, size: int = 1024, seed: int = 0, workers: int | None = None,
                 quiet: bool = False, metadata: Path = BUNDLED_METADATA, enrich: tuple[str, ...] = (),
                 enrich_fraction: float = 0.3) -> Path:
    """Write an NIH-layout phantom (``Data_Entry_2017_v2020.csv`` + ``images/*.png``) into ``out``.

    A second call with the same arguments finishes an interrupted run and leaves complete files alone;
    different arguments in an existing phantom folder are refused rather than mixed.
    """
    if n <= 0:
        raise CxrError(f"--n must be positive, got {n}")
    if size < 32:
        raise CxrError(f"--size must be at least 32 px, got {size}")
    root = Path(out)
    enrich = tuple(canonical_label(label) for label in enrich)
    params = {"n": n, "size": size, "seed": seed, "metadata": Path(metadata).name, "version": PHANTOM_VERSION}
    if enrich:  # recorded only when used, so plain phantoms made before the option stay valid
        params.update(enrich=list(enrich), enrich_fraction=enrich_fraction)
    marker = root / ".phantom.json"
    if marker.exists():
        old = json.loads(marker.read_text())
        if old != params:
            raise CxrError(f"{root} holds a phantom made with {old}; choose another folder for {params}")
    elif root.exists() and any(root.iterdir()):
        raise CxrError(f"{root} exists and is not an empty folder or a phantom; choose another folder")
    (root / "images").mkdir(parents=True, exist_ok=True)
    write_json(marker, params)

    meta = read_metadata(metadata)
    rows = _choose_rows(meta, n, seed, enrich, enrich_fraction)
    spec = PhantomSpec(size, seed, lesion_sizes())
    scale = 1024.0 / size
    lines = [HEADER]
    jobs = []
    for i, r in enumerate(rows):
        name = str(meta.image_ids[r])
        present = tuple(f for f in FINDINGS if meta.labels[r, FINDINGS.index(f)])
        lines.append(",".join([
            name, str(meta.label_strings[r]), str(meta.follow_up[r]), str(meta.patient_ids[r]), str(meta.ages[r]),
            str(meta.genders[r]), str(meta.views[r]), str(size), str(size), f"{0.143 * scale:.4f}", f"{0.143 * scale:.4f}",
        ]))
        jobs.append((spec, i, present, str(root / "images" / name)))
    write_text(root / METADATA_NAME, "\n".join(lines) + "\n")
    for _ in imap_progress(_render_to_file, jobs, f"phantom {size}px", workers=workers, quiet=quiet):
        pass
    write_text(root / ".complete", "")
    return root
