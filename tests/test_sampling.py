"""The paper's per-label enriched subsample and its 80/20 split."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_fast.data.sets.nih import read_metadata
from cxr_fast.data.sampling import subsample
from cxr_fast.errors import CxrError


@pytest.fixture(scope="module")
def meta(real_metadata):
    return read_metadata(real_metadata)


def test_every_positive_is_kept_and_negatives_fill_to_the_size(meta):
    sub = subsample(meta, "Nodule", size=20_000, seed=0)
    assert len(sub.image_ids) == 20_000 and len(set(sub.image_ids.tolist())) == 20_000
    assert sub.n_pos == 6331 == int(meta.has("Nodule").sum())
    assert sub.pos_weight == pytest.approx(13669 / 6331)


def test_split_is_80_20_image_wise_and_seeded(meta):
    a = subsample(meta, "Mass", seed=3)
    b = subsample(meta, "Mass", seed=3)
    c = subsample(meta, "Mass", seed=4)
    assert a.is_val.sum() == 4000
    assert np.array_equal(a.image_ids, b.image_ids) and np.array_equal(a.is_val, b.is_val)
    assert not np.array_equal(a.image_ids, c.image_ids)
    train_ids, train_y = a.part("train")
    assert len(train_ids) == 16_000 and a.train_pos_weight == pytest.approx((len(train_y) - train_y.sum()) / train_y.sum())


def test_patient_split_puts_no_patient_on_both_sides(meta):
    sub = subsample(meta, "Effusion", seed=1, split="patient")
    val_patients = set(sub.patient_ids[sub.is_val].tolist())
    train_patients = set(sub.patient_ids[~sub.is_val].tolist())
    assert not val_patients & train_patients
    assert 0.18 < sub.is_val.mean() < 0.22
    # The image-wise split of the paper does mix patients: the option matters.
    image_wise = subsample(meta, "Effusion", seed=1, split="image")
    assert set(image_wise.patient_ids[image_wise.is_val].tolist()) & set(image_wise.patient_ids[~image_wise.is_val].tolist())


def test_size_is_configurable_and_bad_values_are_rejected(meta):
    assert len(subsample(meta, "Hernia", size=2000).targets) == 2000
    with pytest.raises(CxrError, match="size must be positive"):
        subsample(meta, "Hernia", size=0)
    with pytest.raises(CxrError, match="unknown label"):
        subsample(meta, "Tumour")
    with pytest.raises(CxrError, match="official"):
        subsample(meta, "Hernia", split="official")
