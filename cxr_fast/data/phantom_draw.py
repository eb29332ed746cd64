"""How the phantom draws a chest and its findings, in gray levels on a float canvas.

Normal anatomy and focal lesions differ by documented properties, not by luck:

- Normal anatomy holds no round opacity wider than ``VESSEL_DOT_MAX`` (12 px at 1024 px: the end-on
  vessels); a nodule is at least 29 px (its smallest box), 46-97 px between the 10th and 90th percentile.
- Vessels are branching lines, 2-8 px wide at 1024 px, tapering from the hila; ribs are arcs 14 px wide,
  confined to the thoracic cage (never in the air beside the body). Neither is round.
- The heart and the diaphragm are soft-tissue density with sharp borders (the heart replaces lung, it is not
  a faint patch on it); cardiomegaly widens the heart past half the thorax.
- Focal lesions (Nodule, Mass) follow ``Conspicuity``: ``contrast`` gray levels over the local background,
  an ``edge`` of their radius wide. They differ from each other by size alone.

All lengths are in the 1024 px frame times ``u = size / 1024``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from cxr_fast.data.conspicuity import Conspicuity

VESSEL_DOT_MAX = 12.0  # px at 1024: the widest round structure of normal anatomy (an end-on vessel)
SOFT_TISSUE = 168.0  # gray level of the heart, mediastinum and abdomen before exposure


# ---------------------------------------------------------------------------------------------------
# Primitives: all work on a float32 canvas with coordinates in pixels.


def disc_weight(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float,
                edge: float) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """An ellipse's 0..1 weight with a logistic edge ``edge`` radii wide, over its bounding window only."""
    h, w = shape
    pad = 1.0 + edge * 6
    y0, y1 = max(0, int(cy - ry * pad)), min(h, int(cy + ry * pad) + 2)
    x0, x1 = max(0, int(cx - rx * pad)), min(w, int(cx + rx * pad) + 2)
    if y0 >= y1 or x0 >= x1:
        return None
    yy, xx = np.ogrid[y0:y1, x0:x1]
    r = np.sqrt(((yy - cy) / max(ry, 0.5)) ** 2 + ((xx - cx) / max(rx, 0.5)) ** 2)
    return (slice(y0, y1), slice(x0, x1)), (1.0 / (1.0 + np.exp(np.clip((r - 1.0) / max(edge, 1e-3), -50, 50))))


def add_disc(canvas: np.ndarray, cy: float, cx: float, ry: float, rx: float, amount: float,
             edge: float = 0.15) -> None:
    """Add ``amount`` inside an ellipse with a soft edge."""
    got = disc_weight(canvas.shape, cy, cx, ry, rx, edge)
    if got is not None:
        window, weight = got
        canvas[window] += amount * weight.astype(np.float32)


def fill_disc(canvas: np.ndarray, cy: float, cx: float, ry: float, rx: float, level: float,
              edge: float = 0.05) -> None:
    """Replace what lies inside an ellipse by ``level`` (a dense organ displaces the lung behind it)."""
    got = disc_weight(canvas.shape, cy, cx, ry, rx, edge)
    if got is not None:
        window, weight = got
        canvas[window] += weight.astype(np.float32) * (level - canvas[window])


def max_segment(canvas: np.ndarray, y0: float, x0: float, y1: float, x1: float, width: float, amount: float) -> None:
    """Draw a line of Gaussian cross-section (``width`` = full width at 1/e) from (y0, x0) to (y1, x1) as a union
    with what is there (the maximum), so crossings and junctions never pile up into a brighter spot."""
    h, w = canvas.shape
    pad = width * 1.5 + 1
    ya, yb = max(0, int(min(y0, y1) - pad)), min(h, int(max(y0, y1) + pad) + 1)
    xa, xb = max(0, int(min(x0, x1) - pad)), min(w, int(max(x0, x1) + pad) + 1)
    if ya >= yb or xa >= xb:
        return
    yy, xx = np.ogrid[ya:yb, xa:xb]
    dy, dx = y1 - y0, x1 - x0
    t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / max(dy * dy + dx * dx, 1e-9), 0.0, 1.0)
    d2 = (yy - (y0 + t * dy)) ** 2 + (xx - (x0 + t * dx)) ** 2
    view = canvas[ya:yb, xa:xb]
    np.maximum(view, (amount * np.exp(-d2 / max(width / 2, 0.3) ** 2)).astype(np.float32), out=view)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Band-limited noise in about [-1, 1]: random cells upsampled bicubically (cheap texture)."""
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    img = Image.fromarray(small, mode="F").resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 1.5


# ---------------------------------------------------------------------------------------------------
# Anatomy


@dataclass
class Anatomy:
    """Where the chest's parts landed in this image, so findings can be placed inside lungs."""

    size: int
    lung_cy: float
    lung_ry: float
    lung_rx: float
    left_cx: float  # image left = patient's right
    right_cx: float
    heart_cy: float
    heart_cx: float

    def in_lung(self, rng: np.random.Generator, margin: float = 0.75) -> tuple[float, float]:
        """A point inside one lung field, uniform over an ellipse ``margin`` of the lung's size."""
        side = self.left_cx if rng.random() < 0.5 else self.right_cx
        t, rad = rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform(0, 1)) * margin
        return self.lung_cy + np.sin(t) * rad * self.lung_ry, side + np.cos(t) * rad * self.lung_rx


