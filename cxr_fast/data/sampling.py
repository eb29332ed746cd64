"""The paper's per-label sampling: all positives plus random negatives up to 20,000 images, 80/20 split.

The loss weight is negatives/positives of the subsample; on the real metadata this reproduces the
paper's Table 1 (6.949 for Emphysema ... 87.106 for Hernia, which the paper prints as 87.105).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Literal

import numpy as np

from cxr_fast.data.labels import PAPER_LABELS, canonical_label
from cxr_fast.data.sets.base import Metadata
from cxr_fast.errors import CxrError
from cxr_fast.vocabulary import SEED_BOUNDS, SPLITS, check_number


@dataclass(frozen=True)
class Subsample:
    """One label's enriched subsample and its split; everything a training run needs to select images."""

    label: str
    image_ids: np.ndarray  # str
    patient_ids: np.ndarray  # int
    targets: np.ndarray  # float32, 1.0 = label present
    is_val: np.ndarray  # bool
    seed: int
    split: str
    size: int  # the size asked for (all positives plus negatives up to it)
    val_fraction: float

    @property
    def n_pos(self) -> int:
        return int(self.targets.sum())

    @property
    def n_neg(self) -> int:
        return int(len(self.targets) - self.targets.sum())

    @property
    def pos_weight(self) -> float:
        """negatives/positives of the whole subsample: the paper's Table 1 'loss function weight'."""
        return _ratio(self.targets)

    @property
    def train_pos_weight(self) -> float:
        """negatives/positives of the training part (the paper used the whole subsample's: ``pos_weight``)."""
        return _ratio(self.targets[~self.is_val])

    @property
    def val_leak(self) -> tuple[int, float]:
        """(images, share) of validation images whose patient also has an image in training.

        The paper split images, not patients; this measures how much of its validation set a model
        may have seen the patient of (59-74% on the real metadata with seed 0).
        """
        val = self.is_val
        if not val.any():
            return 0, 0.0
        shared = np.isin(self.patient_ids[val], self.patient_ids[~val])
        return int(shared.sum()), float(shared.mean())

    def part(self, part: Literal["train", "val"]) -> tuple[np.ndarray, np.ndarray]:
        """(image_ids, targets) of the training or validation part."""
        mask = self.is_val if part == "val" else ~self.is_val
        return self.image_ids[mask], self.targets[mask]

    def without(self, names: Iterable[str]) -> "Subsample":
        """This subsample less ``names`` (images a run cannot read), each left image keeping its part; the
        settings it was drawn with stay, so it is still the run's (``RunConfig.check_subsample``)."""
        keep = ~np.isin(self.image_ids, np.asarray(list(names), dtype=str))
        return replace(self, image_ids=self.image_ids[keep], patient_ids=self.patient_ids[keep],
                       targets=self.targets[keep], is_val=self.is_val[keep])


def _ratio(targets: np.ndarray) -> float:
    pos = float(targets.sum())
    if pos == 0:
        raise CxrError("the subsample has no positive images; a loss weight cannot be computed")
    return (len(targets) - pos) / pos


def subsample(
    meta: Metadata,
    label: str,
    size: int = 20_000,
    seed: int = 0,
    val_fraction: float = 0.2,
    split: str = "image",
    official_split: dict[str, str] | None = None,
) -> Subsample:
    """All images with ``label`` plus seeded random negatives up to ``size``, split train/validation.

    ``split``: ``image`` (the paper: images shuffled, 20% to validation), ``patient`` (no patient on both
    sides, about ``val_fraction`` of images to validation), ``official`` (NIH's test list is validation).
    """
    label = canonical_label(label)
    if size <= 0:
        raise CxrError(f"subsample size must be positive, got {size}")
    check_number(seed, "subsample seed", integer=True, **SEED_BOUNDS)  # numpy takes 0 to 2**32 - 1
    if not 0.0 < val_fraction < 1.0:
        raise CxrError(f"validation fraction must be between 0 and 1, got {val_fraction}")
    if split not in SPLITS:
        raise CxrError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    has = meta.has(label)
    known = meta.known_for(label)  # a label the dataset's policy leaves unknown (CheXpert's uncertain): left out
    pos = np.flatnonzero(has & known)
    neg = np.flatnonzero(~has & known)
    if len(pos) == 0:
        raise CxrError(f"no image in {meta.source} has the label {label}")
    rng = np.random.default_rng(seed)
    if len(pos) >= size:
        chosen = np.sort(rng.choice(pos, size=size, replace=False))
    else:
        n_neg = min(size - len(pos), len(neg))
        chosen = np.sort(np.concatenate([pos, rng.choice(neg, size=n_neg, replace=False)]))
    ids = meta.image_ids[chosen]
    patients = meta.patient_ids[chosen]
    targets = has[chosen].astype(np.float32)
    is_val = _split(ids, patients, val_fraction, split, official_split, rng)
    return Subsample(label, ids, patients, targets, is_val, seed, split, size, val_fraction)


def _split(
    ids: np.ndarray,
    patients: np.ndarray,
    val_fraction: float,
    split: str,
    official: dict[str, str] | None,
    rng: np.random.Generator,
) -> np.ndarray:
    n = len(ids)
    if split == "image":
        is_val = np.zeros(n, dtype=bool)
        is_val[rng.permutation(n)[: int(round(n * val_fraction))]] = True
        return is_val
    if split == "patient":
        unique = rng.permutation(np.unique(patients))
        # Take whole patients until the validation side holds about val_fraction of the images.
        counts = {p: c for p, c in zip(*np.unique(patients, return_counts=True))}
        target, total, val_patients = n * val_fraction, 0, []
        for p in unique:
            if total >= target:
                break
            val_patients.append(p)
            total += counts[p]
        return np.isin(patients, np.array(val_patients, dtype=patients.dtype))
    if official is None:
        raise CxrError("split 'official' needs the dataset's own split (NIH: train_val_list.txt and test_list.txt in "
                       "the data folder; CheXpert: valid.csv; MIMIC: its split file; VinDr: its test set), and "
                       "this data has none")
    missing = [i for i in ids[:5] if i not in official]
    if missing:
        raise CxrError(f"images not in the dataset's official split, e.g. {missing[0]}")
    return np.array([official[i] == "test" for i in ids], dtype=bool)


def table1(meta: Metadata, labels: tuple[str, ...] = PAPER_LABELS, size: int = 20_000, seed: int = 0) -> list[dict]:
    """The paper's Table 1 columns: positives, single-finding cases, loss weight in the subsample."""
    single = meta.finding_counts() == 1
    rows = []
    for label in labels:
        has = meta.has(label) & meta.known_for(label)
        sub = subsample(meta, label, size=size, seed=seed) if has.any() else None  # none: no weight exists
        rows.append({
            "label": canonical_label(label),
            "positives": int(has.sum()),
            "single_finding": int((has & single).sum()),
            "subsample": 0 if sub is None else len(sub.targets),
            "loss_weight": None if sub is None else round(sub.pos_weight, 3),
        })
    return rows
