"""The report's answer to "what resolution do we need?": per label, the smallest resolution non-inferior to a
reference, by a procedure fixed before the data are seen.

Why this procedure and not "the best AUC, and whatever is not significantly worse": that reads an absence of
evidence as evidence of absence, and a best of nine AUCs on one validation set is biased upward. Here:

- the reference is chosen in advance: the largest resolution of the label's grid, or the one asked for;
- a resolution r is non-inferior when (ΔAUC + margin) / SE > z(1 − α), ΔAUC = AUC(r) − AUC(reference), SE from
  DeLong's covariance of the two AUCs on the validation images both runs scored (one-sided, paired);
- candidates are tested downward in the grid's fixed order, next smaller first, and the sequence stops at the
  first that does not pass. Each hypothesis is tested only when every one before it was rejected, so the
  familywise error stays at α without splitting it (the fixed-sequence procedure; Maurer, Hothorn &
  Lehmacher 1995). A test that cannot be made stops the sequence too, with its reason: never a silent pass.

Seeds draw different subsamples, hence different validation images, so the test uses one seed at every
resolution (seed 0, else the first); DeLong sees only the validation set, so the across-seed SD of AUC is shown
beside the answer where the study ran several. What the answer costs against the reference is read from what
the study folder holds (each run's measured images/s, ``plan.json``, a ``bench.json``), never made up.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr_fast.errors import CxrError
from cxr_fast.report.data import (UNKNOWN, Study, Variant, across_seed_sd, align, cells, chosen_seed, finite, is_tied,
                                   labels, ordered, replicates, variant_name, variants)
from cxr_fast.report.format import DASH, Section, blank, fmt_p, fmt_signed, markdown, res_list
from cxr_fast.report.stats import PAIRED
from cxr_fast.vocabulary import MAX_RES, MIN_RES, check_number

MARGIN = 0.02
ALPHA = 0.05
# A margin of 0.5 would call a coin non-inferior to a perfect model; an α of 0.5 is a coin toss.
MARGIN_BOUNDS = {"gt": 0.0, "lt": 0.5}
ALPHA_BOUNDS = {"gt": 0.0, "lt": 0.5}
REFERENCE_BOUNDS = {"ge": MIN_RES, "le": MAX_RES}
PASS, FAIL, CANNOT = "pass", "fail", "cannot tell"
BENCH_FILE = "bench.json"  # what `cxr-fast bench --out STUDY_DIR` writes into a study folder


# --------------------------------------------------------------------------------------------------
# The procedure on arrays


@dataclass(frozen=True)
class Step:
    """One candidate against the reference: passed, failed, or could not be tested (``why``)."""

    res: int
    result: str  # PASS, FAIL or CANNOT
    diff: float | None = None  # AUC(res) − AUC(reference)
    se: float | None = None  # DeLong SE of that difference
    z: float | None = None  # (diff + margin) / se
    p: float | None = None  # one-sided
    why: str | None = None  # CANNOT: the reason, to follow "because"


@dataclass(frozen=True)
class Answer:
    """The steps taken downward from ``reference``; ``why``: the sequence could not start."""

    reference: int
    steps: list[Step] = field(default_factory=list)
    why: str | None = None

    @property
    def answer(self) -> int | None:
        """The last resolution that passed (the smallest shown non-inferior), None if none did."""
        passed = [s.res for s in self.steps if s.result == PASS]
        return passed[-1] if passed else None

    @property
    def stopped(self) -> Step | None:
        """The step that ended the sequence (a fail or a cannot-tell); None when every candidate passed."""
        return next((s for s in self.steps if s.result != PASS), None)

    @property
    def status(self) -> str:
        stop = self.stopped
        if self.why is not None or (self.answer is None and stop is not None and stop.result == CANNOT):
            return CANNOT
        if self.answer is None:
            return "none"
        return "found; cannot tell below" if stop is not None and stop.result == CANNOT else "found"

    def text(self) -> str:
        """'64 px', 'none', 'cannot tell, because ...' or '128 px (cannot tell about 64 px, because ...)'."""
        stop = self.stopped
        if self.why is not None:
            return f"{CANNOT}, because {self.why}"
        if not self.steps:
            return "none (no resolution below the reference)"
        if self.answer is None and stop is not None:
            return "none" if stop.result == FAIL else f"{CANNOT}, because {stop.why}"
        if stop is not None and stop.result == CANNOT:
            return f"{self.answer} px ({CANNOT} about {stop.res} px, because {stop.why})"
        return f"{self.answer} px"


def critical_z(alpha: float) -> float:
    """z(1 − α), the one-sided bound the statistic must exceed."""
    from scipy.special import ndtri  # lazily: the CLI imports this module to declare its flags

    return float(-ndtri(alpha))


def paired_difference(y: np.ndarray, candidate: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(AUC(candidate) − AUC(reference), its DeLong SE) on the same images; CxrError for one class only.

    The project's DeLong (``metrics``) gives the two AUCs and their covariance; ``paired_delong_test`` keeps
    only z and p, which cannot give the SE of a zero difference, so the same computation is read here."""
    from cxr_fast.metrics import _check, _delong  # the one DeLong computation: not a second copy

    yb, (a, b) = _check(y, candidate, reference)
    aucs, cov = _delong(yb, [a, b])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    return float(aucs[0] - aucs[1]), math.sqrt(max(var, 0.0))


