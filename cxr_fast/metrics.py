"""Scoring as the paper scored: AUC, its DeLong variance, z-tests between AUCs, accuracy at 0.5.

Scores are log-odds (logits), never probabilities: a float32 sigmoid of a logit below about -104 is
exactly 0, and a validation set whose every score underflowed would rank nothing yet print an AUC of
0.500. A score vector with every value tied is reported as such (``AucResult.status == "tied"``),
never as a result.

DeLong's variance uses Sun & Xu's (2014) fast algorithm: the structural components come from midranks
(within positives, within negatives, and pooled), so the cost is a sort, O(N log N), instead of the
O(m * n) pairwise comparison. Several models scored on the same images share one computation, which
gives the covariance the paired test needs.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata

from cxr_fast.errors import CxrError
from cxr_fast.vocabulary import AUC_TIED


def _check(y_true: np.ndarray, *scores: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Binary labels with both classes present and finite scores of the same length, or a CxrError."""
    y = np.asarray(y_true).reshape(-1)
    if y.size == 0:
        raise CxrError("the validation set is empty; an AUC needs positive and negative images")
    values = np.unique(y)
    if not np.all(np.isin(values, (0, 1))):
        raise CxrError(f"labels must be 0/1, got values {values[:5].tolist()}")
    n_pos = int((y == 1).sum())
    if n_pos == 0 or n_pos == y.size:
        kind = "positive" if n_pos == 0 else "negative"
        raise CxrError(
            f"the validation set has no {kind} images ({n_pos} positive of {y.size}); "
            "AUC is undefined — use a larger subsample or another split"
        )
    out = []
    for s in scores:
        s = np.asarray(s, dtype=np.float64).reshape(-1)
        if s.shape != y.shape:
            raise CxrError(f"{s.size} scores for {y.size} labels")
        if not np.all(np.isfinite(s)):
            raise CxrError("scores contain NaN or infinity (did training diverge?)")
        out.append(s)
    return y.astype(bool), out


def auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn's), after the same checks as the DeLong functions."""
    from sklearn.metrics import roc_auc_score

    y, (s,) = _check(y_true, y_score)
    return float(roc_auc_score(y, s))


def _delong(y: np.ndarray, scores: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """AUCs (k) and their DeLong covariance (k x k) for k score vectors on the same labels."""
    x = np.stack([s[y] for s in scores])  # k x m positives
    z = np.stack([s[~y] for s in scores])  # k x n negatives
    m, n = x.shape[1], z.shape[1]
    tx = rankdata(x, axis=1)  # midranks within positives
    tz = rankdata(z, axis=1)  # midranks within negatives
    tall = rankdata(np.concatenate([x, z], axis=1), axis=1)  # pooled midranks
    aucs = (tall[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (tall[:, :m] - tx) / n  # per positive: fraction of negatives it outranks
    v01 = 1.0 - (tall[:, m:] - tz) / m  # per negative: fraction of positives that outrank it
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(scores), len(scores)))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(scores), len(scores)))
    return aucs, s10 / m + s01 / n


def delong_auc_variance(y_true: np.ndarray, y_score: np.ndarray) -> tuple[float, float]:
    """(AUC, DeLong variance of the AUC); the paper reports sqrt(variance) as the AUC's SD."""
    y, (s,) = _check(y_true, y_score)
    aucs, cov = _delong(y, [s])
    return float(aucs[0]), float(cov[0, 0])


def _two_sided(diff: float, var: float) -> tuple[float, float]:
    if var <= 1e-15 * max(1.0, diff * diff):
        # No spread: identical scorings (z = 0, p = 1), or a difference with no uncertainty at all.
        return (0.0, 1.0) if abs(diff) < 1e-12 else (math.copysign(math.inf, diff), 0.0)
    z = diff / math.sqrt(var)
    return float(z), float(2.0 * norm.sf(abs(z)))


def paired_delong_test(y_true: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> tuple[float, float]:
    """DeLong's test for two models scored on the same images: (z, two-sided p) for AUC_a - AUC_b.

    Uses the covariance between the two AUCs, so it is more powerful than the unpaired z-test when,
    as in a resolution study, every model of a label shares its validation set.
    """
    y, (a, b) = _check(y_true, score_a, score_b)
    aucs, cov = _delong(y, [a, b])
    var = cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]
    return _two_sided(float(aucs[0] - aucs[1]), float(var))


def auc_z_test(auc_a: float, sd_a: float, auc_b: float, sd_b: float) -> tuple[float, float]:
    """The paper's z-test between two AUCs from their DeLong SDs, as if independent: (z, two-sided p)."""
    if sd_a < 0 or sd_b < 0:
        raise CxrError(f"standard deviations must be non-negative, got {sd_a} and {sd_b}")
    return _two_sided(float(auc_a - auc_b), float(sd_a * sd_a + sd_b * sd_b))


def accuracy(y_true: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of images whose thresholded score matches the label (the paper's Table 1 accuracy).

    For logits pass ``threshold=0.0``: a log-odds of 0 is a probability of 0.5.
    """
    y = np.asarray(y_true).reshape(-1)
    p = np.asarray(prob, dtype=np.float64).reshape(-1)
    if y.size == 0 or y.shape != p.shape:
        raise CxrError(f"accuracy needs equal, non-empty labels and probabilities ({y.size} vs {p.size})")
    return float(np.mean((p >= threshold) == (y >= 0.5)))


def tta_mean_logit(views: np.ndarray) -> np.ndarray:
    """Log-odds of the mean probability over TTA views (k x n logits -> n), computed in log space.

    fastai 0.7's TTA averages the views' probabilities. Here ``log(mean p) - log(mean (1 - p))`` is taken
    with log-sum-exp of log-sigmoids in float64, so the order of the mean probabilities is kept even
    where every probability would round to 0 or 1.
    """
    v = np.asarray(views, dtype=np.float64)
    if v.ndim == 1:
        v = v[None]
    log_p = -np.logaddexp(0.0, -v)  # log sigmoid(v)
    log_q = -np.logaddexp(0.0, v)  # log sigmoid(-v) = log(1 - p)
    return np.logaddexp.reduce(log_p, axis=0) - np.logaddexp.reduce(log_q, axis=0)


@dataclass(frozen=True)
class AucResult:
    """An AUC with its DeLong SD, or the reason there is none.

    ``status``: None for a result; ``"tied"`` when every score is equal, so no ranking exists.
    ``note``: a caveat on the SD (one positive or one negative: that side's variance is unknown).
    """

    auc: float | None
    sd: float | None
    status: str | None = None
    note: str | None = None


def score_auc(y_true: np.ndarray, scores: np.ndarray) -> AucResult:
    """AUC and DeLong SD of one score vector, refusing a fully tied vector as a result."""
    y, (s,) = _check(y_true, scores)
    if s.size and np.all(s == s[0]):
        return AucResult(None, None, status=AUC_TIED)
    aucs, cov = _delong(y, [s])
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    note = None
    if min(n_pos, n_neg) == 1:
        side = "positive" if n_pos == 1 else "negative"
        note = f"one {side}: DeLong SD omits the {side}s' variance"
        warnings.warn(f"the validation set has a single {side} image; the AUC's DeLong SD omits that side's "
                      "variance and is too small", stacklevel=2)
    return AucResult(float(aucs[0]), float(math.sqrt(max(cov[0, 0], 0.0))), note=note)