def _lung_mask(s: int, a: Anatomy, grow: float = 1.0) -> np.ndarray:
    mask = np.zeros((s, s), dtype=np.float32)
    for lx in (a.left_cx, a.right_cx):
        add_disc(mask, a.lung_cy, lx, a.lung_ry * grow, a.lung_rx * grow, 1.0, edge=0.04)
    return np.minimum(mask, 1.0)


def _vessels(canvas: np.ndarray, rng: np.random.Generator, a: Anatomy, lungs: np.ndarray, sparse: bool) -> None:
    """Branching vessels from each hilum, tapering outwards, plus end-on vessels no wider than VESSEL_DOT_MAX.

    Drawn as a union (the maximum), so the hila and crossings stay as bright as one vessel: a pile-up would
    be a nodule-sized bright spot, the very mimic a control must not hold.
    """
    u = a.size / 1024.0
    tree = np.zeros_like(canvas)
    for lx, outward in ((a.left_cx, -1.0), (a.right_cx, 1.0)):
        hy, hx = a.lung_cy + a.lung_ry * 0.05, lx - outward * a.lung_rx * 0.55  # hilum: the lung's medial side
        for _ in range(int(rng.integers(4, 6) if sparse else rng.integers(7, 10))):
            angle = rng.uniform(-1.3, 1.3) + (0.0 if outward > 0 else np.pi)
            stack = [(hy + rng.normal(0, 10 * u), hx, angle, 8.0 * u, 10.0, 0)]
            while stack:
                y, x, ang, width, amount, depth = stack.pop()
                length = a.lung_ry * rng.uniform(0.25, 0.4) * (0.75 ** depth)
                y2, x2 = y + np.sin(ang) * length, x + np.cos(ang) * length
                max_segment(tree, y, x, y2, x2, width, amount)
                if depth < 2 and width > 2.5 * u:
                    for turn in (-1.0, 1.0):
                        turned = ang + turn * rng.uniform(0.25, 0.6)
                        stack.append((y2, x2, turned, width * 0.7, amount * 0.8, depth + 1))
    for _ in range(int(rng.integers(6, 14))):
        y, x = a.in_lung(rng, 0.85)
        d = rng.uniform(4.0, VESSEL_DOT_MAX) * u
        dot = np.zeros_like(tree)
        add_disc(dot, y, x, d / 2, d / 2, rng.uniform(6.0, 10.0), edge=0.2)
        np.maximum(tree, dot, out=tree)
    canvas += tree * lungs


def _ribs(canvas: np.ndarray, a: Anatomy, body: np.ndarray, cx: float) -> None:
    """Nine posterior ribs per side: arcs across the lungs, inside the thoracic cage and the body only."""
    s, u = a.size, a.size / 1024.0
    cage = np.zeros((s, s), dtype=np.float32)
    half_width = abs(a.right_cx - a.left_cx) / 2 + a.lung_rx * 1.1
    add_disc(cage, a.lung_cy, cx, a.lung_ry * 1.08, half_width, 1.0, edge=0.03)
    cage = np.minimum(cage, 1.0) * body
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    ribs = np.zeros((s, s), dtype=np.float32)
    for k in range(9):
        y_rib = a.lung_cy - a.lung_ry * 0.9 + k * a.lung_ry * 0.21
        arc = y_rib + 0.0009 / u * (xx - cx) ** 2 * 0.35
        ribs += np.exp(-(((yy - arc) / (7.0 * u)) ** 2))
    canvas += 16.0 * ribs * cage