def noninferiority_test(res: int, y: np.ndarray, candidate: np.ndarray, reference: np.ndarray,
                        margin: float = MARGIN, alpha: float = ALPHA) -> Step:
    """One step: PASS when (ΔAUC + margin) / SE > z(1 − α); CANNOT when no AUC difference exists."""
    from scipy.special import ndtr  # the normal CDF, without scipy.stats' per-call overhead

    for name, s in (("candidate", candidate), ("reference", reference)):
        s = np.asarray(s)
        if s.size and np.all(s == s.reshape(-1)[0]):
            return Step(res, CANNOT, why=f"the {name} model gave every validation image one score (tied)")
    try:
        diff, se = paired_difference(y, candidate, reference)
    except CxrError as exc:
        return Step(res, CANNOT, why=str(exc))
    lead = diff + margin
    z = lead / se if se > 1e-12 else (math.inf if lead > 0 else -math.inf)  # no spread: the sign decides
    p = float(ndtr(-z))
    return Step(res, PASS if z > critical_z(alpha) else FAIL, diff, se, z, p)


def fixed_sequence(reference: int, candidates: Iterable[int], test: Callable[[int], Step]) -> Answer:
    """Test ``candidates`` in the order given, stopping at the first that does not pass."""
    steps: list[Step] = []
    for res in candidates:
        steps.append(test(res))
        if steps[-1].result != PASS:
            break
    return Answer(reference, steps)


def downward(grid: Iterable[int], reference: int) -> list[int]:
    """The grid's resolutions below the reference, next smaller first: the fixed order of the tests."""
    return sorted({int(r) for r in grid if int(r) < reference}, reverse=True)


def smallest_noninferior(y: np.ndarray, scores: Mapping[int, np.ndarray | None], reference: int,
                         margin: float = MARGIN, alpha: float = ALPHA) -> Answer:
    """The procedure on arrays: ``scores`` per resolution of the grid on the same images (None: missing)."""
    if reference not in scores:
        return Answer(reference, why=f"the reference {reference} px is not in the grid ({res_list(sorted(scores))})")
    ref = scores[reference]

    def test(res: int) -> Step:
        cand = scores[res]
        if ref is None or cand is None:
            return Step(res, CANNOT, why=f"{reference if ref is None else res} px has no scores")
        return noninferiority_test(res, y, cand, ref, margin, alpha)

    return fixed_sequence(reference, downward(scores, reference), test)


# --------------------------------------------------------------------------------------------------
# A study: which rows, which seed


@dataclass(frozen=True)
class Settings:
    """The procedure's parameters, stated before the data are read; ``reference`` None: each grid's largest."""

    margin: float = MARGIN
    alpha: float = ALPHA
    reference: int | None = None

    def checked(self) -> Settings:
        check_number(self.margin, "the non-inferiority margin", **MARGIN_BOUNDS)
        check_number(self.alpha, "the non-inferiority alpha", **ALPHA_BOUNDS)
        if self.reference is not None:
            check_number(self.reference, "the reference resolution", integer=True, **REFERENCE_BOUNDS)
        return self


