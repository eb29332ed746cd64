"""The control study's two answers, in words and numbers: does the pipeline see a resolution effect where the
phantom draws one, and none where it draws nothing?

On the control phantom (``cxr_fast.data.conspicuity``) the small lesion (Nodule) and the large one (Mass) are
drawn alike but for size, so an instrument that sees resolution must find the small one losing more AUC at
low resolution (the positive control); the null label has no pixels, so its AUC must stay within 2 DeLong SD
of 0.5 at every resolution (the negative control), or something leaks. A study has controls when it holds
the null label, or Nodule and Mass on phantom data. Comparisons reuse ``stats.pair_test``: each
resolution against the label's highest, paired DeLong on the shared validation images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_fast.data.conspicuity import LARGE_LESION, SMALL_LESION
from cxr_fast.data.labels import NULL_LABEL, PHANTOM_MARKER
from cxr_fast.report.data import (Study, Variant, auc_of, labels, primary_variant, resolutions, sd_of, seed_spread,
                                  variant_name, variants)
from cxr_fast.report.format import DASH, TIED, Section, auc_text, blank, fmt_p, markdown
from cxr_fast.report.stats import ALPHA, PAIRED, PairTest, pair_test

CANNOT_TELL = "cannot tell"  # a verdict the data cannot support says so, and why, never "no"
NULL_SD_LIMIT = 2.0  # the negative control's bar: |AUC - 0.5| within this many DeLong SDs at every resolution
ROLES = {SMALL_LESION: "small lesion", LARGE_LESION: "large lesion", NULL_LABEL: "null (no pixels)"}
FIELDS = ["label", "role", "architecture", "epochs", "resolution", "auc", "delong_sd", "highest_resolution",
          "paired_delong_p_vs_highest", "paired_delong_z_vs_highest", "sd_from_half"]


def on_phantom(study: Study) -> bool:
    """The study's data is the built-in phantom (a ``phantom:`` spec or none) or a folder made by ``synth``."""
    from cxr_fast.data.source import is_phantom_spec

    blocks = [study.config.get("train") or {}] + [g.get("train") or {} for g in study.config.get("grids") or []]
    data = [b["data"] for b in blocks if "data" in b] or [None]
    return all(is_phantom_spec(d) or (Path(str(d)) / PHANTOM_MARKER).is_file() for d in data)


def control_roles(study: Study) -> dict[str, str]:
    """Label -> role for the control labels of Table 2's model; empty when the study has no controls.

    The null label proves phantom data by itself (real metadata cannot carry it), so a copied study folder
    whose phantom path is not on this machine keeps its roles; Nodule and Mass alone need ``on_phantom``.
    """
    v = primary_variant(study)
    if v is None:
        return {}
    present = labels(study, v)
    phantom = NULL_LABEL in present or on_phantom(study)
    if not phantom or (NULL_LABEL not in present and not (SMALL_LESION in present and LARGE_LESION in present)):
        return {}
    return {label: ROLES[label] for label in (SMALL_LESION, LARGE_LESION, NULL_LABEL) if label in present}


# --------------------------------------------------------------------------------------------------
# Every cell against its label's highest resolution (also the JSON's cells)


def highest_res(study: Study, label: str, v: Variant) -> int | None:
    """The label's highest resolution with a comparable AUC (the reference of every paired p)."""
    scored = [r for r in resolutions(study, v) if auc_of(study.row(label, r, v)) is not None]
    return max(scored) if scored else None


def against_highest(study: Study, label: str, v: Variant, res: int) -> PairTest | None:
    """AUC(highest) - AUC(res), both tests; None at the highest itself or where a cell is missing or tied."""
    top = highest_res(study, label, v)
    row, ref = study.row(label, res, v), study.row(label, top, v) if top is not None else None
    if top is None or res == top or row is None or ref is None:
        return None
    return pair_test(study, ref, study, row)


def sd_from_half(row: dict[str, Any] | None) -> float | None:
    """(AUC - 0.5) / DeLong SD: how far from chance, in SDs (None without an AUC or with a zero SD)."""
    auc, sd = auc_of(row), sd_of(row)
    return (auc - 0.5) / sd if auc is not None and sd else None


