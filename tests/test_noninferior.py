"""What resolution is needed: the smallest resolution non-inferior to a reference fixed in advance, by one-sided
paired DeLong tests made downward in a fixed sequence (``cxr_fast.report.noninferior``).

The procedure's promise is its error rate: where every smaller resolution is truly worse by exactly the margin,
it calls one non-inferior at most α of the time. A simulation holds it to that; the other tests hold the
sequence's rules (stop at the first failure, 'none', 'cannot tell' with the reason) and what the report shows.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.special import ndtri
from scipy.stats import norm

from cxr_fast.cli import main
from cxr_fast.errors import CxrError
from cxr_fast.report.build import make_report
from cxr_fast.report.noninferior import (ALPHA, CANNOT, FAIL, MARGIN, PASS, chosen_seed, noninferiority_test,
                                         smallest_noninferior)
from test_report import make_study, val_labels


def binormal(rng: np.random.Generator, aucs: dict[int, float], n_pos: int, n_neg: int,
             rho: float) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Scores per resolution on one validation set: unit-variance normal noise, correlated ``rho`` between any
    two resolutions, shifted by sqrt(2)·Φ⁻¹(AUC) for positives, so each resolution's true AUC is exactly its own."""
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    shared = rng.standard_normal(y.size)
    return y, {res: math.sqrt(2) * ndtri(auc) * y + math.sqrt(rho) * shared
               + math.sqrt(1 - rho) * rng.standard_normal(y.size) for res, auc in aucs.items()}


# --------------------------------------------------------------------------------------------------
# The procedure's error rate, and its power


def test_where_every_smaller_resolution_is_worse_by_the_margin_it_calls_one_non_inferior_at_most_alpha_of_the_time():
    """The least favourable truth: every candidate's true ΔAUC is −margin. The familywise rate of calling any of
    them non-inferior must be ≤ α within Monte Carlo error: α + 3·sqrt(α(1 − α)/R)."""
    rng = np.random.default_rng(20)
    replicates = 2000
    aucs = {512: 0.80, 256: 0.80 - MARGIN, 128: 0.80 - MARGIN, 64: 0.80 - MARGIN}
    wrong = 0
    for _ in range(replicates):
        y, scores = binormal(rng, aucs, 150, 150, rho=0.7)
        wrong += smallest_noninferior(y, scores, 512).answer is not None
    bound = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / replicates)
    assert wrong / replicates <= bound, f"{wrong} of {replicates} replicates called a worse resolution non-inferior"


def test_where_a_smaller_resolution_loses_nothing_it_is_called_non_inferior_far_more_often_than_alpha():
    """The error-rate test is not passed by a procedure that never says yes."""
    rng = np.random.default_rng(21)
    passed = sum(smallest_noninferior(*binormal(rng, {512: 0.8, 256: 0.8}, 300, 300, rho=0.8), 512).answer == 256
                 for _ in range(300))
    assert passed / 300 > 4 * ALPHA


# --------------------------------------------------------------------------------------------------
# The sequence's rules


@pytest.mark.parametrize("draw", range(5))
def test_the_answer_is_the_middle_resolution_below_which_the_true_auc_drops(draw):
    rng = np.random.default_rng(100 + draw)
    y, scores = binormal(rng, {512: 0.85, 256: 0.85, 128: 0.85, 64: 0.70, 32: 0.60}, 500, 500, rho=0.95)
    found = smallest_noninferior(y, scores, 512)
    assert found.answer == 128 and found.text() == "128 px"
    assert [(s.res, s.result) for s in found.steps] == [(256, PASS), (128, PASS), (64, FAIL)]


def test_the_sequence_stops_at_the_first_failure_even_where_a_smaller_resolution_would_pass():
    rng = np.random.default_rng(7)
    y, scores = binormal(rng, {512: 0.85, 256: 0.85, 128: 0.65, 64: 0.85, 32: 0.85}, 500, 500, rho=0.95)
    found = smallest_noninferior(y, scores, 512)
    assert found.answer == 256
    assert [s.res for s in found.steps] == [256, 128], "64 px is never tested once 128 px failed"
    assert smallest_noninferior(y, {r: scores[r] for r in (64, 512)}, 512).answer == 64, "64 px alone would pass"