def _cell_words(row: dict[str, Any]) -> str:
    return str(row.get("cell_id"))


def study_test(study: Study, ref_row: dict[str, Any] | None, row: dict[str, Any] | None, res: int, reference: int,
               seed: int | None, settings: Settings) -> Step:
    """One step on a study's rows: the reasons a test cannot be made are named, each stopping the sequence."""
    seed_words = f" with seed {seed}" if seed is not None else ""
    for r, at in ((ref_row, reference), (row, res)):
        if r is None:
            return Step(res, CANNOT, why=f"{at} px has no finished run{seed_words}")
        if is_tied(r):
            return Step(res, CANNOT, why=f"{_cell_words(r)} gave every validation image one score (tied)")
    preds = {at: study.predictions(r) for r, at in ((ref_row, reference), (row, res))}
    missing = [f"{r.get('run_dir')}/predictions.npz" for r, at in ((ref_row, reference), (row, res)) if preds[at] is None]
    if missing:
        return Step(res, CANNOT, why=f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing")
    aligned = align(preds[res], preds[reference])
    if aligned is None:
        return Step(res, CANNOT, why=f"{_cell_words(row)} and {_cell_words(ref_row)} scored different validation "
                                     "images")
    y, cand, ref = aligned
    return noninferiority_test(res, y, cand, ref, settings.margin, settings.alpha)


# --------------------------------------------------------------------------------------------------
# What a resolution costs, from what the study folder holds


@dataclass(frozen=True)
class Known:
    """A number with where it came from, or None with why it is not known."""

    value: float | None
    source: str  # where it came from; when ``value`` is None, why it is unknown

    def text(self, fmt: str) -> str:
        return UNKNOWN if self.value is None else format(self.value, fmt)


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str]:
    if not path.is_file():
        return None, f"no {path.name} in the study folder"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"{path.name} cannot be read ({type(exc).__name__})"
    return (doc, "") if isinstance(doc, dict) else (None, f"{path.name} is not a JSON object")


class Costs:
    """Images/s, the largest batch and planned hours of a study's cells, each with its source or its reason."""

    def __init__(self, root: Path) -> None:
        from cxr_fast.cost.plan import PLAN_FILE  # torch-free: the plan's file name, said once

        self.plan, self.plan_why = _read_json(root / PLAN_FILE)
        self.bench, self.bench_why = _read_json(root / BENCH_FILE)
        cells_ = (self.plan or {}).get("cells") or []
        self.planned = {c.get("cell_id"): c for c in cells_ if isinstance(c, dict)}
        device = (self.plan or {}).get("device") or {}
        self.plan_device = f"{device.get('name', UNKNOWN)}, {device.get('source', UNKNOWN)}"

    def _bench_rows(self, kind: str, arch: str, res: int) -> list[dict[str, Any]]:
        rows = (self.bench or {}).get("rows") or []
        return [r for r in rows if isinstance(r, dict) and r.get("kind") == kind and r.get("arch") == arch
                and r.get("res") == res and r.get("status") == "ok"]

    def images_per_s(self, row: dict[str, Any] | None, arch: str, res: int) -> Known:
        if row is not None and finite(row.get("train_images_per_s")):
            return Known(float(row["train_images_per_s"]), f"training images/s measured by each run "
                                                             f"({row.get('device', UNKNOWN)})")
        for kind in ("train_loader", "train_synthetic"):
            for b in self._bench_rows(kind, arch, res):
                if finite(b.get("images_per_s")):
                    return Known(float(b["images_per_s"]), f"{BENCH_FILE} {kind}, measured on "
                                                           f"{b.get('device_name', UNKNOWN)}")
        return Known(None, f"the runs record no train_images_per_s and {self.bench_why or BENCH_FILE + ' has no row'}")

    def max_batch(self, row: dict[str, Any] | None, arch: str, res: int) -> Known:
        limits = self._bench_rows("batch_limit", arch, res)
        measured = [b for b in limits if finite(b.get("max_batch_measured"))]
        if measured:
            return Known(float(measured[0]["max_batch_measured"]),
                         f"{BENCH_FILE}, measured on {measured[0].get('device_name', UNKNOWN)}")
        cell = self.planned.get(row.get("cell_id")) if row is not None else None
        mem = (cell or {}).get("memory") or {}
        if finite(mem.get("max_batch")):
            return Known(float(mem["max_batch"]), f"plan.json, predicted for {self.plan_device}")
        predicted = [b for b in limits if finite(b.get("max_batch_predicted"))]
        if predicted:
            return Known(float(predicted[0]["max_batch_predicted"]),
                         f"{BENCH_FILE}, predicted for {predicted[0].get('gpu_gb', UNKNOWN)} GiB")
        return Known(None, self._plan_why(row) + f"; {self.bench_why or BENCH_FILE + ' has no batch_limit row'}")

    def planned_hours(self, row: dict[str, Any] | None) -> Known:
        cell = self.planned.get(row.get("cell_id")) if row is not None else None
        wall = ((cell or {}).get("eager") or {}).get("wall_s")
        if finite(wall):
            return Known(float(wall) / 3600.0, f"plan.json, eager, {self.plan_device}")
        return Known(None, self._plan_why(row))

    def _plan_why(self, row: dict[str, Any] | None) -> str:
        if self.plan is None:
            return self.plan_why
        return f"plan.json has no cell {row.get('cell_id')}" if row is not None else "the cell has not run"