def draw_chest(rng: np.random.Generator, s: int, emphysema: bool, cardiomegaly: bool) -> tuple[np.ndarray, Anatomy]:
    """Body, lungs, vessels, ribs, mediastinum, heart and diaphragm; returns the canvas and where they are."""
    canvas = np.full((s, s), 12.0, dtype=np.float32)
    u = s / 1024.0
    body_rx, body_ry = s * rng.uniform(0.40, 0.47), s * rng.uniform(0.48, 0.55)
    cx, cy = s * 0.5 + rng.normal(0, 8 * u), s * 0.55 + rng.normal(0, 8 * u)
    body = np.zeros((s, s), dtype=np.float32)
    add_disc(body, cy, cx, body_ry, body_rx, 1.0, edge=0.01)
    canvas += 100.0 * body
    # Lungs: dark fields; emphysema makes them larger, darker (hyperlucent) and the diaphragm flat and low.
    grow = 1.12 if emphysema else 1.0
    gap = s * rng.uniform(0.155, 0.175)
    heart_scale = rng.uniform(1.35, 1.55) if cardiomegaly else rng.uniform(0.9, 1.05)
    a = Anatomy(s, s * 0.46, s * 0.30 * grow, s * 0.135 * grow, cx - gap, cx + gap, s * 0.63, cx + s * 0.04)
    lungs = _lung_mask(s, a)
    canvas -= (78.0 if emphysema else 62.0) * lungs
    # Parenchyma: fine texture, less in emphysema; then the vessel tree.
    canvas += smooth_noise(rng, s, 48) * (4.0 if emphysema else 8.0) * lungs
    _vessels(canvas, rng, a, lungs, sparse=emphysema)
    _ribs(canvas, a, body, cx)
    # Mediastinum and spine: soft tissue between the lungs.
    fill_disc(canvas, s * 0.40, cx, s * 0.30, s * 0.06, SOFT_TISSUE - 8.0, edge=0.08)
    # Heart: patient's left = image right; it displaces lung (soft-tissue density, sharp border).
    fill_disc(canvas, a.heart_cy, a.heart_cx, s * 0.10 * heart_scale ** 0.7, s * 0.13 * heart_scale, SOFT_TISSUE,
              edge=0.04)
    # Diaphragm: the abdomen, soft tissue below two domes, cuts the lung bases (flatter and lower with emphysema).
    dome_y = a.lung_cy + a.lung_ry * (0.82 if emphysema else 0.68)
    curve = (0.6 if emphysema else 1.6) / s
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    top = np.minimum(*(dome_y + curve * (xx - lx) ** 2 for lx in (a.left_cx, a.right_cx)))
    below = 1.0 / (1.0 + np.exp(np.clip(-(yy - top) / (4.0 * u), -50, 50)))
    canvas += below * body * (SOFT_TISSUE - 25.0 - canvas)
    return canvas, a


# ---------------------------------------------------------------------------------------------------
# Findings


def lesion(canvas: np.ndarray, cy: float, cx: float, d: float, look: Conspicuity,
           lobes: list[tuple[float, float, float]] | None = None) -> None:
    """A focal lesion of diameter ``d``: ``look.contrast`` over the local background, ``look.edge`` radii of edge.

    ``lobes`` (dy, dx, radius scale) make it lobulated; their union, not their sum, so the contrast stays
    ``look.contrast`` everywhere inside.
    """
    parts = lobes or [(0.0, 0.0, 1.0)]
    r = d / 2
    h, w = canvas.shape
    pad = r * (1.6 + 6 * look.edge)
    y0, y1 = max(0, int(cy - pad)), min(h, int(cy + pad) + 2)
    x0, x1 = max(0, int(cx - pad)), min(w, int(cx + pad) + 2)
    if y0 >= y1 or x0 >= x1:
        return
    weight = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
    for dy, dx, scale in parts:
        got = disc_weight((h, w), cy + dy * r, cx + dx * r, r * scale, r * scale, look.edge)
        if got is None:
            continue
        (ys, xs), wgt = got
        ya, yb, xa, xb = max(ys.start, y0), min(ys.stop, y1), max(xs.start, x0), min(xs.stop, x1)
        if ya < yb and xa < xb:
            sub = wgt[ya - ys.start:yb - ys.start, xa - xs.start:xb - xs.start]
            view = weight[ya - y0:yb - y0, xa - x0:xb - x0]
            np.maximum(view, sub, out=view)
    canvas[y0:y1, x0:x1] += look.contrast * weight


def pick_size(rng: np.random.Generator, sizes: dict[str, tuple[float, ...]], label: str, s: int) -> float:
    """A lesion size for ``label`` drawn from the real box sizes (px at 1024), scaled to the canvas."""
    choices = sizes[label]
    return float(choices[rng.integers(len(choices))]) * s / 1024.0