def test_none_when_the_next_smaller_resolution_fails():
    rng = np.random.default_rng(8)
    y, scores = binormal(rng, {512: 0.85, 256: 0.70, 128: 0.85}, 500, 500, rho=0.95)
    found = smallest_noninferior(y, scores, 512)
    assert found.answer is None and found.status == "none" and found.text() == "none"
    assert found.steps[0].z < norm.isf(ALPHA) and found.steps[0].diff < 0


def test_the_reference_is_the_one_given_not_the_best_auc():
    """A reference fixed in advance is kept even where a smaller resolution scores higher."""
    rng = np.random.default_rng(9)
    y, scores = binormal(rng, {512: 0.80, 256: 0.90, 128: 0.80}, 500, 500, rho=0.95)
    found = smallest_noninferior(y, scores, 256)
    assert found.reference == 256 and [s.res for s in found.steps] == [128] and found.answer is None
    assert smallest_noninferior(y, scores, 512).answer == 128


def test_a_missing_or_tied_score_stops_the_sequence_with_cannot_tell_and_the_reason():
    rng = np.random.default_rng(10)
    y, scores = binormal(rng, {512: 0.85, 256: 0.85, 128: 0.85, 64: 0.85}, 300, 300, rho=0.95)
    missing = smallest_noninferior(y, {**scores, 128: None}, 512)
    assert missing.answer == 256 and missing.status == "found; cannot tell below"
    assert missing.text() == f"256 px ({CANNOT} about 128 px, because 128 px has no scores)"
    assert [s.res for s in missing.steps] == [256, 128], "never a silent pass past the gap to 64 px"
    tied = smallest_noninferior(y, {**scores, 256: np.zeros_like(y)}, 512)
    assert tied.answer is None and tied.text().startswith(f"{CANNOT}, because the candidate model gave every")
    assert smallest_noninferior(y, scores, 600).text() == (f"{CANNOT}, because the reference 600 px is not in the "
                                                           "grid (64 px, 128 px, 256 px, 512 px)")


def test_identical_rankings_pass_with_no_spread_and_a_certain_loss_fails():
    rng = np.random.default_rng(11)
    y, scores = binormal(rng, {512: 0.85}, 100, 100, rho=0.5)
    same = noninferiority_test(256, y, scores[512], scores[512])
    assert (same.result, same.diff, same.se, same.z) == (PASS, 0.0, 0.0, math.inf)
    order = np.argsort(np.argsort(scores[512]))  # a perfect model against one that is perfect but for one pair
    perfect, flipped = y * 1000.0 + order, y * 1000.0 + order
    flipped[np.argmax(y == 1)] = -1.0  # one positive now below every negative: AUC 1 − 1/n_pos
    assert noninferiority_test(256, y, flipped, perfect, margin=0.001).result == FAIL


def test_the_test_runs_on_seed_0_where_it_ran_else_the_first_seed():
    assert chosen_seed([2, 0, 1]) == 0 and chosen_seed([5, 3]) == 3 and chosen_seed([None]) is None


# --------------------------------------------------------------------------------------------------
# The report


GRID = {"name": "table2", "labels": ["Nodule"], "resolutions": [32, 64, 128, 256], "archs": ["resnet34"], "epochs": 3}


def _scores(label: str, strengths: dict[int, float], n: int = 300, seed: int = 0) -> dict[int, np.ndarray]:
    """Scores on the label's validation images, strongly correlated across resolutions (as one model family's)."""
    y = val_labels(label, n)
    rng = np.random.default_rng(seed)
    shared = rng.normal(0, 1, n)
    return {res: y * s + shared + 0.1 * rng.normal(0, 1, n) for res, s in strengths.items()}