# --------------------------------------------------------------------------------------------------
# The study's answers


COST_KEYS = ("images_per_s", "max_batch", "planned_h")


@dataclass
class LabelAnswer:
    """One label and model: the procedure's answer, the seed it used, the spread over seeds, the costs."""

    label: str
    variant: Variant
    grid: list[int]
    answer: Answer
    seed: int | None
    seeds: list[int | None]
    seed_sd: dict[int, float | None]  # res -> across-seed SD of AUC, at the answer and the reference
    cost: dict[str, tuple[Known, Known]]  # COST_KEYS -> (at the answer, at the reference)

    def record(self, settings: Settings) -> dict[str, Any]:
        """The CSV row: the settings, the answer, the steps in words, the stopping step and the costs."""
        a, stop = self.answer, self.answer.stopped
        passed = [s for s in a.steps if s.result == PASS]
        last = passed[-1] if passed else None
        rec = {"label": self.label, "arch": self.variant[0], "epochs": self.variant[1], "reference": a.reference,
               "answer": blank(a.answer), "status": a.status, "text": a.text(), "margin": settings.margin,
               "alpha": settings.alpha, "z_critical": critical_z(settings.alpha), "test_seed": blank(self.seed),
               "seeds": " ".join(str(s) for s in self.seeds if s is not None),
               "steps": "; ".join(_step_words(s) for s in a.steps),
               "answer_diff": blank(last and last.diff), "answer_se": blank(last and last.se),
               "answer_z": blank(last and last.z), "answer_p": blank(last and last.p),
               "stopped_at": blank(stop and stop.res), "stopped_result": blank(stop and stop.result),
               "stopped_z": blank(stop and stop.z), "stopped_p": blank(stop and stop.p),
               "stopped_why": blank(a.why or (stop and stop.why)),
               "seed_sd_answer": blank(self.seed_sd.get(a.answer) if a.answer is not None else None),
               "seed_sd_reference": blank(self.seed_sd.get(a.reference))}
        for key in COST_KEYS:
            at, ref = self.cost[key]
            rec.update({key: blank(at.value), f"{key}_reference": blank(ref.value), f"{key}_source": at.source,
                        f"{key}_reference_source": ref.source})
        return rec

    def document(self) -> dict[str, Any]:
        return {"label": self.label, "arch": self.variant[0], "epochs": self.variant[1], "grid": self.grid,
                "reference": self.answer.reference, "answer": self.answer.answer, "status": self.answer.status,
                "text": self.answer.text(), "why": self.answer.why,
                "steps": [{**asdict(s), "z": _json_z(s.z)} for s in self.answer.steps],
                "test_seed": self.seed, "seeds": self.seeds,
                "across_seed_sd": {str(k): v for k, v in self.seed_sd.items()},
                "cost": {k: {"answer": at.value, "reference": ref.value, "answer_source": at.source,
                             "reference_source": ref.source} for k, (at, ref) in self.cost.items()}}


