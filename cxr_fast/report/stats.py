"""The report's statistics: the paper's star, its unpaired z-test, and the stricter paired DeLong test.

The paper stars each label's highest AUC (Table 2's footnote) and compares AUCs with a z-test on the two
AUCs and their DeLong SDs, as if independent. Every resolution of a label in a study shares its validation
images, so DeLong's paired test, which uses the covariance of the two AUCs, is also available and more
powerful. The report shows both, each named, and never calls one by the other's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cxr_fast import paper_results
from cxr_fast.errors import CxrError
from cxr_fast.report.data import Study, Variant, align, auc_of, is_tied, sd_of

ALPHA = 0.05
Z_TEST = "unpaired z-test"
PAIRED = "paired DeLong test"


@dataclass
class PairTest:
    """AUC_a − AUC_b with the paper's unpaired z-test and, where both runs scored the same images, DeLong's."""

    diff: float | None  # None: nothing to compare (a cell missing or tied)
    z: float | None = None
    p: float | None = None
    z_paired: float | None = None
    p_paired: float | None = None
    paired_why: str | None = None  # why there is no paired test, in words for a verdict ("... is missing")

    def higher(self, test: str) -> bool:
        """a is significantly higher than b under ``test`` (two-sided p < ALPHA, a ahead)."""
        z, p = (self.z, self.p) if test == Z_TEST else (self.z_paired, self.p_paired)
        return p is not None and z is not None and p < ALPHA and z > 0


def z_test(auc_a: float, sd_a: float | None, auc_b: float, sd_b: float | None) -> tuple[float | None, float | None]:
    """The paper's z-test, or (None, None) when an SD is missing: a missing SD is not a zero SD."""
    from cxr_fast.metrics import auc_z_test

    if sd_a is None or sd_b is None:
        return None, None
    return auc_z_test(auc_a, sd_a, auc_b, sd_b)


def pair_test(study_a: Study, row_a: dict[str, Any], study_b: Study, row_b: dict[str, Any],
              paired: bool = True) -> PairTest | None:
    """Both tests between two rows with comparable AUCs; None when either is tied or missing."""
    from cxr_fast.metrics import paired_delong_test

    auc_a, auc_b = auc_of(row_a), auc_of(row_b)
    if auc_a is None or auc_b is None:
        return None
    out = PairTest(auc_a - auc_b)
    out.z, out.p = z_test(auc_a, sd_of(row_a), auc_b, sd_of(row_b))
    if not paired:
        out.paired_why = "the two runs scored different validation images"
        return out
    pred_a, pred_b = study_a.predictions(row_a), study_b.predictions(row_b)
    missing = [f"{r.get('run_dir')}/predictions.npz" for r, p in ((row_a, pred_a), (row_b, pred_b)) if p is None]
    if missing:
        out.paired_why = f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing"
        return out
    aligned = align(pred_a, pred_b)
    if aligned is None:
        out.paired_why = f"{row_a['cell_id']} and {row_b['cell_id']} scored different validation images"
        return out
    try:
        out.z_paired, out.p_paired = paired_delong_test(*aligned)
    except CxrError:  # one class only in the shared images: no paired test, the z-test stands alone
        out.paired_why = f"the images {row_a['cell_id']} and {row_b['cell_id']} share hold one class only"
    return out


@dataclass
class Comparison:
    """One label's resolutions: the best (the paper's star) and each other resolution tested against it."""

    best_res: int | None
    tests: dict[int, PairTest] = field(default_factory=dict)  # res -> best vs res
    tied: list[int] = field(default_factory=list)  # resolutions whose model ranked nothing

    def beaten(self, test: str) -> list[int]:
        return [r for r, t in self.tests.items() if t.higher(test)]

    def not_beaten(self, test: str) -> list[int]:
        return [r for r, t in self.tests.items() if not t.higher(test)]

    def untested(self, test: str) -> list[int]:
        return [r for r, t in self.tests.items() if (t.p if test == Z_TEST else t.p_paired) is None]


def compare_resolutions(study: Study, label: str, variant: Variant) -> Comparison:
    """The highest AUC of a label (ties: the lower resolution) and both tests of it against every other."""
    rows = {int(r["res"]): r for r in study.ordinary
            if r["label"] == label and (r["arch"], int(r["epochs"])) == variant}
    tied = sorted(res for res, r in rows.items() if is_tied(r))
    scored = {res: auc for res, r in rows.items() if (auc := auc_of(r)) is not None}
    if not scored:
        return Comparison(None, {}, tied)
    best = max(scored, key=lambda res: (scored[res], -res))
    tests = {res: t for res in sorted(scored) if res != best
             and (t := pair_test(study, rows[best], study, rows[res])) is not None}
    return Comparison(best, tests, tied)


# --------------------------------------------------------------------------------------------------
# The paper's own numbers


def paper_comparison(label: str, arch: str = "resnet34", epochs: int = 3) -> Comparison | None:
    """The paper's starred resolution against every other, by its z-test on its published AUC ± SD.

    This checks the text's claim that "the optimal resolution had a significantly higher AUC compared
    against all other image resolutions for all diagnosis labels (P < .05)" against its own tables.
    """
    col = {res: p for res in paper_results.RESOLUTIONS
           if (p := paper_results.paper_auc(label, res, arch, epochs)) is not None}
    if not col:
        return None
    best = max(col, key=lambda r: (col[r].auc, -r))
    tests = {}
    for res, p in col.items():
        if res != best:
            z, pv = z_test(col[best].auc, col[best].sd, p.auc, p.sd)
            tests[res] = PairTest(col[best].auc - p.auc, z, pv)
    return Comparison(best, tests, [])


def paper_pair(label: str, res: int, a: Variant, b: Variant) -> PairTest | None:
    """The z-test between two of the paper's published cells (e.g. Table 3's B against C)."""
    pa, pb = paper_results.paper_auc(label, res, *a), paper_results.paper_auc(label, res, *b)
    if pa is None or pb is None:
        return None
    z, p = z_test(pa.auc, pa.sd, pb.auc, pb.sd)
    return PairTest(pa.auc - pb.auc, z, p)
