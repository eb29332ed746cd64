"""A built-in phantom of ChestX-ray14: the NIH layout with real label rows and synthetic pixels.

Rows (labels, patients, follow-ups, views) are drawn from the real metadata, so label frequencies and
co-occurrence are real. Pixels are a chest-like picture (``phantom_draw``) in which each finding is drawn at
the size radiologists boxed it in ``BBox_List_2017.csv.gz``: a nodule is 46-97 px wide at 1024 px, so about
2-3 px at 32 px, and small findings need high resolution here as they did in the paper.

It is also a calibrated control. Focal lesions follow documented ``Conspicuity`` settings (contrast over the
local background, edge sharpness, quantum noise), the same at every resolution; normal anatomy has no round
opacity a nodule's size; and ``null`` adds the negative control ``NULL_LABEL``, given at random with no pixels
drawn. The settings are in the cache key and in the folder's ``.phantom.json``. Each image depends only on
(seed, index, settings), so a run is deterministic whatever the number of workers, and an interrupted run
resumes.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cxr_fast.data.conspicuity import Conspicuity
from cxr_fast.data.labels import FINDINGS, NULL_LABEL, PHANTOM_MARKER, canonical_label
from cxr_fast.data.sets.nih import read_metadata
from cxr_fast.data.phantom_draw import draw_chest, draw_finding
from cxr_fast.errors import CxrError
from cxr_fast.io import atomic_path, write_json, write_text
from cxr_fast.parallel import imap_progress
from cxr_fast.paths import BUNDLED_BBOXES, BUNDLED_METADATA
from cxr_fast.vocabulary import SEED_BOUNDS, check_number

METADATA_NAME = "Data_Entry_2017_v2020.csv"
# Bumped whenever rendering changes, so a cached phantom from older code is never mixed with new images.
PHANTOM_VERSION = 3
# The numbers a phantom is made from, whoever gives them (``synth`` flags, a ``phantom:`` spec, the API): one
# table, checked by ``check_phantom_numbers`` before anything is written. A negative seed used to reach numpy.
PHANTOM_BOUNDS: dict[str, dict[str, object]] = {
    "n": {"integer": True, "gt": 0}, "size": {"integer": True, "ge": 32, "le": 8192},
    "seed": {"integer": True, **SEED_BOUNDS}, "enrich_fraction": {"gt": 0, "le": 1}}


def check_phantom_numbers(where: str = "--", **values: object) -> None:
    """Each given phantom number (``n``, ``size``, ``seed``, ``enrich_fraction``) within ``PHANTOM_BOUNDS``;
    one line naming it as ``where`` + its name (``--seed``, ``phantom:seed=-1: seed``)."""
    for key, value in values.items():
        check_number(value, f"{where}{key}", **PHANTOM_BOUNDS[key])  # type: ignore[arg-type]
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
    look: Conspicuity = field(default_factory=Conspicuity)


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


def render(spec: PhantomSpec, index: int, labels: tuple[str, ...]) -> np.ndarray:
    """One phantom radiograph, uint8 HxW, depending only on (seed, index, labels) and the settings."""
    # Separate streams for anatomy, each finding and the exposure/noise, so adding a finding changes
    # only the finding's own pixels (the tests measure lesions this way).
    rng = np.random.default_rng([spec.seed, index, 0])
    canvas, anatomy = draw_chest(rng, spec.size, "Emphysema" in labels, "Cardiomegaly" in labels)
    for label in labels:
        rng = np.random.default_rng([spec.seed, index, 1 + FINDINGS.index(label)])
        draw_finding(canvas, rng, spec.lesion_sizes, anatomy, label, spec.look)
    rng = np.random.default_rng([spec.seed, index, 99])
    # Exposure differences between radiographs, then quantum noise: its SD is set per pixel of the 1024 px
    # frame, so a smaller render carries what that frame's noise averages down to.
    canvas = canvas * rng.uniform(0.85, 1.15) + rng.uniform(-10, 10)
    canvas += rng.normal(0.0, spec.look.noise * spec.size / 1024.0, canvas.shape).astype(np.float32)
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8)


def null_labels(seed: int, n: int, share: float) -> np.ndarray:
    """Which of ``n`` images get the null label: a coin of probability ``share`` per image, its own stream.

    Drawn from neither the rows nor the pixels' streams, so it is independent of both: a model can only
    score it above chance through leakage or a bug.
    """
    if share <= 0:
        return np.zeros(n, dtype=bool)
    return np.random.default_rng([seed, 7_331]).random(n) < share


def _render_to_file(job: tuple[PhantomSpec, int, tuple[str, ...], str]) -> str:
    spec, index, labels, path = job
    target = Path(path)
    if not target.exists():  # resume: a file present was renamed into place whole
        with atomic_path(target) as tmp:
            Image.fromarray(render(spec, index, labels), mode="L").save(tmp, format="PNG", compress_level=3)
    return target.name


def _choose_rows(meta, n: int, seed: int, enrich: tuple[str, ...] = (), enrich_fraction: float = 0.3,
                 only: tuple[str, ...] = ()) -> list[int]:
    """Real metadata rows: random ones, or with ``enrich`` about ``enrich_fraction`` of them carrying those labels.

    Enrichment keeps rows real (their labels, co-occurrence and patients) and only changes how often a
    label is drawn, as the paper's own per-label subsample does; it gives a small phantom enough positives.
    ``only`` keeps the rows whose every finding is one of those labels (No Finding rows included): a control
    then holds no other finding's opacities, and every label it carries is still a real row's, drawn.
    """
    if not 0.0 < enrich_fraction < 1.0:
        raise CxrError(f"enrich fraction must be between 0 and 1, got {enrich_fraction}")
    allowed = np.ones(len(meta), dtype=bool)
    if only:
        others = [f for f in FINDINGS if f not in only]
        allowed = ~np.any(np.stack([meta.has(f) for f in others], axis=1), axis=1)
    if n > int(allowed.sum()):
        kept = f" whose findings are among {'+'.join(only)}" if only else ""
        raise CxrError(f"--n {n} is more than the {int(allowed.sum())} rows{kept} of {meta.source}")
    rng = np.random.default_rng(seed)
    chosen: set[int] = set()
    for label in enrich:
        pool = np.flatnonzero(meta.has(label) & allowed)
        want = min(len(pool), int(round(n * enrich_fraction / len(enrich))))
        chosen.update(rng.choice(pool, size=want, replace=False).tolist())
    rest = np.setdiff1d(np.flatnonzero(allowed), np.fromiter(chosen, dtype=np.int64, count=len(chosen)))
    chosen.update(rng.choice(rest, size=n - len(chosen), replace=False).tolist())
    return sorted(chosen)


def make_phantom(out: str | Path, n: int = 600, size: int = 1024, seed: int = 0, workers: int | None = None,
                 quiet: bool = False, metadata: Path = BUNDLED_METADATA, enrich: tuple[str, ...] = (),
                 enrich_fraction: float = 0.3, look: Conspicuity | None = None, only: tuple[str, ...] = ()) -> Path:
    """Write an NIH-layout phantom (``Data_Entry_2017_v2020.csv`` + ``images/*.png``) into ``out``.

    ``look``: the control settings (``Conspicuity``; defaults when None), written into ``.phantom.json``.
    ``only``: keep rows whose findings are all among these labels (see ``_choose_rows``).
    With ``look.null`` > 0 that share of rows also carries ``NULL_LABEL`` in its Finding Labels.
    A second call with the same arguments finishes an interrupted run and leaves complete files alone;
    different arguments in an existing phantom folder are refused rather than mixed.
    """
    look = look or Conspicuity()
    check_phantom_numbers(n=n, size=size, seed=seed, **({"enrich_fraction": enrich_fraction} if enrich else {}))
    root = Path(out)
    enrich = tuple(canonical_label(label) for label in enrich)
    only = tuple(canonical_label(label) for label in only)
    if NULL_LABEL in enrich + only:
        raise CxrError(f"enrich and only name real findings; {NULL_LABEL} is given to a share of images by null=SHARE")
    stray = [label for label in enrich if only and label not in only]
    if stray:
        raise CxrError(f"enrich {'+'.join(stray)} is not among only={'+'.join(only)}; no row could carry it")
    params = {"n": n, "size": size, "seed": seed, "metadata": Path(metadata).name, "version": PHANTOM_VERSION,
              "look": look.params()}
    if enrich:
        params.update(enrich=list(enrich), enrich_fraction=enrich_fraction)
    if only:
        params.update(only=list(only))
    marker = root / PHANTOM_MARKER
    if marker.exists():
        old = json.loads(marker.read_text())
        if old != params:
            raise CxrError(f"{root} holds a phantom made with {old}; choose another folder for {params}")
    elif root.exists() and any(root.iterdir()):
        raise CxrError(f"{root} exists and is not an empty folder or a phantom; choose another folder")
    (root / "images").mkdir(parents=True, exist_ok=True)
    write_json(marker, params)

    meta = read_metadata(metadata, controls=False)  # rows come from real metadata, never a phantom's
    rows = _choose_rows(meta, n, seed, enrich, enrich_fraction, only)
    null = null_labels(seed, len(rows), look.null)
    spec = PhantomSpec(size, seed, lesion_sizes(), look)
    scale = 1024.0 / size
    lines = [HEADER]
    jobs = []
    for i, r in enumerate(rows):
        name = str(meta.image_ids[r])
        present = tuple(f for f in FINDINGS if meta.labels[r, FINDINGS.index(f)])
        findings = str(meta.label_strings[r]) + (f"|{NULL_LABEL}" if null[i] else "")  # no pixels for the null
        lines.append(",".join([
            name, findings, str(meta.follow_up[r]), str(meta.patient_ids[r]), str(meta.ages[r]),
            str(meta.genders[r]), str(meta.views[r]), str(size), str(size), f"{0.143 * scale:.4f}", f"{0.143 * scale:.4f}",
        ]))
        jobs.append((spec, i, present, str(root / "images" / name)))
    write_text(root / METADATA_NAME, "\n".join(lines) + "\n")
    for _ in imap_progress(_render_to_file, jobs, f"phantom {size}px", workers=workers, quiet=quiet):
        pass
    write_text(root / ".complete", "")
    return root