FIELDS = ["label", "arch", "epochs", "reference", "answer", "status", "text", "margin", "alpha", "z_critical",
          "test_seed", "seeds", "steps", "answer_diff", "answer_se", "answer_z", "answer_p", "stopped_at",
          "stopped_result", "stopped_z", "stopped_p", "stopped_why", "seed_sd_answer", "seed_sd_reference"]
FIELDS += [f"{k}{s}" for k in COST_KEYS for s in ("", "_reference", "_source", "_reference_source")]


@dataclass
class NonInferiority:
    """Every label's answer under one set of settings: the section's and the JSON document's content."""

    settings: Settings
    answers: list[LabelAnswer]

    def document(self) -> dict[str, Any]:
        s = self.settings
        return {"margin": s.margin, "alpha": s.alpha, "z_critical": critical_z(s.alpha),
                "reference": s.reference if s.reference is not None else "largest in each grid",
                "seed": "seed 0 where it ran, else the first seed, at every resolution",
                "procedure": procedure_words(s), "answers": [a.document() for a in self.answers]}


def _json_z(z: float | None) -> float | str | None:
    """z for a JSON reader: an infinite z (the two AUCs differ with no spread) as the string 'inf' or '-inf'."""
    return z if z is None or math.isfinite(z) else ("inf" if z > 0 else "-inf")


def _step_words(s: Step) -> str:
    if s.result == CANNOT:
        return f"{s.res} px {CANNOT}"
    z = "∞" if s.z == math.inf else ("−∞" if s.z == -math.inf else f"{s.z:.2f}")
    return f"{s.res} px {s.result} (Δ {fmt_signed(s.diff)}, z {z}, p {fmt_p(s.p)})"


def label_grid(study: Study, label: str, v: Variant) -> list[int]:
    """The resolutions the study names or holds for this label and model."""
    return sorted({c["res"] for c in cells(study) if c["label"] == label and (c["arch"], c["epochs"]) == v})


def label_answer(study: Study, label: str, v: Variant, settings: Settings, costs: Costs) -> LabelAnswer:
    """The procedure on one label and model, with the seed spread and the costs beside it."""
    grid = label_grid(study, label, v)
    reference = settings.reference if settings.reference is not None else grid[-1]
    runs = {res: replicates(study, label, res, v) for res in grid}
    seed = chosen_seed(s for rows in runs.values() for s in rows)  # one seed for every resolution of the label
    if reference not in runs:
        answer = Answer(reference, why=f"the reference {reference} px is not in this grid ({res_list(grid)})")
    else:
        ref_row = runs[reference].get(seed)
        answer = fixed_sequence(reference, downward(grid, reference),
                                lambda res: study_test(study, ref_row, runs[res].get(seed), res, reference, seed,
                                                       settings))
    shown = [r for r in (answer.answer, reference) if r is not None]
    sd = {res: across_seed_sd(runs.get(res, {})) for res in shown}
    seeds = sorted({s for rows in runs.values() for s in rows}, key=lambda s: (s is None, s or 0))

    def row_at(res: int | None) -> dict[str, Any] | None:
        return runs.get(res, {}).get(seed) if res is not None else None

    cost = {key: (measure(row_at(answer.answer), answer.answer) if answer.answer is not None
                  else Known(None, "no resolution passed"), measure(row_at(reference), reference))
            for key, measure in (("images_per_s", lambda r, res: costs.images_per_s(r, v[0], res)),
                                 ("max_batch", lambda r, res: costs.max_batch(r, v[0], res)),
                                 ("planned_h", lambda r, res: costs.planned_hours(r)))}
    return LabelAnswer(label, v, grid, answer, seed, seeds, sd, cost)


def noninferiority(study: Study, settings: Settings = Settings()) -> NonInferiority:
    """Every label and model's answer; a reference in no grid of the study is one line, before anything."""
    settings = settings.checked()
    pairs = [(label, v) for v in variants(study) for label in labels(study, v)]
    if settings.reference is not None and pairs:
        every = sorted({r for label, v in pairs for r in label_grid(study, label, v)})
        if settings.reference not in every:
            raise CxrError(f"reference resolution {settings.reference} px is in no grid of this study "
                           f"({res_list(every)})")
    costs = Costs(study.root)
    return NonInferiority(settings, [label_answer(study, label, v, settings, costs) for label, v in pairs])


# --------------------------------------------------------------------------------------------------
# The section