def nodule_study(root: Path, strengths: dict[int, float] | None = None, extra: dict | None = None) -> Path:
    """Nodule at 32-256 px: no loss down to 64 px, a large one at 32 px."""
    strengths = strengths or {256: 2.0, 128: 2.0, 64: 2.0, 32: 0.3}
    scores = _scores("Nodule", strengths)
    keys = {("Nodule", res, "resnet34", 3): s for res, s in strengths.items()}
    make_study(root, keys, [GRID], scores={k: scores[k[1]] for k in keys}, extra=extra)
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_the_section_csv_and_json_state_margin_alpha_reference_and_the_answer(tmp_path):
    root = nodule_study(tmp_path / "s")
    result = make_report(root, tmp_path / "r", json_path=tmp_path / "r.json", margin=0.03, alpha=0.01)
    section = next(s for s in result.sections if s.name == "noninferiority")
    text = (tmp_path / "r" / "noninferiority.md").read_text()
    assert "| Nodule | resnet34 3 ep | 256 px | 64 px |" in text
    assert "margin 0.03" in text and "α = 0.01" in text and "z(1 − α) = 2.326" in text
    assert "64 px pass" in text and "32 px fail" in text
    assert section.text() in (tmp_path / "r" / "report.md").read_text()
    (row,) = read_csv(tmp_path / "r" / "noninferiority.csv")
    assert (row["reference"], row["answer"], row["status"], row["margin"], row["alpha"]) == \
        ("256", "64", "found", "0.03", "0.01")
    assert row["stopped_at"] == "32" and row["stopped_result"] == FAIL and row["test_seed"] == "0"
    doc = json.loads((tmp_path / "r.json").read_text())["noninferiority"]
    assert (doc["margin"], doc["alpha"], doc["reference"]) == (0.03, 0.01, "largest in each grid")
    (answer,) = doc["answers"]
    assert answer["answer"] == 64 and [s["res"] for s in answer["steps"]] == [128, 64, 32]


def test_a_reference_given_is_used_and_one_in_no_grid_is_refused_before_anything_is_written(tmp_path):
    root = nodule_study(tmp_path / "s")
    make_report(root, tmp_path / "r", reference=128)
    (row,) = read_csv(tmp_path / "r" / "noninferiority.csv")
    assert (row["reference"], row["answer"]) == ("128", "64")
    assert "the reference is 128 px, as asked" in (tmp_path / "r" / "noninferiority.md").read_text()
    with pytest.raises(CxrError, match=r"reference resolution 600 px is in no grid of this study \(32 px, 64 px, "):
        make_report(root, tmp_path / "r2", reference=600)
    assert not (tmp_path / "r2").exists()