# --------------------------------------------------------------------------------------------------
# The two answers


def p_phrase(p: float | None) -> str:
    """'p = 0.042' or 'p < 0.001' for a sentence."""
    text = fmt_p(p)
    return f"p {text[0]} {text[1:]}" if text.startswith("<") else f"p = {text}"


@dataclass
class Drop:
    """One lesion label from its highest to its lowest resolution."""

    label: str
    low: int
    high: int
    auc_low: float
    auc_high: float
    sd_low: float | None
    sd_high: float | None
    test: PairTest | None  # high - low

    @property
    def ratio(self) -> float:
        return self.auc_low / self.auc_high

    @property
    def drop(self) -> float:
        return self.auc_high - self.auc_low

    @property
    def drop_sd(self) -> float | None:
        """SD of the paired difference, from DeLong's z (z = difference / SD)."""
        t = self.test
        if t is None or t.z_paired is None or t.z_paired == 0 or not math.isfinite(t.z_paired):
            return None
        return abs(self.drop / t.z_paired)

    @property
    def significant(self) -> bool:
        return self.test is not None and self.test.higher(PAIRED)

    def text(self) -> str:
        p = p_phrase(self.test.p_paired) if self.test is not None else f"p {DASH}"
        return (f"{self.label} goes from {self.auc_high:.3f} ± {self.sd_high or 0:.3f} at {self.high} px to "
                f"{self.auc_low:.3f} ± {self.sd_low or 0:.3f} at {self.low} px, a low/high ratio of {self.ratio:.3f} "
                f"(paired DeLong {p})")


def lesion_drop(study: Study, label: str, v: Variant) -> Drop | None:
    """The label's lowest against its highest resolution, or None when either has no AUC."""
    scored = [r for r in resolutions(study, v) if auc_of(study.row(label, r, v)) is not None]
    if len(scored) < 2:
        return None
    lo, hi = study.row(label, min(scored), v), study.row(label, max(scored), v)
    return Drop(label, min(scored), max(scored), auc_of(lo), auc_of(hi), sd_of(lo), sd_of(hi),
                against_highest(study, label, v, min(scored)))


@dataclass
class PositiveAnswer:
    answer: str  # yes | partly | no | cannot tell
    sentence: str
    record: dict[str, Any]


def positive_control(study: Study, v: Variant) -> PositiveAnswer:
    """Does the small lesion lose significantly more AUC at low resolution than the large one?"""
    question = (f"**Positive control: does the small lesion ({SMALL_LESION}) lose significantly more AUC at low "
                f"resolution than the large one ({LARGE_LESION})?**")
    small, large = lesion_drop(study, SMALL_LESION, v), lesion_drop(study, LARGE_LESION, v)
    if small is None or large is None:
        missing = SMALL_LESION if small is None else LARGE_LESION
        why = f"{missing} lacks an AUC at two resolutions"
        return PositiveAnswer(CANNOT_TELL, f"{question} Cannot tell, because {why}.",
                              {"answer": CANNOT_TELL, "why": why})
    diff = small.drop - large.drop
    sds = (small.drop_sd, large.drop_sd)
    z = p = diff_sd = None
    if None not in sds:
        diff_sd = math.hypot(*sds)  # the two labels' validation sets are different draws: independent
        z = diff / diff_sd if diff_sd > 0 else None
        p = math.erfc(abs(z) / math.sqrt(2)) if z is not None else None
    more = z is not None and p is not None and z > 0 and p < ALPHA
    below = small.ratio < large.ratio
    unknown = _cannot_tell(small, large, below, z is None)
    if unknown is not None:
        answer, word = CANNOT_TELL, f"Cannot tell, because {unknown}."
    elif small.significant and below and more:
        answer, word = "yes", "Yes."
    elif small.significant and below:
        answer, word = "partly", ("Partly: the small lesion's drop is significant and larger than the large "
                                  "lesion's, but the difference between the two drops is not.")
    else:
        why = [] if small.significant or not _tested(small) else \
            [f"{SMALL_LESION}'s own drop is not significant at p < {ALPHA:g}"]
        why += [] if below else [f"its ratio is not below {LARGE_LESION}'s"]
        answer, word = "no", "No: " + "; ".join(why) + "."
    diff_text = (f"The small lesion's drop exceeds the large one's by {diff:+.3f} ± {diff_sd:.3f} "
                 f"(z = {z:.2f}, {p_phrase(p)}; the two labels' estimates taken as independent)."
                 if z is not None and diff_sd is not None else
                 f"The drops differ by {diff:+.3f}; without a paired SD for both, that difference is untested.")
    sentence = f"{question} {word} {small.text()}; {large.text()}. {diff_text}"
    record = {"answer": answer, "why": unknown, "small": _drop_record(small), "large": _drop_record(large),
              "small_drop_significant": small.significant, "small_ratio_below_large": below,
              "drop_difference": diff, "drop_difference_sd": diff_sd, "z_drop_difference": z,
              "p_drop_difference": p}
    return PositiveAnswer(answer, sentence, record)


