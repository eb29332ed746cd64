"""AUC, DeLong variance and the AUC tests against independent references."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxr_fast.errors import CxrError
from cxr_fast.metrics import accuracy, auc, auc_z_test, delong_auc_variance, paired_delong_test


def _scores(n: int, prevalence: float, shift: float, seed: int, decimals: int | None = None):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(np.float32)
    s = y * shift + rng.normal(size=n)
    if decimals is not None:  # ties, which midranks must handle
        s = np.round(s, decimals)
    return y, s


def _delong_by_definition(y: np.ndarray, s: np.ndarray) -> float:
    """DeLong et al. 1988 written out with the O(m*n) kernel psi, for comparison with the fast path."""
    x, z = s[y == 1], s[y == 0]
    psi = (x[:, None] > z[None, :]).astype(float) + 0.5 * (x[:, None] == z[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return v10.var(ddof=1) / len(x) + v01.var(ddof=1) / len(z)


@pytest.mark.parametrize("decimals", [None, 1])
def test_auc_equals_sklearn(decimals):
    y, s = _scores(700, 0.3, 0.8, seed=1, decimals=decimals)
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert delong_auc_variance(y, s)[0] == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("decimals", [None, 0])
def test_fast_delong_matches_definition(decimals):
    y, s = _scores(400, 0.25, 1.0, seed=2, decimals=decimals)
    _, var = delong_auc_variance(y, s)
    assert var == pytest.approx(_delong_by_definition(y, s), rel=1e-10)


def test_paired_test_matches_the_definition():
    y, a = _scores(300, 0.3, 1.0, seed=11, decimals=1)
    b = 0.5 * a + np.random.default_rng(12).normal(size=a.size)
    pos, neg = y == 1, y == 0

    def components(s):
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        return psi.mean(axis=1), psi.mean(axis=0), psi.mean()

    (a10, a01, auc_a), (b10, b01, auc_b) = components(a), components(b)
    var = (np.var(a10 - b10, ddof=1) / pos.sum()) + (np.var(a01 - b01, ddof=1) / neg.sum())
    z, p = paired_delong_test(y, a, b)
    assert z == pytest.approx((auc_a - auc_b) / np.sqrt(var), rel=1e-9)


def test_delong_variance_agrees_with_bootstrap():
    # Stratified bootstrap (positives and negatives resampled separately, as DeLong conditions on m, n).
    # With 2000 resamples the bootstrap variance itself is uncertain by ~sqrt(2/2000) = 3.2%; allow 12%.
    y, s = _scores(1000, 0.2, 1.0, seed=3)
    _, var = delong_auc_variance(y, s)
    rng = np.random.default_rng(4)
    pos, neg = s[y == 1], s[y == 0]
    boots = []
    for _ in range(2000):
        bp = pos[rng.integers(0, len(pos), len(pos))]
        bn = neg[rng.integers(0, len(neg), len(neg))]
        boots.append(roc_auc_score(np.r_[np.ones(len(bp)), np.zeros(len(bn))], np.r_[bp, bn]))
    assert var == pytest.approx(np.var(boots, ddof=1), rel=0.12)


def test_paired_test_identical_scores_p_one():
    y, s = _scores(300, 0.3, 0.7, seed=5)
    z, p = paired_delong_test(y, s, s)
    assert z == 0.0 and p == pytest.approx(1.0)
    # Nearly identical (tiny noise) is still nowhere near significant.
    z, p = paired_delong_test(y, s, s + np.random.default_rng(6).normal(scale=1e-3, size=s.size))
    assert p > 0.5


def test_paired_test_detects_different_models():
    y, good = _scores(600, 0.3, 1.5, seed=7)
    bad = y * 0.1 + np.random.default_rng(8).normal(size=y.size)
    z, p = paired_delong_test(y, good, bad)
    assert z > 0 and p < 1e-6
    z2, p2 = paired_delong_test(y, bad, good)
    assert z2 == pytest.approx(-z) and p2 == pytest.approx(p)


def test_paired_test_is_more_powerful_than_unpaired_for_correlated_models():
    y, base = _scores(800, 0.3, 1.0, seed=9)
    other = base + 0.4 * np.random.default_rng(10).normal(size=y.size)
    (a, va), (b, vb) = delong_auc_variance(y, base), delong_auc_variance(y, other)
    _, p_paired = paired_delong_test(y, base, other)
    _, p_unpaired = auc_z_test(a, np.sqrt(va), b, np.sqrt(vb))
    assert p_paired < p_unpaired


def test_auc_z_test_values():
    z, p = auc_z_test(0.854, 0.012, 0.689, 0.016)  # the paper's nodule 320 px vs 64 px scale of numbers
    assert z == pytest.approx(0.165 / 0.02, rel=1e-9)
    assert p < 1e-10
    z, p = auc_z_test(0.80, 0.02, 0.80, 0.03)
    assert z == 0.0 and p == pytest.approx(1.0)
    z, p = auc_z_test(0.80, 0.02, 0.77, 0.02)  # z = 1.06 -> p = 0.289
    assert p == pytest.approx(0.2888, abs=1e-3)
    with pytest.raises(CxrError):
        auc_z_test(0.8, -0.1, 0.7, 0.1)


def test_accuracy():
    y = np.array([0, 0, 1, 1, 1])
    assert accuracy(y, np.array([0.1, 0.6, 0.7, 0.4, 0.9])) == pytest.approx(3 / 5)
    assert accuracy(y, np.array([0.1, 0.6, 0.7, 0.4, 0.9]), threshold=0.65) == pytest.approx(4 / 5)
    with pytest.raises(CxrError):
        accuracy(y, np.array([0.5]))


@pytest.mark.parametrize("labels", [np.zeros(10), np.ones(10), np.array([])])
def test_one_class_validation_is_an_error_not_nan(labels):
    scores = np.linspace(0, 1, labels.size)
    for fn in (auc, delong_auc_variance):
        with pytest.raises(CxrError, match="validation set"):
            fn(labels, scores)
    with pytest.raises(CxrError):
        paired_delong_test(labels, scores, scores)


def test_bad_scores_are_errors():
    y = np.array([0, 1, 0, 1])
    with pytest.raises(CxrError, match="NaN"):
        auc(y, np.array([0.1, np.nan, 0.2, 0.3]))
    with pytest.raises(CxrError):
        auc(y, np.array([0.1, 0.2]))
    with pytest.raises(CxrError, match="0/1"):
        auc(np.array([0, 2, 0, 1]), np.array([0.1, 0.2, 0.3, 0.4]))