def procedure_words(s: Settings) -> str:
    ref = f"{s.reference} px, as asked" if s.reference is not None else \
        "the largest resolution of each label's grid"
    return (f"Stated before the data: the reference is {ref} (chosen in advance, never the best AUC). A resolution is "
            f"non-inferior when (AUC − AUC(reference) + margin) / SE > z(1 − α), margin {s.margin:g}, α = {s.alpha:g}, "
            f"z(1 − α) = {critical_z(s.alpha):.3f}; SE from DeLong's covariance of the two AUCs on the validation "
            f"images both runs scored (one-sided {PAIRED}). Testing goes downward from the reference through the grid's "
            "resolutions, next smaller first, and stops at the first that does not pass: each test is made only if every "
            "one before it passed (a fixed sequence), so the chance of calling any resolution non-inferior when it is "
            f"not stays at α = {s.alpha:g}. The answer is the last that passed; 'none': the first did not; "
            "'cannot tell': a test could not be made (a cell not run, tied, without predictions, or on other images), "
            "which stops the sequence as a failure would, never as a pass.")


def _pair_text(pair: tuple[Known, Known], fmt: str) -> str:
    at, ref = pair
    if at.value is None and ref.value is None:
        return UNKNOWN
    ratio = f" ({at.value / ref.value:.2f}×)" if at.value is not None and ref.value else ""
    return f"{at.text(fmt)} vs {ref.text(fmt)}{ratio}"


def _seed_text(a: LabelAnswer) -> str:
    known = [s for s in a.seeds if s is not None]
    if len(known) < 2:
        return f"seed {a.seed} only" if a.seed is not None else "one run (seed not recorded)"
    sds = ", ".join(f"{v:.3f} at {res} px" if v is not None else f"— at {res} px" for res, v in a.seed_sd.items())
    return f"{len(known)} seeds ({' '.join(map(str, known))}), tested on seed {a.seed}; AUC SD {sds}"


def noninferiority_section(result: NonInferiority) -> Section | None:
    """The answer per label and model, the tests that led to it, the seed spread and the costs beside it."""
    if not result.answers:
        return None
    s = result.settings
    header = ["Label", "Model", "Reference", "Smallest non-inferior", "Tests, downward", "Across seeds",
              "Images/s (answer vs reference)", "Largest batch", "Planned hours"]
    body = []
    for a in result.answers:
        found = a.answer.answer is not None
        costs = [_pair_text(a.cost[k], f) if found else DASH
                 for k, f in (("images_per_s", ".1f"), ("max_batch", ".0f"), ("planned_h", ".3g"))]
        body.append([a.label, variant_name(a.variant), f"{a.answer.reference} px", a.answer.text(),
                     "; ".join(_step_words(st) for st in a.answer.steps) or DASH, _seed_text(a), *costs])
    notes = [procedure_words(s), f"Settings: margin {s.margin:g}, α = {s.alpha:g} (`--margin`, `--alpha`, "
             "`--reference` on `cxr-fast report`); Δ = AUC − AUC(reference), p one-sided.",
             "Seeds draw different validation images, so every test uses one seed at every resolution (seed 0 where it "
             "ran, else the first). DeLong's SE sees only the validation set: where the study ran several seeds, the "
             "across-seed SD of AUC is shown at the answer and at the reference."]
    notes += _cost_notes(result)
    return Section("noninferiority", "What resolution is needed: the smallest non-inferior to the reference",
                   markdown(header, body), notes, [a.record(s) for a in result.answers], FIELDS)


def _cost_notes(result: NonInferiority) -> list[str]:
    """Where each cost came from, or why it is unknown: one line per measure."""
    out = []
    for key, what in (("images_per_s", "Images/s"), ("max_batch", "Largest batch"), ("planned_h", "Planned hours")):
        pairs = [a.cost[key] for a in result.answers if a.answer.answer is not None]
        sources = ordered(k.source for pair in pairs for k in pair if k.value is not None)
        unknown = ordered(k.source for pair in pairs for k in pair if k.value is None)
        if not pairs:
            continue
        parts = ([f"from {'; '.join(sources)}"] if sources else []) + \
            ([f"{UNKNOWN} ({'; '.join(unknown)})"] if unknown else [])
        out.append(f"{what}: {', '.join(parts)}.")
    return out