def _tested(d: Drop) -> bool:
    return d.test is not None and d.test.p_paired is not None


def _untested_why(d: Drop) -> str:
    why = d.test.paired_why if d.test is not None and d.test.paired_why else "it has no paired test"
    return f"{d.label}'s drop ({d.high} against {d.low} px) has no paired DeLong test: {why}"


def _cannot_tell(small: Drop, large: Drop, below: bool, diff_untested: bool) -> str | None:
    """Why the positive control's answer hangs on a test the data cannot give, or None when it does not.

    A ratio that is not below the large lesion's answers "no" by itself; otherwise the small lesion's own
    paired test decides, and for "yes" against "partly" the large lesion's too (the difference of the drops)."""
    if not below:
        return None
    if not _tested(small):
        return _untested_why(small)
    if small.significant and diff_untested:
        return _untested_why(large) if not _tested(large) else \
            "the paired SD of a drop is unknown (paired z of 0), so the difference of the drops is untested"
    return None


def _drop_record(d: Drop) -> dict[str, Any]:
    return {"label": d.label, "low_res": d.low, "high_res": d.high, "auc_low": d.auc_low, "auc_high": d.auc_high,
            "sd_low": d.sd_low, "sd_high": d.sd_high, "ratio": d.ratio, "drop": d.drop, "drop_sd": d.drop_sd,
            "p_paired": d.test.p_paired if d.test else None, "z_paired": d.test.z_paired if d.test else None}


def negative_control(study: Study, v: Variant) -> PositiveAnswer:
    """Does the null label stay within NULL_SD_LIMIT SD of 0.5 at every resolution?"""
    question = (f"**Negative control: does the null label ({NULL_LABEL}, no pixels drawn) stay within "
                f"{NULL_SD_LIMIT:g} SD of 0.5 at every resolution?**")
    rows = [(r, study.row(NULL_LABEL, r, v)) for r in resolutions(study, v)]
    rows = [(r, row) for r, row in rows if row is not None]
    if not rows:
        why = f"no {NULL_LABEL} cell has finished"
        return PositiveAnswer(CANNOT_TELL, f"{question} Cannot tell, because {why}.", {"answer": CANNOT_TELL,
                                                                                         "why": why})
    parts, devs, unscored = [], [], []
    for res, row in rows:
        dev = sd_from_half(row)
        if dev is None:
            unscored.append(res)
            parts.append(f"{TIED if row.get('auc_status') == TIED else 'no AUC'} at {res} px")
            continue
        devs.append((res, dev))
        parts.append(f"{auc_text(row)} at {res} px ({dev:+.1f} SD)")
    outside = [(r, d) for r, d in devs if abs(d) > NULL_SD_LIMIT]
    if outside:
        shown = ", ".join(f"{r} px ({d:+.1f} SD)" for r, d in outside)
        answer, word = "no", f"No: outside at {shown}, which is leakage or a bug until explained."
    elif unscored or not devs:
        answer, word = CANNOT_TELL, f"Cannot tell, because {', '.join(f'{r} px' for r in unscored)} gave no AUC."
    else:
        answer, word = "yes", f"Yes: the largest distance from 0.5 is {max(abs(d) for _, d in devs):.1f} SD."
    sentence = f"{question} {word} {NULL_LABEL}: " + "; ".join(parts) + "."
    record = {"answer": answer, "limit_sd": NULL_SD_LIMIT, "sd_from_half": {str(r): d for r, d in devs},
              "max_abs_sd_from_half": max((abs(d) for _, d in devs), default=None), "unscored": unscored}
    return PositiveAnswer(answer, sentence, record)