@pytest.mark.parametrize("break_it, said", [
    ("predictions", "cannot tell, because runs/Nodule/resnet34-e3/r128/predictions.npz is missing"),
    ("reference", "cannot tell, because runs/Nodule/resnet34-e3/r256/predictions.npz is missing"),
    ("tied", "cannot tell, because Nodule/resnet34-e3/r128 gave every validation image one score (tied)"),
    ("images", "cannot tell, because Nodule/resnet34-e3/r128 and Nodule/resnet34-e3/r256 scored different "
               "validation images"),
])
def test_a_step_that_cannot_be_tested_says_cannot_tell_and_why(tmp_path, break_it, said):
    root = nodule_study(tmp_path / "s")
    run = root / "runs" / "Nodule" / "resnet34-e3"
    if break_it in ("predictions", "reference"):
        (run / ("r128" if break_it == "predictions" else "r256") / "predictions.npz").unlink()
    elif break_it == "tied":
        lines = [json.loads(line) for line in (root / "results.jsonl").read_text().splitlines()]
        for r in lines:
            if r["res"] == 128:
                r.update(auc=None, auc_sd=None, auc_status="tied")
        (root / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    else:
        with np.load(run / "r128" / "predictions.npz") as z:
            arrays = dict(z)
        arrays["image_ids"] = np.array([f"other_{i}" for i in range(len(arrays["image_ids"]))])
        np.savez(run / "r128" / "predictions.npz", **arrays)
    make_report(root, tmp_path / "r")
    (row,) = read_csv(tmp_path / "r" / "noninferiority.csv")
    assert row["text"] == said and row["status"] == CANNOT and row["answer"] == ""
    assert row["stopped_at"] == "128" and "64 px" not in row["steps"], "the sequence stops there"


def test_seeds_show_their_spread_beside_the_answer_and_the_test_uses_seed_0(tmp_path):
    strengths = {256: 2.0, 128: 2.0, 64: 2.0, 32: 0.3}
    keys: dict[tuple, float] = {}
    scores: dict[tuple, np.ndarray] = {}
    extra: dict[tuple, dict] = {}
    for seed in (0, 1, 2):
        drawn = _scores("Nodule", strengths, seed=seed)
        for res, s in strengths.items():
            key = ("Nodule", res, "resnet34", 3) + ((f"seed={seed}",) if seed else ())
            keys[key], scores[key], extra[key] = s, drawn[res], {"seed": seed}
    root = tmp_path / "s"
    make_study(root, keys, [GRID], scores=scores, extra=extra)
    make_report(root, tmp_path / "r")
    rows = [json.loads(line) for line in (root / "results.jsonl").read_text().splitlines()]
    auc = {(r["seed"], r["res"]): r["auc"] for r in rows}
    (row,) = read_csv(tmp_path / "r" / "noninferiority.csv")
    assert row["test_seed"] == "0" and row["seeds"] == "0 1 2" and row["answer"] == "64"
    assert float(row["answer_diff"]) == pytest.approx(auc[(0, 64)] - auc[(0, 256)])
    sd64 = float(np.std([auc[(s, 64)] for s in (0, 1, 2)], ddof=1))
    assert float(row["seed_sd_answer"]) == pytest.approx(sd64)
    text = (tmp_path / "r" / "noninferiority.md").read_text()
    assert f"3 seeds (0 1 2), tested on seed 0; AUC SD {sd64:.3f} at 64 px" in text


def _plan(root: Path, cells: dict[int, tuple[float, int]]) -> None:
    """A plan.json as `cxr-fast study` writes it: per cell, eager wall seconds and the predicted largest batch."""
    (root / "plan.json").write_text(json.dumps({
        "device": {"name": "h100", "source": "modelled"},
        "cells": [{"cell_id": f"Nodule/resnet34-e3/r{res}", "setup_s": 1.0, "memory": {"max_batch": batch},
                   "eager": {"wall_s": wall, "train_s": wall - 2.0, "eval_s": 1.0, "bound": "compute"}}
                  for res, (wall, batch) in cells.items()]}))


def test_the_cost_of_the_answer_against_the_reference_comes_from_the_runs_and_the_plan(tmp_path):
    extra = {("Nodule", 64, "resnet34", 3): {"train_images_per_s": 900.0, "device": "cuda"},
             ("Nodule", 256, "resnet34", 3): {"train_images_per_s": 150.0, "device": "cuda"}}
    root = nodule_study(tmp_path / "s", extra=extra)
    _plan(root, {64: (720.0, 4096), 256: (7200.0, 256)})
    make_report(root, tmp_path / "r")
    text = (tmp_path / "r" / "noninferiority.md").read_text()
    assert "| 900.0 vs 150.0 (6.00×) | 4096 vs 256 (16.00×) | 0.2 vs 2 (0.10×) |" in text
    assert "Planned hours: from plan.json, eager, h100, modelled." in text
    (row,) = read_csv(tmp_path / "r" / "noninferiority.csv")
    assert (float(row["images_per_s"]), float(row["max_batch_reference"]), float(row["planned_h"])) == (900, 256, 0.2)


def test_a_cost_the_study_folder_does_not_hold_is_unknown_with_the_reason_in_one_line(tmp_path):
    root = nodule_study(tmp_path / "s")
    make_report(root, tmp_path / "r")
    text = (tmp_path / "r" / "noninferiority.md").read_text()
    assert "| unknown | unknown | unknown |" in text
    assert "- Planned hours: unknown (no plan.json in the study folder).\n" in text
    assert "- Images/s: unknown (the runs record no train_images_per_s and no bench.json in the study folder).\n" in text


# --------------------------------------------------------------------------------------------------
# The flags


def test_the_flags_reach_the_report(tmp_path, capsys):
    root = nodule_study(tmp_path / "s")
    assert main(["report", str(root), "--out", str(tmp_path / "r"), "--json", str(tmp_path / "r.json"),
                 "--margin", "0.05", "--alpha", "0.025", "--reference", "128"]) == 0
    doc = json.loads((tmp_path / "r.json").read_text())["noninferiority"]
    assert (doc["margin"], doc["alpha"], doc["reference"]) == (0.05, 0.025, 128)
    assert "What resolution is needed" in capsys.readouterr().out


@pytest.mark.parametrize("flag, value", [("--margin", "-0.01"), ("--margin", "nan"), ("--margin", "0.5"),
                                         ("--alpha", "0"), ("--alpha", "1.5"), ("--alpha", "inf"),
                                         ("--reference", "8")])
def test_the_flags_refuse_an_impossible_margin_alpha_or_reference_in_one_line(tmp_path, capsys, flag, value):
    root = nodule_study(tmp_path / "s")
    assert main(["report", str(root), "--out", str(tmp_path / "r"), flag, value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and f"{flag} must be" in err, err
    assert not (tmp_path / "r").exists()