def draw_finding(canvas: np.ndarray, rng: np.random.Generator, sizes: dict[str, tuple[float, ...]], a: Anatomy,
                 label: str, look: Conspicuity) -> None:
    """Draw one finding into ``canvas`` at the size radiologists boxed it (Emphysema, Cardiomegaly: in the anatomy)."""
    s = a.size
    if label == "Nodule":
        for _ in range(int(rng.integers(1, 3))):
            d = pick_size(rng, sizes, "Nodule", s)
            y, x = a.in_lung(rng)
            lesion(canvas, y, x, d, look)
    elif label == "Mass":
        d = pick_size(rng, sizes, "Mass", s)
        y, x = a.in_lung(rng, 0.6)
        lobes = [(0.0, 0.0, 0.85)] + [(rng.normal(0, 0.2), rng.normal(0, 0.2), rng.uniform(0.6, 0.8)) for _ in range(2)]
        lesion(canvas, y, x, d, look, lobes)
    elif label == "Effusion":
        h = pick_size(rng, sizes, "Effusion", s) * 0.7
        for side in ([a.left_cx, a.right_cx] if rng.random() < 0.4 else [rng.choice([a.left_cx, a.right_cx])]):
            add_disc(canvas, a.lung_cy + a.lung_ry * 0.95, side, h * 0.6, a.lung_rx * 1.05, rng.uniform(35, 50),
                     edge=0.2)
    elif label == "Atelectasis":
        d = pick_size(rng, sizes, "Atelectasis", s)
        y, x = a.in_lung(rng, 0.6)
        add_disc(canvas, y + a.lung_ry * 0.25, x, d * 0.18, d * 0.6, rng.uniform(25, 35), edge=0.3)
    elif label == "Edema":
        for side in (a.left_cx, a.right_cx):
            hx = (side + a.heart_cx) / 2
            add_disc(canvas, a.lung_cy + a.lung_ry * 0.1, hx, a.lung_ry * 0.55, a.lung_rx * 0.8, rng.uniform(18, 26),
                     edge=0.5)
        yy = np.arange(s, dtype=np.float32)[:, None]
        lines = (np.sin(yy / (6.0 * s / 1024.0)) > 0.8) * 8.0
        base = slice(int(a.lung_cy + a.lung_ry * 0.4), int(a.lung_cy + a.lung_ry * 0.9))
        canvas[base] += lines[base] * (canvas[base] < 80)
    elif label in ("Emphysema", "Cardiomegaly"):
        pass  # drawn in the anatomy: hyperlucent large lungs and a flat diaphragm; a widened heart
    elif label == "Hernia":
        d = pick_size(rng, sizes, "Hernia", s)
        y, x = a.heart_cy + s * 0.02, a.heart_cx - s * 0.02
        add_disc(canvas, y, x, d / 2, d / 2, 30.0, edge=0.1)
        add_disc(canvas, y - d * 0.2, x, d * 0.22, d * 0.35, -45.0, edge=0.1)  # gas above the fluid level
    elif label in ("Infiltration", "Pneumonia", "Consolidation"):
        d = pick_size(rng, sizes, label, s)
        y, x = a.in_lung(rng, 0.5)
        patch = np.zeros_like(canvas)
        add_disc(patch, y, x, d / 2, d / 2, 1.0, edge=0.3)
        mottle = np.clip(smooth_noise(rng, s, 96) + 0.6, 0, 1.5)
        canvas += patch * mottle * rng.uniform(18, 30 if label == "Consolidation" else 24)
    elif label == "Pneumothorax":
        d = pick_size(rng, sizes, "Pneumothorax", s)
        side = a.left_cx if rng.random() < 0.5 else a.right_cx
        top = a.lung_cy - a.lung_ry * 0.7
        add_disc(canvas, top, side, d * 0.5, a.lung_rx * 0.9, -25.0, edge=0.05)
        add_disc(canvas, top + d * 0.5, side, 2.0 * s / 1024, a.lung_rx * 0.7, 30.0, edge=0.5)
    elif label == "Fibrosis":
        y0, y1 = int(a.lung_cy - a.lung_ry * 0.8), int(a.lung_cy)
        net = (np.abs(smooth_noise(rng, s, 160)) < 0.12).astype(np.float32) * 18.0
        canvas[y0:y1] += net[y0:y1] * (canvas[y0:y1] < 90)
    elif label == "Pleural_Thickening":
        side, sign = (a.left_cx, -1) if rng.random() < 0.5 else (a.right_cx, 1)
        add_disc(canvas, a.lung_cy, side + sign * a.lung_rx * 0.92, a.lung_ry * 0.6, 10.0 * s / 1024, 40.0, edge=0.4)