# --------------------------------------------------------------------------------------------------
# The section and its JSON


def controls_summary(study: Study) -> dict[str, Any] | None:
    """Both answers as data (None without controls): what the section says and report.json holds."""
    roles = control_roles(study)
    v = primary_variant(study)
    if not roles or v is None:
        return None
    pos = positive_control(study, v) if {SMALL_LESION, LARGE_LESION} <= set(roles) else None
    neg = negative_control(study, v) if NULL_LABEL in roles else None
    return {"model": {"arch": v[0], "epochs": v[1]}, "roles": roles,
            "positive": pos.record if pos else None, "negative": neg.record if neg else None,
            "sentences": [a.sentence for a in (pos, neg) if a is not None]}


def cell_records(study: Study) -> list[dict[str, Any]]:
    """Every ordinary cell: label, resolution, model, AUC, DeLong SD, paired DeLong p against the label's highest."""
    roles = control_roles(study)
    out = []
    for v in variants(study):
        for label in labels(study, v):
            top = highest_res(study, label, v)
            for res in resolutions(study, v):
                row = study.row(label, res, v)
                if row is None:
                    continue
                test = against_highest(study, label, v, res)
                spread = seed_spread(study, label, res, v)  # seeded cells: their seeds, mean and SD across them
                out.append({"label": label, "role": roles.get(label) if v == primary_variant(study) else None,
                            "architecture": v[0], "epochs": v[1], "resolution": res, "auc": auc_of(row),
                            "delong_sd": sd_of(row), "auc_status": row.get("auc_status"), "n_pos": row.get("n_pos"),
                            "n_neg": row.get("n_neg"), "highest_resolution": top,
                            "paired_delong_p_vs_highest": test.p_paired if test else None,
                            "paired_delong_z_vs_highest": test.z_paired if test else None,
                            "z_test_p_vs_highest": test.p if test else None, "sd_from_half": sd_from_half(row),
                            **(spread.record() if spread else {})})
    return out


def controls_section(study: Study) -> Section | None:
    """The 'controls' section: both answers in words, and every control cell against its label's highest."""
    summary = controls_summary(study)
    if summary is None:
        return None
    v = primary_variant(study)
    assert v is not None
    records = [r for r in cell_records(study) if r["role"] is not None]
    body = [[r["label"], r["role"], f"{r['resolution']} px", auc_text(study.row(r["label"], r["resolution"], v)),
             "reference" if r["resolution"] == r["highest_resolution"] else fmt_p(r["paired_delong_p_vs_highest"]),
             DASH if r["sd_from_half"] is None else f"{r['sd_from_half']:+.1f}"] for r in records]
    header = ["Label", "Role", "Resolution", "AUC ± DeLong SD", f"p vs highest ({PAIRED})", "(AUC − 0.5) / SD"]
    text = "\n\n".join(summary["sentences"]) + "\n\n" + markdown(header, body)
    notes = [f"Model: {variant_name(v)}, Table 2's. Every resolution of a label shares its validation images, so "
             f"each is compared with the label's highest resolution by the {PAIRED}; p < {ALPHA:g} counts.",
             f"The phantom draws {SMALL_LESION} and {LARGE_LESION} alike (one contrast over the local background, "
             "one edge sharpness, one noise level, the same at every resolution) but for their sizes, which are "
             f"the radiologists' boxes; {NULL_LABEL} is given at random and drawn nowhere.",
             "The difference between the two drops uses each drop's paired SD and takes the two labels' estimates as "
             "independent (different models, each on its own validation draw of the phantom's images)."]
    for r in records:
        r.update({k: blank(r.get(k)) for k in FIELDS})
    return Section("controls", "Controls: a resolution effect where one is drawn, none where none is", text, notes,
                   records, FIELDS)
